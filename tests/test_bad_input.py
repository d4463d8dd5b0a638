"""Bad input: one line naming the file and the problem, non-zero exit, no traceback,
and nothing half-written."""

import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from edgellama.model import quant
from edgellama.model.gguf_file import write_gguf
from edgellama.model.llama2c import read_llama2c
from edgellama.model.tokenizer import load_vocab


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgellama", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert str(needle) in lines[0], lines[0]


@pytest.fixture(scope="module")
def good_gguf(tmp_path_factory, shared_data):
    path = tmp_path_factory.mktemp("good") / "m.gguf"
    write_gguf(read_llama2c(shared_data / "stories260K.bin", load_vocab(shared_data / "tok512.model")), path, "q8_0")
    return path


def test_missing_checkpoint(tmp_path):
    r = run_cli("export", tmp_path / "missing.pt", "-o", tmp_path / "out.gguf")
    assert_one_line_error(r, "missing.pt", "No such file")
    assert not (tmp_path / "out.gguf").exists()


def test_corrupt_checkpoint_leaves_previous_output_untouched(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous release")
    assert_one_line_error(run_cli("export", bad, "-o", out), "bad.pt")
    assert out.read_bytes() == b"previous release"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "out.gguf"]  # no temporary left behind


def test_unknown_preset(tmp_path, small_corpus, tiny_tokenizer):
    r = run_cli("train", "--data", small_corpus, "--tokenizer", tiny_tokenizer, "--preset", "70b", "-o", tmp_path / "c.pt")
    assert_one_line_error(r, "--preset", "70b", "tiny")
    assert not (tmp_path / "c.pt").exists()


def test_corpus_too_small(tmp_path, tiny_tokenizer):
    corpus = tmp_path / "few.txt"
    corpus.write_text("a line.\nanother line.\n")
    r = run_cli("train", "--data", corpus, "--tokenizer", tiny_tokenizer, "-o", tmp_path / "c.pt")
    assert_one_line_error(r, "few.txt", "too small for sequence length 64")


def test_missing_corpus(tmp_path, tiny_tokenizer):
    r = run_cli("train", "--data", tmp_path / "nope.txt", "--tokenizer", tiny_tokenizer, "-o", tmp_path / "c.pt")
    assert_one_line_error(r, "nope.txt")


def test_gguf_with_wrong_magic(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(100))
    assert_one_line_error(run_cli("inspect", bad), "bad.gguf", "not a GGUF file")
    assert_one_line_error(run_cli("export", bad, "-o", tmp_path / "o.gguf"), "bad.gguf")
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("keep", [20, 2000, -100])
def test_truncated_gguf(tmp_path, good_gguf, keep):
    data = good_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:keep])
    r = run_cli("inspect", cut)
    assert_one_line_error(r, "cut.gguf")
    assert "truncated" in r.stderr or "corrupt" in r.stderr


def test_unsupported_tensor_type(tmp_path, shared_data, monkeypatch):
    choose = quant.choose_type

    def force_q5_0(name, shape, quant_name):
        choice = choose(name, shape, quant_name)
        if name == "blk.0.attn_q.weight":
            choice.qtype = T.Q5_0
        return choice

    monkeypatch.setattr(quant, "choose_type", force_q5_0)
    model = read_llama2c(shared_data / "stories260K.bin", load_vocab(shared_data / "tok512.model"))
    write_gguf(model, tmp_path / "q5.gguf", "q8_0")
    r = run_cli("inspect", tmp_path / "q5.gguf")
    assert_one_line_error(r, "q5.gguf", "blk.0.attn_q.weight", "unsupported type Q5_0")


def test_eval_and_generate_refuse_bad_models(tmp_path, small_corpus):
    assert_one_line_error(run_cli("eval", tmp_path / "none.gguf", "--data", small_corpus), "none.gguf")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_one_line_error(run_cli("generate", "hi", "--model", text), "notes.txt", "not a GGUF file")


def test_bad_sampling_value():
    assert_one_line_error(run_cli("generate", "hi", "--top-p", "1.5"), "--top-p")


def test_model_file_with_wrong_shape_is_refused(tmp_path, good_gguf):
    from edgellama.errors import EdgeLlamaError
    from edgellama.model.gguf_file import read_gguf
    model = read_gguf(good_gguf).model
    model.tensors["blk.0.attn_k.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(EdgeLlamaError, match="blk.0.attn_k.weight has shape"):
        write_gguf(model, tmp_path / "w.gguf")
    assert not (tmp_path / "w.gguf").exists()
