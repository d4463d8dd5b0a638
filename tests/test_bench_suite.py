"""`edgellama bench --suite`: every case runs and is reported with its goal and bound.

Speed is the suite's to print, never a test's to assert: this checks that the suite
measures what it says (each case a figure from its own process, bounds from the
bandwidth it measured in the same run), keeps the run for the next one, and compares.
"""

import json

import pytest
from click.testing import CliRunner
from conftest import write_first_layers

from edgellama.cli import main
from edgellama.model.gguf_file import write_gguf
from edgellama.model.loading import load_model
from edgellama.model.synthetic import synthetic_model, synthetic_vocab, write_synthetic
from edgellama.runtime import bench_suite

CASES = ["15M shape Q8_0 decode", "15M shape Q4_0 decode", "15M shape F32 decode", "stories260K shape F32 decode",
         "default model F32 decode", "default model Q8_0 decode", "15M shape Q8_0 prefill (64 tokens)",
         "15M shape Q8_0, 8 sequences", "sampling T=1, top_p=0.9, 32,000 tokens", "greedy (argmax), 32,000 tokens",
         "15M shape Q8_0, n-gram speculation (its greedy text loops)",
         "default model Q8_0, n-gram speculation, a repeated passage",
         "peak RSS, 15M shape Q8_0, 256 tokens", "peak RSS, default model, 256 tokens"]


def test_synthetic_models_have_the_presets_shape():
    model = synthetic_model("15m")
    assert model.config.vocab_size == 32000 and model.config.dim == 288 and model.config.n_layers == 6
    assert sum(t.size for t in model.tensors.values()) == model.config.n_params()
    vocab = synthetic_vocab(300)
    assert len(set(vocab.tokens)) == 300 and vocab.tokens[259:262] == ["\u2581a", "\u2581b", "\u2581c"]


# The draft-model case on a pair that is not the 15M shape: the default model and its
# first two layers (trained pairs take an hour; this checks the case, not the goal).
PAIR_CASE = f"draft model tinystories-850k for tinystories-850k, {bench_suite.DRAFT_TOKENS} drafts a step"


def test_the_suite_runs_every_case_and_keeps_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELLAMA_HOME", str(tmp_path))
    target, draft = tmp_path / "target.gguf", write_first_layers(tmp_path / "draft.gguf", 2)
    write_gguf(load_model(None), target, "q8_0")
    result = CliRunner().invoke(main, ["bench", "--suite", "-r", "1", "--output", "json", "--model", str(target),
                                       "--draft-model", str(draft)])
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert [c["name"] for c in run["cases"]][:2] == CASES[:2]
    assert sorted(c["name"] for c in run["cases"]) == sorted(CASES[:3] + ["15M shape Q8_0 decode, 2 threads"]
                                                            + CASES[3:] + [PAIR_CASE])
    pair = next(c for c in run["cases"] if c["name"] == PAIR_CASE)
    assert pair["goal"] == "the same tokens" and pair["met"], pair  # no 1.3x goal off the 15M shape
    for case in run["cases"]:
        assert case["figure"] > 0, case
        if "speculation" in case["name"] or case["name"] == PAIR_CASE:
            assert "the same tokens" in case["note"] and "drafts accepted" in case["note"]
        if case["bound"] is not None:
            assert case["ratio"] == case["figure"] / case["bound"]
    assert run["bandwidth_gb_s"]["dram"] > 0 and run["machine"]["cores"] >= 1 and run["machine"]["kernels"]
    assert json.loads((tmp_path / "bench-suite.json").read_text()) == run
    table = bench_suite.format_table(run, last=run)
    assert "machine:" in table and "vs last" in table and "+0%" in table
    for name in CASES:
        assert name in table


@pytest.mark.parametrize("args, message", [
    (["--model", "{target}"], "--model and --draft-model together"),
    (["--draft-model", "{target}"], "--model and --draft-model together"),
    (["--model", "{target}", "--draft-model", "{missing}"], "no such draft model file"),
    (["--board", "lm3s6965evb"], "--suite runs on this machine"),
])
def test_the_suite_refuses_a_half_pair_and_a_device(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("EDGELLAMA_HOME", str(tmp_path))
    target = tmp_path / "target.gguf"
    write_gguf(load_model(None), target, "q8_0")
    args = [a.format(target=target, missing=tmp_path / "missing.gguf") for a in args]
    result = CliRunner().invoke(main, ["bench", "--suite", "-r", "1", *args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "bench-suite.json").exists()


def test_a_pair_with_other_vocabularies_is_refused_before_the_rounds(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELLAMA_HOME", str(tmp_path))
    target = write_synthetic(tmp_path / "target.gguf", "tiny", "f32", vocab_size=300)
    draft = write_synthetic(tmp_path / "draft.gguf", "tiny", "f32", vocab_size=400)
    result = CliRunner().invoke(main, ["bench", "--suite", "-r", "1", "--model", str(target),
                                       "--draft-model", str(draft)])
    assert result.exit_code != 0 and "bench suite:" in result.output and "round" not in result.output, result.output
    assert not (tmp_path / "bench-suite.json").exists()


def test_the_draft_goal_belongs_to_the_15m_shape(tmp_path):
    assert bench_suite.is_15m_shape(write_synthetic(tmp_path / "15m.gguf", "15m", "q8_0"))
    assert not bench_suite.is_15m_shape(write_synthetic(tmp_path / "260k.gguf", "260k", "q8_0", vocab_size=32000))
