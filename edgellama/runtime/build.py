"""Compile firmware/ sources with a C compiler, cached by the hash of what goes in.

The same flags every target gets: C99 with warnings as errors, no FMA contraction
and no fast-math, so float results are bit-identical across targets.
"""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from ..data import cache_root
from ..errors import EdgeLlamaError
from ..fileio import atomic_path
from ..resources import share_dir

C_FLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off", "-fno-fast-math"]


def firmware_dir() -> Path:
    return share_dir("firmware")


def core_sources() -> list:
    return sorted((firmware_dir() / "core").glob("*.c"))


def host_compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise EdgeLlamaError("no C compiler found: install one with `sudo apt-get install gcc` (or set CC)")
    return cc


def _build(sources, name: str, link_flags: list, suffix: str, extra_flags, include_dirs) -> Path:
    """Compile `sources` into the cache, named by the hash of the compiler, flags,
    headers and sources, so it is rebuilt exactly when one of them changes."""
    cc = host_compiler()
    sources = [Path(s) for s in sources]
    includes = [firmware_dir() / "core", firmware_dir() / "apps" / "common", *map(Path, include_dirs)]
    flags = [*C_FLAGS, *link_flags, *extra_flags, *(f"-I{d}" for d in includes)]
    digest = hashlib.sha256(" ".join([cc, *flags]).encode())
    for header_dir in includes:
        for header in sorted(Path(header_dir).glob("*.h")):
            digest.update(header.name.encode() + header.read_bytes())
    for source in sources:
        digest.update(source.name.encode() + source.read_bytes())
    out = cache_root() / "build" / f"{name}-{digest.hexdigest()[:16]}{suffix}"
    if out.is_file():
        return out
    with atomic_path(out) as tmp:
        result = subprocess.run([cc, *flags, "-o", str(tmp), *map(str, sources)], capture_output=True, text=True)
        if result.returncode != 0:
            raise EdgeLlamaError(f"building {name} with {cc} failed:\n{result.stderr.strip()}")
        os.chmod(tmp, 0o755)
    return out


def build_shared_library(sources, name: str, extra_flags=(), include_dirs=()) -> Path:
    """A shared library (for ctypes) from `sources`; returns its path in the cache."""
    return _build(sources, name, ["-fPIC", "-shared"], ".so", extra_flags, include_dirs)


def build_program(sources, name: str, extra_flags=(), include_dirs=()) -> Path:
    """An executable from `sources` with the core's flags; returns its path in the cache."""
    return _build(sources, name, [], "", extra_flags, include_dirs)


def posix_program_sources() -> list:
    """The POSIX program: every core source, the protocol (firmware/apps/common) and
    firmware/apps/posix/main.c."""
    return [*core_sources(), firmware_dir() / "apps" / "common" / "el_protocol.c",
            firmware_dir() / "apps" / "posix" / "main.c"]


def host_program() -> Path:
    """The path of edgellama-run built for this host (built on first use)."""
    return build_program(posix_program_sources(), "edgellama-run")
