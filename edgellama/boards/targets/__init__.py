"""Targets: how a board's program is emitted, compiled and run. One module per OS kind.

Every target module (linux.py, baremetal.py, platformio.py) exposes four functions
of a BuildContext:

    emit(ctx) -> list[Path]          write the standalone source tree under ctx.src_dir
                                     (runtime sources copied from firmware/, the app's main,
                                     a Makefile or project file that builds with the board's
                                     compiler and flags); returns the files written
    compile(ctx) -> list[Path]       build what emit wrote (running the emitted Makefile, so
                                     `build` and `export-c` cannot drift); returns the
                                     artifacts (program or firmware image), all under ctx.out_dir
    run_command(ctx, args) -> list   the command line that runs the artifact on the board's
                                     emulator with the program's arguments `args`
                                     (e.g. ["generate", "once upon a time", "--max-tokens", "8"])
    build_command(ctx) -> str        the shell command a user runs to build an `export-c` tree

The builder (edgellama/boards/builder.py) writes the model to ctx.model_path before emit, and
the manifest after compile. Everything a target writes goes under ctx.out_dir, and every
path inside the emitted files is relative to it: the builder builds in a temporary
directory and renames it into place. A compiler failure is raised as EdgeLlamaError
carrying the compiler's message (run_checked below does that).
"""

import importlib
import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgellama.boards.catalog import Board
from edgellama.boards.toolchains import Toolchain
from edgellama.errors import EdgeLlamaError
from edgellama.runtime.engine_options import EngineOptions


@dataclass
class BuildContext:
    board: Board
    toolchain: Toolchain
    model_path: Path            # the GGUF inside out_dir (already quantized)
    quant: str | None           # f32, q8_0, q4_0; None = the model as given
    out_dir: Path               # the build directory (a temporary one while building)
    options: EngineOptions = field(default_factory=EngineOptions)
    # the engine options the program must open the runtime with (the planner's
    # Plan.engine_options(), recorded in manifest.json under "engine"); a field of 0 = the
    # program's default. Each target passes every field its program reads.
    manifest: dict = field(default_factory=dict)
    # what the target wants recorded in manifest.json; emit sets at least
    # manifest["flags"] = {"cflags": [...], "ldflags": [...]} (the exact flags it builds with)

    @property
    def src_dir(self) -> Path:
        return self.out_dir / "src"


TARGET_MODULES = {"linux": "linux", "baremetal": "baremetal", "platformio": "platformio"}


def for_board(board: Board):
    """The target module for the board's OS kind."""
    name = TARGET_MODULES.get(board.os)
    if name is None or importlib.util.find_spec(f"{__name__}.{name}") is None:
        raise EdgeLlamaError(f"board {board.name}: no build target for os {board.os!r} yet")
    return importlib.import_module(f"{__name__}.{name}")


def copy_sources(sources, dest: Path) -> list:
    """Copy files into dest (flat); returns the copied paths."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for source in map(Path, sources):
        target = dest / source.name
        shutil.copyfile(source, target)
        written.append(target)
    return written


def copy_core(dest: Path) -> list:
    """firmware/core/*.c and *.h copied into dest (the runtime every target compiles)."""
    from edgellama.runtime import build as runtime_build
    core = runtime_build.firmware_dir() / "core"
    return copy_sources(sorted([*core.glob("*.c"), *core.glob("*.h")]), dest)


def kernels_for(cc, cflags) -> str | None:
    """The kernels (el_kernel_ops.h's EL_KERNELS_NAME: "neon-dotprod", "cortex-m-dsp", ...)
    that `cc` with these flags compiles: the board's CPU flags pick them. None when the
    compiler cannot be run here."""
    from edgellama.runtime import build as runtime_build
    core = runtime_build.firmware_dir() / "core"
    cmd = [*([cc] if isinstance(cc, str) else cc), *cflags, f"-I{core}", "-E", "-P", "-x", "c", "-"]
    try:
        result = subprocess.run(cmd, input='#include "el_kernel_ops.h"\nEL_KERNELS_NAME\n', capture_output=True,
                                text=True, check=False)
    except OSError:
        return None
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines or not lines[-1].startswith('"'):
        return None
    return lines[-1].strip('"')


def run_checked(cmd: list, what: str, cwd=None, timeout=None) -> subprocess.CompletedProcess:
    """Run a compiler or make; on failure raise EdgeLlamaError whose first line names the
    first error and whose rest is the compiler's own message."""
    try:
        result = subprocess.run(list(map(str, cmd)), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                check=False)
    except FileNotFoundError:
        raise EdgeLlamaError(f"{what}: {cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise EdgeLlamaError(f"{what}: {cmd[0]} did not finish in {timeout} s") from None
    if result.returncode != 0:
        output = result.stderr + "\n" + result.stdout
        raise EdgeLlamaError(f"{what} failed: {compiler_message(output)}")
    return result


def compiler_message(output: str, max_lines: int = 20) -> str:
    """The compiler's first error line first, then the output's first lines."""
    lines = [line for line in output.splitlines() if line.strip()]
    patterns = (r":\d+(:\d+)?: (fatal )?error: ", r"\berror\b", r"\*\*\*")
    first = next((line for pattern in patterns for line in lines if re.search(pattern, line, re.IGNORECASE)),
                 lines[0] if lines else "no output")
    rest = [line for line in lines if line != first][:max_lines]
    return first.strip() + ("\n" + "\n".join(rest) if rest else "")
