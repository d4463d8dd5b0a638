"""qemu-virt-rv32: 32-bit RISC-V bare metal (RV32IMAC, soft float: the ESP32-C3/C6 and
CH32V class) on `qemu-system-riscv32 -M virt -bios none`.

Built with Debian's riscv64-unknown-elf-gcc, whose rv32imac/ilp32 multilib brings the
soft-float libgcc. Its images give the host's text in F32 and Q8_0 under QEMU (a hart
without F and D, as the image is built; tests/test_baremetal.py, with the other boards).
Here: the board and toolchain files, the multilib, each image an ELF32 RISC-V soft-float
file entered at 0x80000000, times from the CLINT's mtime, the kernels the manifest names
("portable": RV32IMAC has no SIMD), and guest instructions per generated token, printed.
"""

import subprocess

import pytest
from conftest import require_board

import edgellama.boards.toolchains
from edgellama.boards import emulator, planner
from edgellama.boards.catalog import get_board
from edgellama.boards.targets import baremetal
from edgellama.boards.toolchains import get_toolchain, missing_system_packages

pytestmark = pytest.mark.emulated  # boards under QEMU, cross-built programs under qemu-user

BOARD = "qemu-virt-rv32"
QUANTS = ["f32", "q8_0"]
PROMPT = "once upon a time"
EM_RISCV = 243
EF_RISCV_RVC = 0x1
EF_RISCV_FLOAT_ABI = 0x6  # 0: soft float


@pytest.fixture(scope="module")
def builds(board_builds):
    return lambda quant: board_builds(BOARD, quant)


def test_board_and_toolchain_files(monkeypatch):
    """The files say RV32IMAC/ilp32 with the bare-metal toolchain, a 32-bit plan, and the
    toolchain's apt package is among what `edgellama toolchains install --all` (run by
    scripts/setup.sh test) installs on a clean machine."""
    board = get_board(BOARD)
    toolchain = get_toolchain(board.toolchain)
    assert board.arch == "riscv32" and board.os == "baremetal" and planner.POINTER_BYTES[board.arch] == 4
    assert {"-march=rv32imac", "-mabi=ilp32"} <= set(board.cflags)
    assert toolchain.kind == "gnu-baremetal" and toolchain.cc == "riscv64-unknown-elf-gcc"
    assert toolchain.tool("objcopy") == "riscv64-unknown-elf-objcopy"
    assert board.reach.emulator == "qemu-system-riscv32" and board.reach.machine == "virt"
    assert board.reach.emulator_args == ["-bios", "none"] and "qemu-system-misc" in board.reach.apt
    monkeypatch.setattr(edgellama.boards.toolchains.shutil, "which", lambda name: None)
    assert "gcc-riscv64-unknown-elf" in missing_system_packages([board])
    assert "gcc-riscv64-unknown-elf" in missing_system_packages()


def test_multilib_is_rv32imac_soft_float():
    """The board's -march/-mabi pick the rv32imac/ilp32 libgcc (with -march=rv32imac_zicsr
    GCC 12 would fall back to its rv64 default: start.S adds Zicsr by itself)."""
    board = require_board(BOARD)
    cc = get_toolchain(board.toolchain).cc
    flags = [f for f in board.cflags if f.startswith(("-march", "-mabi"))]
    out = subprocess.run([cc, *flags, "-print-multi-directory"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "rv32imac/ilp32"


def symbol(elf, name) -> int:
    nm = get_toolchain(get_board(BOARD).toolchain).tool("nm")
    out = subprocess.run([nm, str(elf)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise AssertionError(f"{name} not in {elf}")


@pytest.mark.parametrize("quant", QUANTS)
def test_the_image_is_an_elf32_soft_float_file_at_0x80000000(builds, quant):
    result = builds(quant)
    elf = result.out_dir / "firmware.elf"
    header = elf.read_bytes()[:52]
    assert header[4] == 1 and int.from_bytes(header[18:20], "little") == EM_RISCV  # ELFCLASS32, EM_RISCV
    flags = int.from_bytes(header[36:40], "little")
    assert flags & EF_RISCV_RVC and flags & EF_RISCV_FLOAT_ABI == 0
    assert symbol(elf, "_start") == 0x80000000 and symbol(elf, "el_model_start") % 32 == 0
    assert baremetal.emulator_command(result.context)[:5] == ["qemu-system-riscv32", "-M", "virt", "-cpu",
                                                              get_board(BOARD).reach.cpu]


def test_the_times_come_from_mtime_read_in_halves(builds):
    """The 64-bit mtime read as hi, lo, hi on a 32-bit hart: a request's times are sane
    (the text itself is checked against the host's in tests/test_baremetal.py)."""
    returncode, output, stderr = emulator.run(BOARD, builds("q8_0").out_dir,
                                              ["generate", PROMPT, "--temperature", "0", "--max-tokens", "8"],
                                              timeout=180)
    assert returncode == 0 and output.endswith("[bye]\n"), stderr
    stats = baremetal.parse_reply(output).stats
    assert 0 < int(stats["ttft_ms"]) <= int(stats["ms"])


def test_manifest_names_the_kernels(builds):
    manifest = builds("q8_0").manifest
    assert manifest["kernels"] == "portable"
    assert manifest["toolchain"]["name"] == "gcc-riscv64-unknown-elf"
    assert "-march=rv32imac" in manifest["flags"]["cflags"]
    assert manifest["memory"]["WEIGHTS_REGION"] == "RAM" and manifest["memory"]["ARENA_REGION"] == "RAM"


def test_instructions_per_token(builds):
    """Printed, not asserted: the cost of a token on a soft-float RV32 core."""
    rows = []
    for quant in QUANTS:
        r = emulator.instructions_per_token(BOARD, builds(quant).out_dir, PROMPT, n_tokens=33)
        rows.append((quant, r["instructions_per_token"]))
    table = ["", "| board (kernels) | quant | guest instructions per token |", "|---|---|---:|"]
    table += [f"| {BOARD} (RV32IMAC soft float, `portable`) | {q} | {n:,.0f} |" for q, n in rows]
    print("\n".join(table))
    assert all(n > 0 for _, n in rows)
