"""Bare-metal boards under qemu-system: build, boot, serve prompts over the UART.

For mps2-an386 (Cortex-M4F, weights in its 4 MiB flash) and qemu-virt-rv64 (RV64GC in
machine mode), with the default model and llama2.c's stories260K, and for the other cores
(mps2-an500, Cortex-M7; mps2-an505, Cortex-M33; qemu-virt-rv32, RV32IMAC) with the
default model in F32 and Q8_0: `build` links the
runtime, the main loop, the port and the model (.incbin) into one image; QEMU boots it
with the UART on stdio; the hello line comes first; a greedy request streams exactly
the text the host runtime gives for the same model file and token budget, then a stats
line; an overlong line, a bad option and backspaces do not derail it; "/exit" ends
QEMU with status 0. The self-contained run command (`edgellama run`'s path) gives the
same text, and the images put the model and the arena where the plan says.
"""

import os
import re
import selectors
import signal
import subprocess
import time

import pytest
from conftest import require_board

from edgellama.boards import builder, emulator
from edgellama.boards.catalog import get_board
from edgellama.boards.targets import baremetal
from edgellama.boards.toolchains import get_toolchain
from edgellama.errors import EdgeLlamaError
from edgellama.model.gguf_file import write_gguf
from edgellama.model.llama2c import read_llama2c
from edgellama.model.tokenizer import load_vocab
from edgellama.runtime.llm import LLM
from edgellama.runtime.sampling_params import SamplingParams

pytestmark = pytest.mark.emulated  # boards under QEMU, cross-built programs under qemu-user

PROMPT = "once upon a time"
N_TOKENS = 32
BOOT_TIMEOUT = 30.0
REQUEST_TIMEOUT = 90.0
CASES = [
    ("mps2-an386", "default", "q8_0"),
    ("mps2-an386", "default", "f32"),        # 3.4 MB of F32 weights in the 4 MiB flash
    ("mps2-an386", "stories260K", "q8_0"),
    ("qemu-virt-rv64", "default", "q8_0"),
    ("qemu-virt-rv64", "default", "f32"),
    ("qemu-virt-rv64", "stories260K", "f32"),
    # the other cores (each one's own checks: tests/test_board_*.py)
    ("mps2-an500", "default", "q8_0"),       # Cortex-M7, FPv5-D16, on the AN386 port
    ("mps2-an500", "default", "f32"),
    ("mps2-an505", "default", "q8_0"),       # Cortex-M33 in the Secure state
    ("mps2-an505", "default", "f32"),
    ("qemu-virt-rv32", "default", "q8_0"),   # RV32IMAC, soft float
    ("qemu-virt-rv32", "default", "f32"),
]


@pytest.fixture(scope="module")
def stories_gguf(tmp_path_factory, shared_data):
    path = tmp_path_factory.mktemp("stories") / "stories260K.gguf"
    write_gguf(read_llama2c(shared_data / "stories260K.bin", load_vocab(shared_data / "tok512.model")), path, "f32")
    return path


@pytest.fixture(scope="module")
def builds(board_builds, stories_gguf):
    """(board, "default" or "stories", quant) -> BuildResult, from the session's builds."""
    return lambda board, model, quant: board_builds(board, quant, None if model == "default" else stories_gguf)


@pytest.fixture(scope="module")
def host():
    """The host runtime's greedy completion of a model file: (text, n_prompt, n_tokens)."""
    cache = {}

    def get(model_path, prompt=PROMPT, n=N_TOKENS):
        key = (str(model_path), prompt, n)
        if key not in cache:
            out = LLM(str(model_path)).generate(prompt, SamplingParams(temperature=0, max_tokens=n), use_tqdm=False)[0]
            cache[key] = (out.outputs[0].text, len(out.prompt_token_ids), len(out.outputs[0].token_ids))
        return cache[key]
    return get


class Device:
    """QEMU with the board's UART on stdin/stdout."""

    def __init__(self, ctx):
        self.proc = subprocess.Popen(baremetal.serial_command(ctx), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.buffer = b""

    def send(self, data: bytes):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_until(self, pattern: bytes, timeout: float) -> bytes:
        """Everything up to and including the first match of the regex `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.buffer)
            if m:
                out, self.buffer = self.buffer[:m.end()], self.buffer[m.end():]
                return out
            wait = deadline - time.monotonic()
            if wait <= 0 or self.proc.poll() is not None and not self.sel.select(0):
                self.kill()
                stderr = self.proc.stderr.read().decode(errors="replace")
                pytest.fail(f"no {pattern!r} from the device in {timeout:g} s; output: "
                            f"{self.buffer.decode(errors='replace')[-500:]!r}; stderr: {stderr[-500:]!r}")
            if self.sel.select(min(wait, 1.0)):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if chunk:
                    self.buffer += chunk

    def request(self, line: str) -> baremetal.Reply:
        self.send(line.encode() + b"\n")
        return baremetal.parse_reply(self.read_until(rb"\n?\[stats\] [^\n]*\n", REQUEST_TIMEOUT).decode())

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self):
        self.kill()
        self.sel.close()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except BrokenPipeError:
                pass


@pytest.mark.parametrize("board,model,quant", CASES, ids=["-".join(c) for c in CASES])
def test_serial_session_matches_host(builds, host, board, model, quant):
    result = builds(board, model, quant)
    ctx = result.context
    text, n_prompt, n_tokens = host(ctx.model_path)
    device = Device(ctx)
    try:
        hello = device.read_until(rb"edgellama [^\n]*\n", BOOT_TIMEOUT).decode()
        fields = baremetal.parse_stats("x " + hello)
        assert fields["board"] == board
        assert fields["model"] == ("stories260K" if model == "stories260K" else "tinystories-850k")
        assert int(fields["ctx"]) == 512  # stories260K and the default model both have 512
        assert int(fields["arena"]) == get_board(board).arena
        assert int(fields["weights"]) == ctx.model_path.stat().st_size
        plan = result.manifest.get("plan")
        if plan:  # the planner's arithmetic is an upper bound, tight to a few KiB
            after_open = plan["arena_total"] - plan["parts"]["prompt scratch"]
            assert int(fields["arena_used"]) <= after_open <= int(fields["arena_used"]) + 4096

        start = time.monotonic()
        reply = device.request(f"max_tokens={N_TOKENS} | {PROMPT}")
        elapsed = time.monotonic() - start
        assert reply.text == text, (board, model, quant)
        assert int(reply.stats["tokens"]) == n_tokens and int(reply.stats["prompt"]) == n_prompt
        assert reply.stats["finish"] in ("length", "stop")
        assert 0 < int(reply.stats["arena_hw"]) <= int(reply.stats["arena"])
        if plan:
            assert int(reply.stats["arena_hw"]) <= plan["arena_total"]
        used, total = map(int, reply.stats["kv_blocks"].split("/"))
        assert used == -(-(n_prompt + n_tokens - 1) // 16) or used == -(-(n_prompt + n_tokens) // 16)
        assert total >= used
        print(f"\n{board} {model} {quant}: {n_tokens} tokens in {elapsed:.2f} s wall; device: {reply.stats}")

        # an overlong line is dropped with an error, and the device keeps answering
        device.send(b"x" * 3000 + b"\n")
        assert b"line too long" in device.read_until(rb"\[error\][^\n]*\n", REQUEST_TIMEOUT)
        # a bad option is refused by name
        device.send(b"colour=3 | hi\n")
        assert b"'colour=3'" in device.read_until(rb"\[error\][^\n]*\n", REQUEST_TIMEOUT)
        # backspace and DEL edit the line; "\r\n" ends it; greedy is the default
        reply = device.request("max_tokens=8 | onx\x08ce upom\x7fn a time\r")
        assert reply.text == host(ctx.model_path, PROMPT, 8)[0]
        assert reply.errors == []

        device.send(b"/exit\n")
        assert b"[bye]" in device.read_until(rb"\[bye\]\n", REQUEST_TIMEOUT)
        assert device.proc.wait(timeout=30) == 0
    finally:
        device.close()


@pytest.mark.parametrize("board", ["mps2-an386", "qemu-virt-rv64", "mps2-an500", "mps2-an505", "qemu-virt-rv32"])
def test_run_command_ends_by_itself(builds, host, board):
    """emulator.run (what `edgellama run` uses): the request goes in through a file, QEMU
    exits with status 0 after the answer."""
    result = builds(board, "default", "q8_0")
    returncode, out, err = emulator.run(board, result.out_dir, ["generate", PROMPT, "--temperature", "0",
                                                                "--max-tokens", str(N_TOKENS)], timeout=120)
    assert returncode == 0, err
    reply = baremetal.parse_reply(out)
    assert reply.hello.startswith("edgellama ") and out.endswith("[bye]\n")
    assert reply.text == host(result.context.model_path)[0]


def symbol(board, elf, name) -> int:
    nm = get_toolchain(get_board(board).toolchain).tool("nm")
    out = subprocess.run([nm, str(elf)], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^([0-9a-f]+) \w {re.escape(name)}$", out, re.MULTILINE)
    assert m, f"{name} not in {elf}"
    return int(m.group(1), 16)


def test_memory_layout(builds):
    """Weights in flash (mps2) aligned to 32 bytes, the arena in RAM, the manifest says so."""
    result = builds("mps2-an386", "default", "f32")
    elf = result.out_dir / "firmware.elf"
    start = symbol("mps2-an386", elf, "el_model_start")
    assert start % 32 == 0 and start + result.context.model_path.stat().st_size <= 4 << 20
    arena = symbol("mps2-an386", elf, "arena")
    assert 0x20000000 <= arena and arena + (3 << 20) <= 0x20400000
    assert result.manifest["memory"] == {"WEIGHTS_REGION": "FLASH", "ARENA_REGION": "RAM", "ARENA_BYTES": "3145728"}
    # the flash image: everything from 0x0, the model included, nothing past flash
    bin_size = (result.out_dir / "firmware.bin").stat().st_size
    assert start + result.context.model_path.stat().st_size <= bin_size <= 4 << 20

    rv = builds("qemu-virt-rv64", "default", "q8_0").out_dir / "firmware.elf"
    assert symbol("qemu-virt-rv64", rv, "_start") == 0x80000000
    assert symbol("qemu-virt-rv64", rv, "el_model_start") % 32 == 0


def test_export_c_builds_with_make(tmp_path):
    require_board("mps2-an386")
    result = builder.export_c("mps2-an386", quant="q8_0", out_dir=tmp_path / "src-only")
    assert not (result.out_dir / "firmware.elf").exists()
    subprocess.run(["make", "-C", str(result.out_dir / "src"), "-j2"], check=True, capture_output=True, timeout=300)
    assert (result.out_dir / "firmware.elf").is_file() and (result.out_dir / "firmware.bin").is_file()


def test_request_line():
    line = baremetal.request_line(["generate", "a | b", "--temperature", "0.8", "--top-p=0.9", "--seed", "7",
                                   "--max-tokens", "5", "--ignore-eos"])
    assert line == "temperature=0.8 max_tokens=5 top_p=0.9 seed=7 ignore_eos=1 | a | b"
    for bad in (["generate", "x", "--stop", "."], ["generate", "two\nlines"], ["bench"], ["generate"],
                ["generate", "x", "--temperature", "hot"], ["generate", "x" * 600]):
        with pytest.raises(EdgeLlamaError):
            baremetal.request_line(bad)
