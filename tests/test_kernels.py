"""Every target's kernels against the portable ones, bit for bit (tests/c/kernels_probe.c).

The probe runs each el_kernel_* that the build selects (el_kernel_ops.h) and the
portable el_portable_* on the same inputs and exits non-zero when any output differs in
any bit. It is built here for the host (portable forced, and with this machine's own
features, as the host library is) and cross-compiled for each vector unit the runtime
has kernels for, then run under QEMU user mode emulating a CPU that has that unit.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from edgellama.runtime.build import C_FLAGS, firmware_dir, host_compiler

pytestmark = pytest.mark.emulated  # boards under QEMU, cross-built programs under qemu-user

CORE = firmware_dir() / "core"
PROBE = Path(__file__).resolve().parent / "c" / "kernels_probe.c"

# name: (compiler command, flags, emulator command or None, the kernels the build must pick)
# the CPU flags (/proc/cpuinfo) a target run natively needs
NATIVE_NEEDS = {"x86-64-avx2": {"avx2", "f16c"}, "x86-64-avx2-vnni": {"avx2", "f16c", "avx_vnni"}}

TARGETS = {
    "host-portable": ([host_compiler()], ["-DEL_PORTABLE_KERNELS"], None, "portable"),
    "host-native": ([host_compiler()], ["-march=native"], None, None),
    # x86-64 both ways, whichever the host's own build picks: run natively where the CPU
    # has the instructions (QEMU 7.2 has no AVX-VNNI), skipped elsewhere
    "x86-64-avx2": ([host_compiler()], ["-mavx2", "-mf16c"], None, "avx2"),
    "x86-64-avx2-vnni": ([host_compiler()], ["-mavx2", "-mf16c", "-mavxvnni"], None, "avx2-vnni"),
    "aarch64-cortex-a72": (["aarch64-linux-gnu-gcc"], ["-mcpu=cortex-a72", "-static"],
                           ["qemu-aarch64", "-cpu", "cortex-a72"], "neon"),
    "aarch64-cortex-a76": (["aarch64-linux-gnu-gcc"], ["-mcpu=cortex-a76", "-static"],
                           ["qemu-aarch64", "-cpu", "max"], "neon-dotprod"),
    "armhf-cortex-a7-neon": (["arm-linux-gnueabihf-gcc"], ["-mcpu=cortex-a7", "-mfpu=neon-vfpv4", "-static"],
                             ["qemu-arm", "-cpu", "cortex-a7"], "neon"),
    "armv7-thumb-dsp": (["arm-linux-gnueabihf-gcc"], ["-mcpu=cortex-a7", "-mthumb", "-mfpu=vfpv4-d16", "-static"],
                        ["qemu-arm", "-cpu", "cortex-a7"], "cortex-m-dsp"),
    "riscv64-rvv-vlen128": (["clang-19", "--target=riscv64-linux-gnu", "--gcc-toolchain=/usr"],
                            ["-march=rv64gcv", "-static"], ["qemu-riscv64", "-cpu", "rv64,v=true,vlen=128"], "rvv"),
    "riscv64-rvv-vlen256": (["clang-19", "--target=riscv64-linux-gnu", "--gcc-toolchain=/usr"],
                            ["-march=rv64gcv", "-static"], ["qemu-riscv64", "-cpu", "rv64,v=true,vlen=256"], "rvv"),
    "riscv64-scalar": (["riscv64-linux-gnu-gcc"], ["-march=rv64gc", "-static"], ["qemu-riscv64"], "portable"),
}


def cpu_flags() -> set:
    """This machine's CPU flags as Linux lists them (empty where there is no such list)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@pytest.mark.parametrize("target", list(TARGETS))
def test_kernels_equal_the_portable_ones_bit_for_bit(target, tmp_path):
    cc, flags, emulator, expected = TARGETS[target]
    for tool in [cc[0], *(emulator[:1] if emulator else [])]:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh test installs it)")
    missing = NATIVE_NEEDS.get(target, set()) - cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(sorted(missing))}")
    program = tmp_path / "kernels_probe"
    sources = [PROBE, *sorted(CORE.glob("*.c"))]
    build = subprocess.run([*cc, *C_FLAGS, *flags, f"-I{CORE}", "-o", str(program), *map(str, sources)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([*(emulator or []), str(program)], capture_output=True, text=True, timeout=600)
    print(run.stdout)
    lines = run.stdout.splitlines()
    assert lines and lines[0].startswith("kernels ")
    if expected is not None:
        assert lines[0] == f"kernels {expected}"
    assert run.returncode == 0 and lines[-1] == "mismatches 0", run.stdout
