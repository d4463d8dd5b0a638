"""The C runtime under AddressSanitizer and UndefinedBehaviorSanitizer: the tests that
drive it (the host library through ctypes, edgellama-run, the C probes) run again in a
child pytest with EDGELLAMA_SANITIZE=1, which builds every library and program from the
same sources and flags plus the sanitizers (edgellama.runtime.build.host_flags); any
report ends the process, and so fails the run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
# The modules whose tests reach C; the selection leaves out QEMU and the slow ones.
MODULES = ["test_llm_api.py", "test_c_sampler.py", "test_c_tokenizer.py", "test_c_gguf.py", "test_posix_program.py",
           "test_chat_context.py", "test_bit_exact.py", "test_protocol.py", "test_forks.py", "test_beam_search.py",
           "test_structured_outputs.py", "test_speculative.py", "test_draft_model.py"]


def runtime_library(name: str) -> str:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_c_runtime_under_asan_and_ubsan(tmp_path):
    env = dict(os.environ, EDGELLAMA_SANITIZE="1", EDGELLAMA_CACHE=str(tmp_path / "cache"),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1",
               LD_PRELOAD=f"{runtime_library('libasan.so')}:{runtime_library('libubsan.so')}")
    # clang's build of the program would bring clang's ASan runtime beside the preloaded gcc one
    skip = ["--deselect", "tests/test_posix_program.py::test_builds_with_clang"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                             "not slow and not emulated", *skip, *(str(REPO / "tests" / m) for m in MODULES)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"\n  under ASan+UBSan: {summary}")
    assert result.returncode == 0, (result.stdout[-4000:] + result.stderr[-4000:])
    assert "passed" in summary and "failed" not in summary and "error" not in summary
