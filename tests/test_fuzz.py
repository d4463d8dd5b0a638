"""libFuzzer on the C edges a stranger reaches: a model file (the GGUF reader and model
open, then two tokens), text through the tokenizer, bytes through the frame parser, and
bytes as a device's serial input to its serve loop; all under ASan and UBSan. Each runs
for EDGELLAMA_FUZZ_SECONDS (default 60) after replaying every input kept under
tests/fuzz/regressions/ (findings become regression inputs). scripts/fuzz.sh runs them
for hours."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
import harnesses  # noqa: E402

pytestmark = pytest.mark.slow
SECONDS = int(os.environ.get("EDGELLAMA_FUZZ_SECONDS", "60"))


@pytest.mark.parametrize("name", harnesses.HARNESSES)
def test_fuzz(name, tmp_path):
    kept = harnesses.replay(name)
    figures = harnesses.run(name, SECONDS, tmp_path)
    print(f"\n  fuzz_{name}: {figures.get('runs', 0):,} runs in {SECONDS} s "
          f"({figures.get('exec_per_s', 0):,}/s), coverage {figures.get('coverage')}, "
          f"corpus {figures.get('corpus')}, {kept} kept inputs replayed")
    assert figures.get("runs", 0) > 0
