"""`edgellama bench --suite`: every case runs and is reported with its goal and bound.

Speed is the suite's to print, never a test's to assert: this checks that the suite
measures what it says (each case a figure from its own process, bounds from the
bandwidth it measured in the same run), keeps the run for the next one, and compares.
"""

import json

from click.testing import CliRunner

from edgellama.cli import main
from edgellama.model.synthetic import synthetic_model, synthetic_vocab
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


def test_the_suite_runs_every_case_and_keeps_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELLAMA_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["bench", "--suite", "-r", "1", "--output", "json"])
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert [c["name"] for c in run["cases"]][:2] == CASES[:2]
    assert sorted(c["name"] for c in run["cases"]) == sorted(CASES[:3] + ["15M shape Q8_0 decode, 2 threads"]
                                                            + CASES[3:])
    for case in run["cases"]:
        assert case["figure"] > 0, case
        if "speculation" in case["name"]:
            assert "the same tokens" in case["note"] and "drafts accepted" in case["note"]
        if case["bound"] is not None:
            assert case["ratio"] == case["figure"] / case["bound"]
    assert run["bandwidth_gb_s"]["dram"] > 0 and run["machine"]["cores"] >= 1 and run["machine"]["kernels"]
    assert json.loads((tmp_path / "bench-suite.json").read_text()) == run
    table = bench_suite.format_table(run, last=run)
    assert "machine:" in table and "vs last" in table and "+0%" in table
    for name in CASES:
        assert name in table
