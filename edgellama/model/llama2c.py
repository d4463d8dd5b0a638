"""llama2.c checkpoints: the legacy v0 file, v1 (float32) and v2 (int8, Q8_0-like groups).

v0:  7 int32 (dim, hidden, layers, heads, kv_heads, vocab, seq_len; vocab < 0 means an
     unshared classifier), then float32 weights grouped by kind across layers, then
     RoPE tables, then the classifier if unshared.
v1/v2: magic "ak42", version, the same 7 ints (vocab always positive), a shared
     classifier flag (and the group size for v2), padded to 256 bytes. v1 stores the
     norms first, then float32 matrices. v2 stores the norms as float32, then each
     matrix as int8 values followed by one float32 scale per group.
RMSNorm epsilon (1e-5) and RoPE base (10000) are not stored; llama2.c hard-codes them.
"""

import struct
from pathlib import Path

import numpy as np

from edgellama.errors import EdgeLlamaError
from edgellama.fileio import atomic_path
from edgellama.model.llama import LlamaConfig, LlamaModel, Vocab

MAGIC = 0x616B3432
HEADER_V1 = 256
LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up")


def _matrix_shapes(cfg: LlamaConfig):
    shapes = cfg.tensor_shapes()
    return {kind: shapes[f"blk.0.{kind}.weight"] for kind in LAYER_MATRICES}


class _Reader:
    def __init__(self, data: bytes, offset: int, where: str):
        self.data, self.offset, self.where = data, offset, where

    def take(self, dtype, shape):
        count = int(np.prod(shape))
        nbytes = count * np.dtype(dtype).itemsize
        if self.offset + nbytes > len(self.data):
            raise EdgeLlamaError(f"{self.where}: truncated: weights end at byte {self.offset + nbytes}, "
                                 f"file has {len(self.data)}")
        arr = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset).reshape(shape)
        self.offset += nbytes
        return arr.astype(np.float32) if dtype == "<f4" else arr

    def f32(self, shape):
        return self.take("<f4", shape)

    def q8(self, shape, group_size):
        q = self.take("i1", shape).astype(np.float32)
        scales = self.f32((q.size // group_size,))
        return (q.reshape(-1, group_size) * scales[:, None]).reshape(shape)


def read_llama2c(path, vocab: Vocab) -> LlamaModel:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EdgeLlamaError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) < 28:
        raise EdgeLlamaError(f"{path}: too short for a llama2.c checkpoint")
    magic, version = struct.unpack_from("<Ii", data, 0)
    if magic == MAGIC:
        if version not in (1, 2):
            raise EdgeLlamaError(f"{path}: unsupported llama2.c version {version} (1 or 2)")
        if len(data) < HEADER_V1:
            raise EdgeLlamaError(f"{path}: truncated: the {HEADER_V1}-byte header is cut at byte {len(data)}")
        dims = struct.unpack_from("<7i", data, 8)
        shared = bool(data[36])
        group_size = struct.unpack_from("<i", data, 37)[0] if version == 2 else 0
        offset = HEADER_V1
    else:
        version, offset, group_size = 0, 28, 0
        dims = struct.unpack_from("<7i", data, 0)
        shared = dims[5] > 0
        dims = dims[:5] + (abs(dims[5]),) + dims[6:]
    dim, hidden, layers, heads, kv_heads, vocab_size, seq_len = dims
    cfg = LlamaConfig(dim, layers, heads, kv_heads, vocab_size, hidden, seq_len, tied_embeddings=shared)
    cfg.validate(str(path))
    if len(vocab) != vocab_size:
        raise EdgeLlamaError(f"{path}: model has {vocab_size} tokens, tokenizer has {len(vocab)}")
    if version == 2 and (group_size <= 0 or any(int(np.prod(s)) % group_size for s in cfg.tensor_shapes().values()
                                                if len(s) == 2)):
        raise EdgeLlamaError(f"{path}: group size {group_size} does not divide every matrix")
    min_bytes = offset + cfg.n_params() * (1 if version == 2 else 4)
    if len(data) < min_bytes:
        raise EdgeLlamaError(f"{path}: truncated: the header promises at least {min_bytes} bytes, file has {len(data)}")
    reader = _Reader(data, offset, str(path))
    tensors = {}
    read = {0: _read_v0, 1: _read_v1, 2: _read_v2}[version]
    read(reader, cfg, tensors, group_size)
    return LlamaModel(cfg, vocab, tensors, path.stem).validate(str(path))


def _read_layers(reader, cfg, tensors, kind, shape, take):
    for i in range(cfg.n_layers):
        tensors[f"blk.{i}.{kind}.weight"] = take(shape)


def _read_v0(reader, cfg, tensors, _group):
    mats = _matrix_shapes(cfg)
    tensors["token_embd.weight"] = reader.f32((cfg.vocab_size, cfg.dim))
    _read_layers(reader, cfg, tensors, "attn_norm", (cfg.dim,), reader.f32)
    for kind in ("attn_q", "attn_k", "attn_v", "attn_output"):
        _read_layers(reader, cfg, tensors, kind, mats[kind], reader.f32)
    _read_layers(reader, cfg, tensors, "ffn_norm", (cfg.dim,), reader.f32)
    for kind in ("ffn_gate", "ffn_down", "ffn_up"):
        _read_layers(reader, cfg, tensors, kind, mats[kind], reader.f32)
    tensors["output_norm.weight"] = reader.f32((cfg.dim,))
    reader.f32((cfg.max_seq_len * cfg.head_dim,))  # RoPE cos and sin tables: recomputed, not stored
    if not cfg.tied_embeddings:
        tensors["output.weight"] = reader.f32((cfg.vocab_size, cfg.dim))


def _read_norms(reader, cfg, tensors):
    _read_layers(reader, cfg, tensors, "attn_norm", (cfg.dim,), reader.f32)
    _read_layers(reader, cfg, tensors, "ffn_norm", (cfg.dim,), reader.f32)
    tensors["output_norm.weight"] = reader.f32((cfg.dim,))


def _read_matrices(reader, cfg, tensors, take):
    mats = _matrix_shapes(cfg)
    tensors["token_embd.weight"] = take((cfg.vocab_size, cfg.dim))
    for kind in LAYER_MATRICES:
        _read_layers(reader, cfg, tensors, kind, mats[kind], take)
    if not cfg.tied_embeddings:
        tensors["output.weight"] = take((cfg.vocab_size, cfg.dim))


def _read_v1(reader, cfg, tensors, _group):
    _read_norms(reader, cfg, tensors)
    _read_matrices(reader, cfg, tensors, reader.f32)


def _read_v2(reader, cfg, tensors, group_size):
    _read_norms(reader, cfg, tensors)
    _read_matrices(reader, cfg, tensors, lambda shape: reader.q8(shape, group_size))


def write_llama2c_v0(model: LlamaModel, path):
    """Write llama2.c's legacy format, which its run.c reads."""
    cfg, t = model.validate().config, model.tensors
    if abs(cfg.norm_eps - 1e-5) > 1e-9 or cfg.rope_theta != 10000.0:
        raise EdgeLlamaError(f"--format llama2c: llama2.c fixes RMSNorm eps at 1e-5 and RoPE base at 10000; this "
                             f"model has {cfg.norm_eps:g} and {cfg.rope_theta:g}, so it would run wrong there")
    vocab_field = cfg.vocab_size if cfg.tied_embeddings else -cfg.vocab_size
    parts = [struct.pack("<7i", cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads,
                         vocab_field, cfg.max_seq_len), t["token_embd.weight"]]

    def layers(kind):
        return [t[f"blk.{i}.{kind}.weight"] for i in range(cfg.n_layers)]

    parts += layers("attn_norm") + layers("attn_q") + layers("attn_k") + layers("attn_v") + layers("attn_output")
    parts += layers("ffn_norm") + layers("ffn_gate") + layers("ffn_down") + layers("ffn_up")
    parts.append(t["output_norm.weight"])
    half = cfg.head_dim // 2
    freqs = 1.0 / (cfg.rope_theta ** (np.arange(0, half, dtype=np.float32) * 2 / cfg.head_dim))
    angles = np.outer(np.arange(cfg.max_seq_len, dtype=np.float32), freqs)
    parts += [np.cos(angles), np.sin(angles)]
    if not cfg.tied_embeddings:
        parts.append(t["output.weight"])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for part in parts:
            f.write(part if isinstance(part, bytes) else np.ascontiguousarray(part, dtype="<f4").tobytes())
