"""Compile firmware/ sources with a C compiler, cached by the hash of what goes in.

The same flags every target gets: C99 with warnings as errors, no FMA contraction
and no fast-math, so float results are bit-identical across targets. Built for this
host, the runtime may use this machine's own vector unit (`-march=native`, which picks
the AVX2 or NEON kernels of el_kernel_ops.h); EDGELLAMA_KERNELS=portable builds the
portable kernels instead (the same bits, slower).
"""

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgellama.errors import EdgeLlamaError
from edgellama.fileio import atomic_path
from edgellama.model.data import cache_root
from edgellama.resources import share_dir

C_FLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off", "-fno-fast-math"]
PORTABLE_FLAGS = ["-DEL_PORTABLE_KERNELS"]


def firmware_dir() -> Path:
    return share_dir("firmware")


def core_sources() -> list:
    return sorted((firmware_dir() / "core").glob("*.c"))


def host_compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise EdgeLlamaError("no C compiler found: install one with `sudo apt-get install gcc` (or set CC)")
    return cc


@functools.lru_cache(maxsize=None)
def _native_target(cc: str) -> tuple:
    """(-march=native, what it means on this machine) when the compiler takes it, else ().
    The meaning goes into the cache key, so a cache shared between machines never hands
    one machine a library built for another's instructions. The compiler must also build
    a file with it under -Werror: clang 19 warns of an "invalid feature combination" for
    what it detects on some Xeons (AVX10.1), and the core's flags make that an error."""
    probe = subprocess.run([cc, "-march=native", "-###", "-E", "-x", "c", os.devnull], capture_output=True, text=True)
    if probe.returncode != 0:
        return ()
    clean = subprocess.run([cc, "-march=native", "-Werror", "-fsyntax-only", "-x", "c", "-"], input="int x;\n",
                           capture_output=True, text=True)
    if clean.returncode != 0:
        return ()
    return ("-march=native", probe.stderr.strip().splitlines()[-1])


def host_flags(cc: str | None = None) -> list:
    """Flags for code that runs on this host, built by `cc` (default: host_compiler()):
    its own CPU's features as that compiler knows them, or the portable
    kernels when EDGELLAMA_KERNELS=portable; with EDGELLAMA_SANITIZE=1 every library and
    program (the host library, edgellama-run, the test probes) is built under ASan and
    UBSan (a process that loads one needs the ASan runtime preloaded: tests/test_sanitizers.py)."""
    sanitize = list(SANITIZE_FLAGS) if os.environ.get("EDGELLAMA_SANITIZE", "") == "1" else []
    if os.environ.get("EDGELLAMA_KERNELS", "") == "portable":
        return [*PORTABLE_FLAGS, *sanitize]
    native = _native_target(cc or host_compiler())
    return [*([native[0]] if native else []), *sanitize]


# The same sources and flags under AddressSanitizer and UndefinedBehaviorSanitizer (any
# report ends the program), and with libFuzzer driving a harness (clang only).
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
FUZZ_FLAGS = ("-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")


def clang_compiler() -> str | None:
    """clang, or Debian's versioned clang-19 (which the RVV toolchain installs)."""
    return shutil.which("clang") or shutil.which("clang-19")


def _build(sources, name: str, link_flags: list, suffix: str, extra_flags, include_dirs, cc: str | None = None,
           flag_files=()) -> Path:
    """Compile `sources` into the cache, named by the hash of the compiler, flags,
    headers, sources and `flag_files` (files a flag names), so it is rebuilt exactly
    when one of them changes."""
    cc = cc or host_compiler()
    sources = [Path(s) for s in sources]
    includes = [firmware_dir() / "core", firmware_dir() / "apps" / "common", *map(Path, include_dirs)]
    flags = [*C_FLAGS, *host_flags(cc), *link_flags, *extra_flags, *(f"-I{d}" for d in includes)]
    digest = hashlib.sha256(" ".join([cc, *flags, *_native_target(cc)[1:]]).encode())
    for header_dir in includes:
        for header in sorted(Path(header_dir).glob("*.h")):
            digest.update(header.name.encode() + header.read_bytes())
    for source in [*sources, *map(Path, flag_files)]:
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
    return _build(sources, name, ["-fPIC", "-shared", "-pthread"], ".so", extra_flags, include_dirs)


def build_program(sources, name: str, extra_flags=(), include_dirs=()) -> Path:
    """An executable from `sources` with the core's flags; returns its path in the cache."""
    return _build(sources, name, ["-pthread"], "", extra_flags, include_dirs)


def build_fuzzer(harness: Path, name: str, defines=(), include_dirs=(), coverage_ignore: Path | None = None
                 ) -> Path:
    """A libFuzzer program: the core, the protocol and `harness` (which defines
    LLVMFuzzerTestOneInput) with the core's flags and the sanitizers, built by clang;
    the sources `coverage_ignore` lists (clang's ignorelist format) are not instrumented
    for coverage, only for the sanitizers."""
    cc = clang_compiler()
    if cc is None:
        raise EdgeLlamaError("fuzzing needs clang: `edgellama toolchains install clang-19-riscv64-linux-gnu` "
                             "or apt-get install clang-19 libclang-rt-19-dev")
    ignore = [f"-fsanitize-coverage-ignorelist={coverage_ignore}"] if coverage_ignore else []
    return _build([*core_sources(), *protocol_sources(), Path(harness)], name, ["-pthread"],
                  "", [*FUZZ_FLAGS, *ignore, *defines], include_dirs, cc=cc,
                  flag_files=[coverage_ignore] if coverage_ignore else [])


def thread_pool_source() -> Path:
    """The POSIX thread pool behind the core's parallel hook (firmware/apps/common)."""
    return firmware_dir() / "apps" / "common" / "el_thread_pool.c"


def runtime_library_sources() -> list:
    """The host library Python binds to: the core and the thread pool."""
    return [*core_sources(), thread_pool_source()]


# The framed protocol and the bench prompt its BENCH builds (and the POSIX `bench` too):
# every program that serves carries all of them (firmware/apps/common).
PROTOCOL_FILES = ("el_protocol.c", "el_protocol.h", "el_bench_prompt.c", "el_bench_prompt.h", "el_updater.c",
                  "el_updater.h", "el_sha256.c", "el_sha256.h")


def protocol_files() -> list:
    """PROTOCOL_FILES' paths, headers included (the exported trees copy them all)."""
    return [firmware_dir() / "apps" / "common" / name for name in PROTOCOL_FILES]


def protocol_sources() -> list:
    """The .c files of PROTOCOL_FILES: what a program that links the protocol compiles."""
    return [path for path in protocol_files() if path.suffix == ".c"]


def posix_program_sources() -> list:
    """The POSIX program: every core source, the protocol, the bench prompt and the
    thread pool (firmware/apps/common) and firmware/apps/posix/main.c."""
    return [*core_sources(), *protocol_sources(), thread_pool_source(), firmware_dir() / "apps" / "posix" / "main.c"]


@functools.lru_cache(maxsize=None)
def _links_statically(cc: str) -> bool:
    """Whether `cc` links a threaded C program statically here (glibc's libc.a is in
    Debian's libc6-dev; some systems have none, macOS has no -static)."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = subprocess.run([cc, "-static", "-pthread", "-x", "c", "-", "-o", str(Path(tmp) / "probe"), "-lm"],
                               input="int main(void) { return 0; }\n", capture_output=True, text=True)
    return probe.returncode == 0


def host_program() -> Path:
    """The path of edgellama-run built for this host (built on first use). Linked
    statically where the C library allows, as the Linux boards' program is: no dynamic
    loader or shared C library in its memory (the default model's peak RSS 5.7 -> 4.9
    MiB); dynamically elsewhere, and under the sanitizers, which need it."""
    static = os.environ.get("EDGELLAMA_SANITIZE", "") != "1" and _links_statically(host_compiler())
    return build_program(posix_program_sources(), "edgellama-run", extra_flags=["-static"] if static else [])


def sanitized_program() -> Path:
    """edgellama-run with the same sources and flags under the sanitizers, for tests that
    want any memory error or undefined behaviour to end the run."""
    return build_program(posix_program_sources(), "edgellama-run-sanitized", extra_flags=SANITIZE_FLAGS)
