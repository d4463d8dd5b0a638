"""The Cortex-M7 board: Arm MPS2+ AN500 under `qemu-system-arm -M mps2-an500`.

AN500 is AN386's memory map with PSRAM moved: code and weights in the 4 MiB at 0x0, RAM
at 0x20000000, CMSDK UART0 and timers where AN386 has them, but PSRAM at 0x60000000
(QEMU hw/arm/mps2.c), so the board runs the AN386 port with its board file's psram_base
(link.ld's EL_PSRAM_BASE). QEMU's
cortex-m7 has the double-precision FPv5 (MVFR0 0x10110221): the board builds with
-mfpu=fpv5-d16, and its elementary functions run f64 instructions in hardware.

Its images give the host's text in F32 and Q8_0 (tests/test_baremetal.py, with the
other boards); here: the board file and the command QEMU gets, where the images are
linked, the DSP kernels, an arena too big for RAM going to PSRAM at 0x60000000 and still
giving the host's text, and guest instructions per generated token, printed.
"""

import re
import subprocess
from pathlib import Path

import pytest
from conftest import require_board
from test_baremetal import symbol

import edgellama.boards.catalog
from edgellama.boards import builder, emulator
from edgellama.boards.catalog import get_board
from edgellama.boards.targets import BuildContext, baremetal
from edgellama.boards.toolchains import get_toolchain
from edgellama.runtime.llm import LLM
from edgellama.runtime.sampling_params import SamplingParams

pytestmark = pytest.mark.emulated  # boards under QEMU, cross-built programs under qemu-user

BOARD = "mps2-an500"
PROMPT = "once upon a time"
N_TOKENS = 32
SESSION_TIMEOUT = 120
QUANTS = ["f32", "q8_0"]
PSRAM_BASE, PSRAM_SIZE = 0x60000000, 16 << 20


@pytest.fixture(scope="module")
def builds(board_builds):
    return lambda quant: board_builds(BOARD, quant)


@pytest.fixture(scope="module")
def host():
    """The host runtime's greedy completion of a model file: (text, n_prompt, n_tokens)."""
    cache = {}

    def get(model_path, n=N_TOKENS):
        key = (str(model_path), n)
        if key not in cache:
            out = LLM(str(model_path)).generate(PROMPT, SamplingParams(temperature=0, max_tokens=n), use_tqdm=False)[0]
            cache[key] = (out.outputs[0].text, len(out.prompt_token_ids), len(out.outputs[0].token_ids))
        return cache[key]
    return get


def test_board_file_and_port(tmp_path):
    board = require_board(BOARD)
    assert board.port == "mps2-an386" and board.cflags == ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16",
                                                           "-mfloat-abi=hard"]
    assert (board.ram, board.flash, board.psram) == (4 << 20, 4 << 20, 16 << 20)
    port = baremetal.port_dir(board)
    assert baremetal.region_names(port) == {"flash": "FLASH", "ram": "RAM", "psram": "PSRAM"}
    assert board.psram_base == 0x60000000  # link.ld's EL_PSRAM_BASE (AN386's default is 0x21000000)
    assert baremetal.link_defs(board) == ["-Wl,--defsym=EL_PSRAM_BASE=0x60000000"]
    # the command needs no build: a context on a scratch path will do
    ctx = BuildContext(board, get_toolchain(board.toolchain), Path("model.gguf"), "q8_0", tmp_path)
    command = baremetal.emulator_command(ctx)
    store = (tmp_path / baremetal.STORE_FILE).resolve()
    assert command[:-1] == ["qemu-system-arm", "-M", "mps2-an500", "-cpu", "cortex-m7", "-semihosting-config",
                            "enable=on,target=native", "-object",
                            f"memory-backend-file,id=store,size={16 << 20},mem-path={store},share=on",
                            "-machine", "memory-backend=store", "-display", "none", "-monitor", "none",
                            "-no-reboot", "-kernel"]


@pytest.mark.parametrize("quant", QUANTS)
def test_memory_layout(builds, quant):
    """Weights in the 4 MiB at 0x0, 32-byte aligned; the arena in RAM at 0x20000000."""
    result = builds(quant)
    elf = result.out_dir / "firmware.elf"
    start = symbol(BOARD, elf, "el_model_start")
    assert start % 32 == 0 and start + result.context.model_path.stat().st_size <= 4 << 20
    arena = symbol(BOARD, elf, "arena")
    assert 0x20000000 <= arena and arena + (3 << 20) <= 0x20400000
    assert result.manifest["memory"] == {"WEIGHTS_REGION": "FLASH", "ARENA_REGION": "RAM", "ARENA_BYTES": "3145728"}


def test_kernels_and_fpu(builds):
    """The manifest names the DSP kernels (el_kernel_ops.h picks them from the compiler's
    macros), the image holds their SMLAD, and it runs f64 instructions: the double-precision
    FPU that -mfpu=fpv5-d16 assumes is there (the greedy text above goes through them, in
    el_sincosf's RoPE tables)."""
    result = builds("q8_0")
    assert result.manifest["kernels"] == "cortex-m-dsp"
    objdump = get_toolchain(get_board(BOARD).toolchain).tool("objdump")
    code = subprocess.run([objdump, "-d", str(result.out_dir / "firmware.elf")], capture_output=True, text=True,
                          check=True).stdout
    assert re.search(r"\bsmlad\b", code)
    sincosf = re.search(r"<el_sincosf>:\n(.*?)\n\n", code, re.DOTALL)
    assert sincosf and ".f64" in sincosf.group(1)


@pytest.fixture
def big_arena_board(tmp_path, monkeypatch):
    """A boards dir holding the shipped board and a copy of it whose 8 MiB arena cannot fit
    its 4 MiB of RAM: the planner puts that arena in PSRAM."""
    require_board(BOARD)
    boards = tmp_path / "boards"
    boards.mkdir()
    text = get_board(BOARD).path.read_text(encoding="utf-8")
    (boards / f"{BOARD}.toml").write_text(text, encoding="utf-8")
    name = "an500-big-arena"
    text = text.replace(f'name = "{BOARD}"', f'name = "{name}"')
    text = re.sub(r'^arena = .*$', 'arena = "8MiB"', text, count=1, flags=re.MULTILINE)
    (boards / f"{name}.toml").write_text(text, encoding="utf-8")
    monkeypatch.setattr(edgellama.boards.catalog, "boards_dir", lambda: boards)
    return name


def test_arena_in_psram_at_0x60000000(big_arena_board, host, tmp_path):
    """The one place AN500 differs from AN386: PSRAM at 0x60000000 holds the arena and the
    greedy text is still the host's (at AN386's 0x21000000 QEMU's AN500 has no memory)."""
    result = builder.build(big_arena_board, None, quant="q8_0", out_dir=tmp_path / "build")
    assert result.manifest["memory"] == {"WEIGHTS_REGION": "FLASH", "ARENA_REGION": "PSRAM",
                                         "ARENA_BYTES": str(8 << 20)}
    arena = symbol(BOARD, result.out_dir / "firmware.elf", "arena")
    assert PSRAM_BASE <= arena and arena + (8 << 20) <= PSRAM_BASE + PSRAM_SIZE
    returncode, out, err = emulator.run(big_arena_board, result.out_dir, ["generate", PROMPT, "--temperature", "0",
                                                                          "--max-tokens", str(N_TOKENS)], timeout=120)
    assert returncode == 0, err
    reply = baremetal.parse_reply(out)
    assert reply.text == host(result.context.model_path)[0]
    assert int(reply.stats["arena"]) == 8 << 20


def test_instructions_per_token(builds):
    rows = []
    for quant in QUANTS:
        r = emulator.instructions_per_token(BOARD, builds(quant).out_dir, PROMPT, n_tokens=33)
        rows.append((quant, r["instructions_per_token"]))
    table = ["", "| board | quant | guest instructions per token |", "|---|---|---:|"]
    table += [f"| {BOARD} | {q} | {n:,.0f} |" for q, n in rows]
    print("\n".join(table))
