"""llama2.c checkpoints: import (v0, v1, v2), export (v0), and the reference output of run.c.

The v1 and v2 writers below follow llama2.c's export.py (version1_export,
version2_export, quantize_q80) byte for byte, so the reader is checked against the
layout llama2.c really writes, not against our own writer.
"""

import dataclasses
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgellama.errors import EdgeLlamaError
from edgellama.model.gguf_file import read_gguf
from edgellama.model.llama import LlamaModel
from edgellama.model.llama2c import read_llama2c, write_llama2c_v0
from edgellama.model.tokenizer import load_vocab, processor_for

torch = pytest.importorskip("torch")
from edgellama.model.reference import Transformer  # noqa: E402

MAGIC = 0x616B3432
PROMPT = "Once upon a time"
STEPS = 200
LAYER_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up")


# ---------------------------------------------------------------- helpers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def edgellama(*args, cwd=None):
    exe = Path(sys.executable).with_name("edgellama")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from edgellama.cli import main; main()"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def greedy_text(model: LlamaModel) -> str:
    """What llama2.c's run.c prints for `-t 0 -n 200 -i PROMPT`: 200 positions after BOS."""
    sp = processor_for(model.vocab)
    net = Transformer.from_llama(model)
    prompt = [1] + sp.encode(PROMPT)
    out = net.generate(prompt, STEPS - len(prompt) + 1, stop_ids=(1,))
    return sp.decode(out[1:STEPS + 1])


def assert_same_model(a: LlamaModel, b: LlamaModel):
    assert a.config == b.config
    assert a.vocab == b.vocab
    assert sorted(a.tensors) == sorted(b.tensors)
    for name in a.tensors:
        x, y = np.asarray(a.tensors[name]), np.asarray(b.tensors[name])
        assert x.dtype == y.dtype == np.float32, name
        assert np.array_equal(x, y), name


def untied(model: LlamaModel, seed=0) -> LlamaModel:
    rng = np.random.default_rng(seed)
    tensors = dict(model.tensors)
    tensors["output.weight"] = rng.standard_normal(tensors["token_embd.weight"].shape).astype(np.float32) * 0.05
    cfg = dataclasses.replace(model.config, tied_embeddings=False)
    return LlamaModel(cfg, model.vocab, tensors, model.name).validate()


# ---------------------------------------------------------------- llama2.c export.py, v1 and v2

def _header(model: LlamaModel, version: int, group_size=None) -> bytes:
    c = model.config
    head = struct.pack("<Ii", MAGIC, version)
    head += struct.pack("<7i", c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len)
    head += struct.pack("<B", int(c.tied_embeddings))
    if version == 2:
        head += struct.pack("<i", group_size)
    assert len(head) <= 256
    return head + b"\0" * (256 - len(head))


def _per_layer(model, kind):
    return [model.tensors[f"blk.{i}.{kind}.weight"] for i in range(model.config.n_layers)]


def _norms(model):
    return _per_layer(model, "attn_norm") + _per_layer(model, "ffn_norm") + [model.tensors["output_norm.weight"]]


def _matrices(model):
    weights = [model.tensors["token_embd.weight"]]
    for kind in LAYER_KINDS:  # wq, wk, wv, wo, w1, w2, w3
        weights += _per_layer(model, kind)
    if not model.config.tied_embeddings:
        weights.append(model.tensors["output.weight"])
    return weights


def _f32(w) -> bytes:
    return np.ascontiguousarray(w, dtype="<f4").tobytes()


def write_v1(model: LlamaModel, path):
    """llama2.c export.py version1_export: header, norms, then the float32 matrices."""
    Path(path).write_bytes(_header(model, 1) + b"".join(_f32(w) for w in _norms(model) + _matrices(model)))


def quantize_q80(w, group_size):
    """llama2.c export.py quantize_q80, in numpy: scale = maxabs/127, q = round(w/scale)."""
    w = np.asarray(w, dtype=np.float32).reshape(-1, group_size)
    scale = np.abs(w).max(axis=1) / np.float32(127.0)
    q = np.round(w / scale[:, None]).astype(np.int8)
    return q, scale.astype(np.float32)


def write_v2(model: LlamaModel, path, group_size=64):
    """llama2.c export.py version2_export: header with group size, fp32 norms, then per
    matrix its int8 values followed by its float32 scales."""
    parts = [_header(model, 2, group_size)] + [_f32(w) for w in _norms(model)]
    for w in _matrices(model):
        assert w.size % group_size == 0
        q, s = quantize_q80(w, group_size)
        parts += [q.tobytes(), _f32(s)]
    Path(path).write_bytes(b"".join(parts))


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def reference_text(shared_data):
    return (shared_data / "stories260K_greedy200.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def v0_model(shared_data):
    return read_llama2c(shared_data / "stories260K.bin", load_vocab(shared_data / "tok512.bin", 512))


@pytest.fixture(scope="module")
def imported(tmp_path_factory, shared_data):
    """stories260K.bin imported through the CLI, once with each tokenizer file."""
    out = tmp_path_factory.mktemp("imported")
    paths = {}
    for tok in ("tok512.bin", "tok512.model"):
        gguf = out / f"m_{Path(tok).suffix[1:]}.gguf"
        r = edgellama("import", "llama2c", shared_data / "stories260K.bin", "--tokenizer", shared_data / tok,
                      "-o", gguf)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        assert gguf.is_file()
        paths[tok] = gguf
    return paths


# ---------------------------------------------------------------- 1. acceptance: run.c's output

@pytest.mark.parametrize("tok", ["tok512.bin", "tok512.model"])
def test_cli_import_reproduces_run_c_greedy(imported, tok, v0_model, reference_text):
    model = read_gguf(imported[tok]).model
    c = model.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len) == \
        (64, 172, 5, 8, 4, 512, 512)
    assert c.tied_embeddings and "output.weight" not in model.tensors
    assert c.norm_eps == pytest.approx(1e-5) and c.rope_theta == 10000.0
    for name, w in v0_model.tensors.items():  # f32 GGUF keeps every weight bit for bit
        assert np.array_equal(model.tensors[name], w), name
    assert greedy_text(model) == reference_text


# ---------------------------------------------------------------- 2. the two tokenizer files

def test_tokenizer_bin_equals_sentencepiece_model(shared_data):
    a = load_vocab(shared_data / "tok512.bin", 512)
    b = load_vocab(shared_data / "tok512.model")
    assert len(a) == len(b) == 512
    assert a.tokens == b.tokens
    assert a.scores == b.scores
    assert a.types == b.types
    assert (a.bos_id, a.eos_id, a.unk_id) == (b.bos_id, b.eos_id, b.unk_id) == (1, 2, 0)


# ---------------------------------------------------------------- 3. v1 and v2

@pytest.mark.parametrize("tied", [True, False], ids=["shared", "unshared"])
def test_v1_imports_bit_exactly(v0_model, tmp_path, tied):
    model = v0_model if tied else untied(v0_model)
    path = tmp_path / "v1.bin"
    write_v1(model, path)
    assert path.stat().st_size == 256 + 4 * model.config.n_params()
    back = read_llama2c(path, model.vocab)
    assert back.config.tied_embeddings == tied
    assert_same_model(back, model)


def _check_q8(original: LlamaModel, back: LlamaModel, group_size):
    assert back.config == original.config
    assert sorted(back.tensors) == sorted(original.tensors)
    for name, w in original.tensors.items():
        got = back.tensors[name]
        assert got.shape == w.shape and got.dtype == np.float32, name
        if w.ndim == 1:  # norms stay float32
            assert np.array_equal(got, w), name
            continue
        q, scale = quantize_q80(w, group_size)
        flat = got.reshape(-1, group_size)
        # dequantized exactly as runq.c does: q * s[i / GS] in float32
        assert np.array_equal(flat, q.astype(np.float32) * scale[:, None]), name
        err = np.abs(flat - w.reshape(-1, group_size))
        assert np.all(err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-9), name


def test_v2_imports_within_q8_error(v0_model, tmp_path, reference_text):
    path = tmp_path / "v2.bin"
    write_v2(v0_model, path, 64)
    back = read_llama2c(path, v0_model.vocab)
    _check_q8(v0_model, back, 64)
    text = greedy_text(back)
    assert text.startswith(PROMPT) and len(text) > len(PROMPT) + 50
    print(f"\nv2 (Q8_0, group 64) greedy text equals run.c's v0 reference: {text == reference_text}")


def test_v2_unshared_classifier(v0_model, tmp_path):
    model = untied(v0_model)
    path = tmp_path / "v2u.bin"
    write_v2(model, path, 32)
    back = read_llama2c(path, model.vocab)
    assert not back.config.tied_embeddings
    _check_q8(model, back, 32)


@pytest.mark.parametrize("group_size", [0, -64, 512])  # 172 * 64 is not a multiple of 512
def test_v2_bad_group_size(v0_model, tmp_path, group_size):
    path = tmp_path / "v2bad.bin"
    write_v2(v0_model, path, 64)
    data = bytearray(path.read_bytes())
    data[37:41] = struct.pack("<i", group_size)
    path.write_bytes(bytes(data))
    with pytest.raises(EdgeLlamaError, match=rf"v2bad\.bin: group size {group_size} does not divide"):
        read_llama2c(path, v0_model.vocab)


# ---------------------------------------------------------------- 4. export round trips

def test_cli_export_llama2c_round_trip(imported, shared_data, tmp_path):
    gguf = read_gguf(imported["tok512.bin"]).model
    back_path = tmp_path / "back.bin"
    r = edgellama("export", imported["tok512.bin"], "--format", "llama2c", "-o", back_path)
    assert r.returncode == 0, r.stderr
    back = read_llama2c(back_path, gguf.vocab)
    # GGUF stores the epsilon as float32; llama2.c does not store it and uses 1e-5
    assert back.config == dataclasses.replace(gguf.config, norm_eps=1e-5)
    assert gguf.config.norm_eps == pytest.approx(1e-5)
    assert sorted(back.tensors) == sorted(gguf.tensors)
    for name, w in gguf.tensors.items():
        assert np.array_equal(back.tensors[name], w), name
    # Same layout as llama2.c's legacy_export: every byte but the (unread) RoPE tables agrees.
    original, ours = (shared_data / "stories260K.bin").read_bytes(), back_path.read_bytes()
    assert len(ours) == len(original)
    c = gguf.config
    rope_start = 28 + 4 * c.n_params()  # the RoPE tables follow the final norm...
    rope_end = rope_start + 4 * c.max_seq_len * c.head_dim
    assert rope_end == len(ours)  # ...and end the file when the classifier is shared
    assert ours[:rope_start] == original[:rope_start]
    np.testing.assert_allclose(np.frombuffer(ours[rope_start:], "<f4"), np.frombuffer(original[rope_start:], "<f4"),
                               atol=2e-6)


def test_unshared_classifier_v0_round_trip(v0_model, tmp_path):
    model = untied(v0_model, seed=1)
    path = tmp_path / "untied.bin"
    write_llama2c_v0(model, path)
    c = model.config
    header = struct.unpack_from("<7i", path.read_bytes(), 0)
    assert header == (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, -c.vocab_size, c.max_seq_len)
    assert path.stat().st_size == 28 + 4 * (c.n_params() + c.max_seq_len * c.head_dim)
    back = read_llama2c(path, model.vocab)
    assert not back.config.tied_embeddings
    assert_same_model(back, model)
    # and the tied model keeps a positive vocab size
    write_llama2c_v0(v0_model, tmp_path / "tied.bin")
    assert struct.unpack_from("<7i", (tmp_path / "tied.bin").read_bytes(), 0)[5] == c.vocab_size
    assert_same_model(read_llama2c(tmp_path / "tied.bin", v0_model.vocab), v0_model)


# ---------------------------------------------------------------- 5. bad input

def test_cli_truncated_checkpoint(shared_data, tmp_path):
    bad = tmp_path / "trunc.bin"
    bad.write_bytes((shared_data / "stories260K.bin").read_bytes()[:5000])
    out = tmp_path / "out.gguf"
    r = edgellama("import", "llama2c", bad, "--tokenizer", shared_data / "tok512.bin", "-o", out)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:") and str(bad) in lines[0] and "truncated" in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trunc.bin"]  # no temporary file left either


def test_unknown_version(v0_model, tmp_path):
    path = tmp_path / "v7.bin"
    write_v1(v0_model, path)
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<i", 7)
    path.write_bytes(bytes(data))
    with pytest.raises(EdgeLlamaError, match=r"v7\.bin: unsupported llama2\.c version 7"):
        read_llama2c(path, v0_model.vocab)


@pytest.mark.parametrize("size", [8, 30, 40, 200])
def test_truncated_v1_v2_header(v0_model, tmp_path, size):
    full = tmp_path / "full.bin"
    write_v2(v0_model, full, 64)
    path = tmp_path / "short.bin"
    path.write_bytes(full.read_bytes()[:size])
    with pytest.raises(EdgeLlamaError, match=r"short\.bin: .*(short|truncated)"):
        read_llama2c(path, v0_model.vocab)


def test_truncated_v1_and_v2_weights(v0_model, tmp_path):
    for writer in (write_v1, write_v2):
        full = tmp_path / "full.bin"
        writer(v0_model, full)
        path = tmp_path / f"cut_{writer.__name__}.bin"
        path.write_bytes(full.read_bytes()[:-1])
        with pytest.raises(EdgeLlamaError, match=rf"{path.name}: truncated"):
            read_llama2c(path, v0_model.vocab)


def test_tokenizer_size_mismatch(shared_data):
    tok = shared_data / "tok512.bin"
    with pytest.raises(EdgeLlamaError, match=r"tok512\.bin: .*truncated"):  # asks for more tokens than stored
        load_vocab(tok, 600)
    with pytest.raises(EdgeLlamaError, match=r"tok512\.bin: holds more than the model's 256 tokens"):
        load_vocab(tok, 256)
    with pytest.raises(EdgeLlamaError, match=r"tok512\.bin: .*needs the model's vocabulary size"):
        load_vocab(tok)
    vocab = load_vocab(tok, 512)
    small = dataclasses.replace(vocab, tokens=vocab.tokens[:300], scores=vocab.scores[:300], types=vocab.types[:300])
    with pytest.raises(EdgeLlamaError, match=r"stories260K\.bin: model has 512 tokens, tokenizer has 300"):
        read_llama2c(shared_data / "stories260K.bin", small)


def test_cli_tokenizer_for_another_model(shared_data, tmp_path, v0_model):
    """A tokenizer.bin bigger than the model's vocabulary is refused, not silently cut."""
    c = v0_model.config
    bad = tmp_path / "vocab300.bin"
    header = struct.pack("<7i", c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, 300, c.max_seq_len)
    bad.write_bytes(header + bytes(4096))  # the weights do not matter: the tokenizer is refused first
    out = tmp_path / "out.gguf"
    tok = shared_data / "tok512.bin"
    r = edgellama("import", "llama2c", bad, "--tokenizer", tok, "-o", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert str(tok) in lines[0] and "300 tokens" in lines[0], r.stderr
    assert not out.exists()
