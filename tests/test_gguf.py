"""GGUF export/import, quantization error bounds and the row-length rule."""

import hashlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

from edgellama.model import quant
from edgellama.model.checkpoint import llama_from_checkpoint
from edgellama.model.gguf_file import read_gguf, write_gguf
from edgellama.model.llama2c import read_llama2c
from edgellama.model.modelinfo import describe, describe_dict
from edgellama.model.tokenizer import load_vocab


@pytest.fixture(scope="module")
def stories260k(shared_data):
    return read_llama2c(shared_data / "stories260K.bin", load_vocab(shared_data / "tok512.model"))


def test_checkpoint_round_trip_is_exact_in_f32(tiny_checkpoint, tmp_path):
    model = llama_from_checkpoint(tiny_checkpoint)
    write_gguf(model, tmp_path / "a.gguf", "f32")
    back = read_gguf(tmp_path / "a.gguf").model
    assert back.config.to_dict() == pytest.approx(model.config.to_dict())
    assert back.vocab.tokens == model.vocab.tokens and back.vocab.types == model.vocab.types
    for name, array in model.tensors.items():
        assert np.array_equal(back.tensors[name], array), name
    # Writing is deterministic: the same model gives the same bytes.
    write_gguf(back, tmp_path / "b.gguf", "f32")
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.gguf", "b.gguf")]
    assert digest[0] == digest[1]


def test_file_uses_llama_cpp_keys_and_names(stories260k, tmp_path):
    write_gguf(stories260k, tmp_path / "m.gguf", "q8_0")
    reader = GGUFReader(tmp_path / "m.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.t")}
    assert fields["general.architecture"] == "llama"
    assert (fields["llama.embedding_length"], fields["llama.block_count"], fields["llama.feed_forward_length"]) \
        == (64, 5, 172)
    assert (fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]) == (8, 4)
    assert fields["llama.context_length"] == 512 and fields["llama.rope.dimension_count"] == 8
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert fields["tokenizer.ggml.model"] == "llama" and fields["tokenizer.ggml.bos_token_id"] == 1
    assert fields["general.file_type"] == 7  # MOSTLY_Q8_0
    names = [t.name for t in reader.tensors]
    assert names[:3] == ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight"]
    assert "output.weight" not in names and names[-1] == "output_norm.weight"
    assert reader.fields["tokenizer.ggml.tokens"].contents()[259] == "\u2581t"


def _blocks(w):
    return w.reshape(-1, 32)


def test_q8_0_error_is_within_half_a_step(stories260k):
    for name, w in stories260k.tensors.items():
        if w.ndim != 2 or w.shape[1] % 32:
            continue
        back = quant.roundtrip(w, T.Q8_0)
        step = np.abs(_blocks(w)).max(axis=1) / 127
        step16 = step.astype(np.float16).astype(np.float32)
        bound = step / 2 + 127 * np.abs(step - step16) + 1e-7
        assert (np.abs(_blocks(back - w)).max(axis=1) <= bound).all(), name


def test_q4_0_error_is_within_one_step(stories260k):
    for name, w in stories260k.tensors.items():
        if w.ndim != 2 or w.shape[1] % 32:
            continue
        back = quant.roundtrip(w, T.Q4_0)
        step = np.abs(_blocks(w)).max(axis=1) / 8
        step16 = step.astype(np.float16).astype(np.float32)
        bound = step + 8 * np.abs(step - step16) + 1e-7
        assert (np.abs(_blocks(back - w)).max(axis=1) <= bound).all(), name


def test_rows_not_multiple_of_32_stay_f32_and_inspect_says_so(stories260k, tmp_path):
    for q in ("q8_0", "q4_0"):
        path = tmp_path / f"{q}.gguf"
        write_gguf(stories260k, path, q)
        g = read_gguf(path)
        types = {e.name: e.qtype for e in g.entries}
        assert types["blk.0.ffn_down.weight"] == T.F32          # rows of 172
        assert types["blk.0.ffn_gate.weight"] == T[q.upper()]   # rows of 64
        assert types["blk.0.attn_norm.weight"] == T.F32
        assert types["token_embd.weight"] == T.Q8_0              # Q4_0 keeps it at Q8_0 too
        notes = {t["name"]: t["note"] for t in describe_dict(path)["tensors"]}
        assert notes["blk.0.ffn_down.weight"] == "row of 172 is not a multiple of 32"
        assert "not a multiple of 32" in describe(path)
        # The kept tensor is exact; the quantized ones are close.
        assert np.array_equal(g.model.tensors["blk.0.ffn_down.weight"], stories260k.tensors["blk.0.ffn_down.weight"])


def test_f16_round_trip(stories260k, tmp_path):
    write_gguf(stories260k, tmp_path / "h.gguf", "f16")
    g = read_gguf(tmp_path / "h.gguf")
    w = stories260k.tensors["blk.1.attn_q.weight"]
    assert np.array_equal(g.model.tensors["blk.1.attn_q.weight"], w.astype(np.float16).astype(np.float32))
    assert {e.qtype for e in g.entries if len(e.shape) == 2} == {T.F16}


def test_inspect_reports_sizes(stories260k, tmp_path):
    write_gguf(stories260k, tmp_path / "m.gguf", "q8_0")
    d = describe_dict(tmp_path / "m.gguf")
    assert d["parameters"] == 260032 and d["file_bytes"] == (tmp_path / "m.gguf").stat().st_size
    assert d["weight_bytes"] == sum(t["bytes"] for t in d["tensors"]) < d["file_bytes"]
    q = next(t for t in d["tensors"] if t["name"] == "blk.0.attn_q.weight")
    assert q["type"] == "Q8_0" and q["bytes"] == 64 * 64 // 32 * 34
