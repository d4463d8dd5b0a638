"""mps2-an505: the Cortex-M33 (the RP2350's core type) bare metal under qemu-system-arm.

The port (firmware/ports/mps2-an505) stays in the Secure state the core resets in and
uses the Secure aliases of the AN505's memory: code and weights in SSRAM1 at 0x10000000,
data, arena and stack in SSRAM2+3 at 0x38000000, the CMSDK UART0 at 0x50200000. Its
images give the host's text in F32 and Q8_0 (tests/test_baremetal.py, with the other
boards); here: where they are linked, GCC's cortex-m33 DSP extension picking the
cortex-m-dsp kernels (their SMLAD is in the image), and guest instructions per generated
token, printed for both quantizations.
"""

import subprocess

import pytest
from conftest import require_board

from edgellama.boards import emulator
from edgellama.boards.catalog import get_board
from edgellama.boards.targets import kernels_for
from edgellama.boards.toolchains import get_toolchain

pytestmark = pytest.mark.emulated  # boards under QEMU, cross-built programs under qemu-user

BOARD = "mps2-an505"
QUANTS = ["f32", "q8_0"]       # F32's 3.4 MB of weights fit the 4 MiB of SSRAM1 too
PROMPT = "once upon a time"
FLASH = (0x10000000, 4 << 20)  # SSRAM1, Secure alias
RAM = (0x38000000, 4 << 20)    # SSRAM2 + SSRAM3, Secure alias


@pytest.fixture(scope="module")
def builds(board_builds):
    require_board(BOARD)
    return lambda quant: board_builds(BOARD, quant)


def symbols(elf) -> dict:
    nm = get_toolchain(get_board(BOARD).toolchain).tool("nm")
    out = subprocess.run([nm, str(elf)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in map(str.split, out.splitlines()) if len(parts) == 3}


def inside(address, size, region) -> bool:
    start, length = region
    return start <= address and address + size <= start + length


def test_image_is_linked_at_the_secure_aliases(builds):
    result = builds("f32")
    syms = symbols(result.out_dir / "firmware.elf")
    assert syms["vectors"] == FLASH[0]  # the IoTKit's initial Secure VTOR
    model_bytes = result.context.model_path.stat().st_size
    assert syms["el_model_start"] % 32 == 0 and inside(syms["el_model_start"], model_bytes, FLASH)
    assert inside(syms["arena"], 3 << 20, RAM)
    assert inside(syms["__stack_limit"], 64 << 10, RAM) and syms["__stack_top"] == syms["__stack_limit"] + (64 << 10)
    assert result.manifest["memory"] == {"WEIGHTS_REGION": "FLASH", "ARENA_REGION": "RAM", "ARENA_BYTES": "3145728"}


def test_kernels_are_cortex_m_dsp(builds):
    board = get_board(BOARD)
    toolchain = get_toolchain(board.toolchain)
    assert kernels_for(toolchain.cc, board.cflags) == "cortex-m-dsp"  # -mcpu=cortex-m33 defines __ARM_FEATURE_DSP
    result = builds("q8_0")
    assert result.manifest["kernels"] == "cortex-m-dsp"
    objdump = toolchain.tool("objdump")
    listing = subprocess.run([objdump, "-d", str(result.out_dir / "firmware.elf")], capture_output=True, text=True,
                             check=True).stdout
    assert "\tsmlad\t" in listing and "\tsxtb16\t" in listing


@pytest.mark.parametrize("quant", QUANTS)
def test_instructions_per_token(builds, quant):
    """Printed, not held to a bound: the M33's cost per token next to the other boards'."""
    result = builds(quant)
    counts = emulator.instructions_per_token(BOARD, result.out_dir, PROMPT, n_tokens=33)
    assert counts["instructions_n"] > counts["instructions_1"] > 0
    print(f"\n{BOARD} {quant}: {counts['instructions_per_token']:,.0f} guest instructions per token "
          f"({counts['instructions_1']:,} for 1 token, {counts['instructions_n']:,} for 33)")
