"""The RISC-V vector board: clang-19 cross-compiles edgellama-run with the RVV 1.0
kernels (firmware/core/el_kernels_rvv.c), QEMU user mode runs it, same tokens as the host.

qemu-riscv64-rvv is built in F32, Q8_0 and Q4_0 with its toolchain file (clang-19 with
--target/--gcc-toolchain against the GNU riscv64 sysroot). The static ELF runs under
`qemu-riscv64 -cpu rv64,v=true,vlen=128`, and also at VLEN 256 (the BPI-F3's X60 cores)
and 512: the kernels take every vector length from vsetvl, so the greedy text equals
the host program's at each. The program reports the "rvv" kernels, and a CPU without
the V extension refuses it (SIGILL): the vector code is really what ran. A sampled
generation (temperature, top-p, seed) equals the host's as well. Guest
instructions per generated token are printed and held under half of the scalar
qemu-riscv64 build's (README, "Same tokens everywhere").
"""

import hashlib
import json
import signal
import subprocess

import pytest
from conftest import GREEDY, PROMPT

from edgellama.boards import emulator
from edgellama.boards.catalog import get_board
from edgellama.boards.targets import linux
from edgellama.boards.toolchains import get_toolchain
from edgellama.runtime import build as runtime_build

pytestmark = pytest.mark.emulated  # boards under QEMU, cross-built programs under qemu-user

BOARD = "qemu-riscv64-rvv"
QUANTS = ["f32", "q8_0", "q4_0"]
# scalar qemu-riscv64 (RV64GC) guest instructions per token, from the README's table
SCALAR = {"f32": 11_043_059, "q8_0": 8_757_356, "q4_0": 8_404_105}


@pytest.fixture(scope="module")
def builds(board_builds):
    return lambda quant: board_builds(BOARD, quant)


def test_board_and_toolchain_files():
    board, bpi = get_board(BOARD), get_board("bpi-f3")
    toolchain = get_toolchain(board.toolchain)
    assert toolchain.cc == "clang-19" and "clang-19" in toolchain.apt
    assert toolchain.command == "clang-19 --target=riscv64-linux-gnu --gcc-toolchain=/usr"
    assert "-march=rv64gcv" in board.cflags and board.reach.cpu == "rv64,v=true,vlen=128"
    assert bpi.toolchain == board.toolchain and "-march=rv64gcv" in bpi.cflags
    assert bpi.reach.kind == "ssh" and bpi.arch == "riscv64" and bpi.threads == 8


@pytest.mark.parametrize("quant", QUANTS)
def test_rvv_build_runs_and_matches_host(builds, host_text, quant):
    result = builds(quant)
    board = get_board(BOARD)
    out = result.out_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["board"] == BOARD and manifest["quant"] == quant
    assert manifest["toolchain"]["name"] == board.toolchain and "clang version 19" in manifest["toolchain"]["version"]
    for artifact in manifest["artifacts"]:
        assert artifact["sha256"] == hashlib.sha256((out / artifact["path"]).read_bytes()).hexdigest()

    # static riscv64 ELF (EM_RISCV, 64-bit, RVC and the double-float ABI), built by the
    # toolchain's full command with the board's flags
    program = out / "edgellama-run"
    assert linux.elf_interpreter(program) is None
    header = program.read_bytes()[:64]
    assert header[4] == 2 and int.from_bytes(header[18:20], "little") == 243
    assert int.from_bytes(header[0x30:0x34], "little") & 0x5 == 0x5
    makefile = (out / "src" / "Makefile").read_text()
    assert "CC = clang-19 --target=riscv64-linux-gnu --gcc-toolchain=/usr\n" in makefile
    assert all(flag in makefile for flag in board.cflags)

    # under QEMU with V at VLEN 128 (the board), streamed, equal to the host
    command = emulator.command(BOARD, out, ["generate", PROMPT, *GREEDY])
    assert command[:3] == ["qemu-riscv64", "-cpu", "rv64,v=true,vlen=128"]
    streamed = []
    returncode, stdout, stderr = emulator.run(BOARD, out, ["generate", PROMPT, *GREEDY], timeout=120,
                                              on_output=streamed.append)
    assert returncode == 0, stderr
    assert stdout == host_text(out / "model.gguf") and len(stdout) > len(PROMPT) + 40
    assert "".join(streamed) == stdout

    # the same bits at other vector lengths: VLEN 256 (the BPI-F3's X60) and 512
    args = [str(program), str(out / "model.gguf"), "generate", PROMPT, *GREEDY]
    for vlen in (256, 512):
        run = subprocess.run(["qemu-riscv64", "-cpu", f"rv64,v=true,vlen={vlen}", *args], capture_output=True,
                             text=True, timeout=120, check=False)
        assert run.returncode == 0 and run.stdout == stdout, (vlen, run.stderr)


def test_rvv_sampled_generation_matches_host(builds):
    """Temperature and top-p: the sampler's exp kernel (el_expf on vectors) and the
    draw give the host's tokens for the same seed."""
    out = builds("q8_0").out_dir
    args = ["generate", PROMPT, "--temperature", "0.8", "--top-p", "0.9", "--seed", "3", "--max-tokens", "40"]
    host = subprocess.run([str(runtime_build.host_program()), str(out / "model.gguf"), *args], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    returncode, stdout, stderr = emulator.run(BOARD, out, args, timeout=120)
    assert returncode == 0, stderr
    assert stdout == host and len(stdout) > len(PROMPT) + 20


def test_rvv_kernels_are_what_runs(builds):
    out = builds("q8_0").out_dir
    args = ["bench", "--prompt-tokens", "4", "--gen-tokens", "2", "--repetitions", "1"]
    returncode, stdout, stderr = emulator.run(BOARD, out, args, timeout=120)
    assert returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["kernels"] == "rvv"
    # without the V extension the program stops at its first vector instruction
    run = subprocess.run(["qemu-riscv64", "-cpu", "rv64", str(out / "edgellama-run"), str(out / "model.gguf"),
                          "generate", PROMPT, "--max-tokens", "2"], capture_output=True, timeout=120, check=False)
    assert run.returncode in (-signal.SIGILL, 128 + signal.SIGILL)


def test_rvv_instructions_per_token(builds):
    rows = []
    for quant in QUANTS:
        r = emulator.instructions_per_token(BOARD, builds(quant).out_dir, PROMPT, n_tokens=33)
        rows.append((quant, r["instructions_per_token"]))
    table = ["", "| board | quant | guest instructions per token | scalar qemu-riscv64 |", "|---|---|---:|---:|"]
    table += [f"| {BOARD} | {q} | {n:,.0f} | {SCALAR[q]:,} |" for q, n in rows]
    print("\n".join(table))
    for quant, n in rows:
        if quant in ("f32", "q8_0"):
            assert n <= SCALAR[quant] / 2, (quant, n)
