"""The C core's GGUF reader and model loader (firmware/core/el_gguf.c, el_model.c).

Driven through tests/c/gguf_probe.c: as a shared library over ctypes for the checks
of what is loaded and what is refused, and as a sanitizer-built program for the
truncation and mutation fuzzing, so that a read past the end of a buffer is an error
even when it would not crash.
"""

import copy
import ctypes
import dataclasses
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from edgellama.model.gguf_file import write_gguf
from edgellama.model.llama import LlamaConfig, LlamaModel
from edgellama.model.llama2c import read_llama2c
from edgellama.model.tokenizer import load_vocab
from edgellama.runtime import build as runtime_build
from edgellama.runtime.build import C_FLAGS, build_shared_library, firmware_dir, host_compiler

PROBE_SOURCE = Path(__file__).resolve().parent / "c" / "gguf_probe.c"
CORE = firmware_dir() / "core"
CORE_SOURCES = [CORE / "el_base.c", CORE / "el_gguf.c", CORE / "el_model.c"]
SOURCES = [*CORE_SOURCES, PROBE_SOURCE]

OK, ERR_ARGUMENT, ERR_FORMAT, ERR_UNSUPPORTED, ERR_NO_MEMORY, ERR_CAPACITY = range(6)
F32, F16, Q4_0, Q5_0, Q8_0 = 0, 1, 2, 6, 8
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
CONFIG_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "kv_dim", "hidden_dim", "vocab_size",
                 "context_length", "tied")
LAYER_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
ARENA = 8 << 20


# ---------------------------------------------------------------- the probe library

@dataclasses.dataclass
class Loaded:
    status: int
    message: str
    config: dict
    eps: float
    theta: float


class Probe:
    def __init__(self, path):
        c = ctypes
        lib = c.CDLL(str(path))
        lib.probe_load.argtypes = [c.c_void_p, c.c_size_t, c.c_size_t, c.POINTER(c.c_int), c.POINTER(c.c_float),
                                   c.c_char_p, c.c_size_t]
        lib.probe_arena_high_water.restype = c.c_size_t
        lib.probe_piece.argtypes = [c.c_int, c.c_char_p, c.c_size_t]
        lib.probe_score.argtypes = [c.c_int]
        lib.probe_score.restype = c.c_float
        lib.probe_token_type.argtypes = [c.c_int]
        lib.probe_special.argtypes = [c.POINTER(c.c_int)]
        lib.probe_text.argtypes = [c.c_int, c.c_char_p, c.c_size_t]
        lib.probe_weight.argtypes = [c.c_int, c.c_int, c.POINTER(c.c_longlong)]
        self.lib = lib
        self.buffer = None  # the loaded bytes, kept alive: the model points into them
        self.message = c.create_string_buffer(256)

    def load(self, data: bytes, arena: int = ARENA, shift: int = 0) -> Loaded:
        """Load a copy of `data` placed `shift` bytes into a fresh (malloc-aligned) buffer."""
        self.buffer = (ctypes.c_ubyte * (len(data) + shift + 1))()
        ctypes.memmove(ctypes.addressof(self.buffer) + shift, data, len(data))
        return self.load_at(ctypes.addressof(self.buffer) + shift, len(data), arena)

    def load_at(self, address: int, size: int, arena: int = ARENA) -> Loaded:
        config, floats = (ctypes.c_int * 10)(), (ctypes.c_float * 2)()
        status = self.lib.probe_load(address, size, arena, config, floats, self.message, 256)
        return Loaded(status, self.message.value.decode(), dict(zip(CONFIG_FIELDS, config)), floats[0], floats[1])

    def piece(self, token: int) -> bytes:
        out = ctypes.create_string_buffer(256)
        n = self.lib.probe_piece(token, out, 256)
        return out.raw[:n]

    def text(self, which: int) -> str:
        out = ctypes.create_string_buffer(4096)
        n = self.lib.probe_text(which, out, 4096)
        return out.raw[:n].decode()

    def special(self):
        ids = (ctypes.c_int * 3)()
        self.lib.probe_special(ids)
        return tuple(ids)

    def weight(self, layer: int, kind: int):
        """(type, rows, cols, offset of the data in the file)."""
        out = (ctypes.c_longlong * 4)()
        assert self.lib.probe_weight(layer, kind, out) == 0
        return tuple(out)


@pytest.fixture(scope="module")
def probe():
    return Probe(build_shared_library(SOURCES, "gguf_probe"))


# ---------------------------------------------------------------- a GGUF builder with every knob

@dataclasses.dataclass
class Parts:
    kvs: list       # [key, value type, value]; arrays: (element type, items); raw bytes for odd types
    tensors: list   # [name, ggml type, ne, data bytes] (+ an offset to force one)

    def set_kv(self, key, vtype, value):
        for kv in self.kvs:
            if kv[0] == key:
                kv[1:] = [vtype, value]
                return self
        self.kvs.append([key, vtype, value])
        return self

    def drop_kv(self, key):
        self.kvs = [kv for kv in self.kvs if kv[0] != key]
        return self

    def set_tensor(self, name, ttype, ne, data):
        for t in self.tensors:
            if t[0] == name:
                t[1:] = [ttype, tuple(ne), data]
                return self
        self.tensors.append([name, ttype, tuple(ne), data])
        return self

    def drop_tensor(self, name):
        self.tensors = [t for t in self.tensors if t[0] != name]
        return self


SCALAR_FORMATS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i", FLOAT32: "<f",
                  BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}


def encode_string(s) -> bytes:
    raw = s.encode() if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(raw)) + raw


def encode_value(vtype, value) -> bytes:
    if isinstance(value, (bytes, bytearray)) and vtype != STRING:
        return bytes(value)
    if vtype == STRING:
        return encode_string(value)
    if vtype == ARRAY:
        elem_type, items = value
        return struct.pack("<IQ", elem_type, len(items)) + b"".join(encode_value(elem_type, v) for v in items)
    return struct.pack(SCALAR_FORMATS[vtype], value)


def build(parts: Parts, version=3, alignment=32, n_kv=None, n_tensors=None) -> bytes:
    """GGUF bytes laid out as GGUFWriter lays them out (each tensor padded to `alignment`)."""
    def pad(n):
        return -n % alignment

    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(parts.tensors) if n_tensors is None else n_tensors,
                                          len(parts.kvs) if n_kv is None else n_kv))
    for key, vtype, value in parts.kvs:
        out += encode_string(key) + struct.pack("<I", vtype) + encode_value(vtype, value)
    offset = 0
    for name, ttype, ne, data, *forced in parts.tensors:
        out += encode_string(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, ttype,
                                                 forced[0] if forced else offset)
        offset += len(data) + pad(len(data))
    out += bytes(pad(len(out)))
    for _, _, _, data, *_ in parts.tensors:
        out += data + bytes(pad(len(data)))
    return bytes(out)


def read_parts(path) -> Parts:
    reader = GGUFReader(path)
    kvs = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        types = [int(t) for t in field.types]
        kvs.append([key, types[0], (types[1], field.contents()) if types[0] == ARRAY else field.contents()])
    tensors = [[t.name, int(t.tensor_type), tuple(int(n) for n in t.shape), t.data.tobytes()] for t in reader.tensors]
    return Parts(kvs, tensors)


# ---------------------------------------------------------------- models and files

@pytest.fixture(scope="module")
def vocab(shared_data):
    return load_vocab(shared_data / "tok512.model")


@pytest.fixture(scope="module")
def stories(shared_data, vocab):
    return read_llama2c(shared_data / "stories260K.bin", vocab)


@pytest.fixture(scope="module")
def tiny_path(vocab, tmp_path_factory):
    """A small random model (about 30 kB as Q4_0) for the tests that load many variants."""
    cfg = LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=len(vocab), hidden_dim=64,
                      max_seq_len=64)
    rng = np.random.default_rng(0)
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in cfg.tensor_shapes().items()}
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_gguf(LlamaModel(cfg, vocab, tensors, "tiny"), path, "q4_0")
    return path


@pytest.fixture(scope="module")
def tiny_parts(tiny_path):
    return read_parts(tiny_path)


def parts_of(tiny_parts) -> Parts:
    return copy.deepcopy(tiny_parts)


STORIES_CONFIG = {"dim": 64, "n_layers": 5, "n_heads": 8, "n_kv_heads": 4, "head_dim": 8, "kv_dim": 32,
                  "hidden_dim": 172, "vocab_size": 512, "context_length": 512, "tied": 1}


# ---------------------------------------------------------------- what loads

@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0", "q4_0"])
def test_loads_our_own_files(probe, stories, vocab, tmp_path, quant):
    path = tmp_path / f"stories260K-{quant}.gguf"
    write_gguf(stories, path, quant)
    got = probe.load(path.read_bytes())
    assert (got.status, got.message) == (OK, "")
    assert got.config == STORIES_CONFIG
    assert got.eps == pytest.approx(1e-5) and got.theta == 10000.0
    assert [probe.piece(i) for i in (0, 1, 2, 3, 259, 300, 511)] \
        == [vocab.tokens[i].encode() for i in (0, 1, 2, 3, 259, 300, 511)]
    assert [probe.lib.probe_token_type(i) for i in range(len(vocab))] == list(vocab.types)
    assert np.array_equal([probe.lib.probe_score(i) for i in range(len(vocab))], np.float32(vocab.scores))
    assert probe.special() == (1, 2, 0)
    assert probe.text(0) == "stories260K" and probe.text(1) == ""
    # Every weight is where the gguf package's reader finds it, with its type and shape.
    tensors = {t.name: t for t in GGUFReader(path).tensors}

    def expect(name):
        t = tensors[name]
        return (int(t.tensor_type), int(t.shape[1]), int(t.shape[0]), int(t.data_offset))

    assert probe.weight(-1, 0) == expect("token_embd.weight") == probe.weight(-1, 1)
    assert probe.weight(-1, 2)[3] == tensors["output_norm.weight"].data_offset
    for layer in range(5):
        for kind, name in enumerate(LAYER_KINDS):
            assert probe.weight(layer, kind) == expect(f"blk.{layer}.{name}.weight")
        assert probe.weight(layer, 7)[3] == tensors[f"blk.{layer}.attn_norm.weight"].data_offset
        assert probe.weight(layer, 8)[3] == tensors[f"blk.{layer}.ffn_norm.weight"].data_offset


def test_untied_output_is_its_own_matrix(probe, stories, tmp_path):
    cfg = dataclasses.replace(stories.config, tied_embeddings=False)
    rng = np.random.default_rng(1)
    tensors = dict(stories.tensors, **{"output.weight": rng.standard_normal((512, 64)).astype(np.float32)})
    path = tmp_path / "untied.gguf"
    write_gguf(LlamaModel(cfg, stories.vocab, tensors, "untied"), path, "q8_0")
    got = probe.load(path.read_bytes())
    assert got.status == OK and got.config == dict(STORIES_CONFIG, tied=0)
    offset = {t.name: int(t.data_offset) for t in GGUFReader(path).tensors}["output.weight"]
    assert probe.weight(-1, 1) == (Q8_0, 512, 64, offset) != probe.weight(-1, 0)


def test_builder_reproduces_the_writer(tiny_path, tiny_parts):
    """The variants below are built by `build`; it must agree with GGUFWriter byte for byte."""
    assert build(tiny_parts) == tiny_path.read_bytes()


def test_accepted_variants(probe, tiny_parts):
    def load(parts, **kw):
        got = probe.load(build(parts, **kw))
        assert (got.status, got.message) == (OK, "")
        return got

    assert load(parts_of(tiny_parts), version=2).config["dim"] == 32
    # Integers of any width and sign are read when the value fits; float64 for floats.
    for vtype in (UINT8, INT16, INT32, UINT64, INT64):
        assert load(parts_of(tiny_parts).set_kv("llama.block_count", vtype, 1)).config["n_layers"] == 1
    assert load(parts_of(tiny_parts).set_kv("llama.attention.layer_norm_rms_epsilon", FLOAT64, 1e-6)).eps \
        == pytest.approx(1e-6)
    # Optional keys fall back to their defaults.
    parts = parts_of(tiny_parts)
    for key in ("llama.rope.freq_base", "llama.rope.dimension_count",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                "general.name"):
        parts.drop_kv(key)
    got = load(parts)
    assert (got.theta, probe.special(), probe.text(0)) == (10000.0, (1, 2, 0), "")
    load(parts_of(tiny_parts).set_kv("tokenizer.ggml.bos_token_id", UINT32, 7))
    assert probe.special() == (7, 2, 0)
    # An array of arrays is skipped; a larger alignment is honoured; a chat template is read.
    nested = (ARRAY, [(INT32, [1, 2, 3]), (STRING, ["a", "bc"])])
    load(parts_of(tiny_parts).set_kv("test.nested", ARRAY, nested))
    load(parts_of(tiny_parts).set_kv("general.alignment", UINT32, 64), alignment=64)
    load(parts_of(tiny_parts).set_kv("tokenizer.chat_template", STRING, "{{ messages }}"))
    assert probe.text(1) == "{{ messages }}"


def test_arena_size_is_exact(probe, tiny_path):
    data = tiny_path.read_bytes()
    assert probe.load(data).status == OK
    need = probe.lib.probe_arena_high_water()
    assert 0 < need < 64 << 10
    assert probe.load(data, arena=need).status == OK
    for arena in (need - 1, 1000, 0):
        got = probe.load(data, arena=arena)
        assert got.status == ERR_NO_MEMORY and "arena is too small" in got.message


def test_misaligned_buffer_is_refused(probe, tiny_path):
    got = probe.load(tiny_path.read_bytes(), shift=2)
    assert got.status == ERR_ARGUMENT and "misaligned" in got.message and "output_norm" in got.message


def test_float_data_misaligned_in_the_file_is_refused(probe, tiny_parts):
    """With general.alignment 1 the F32 norms can land at any offset; only 4-byte ones load."""
    results = []
    for pad in range(4):
        parts = parts_of(tiny_parts).set_kv("general.alignment", UINT32, 1).set_kv("test.pad", STRING, "x" * pad)
        results.append(probe.load(build(parts, alignment=1)))
    assert sorted(r.status for r in results) == [OK, ERR_FORMAT, ERR_FORMAT, ERR_FORMAT]
    assert all("not 4-byte aligned in the file" in r.message for r in results if r.status)


# ---------------------------------------------------------------- what is refused

def patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt):]


def tokens_count_offset(data: bytes) -> int:
    key = b"tokenizer.ggml.tokens"
    return data.index(key) + len(key) + 4 + 4  # after the key: value type, element type, then the count


def q_bytes(ne, block):
    return bytes(ne[0] * ne[1] // 32 * block)


REQUIRED_KEYS = ("general.architecture", "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
                 "llama.attention.head_count", "llama.attention.layer_norm_rms_epsilon", "llama.context_length",
                 "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")

def without_key(key):
    return lambda p, b: build(p.drop_kv(key))


# name -> (make bytes from the tiny model's parts and bytes, status, words the message must hold)
REJECTED = {
    "empty": (lambda p, b: b"", ERR_FORMAT, ["not a GGUF"]),
    "wrong magic": (lambda p, b: b"GGUX" + b[4:], ERR_FORMAT, ["not a GGUF"]),
    "version 1": (lambda p, b: build(p, version=1), ERR_UNSUPPORTED, ["version 1 ", "2 and 3"]),
    "version 4": (lambda p, b: build(p, version=4), ERR_UNSUPPORTED, ["version 4 "]),
    "big-endian": (lambda p, b: build(p, version=3 << 24), ERR_UNSUPPORTED, ["big-endian"]),
    "header only": (lambda p, b: b[:24], ERR_FORMAT, ["cannot fit"]),
    "no keys, no tensors": (lambda p, b: b"GGUF" + struct.pack("<IQQ", 3, 0, 0), ERR_FORMAT,
                            ["missing metadata key general.architecture"]),
    "huge key count": (lambda p, b: build(p, n_kv=2**63), ERR_FORMAT, ["9223372036854775808 keys", "cannot fit"]),
    "huge tensor count": (lambda p, b: build(p, n_tensors=2**64 - 1), ERR_FORMAT, ["cannot fit"]),
    "huge key length": (lambda p, b: patch(b, 24, "<Q", 2**62), ERR_FORMAT, ["truncated", "key name"]),
    "huge array count": (lambda p, b: patch(b, tokens_count_offset(b), "<Q", 2**61), ERR_FORMAT,
                         ["truncated", "tokenizer.ggml.tokens"]),
    "array count one too many": (lambda p, b: patch(b, tokens_count_offset(b), "<Q", 513), ERR_FORMAT,
                                 ["truncated"]),  # the rest of the file no longer parses
    "unknown value type": (lambda p, b: build(p.set_kv("test.odd", 13, b"\0" * 8)), ERR_FORMAT,
                           ["test.odd", "unknown value type 13"]),
    "unknown array type": (lambda p, b: build(p.set_kv("test.odd", ARRAY, (200, []))), ERR_FORMAT,
                           ["test.odd", "unknown value type 200"]),
    "arrays three deep": (lambda p, b: build(p.set_kv("test.deep", ARRAY, (ARRAY, [(ARRAY, [(UINT8, [1])])]))),
                          ERR_UNSUPPORTED, ["test.deep", "nests arrays"]),
    "duplicate key": (lambda p, b: build(Parts(p.kvs + [["general.name", STRING, "again"]], p.tensors)),
                      ERR_FORMAT, ["general.name", "twice"]),
    "duplicate tensor": (lambda p, b: build(Parts(p.kvs, p.tensors + [p.tensors[2]])), ERR_FORMAT,
                         ["blk.0.attn_q.weight", "twice"]),
    "Q5_0 tensor": (lambda p, b: build(p.set_tensor("blk.0.attn_q.weight", Q5_0, (32, 32), q_bytes((32, 32), 22))),
                    ERR_UNSUPPORTED, ["tensor blk.0.attn_q.weight", "Q5_0 (6)", "F32, F16, Q4_0, Q8_0"]),
    "unknown tensor type": (lambda p, b: build(p.set_tensor("blk.0.attn_v.weight", 99, (32, 16), b"")),
                            ERR_UNSUPPORTED, ["blk.0.attn_v.weight", "unknown (99)"]),
    "five dimensions": (lambda p, b: build(p.set_tensor("output_norm.weight", F32, (32, 1, 1, 1, 1), bytes(128))),
                        ERR_FORMAT, ["output_norm.weight", "5 dimensions"]),
    "zero dimension": (lambda p, b: build(p.set_tensor("output_norm.weight", F32, (32, 0), b"")), ERR_FORMAT,
                       ["output_norm.weight", "zero dimension"]),
    "element count overflow": (lambda p, b: build(p.set_tensor("output_norm.weight", F32, (2**32, 2**32), b"")),
                               ERR_FORMAT, ["output_norm.weight", "too many elements"]),
    "quantized row not whole blocks": (lambda p, b: build(p.set_tensor("blk.0.attn_q.weight", Q4_0, (16, 64),
                                                                       q_bytes((32, 32), 18))),
                                       ERR_FORMAT, ["blk.0.attn_q.weight", "rows of 16"]),
    "tensor past the end": (lambda p, b: b[:-64], ERR_FORMAT, ["output_norm.weight", "past the end"]),
    "tensor offset past the end": (lambda p, b: build(Parts(p.kvs, p.tensors[:-1] + [p.tensors[-1] + [2**63]])),
                                   ERR_FORMAT, ["output_norm.weight", "past the end"]),
    "misaligned tensor offset": (lambda p, b: build(p.set_kv("general.alignment", UINT32, 64)), ERR_FORMAT,
                                 ["not a multiple of the alignment 64"]),
    "alignment not a power of two": (lambda p, b: build(p.set_kv("general.alignment", UINT32, 48)), ERR_FORMAT,
                                     ["general.alignment 48"]),
    "alignment zero": (lambda p, b: build(p.set_kv("general.alignment", UINT32, 0)), ERR_FORMAT,
                       ["general.alignment 0"]),
    "alignment not u32": (lambda p, b: build(p.set_kv("general.alignment", UINT64, 32)), ERR_FORMAT,
                          ["general.alignment", "uint64"]),
    "wrong architecture": (lambda p, b: build(p.set_kv("general.architecture", STRING, "gpt2")), ERR_UNSUPPORTED,
                           ["\"gpt2\"", "llama"]),
    "architecture not a string": (lambda p, b: build(p.set_kv("general.architecture", UINT32, 1)), ERR_FORMAT,
                                  ["general.architecture", "uint32"]),
    "missing tensor": (lambda p, b: build(p.drop_tensor("blk.0.ffn_up.weight")), ERR_FORMAT,
                       ["missing tensor blk.0.ffn_up.weight"]),
    "missing embedding": (lambda p, b: build(p.drop_tensor("token_embd.weight")), ERR_FORMAT,
                          ["missing tensor token_embd.weight"]),
    "wrong shape": (lambda p, b: build(p.set_tensor("blk.0.attn_k.weight", Q4_0, (32, 32), q_bytes((32, 32), 18))),
                    ERR_FORMAT, ["blk.0.attn_k.weight", "shape [32, 32], expected [32, 16]"]),
    "wrong output shape": (lambda p, b: build(p.set_tensor("output.weight", Q8_0, (32, 511), q_bytes((32, 511), 34))),
                           ERR_FORMAT, ["output.weight", "expected [32, 512]"]),
    "norm not F32": (lambda p, b: build(p.set_tensor("blk.0.ffn_norm.weight", F16, (32,), bytes(64))),
                     ERR_UNSUPPORTED, ["blk.0.ffn_norm.weight", "F16", "must be F32"]),
    "count negative": (lambda p, b: build(p.set_kv("llama.block_count", INT32, -1)), ERR_FORMAT,
                       ["llama.block_count", "-1"]),
    "count zero": (lambda p, b: build(p.set_kv("llama.block_count", UINT32, 0)), ERR_FORMAT, ["llama.block_count"]),
    "count past u32": (lambda p, b: build(p.set_kv("llama.context_length", UINT64, 2**40)), ERR_FORMAT,
                       ["llama.context_length", "1099511627776"]),
    "count past int": (lambda p, b: build(p.set_kv("llama.context_length", UINT32, 2**31)), ERR_FORMAT,
                       ["llama.context_length", "2147483648"]),
    "count is a float": (lambda p, b: build(p.set_kv("llama.embedding_length", FLOAT32, 32.0)), ERR_FORMAT,
                         ["llama.embedding_length", "float32"]),
    "more layers than tensors": (lambda p, b: build(p.set_kv("llama.block_count", UINT32, 10**9)), ERR_FORMAT,
                                 ["llama.block_count 1000000000"]),
    "a layer missing": (lambda p, b: build(Parts(p.kvs, p.tensors + [[f"extra.{i}", F32, (1,), bytes(4)]
                                                                     for i in range(9)])
                                           .set_kv("llama.block_count", UINT32, 2)),
                        ERR_FORMAT, ["missing tensor blk.1.attn_norm.weight"]),
    "kv heads default to heads": (lambda p, b: build(p.drop_kv("llama.attention.head_count_kv")), ERR_FORMAT,
                                  ["blk.0.attn_k.weight", "expected [32, 32]"]),
    "heads do not divide dim": (lambda p, b: build(p.set_kv("llama.attention.head_count", UINT32, 3)), ERR_FORMAT,
                                ["head_count 3"]),
    "kv heads do not divide heads": (lambda p, b: build(p.set_kv("llama.attention.head_count_kv", UINT32, 3)),
                                     ERR_FORMAT, ["head_count_kv 3"]),
    "odd head size": (lambda p, b: build(p.set_kv("llama.attention.head_count", UINT32, 32)
                                          .set_kv("llama.attention.head_count_kv", UINT32, 32)), ERR_FORMAT, ["odd"]),
    "partial rope": (lambda p, b: build(p.set_kv("llama.rope.dimension_count", UINT32, 4)), ERR_UNSUPPORTED,
                     ["llama.rope.dimension_count 4"]),
    "epsilon zero": (lambda p, b: build(p.set_kv("llama.attention.layer_norm_rms_epsilon", FLOAT32, 0.0)),
                     ERR_FORMAT, ["layer_norm_rms_epsilon"]),
    "epsilon NaN": (lambda p, b: build(p.set_kv("llama.attention.layer_norm_rms_epsilon", FLOAT32, float("nan"))),
                    ERR_FORMAT, ["layer_norm_rms_epsilon"]),
    "rope base infinite": (lambda p, b: build(p.set_kv("llama.rope.freq_base", FLOAT64, float("inf"))), ERR_FORMAT,
                           ["llama.rope.freq_base"]),
    # found by fuzz_model: a tiny base made RoPE's angles overflow the reduction's integer
    "rope base below one": (lambda p, b: build(p.set_kv("llama.rope.freq_base", FLOAT32, 1e-20)), ERR_FORMAT,
                            ["llama.rope.freq_base must be at least 1"]),
    "float64 beyond float": (lambda p, b: build(p.set_kv("llama.rope.freq_base", FLOAT64, 1e300)), ERR_FORMAT,
                             ["llama.rope.freq_base", "float range"]),
    "tokens not strings": (lambda p, b: build(p.set_kv("tokenizer.ggml.tokens", ARRAY, (INT32, list(range(512))))),
                           ERR_FORMAT, ["tokenizer.ggml.tokens", "strings"]),
    "no tokens": (lambda p, b: build(p.set_kv("tokenizer.ggml.tokens", ARRAY, (STRING, []))), ERR_FORMAT,
                  ["tokenizer.ggml.tokens"]),
    "scores short": (lambda p, b: build(p.set_kv("tokenizer.ggml.scores", ARRAY, (FLOAT32, [0.0] * 511))),
                     ERR_FORMAT, ["tokenizer.ggml.scores has 511 entries", "512"]),
    "scores float64": (lambda p, b: build(p.set_kv("tokenizer.ggml.scores", ARRAY, (FLOAT64, [0.0] * 512))),
                       ERR_FORMAT, ["tokenizer.ggml.scores", "float32"]),
    "types long": (lambda p, b: build(p.set_kv("tokenizer.ggml.token_type", ARRAY, (INT32, [1] * 513))),
                   ERR_FORMAT, ["tokenizer.ggml.token_type has 513"]),
    "bos outside vocab": (lambda p, b: build(p.set_kv("tokenizer.ggml.bos_token_id", UINT32, 512)), ERR_FORMAT,
                          ["tokenizer.ggml.bos_token_id 512", "vocabulary of 512"]),
    "unk outside vocab": (lambda p, b: build(p.set_kv("tokenizer.ggml.unknown_token_id", INT64, -3)), ERR_FORMAT,
                          ["tokenizer.ggml.unknown_token_id", "-3"]),
    "name not a string": (lambda p, b: build(p.set_kv("general.name", BOOL, True)), ERR_FORMAT,
                          ["general.name", "bool"]),
    "garbage name": (lambda p, b: build(p.set_kv("general.architecture", STRING, b"\x1b[2J" + b"x" * 100)),
                     ERR_UNSUPPORTED, ["\"?[2Jxxx", "x...\""]),
    **{f"missing {key}": (without_key(key), ERR_FORMAT, [f"missing metadata key {key}"]) for key in REQUIRED_KEYS},
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected(probe, tiny_parts, tiny_path, case):
    make, status, words = REJECTED[case]
    got = probe.load(make(parts_of(tiny_parts), tiny_path.read_bytes()))
    assert got.status == status, got.message
    for word in words:
        assert word in got.message, got.message
    assert "\x1b" not in got.message


# ---------------------------------------------------------------- fuzzing

def needed_bytes(path) -> int:
    """Where the last tensor's data ends: any shorter prefix must be refused."""
    return max(int(t.data_offset) + int(t.n_bytes) for t in GGUFReader(path).tensors)


def truncation_statuses(probe, data: bytes) -> list:
    """Status of every prefix, read from one buffer (the C side sees only `n` bytes)."""
    probe.buffer = (ctypes.c_ubyte * len(data)).from_buffer_copy(data)
    base = ctypes.addressof(probe.buffer)
    statuses = []
    for n in range(len(data)):
        got = probe.load_at(base, n)
        assert got.status == OK or got.message, n
        statuses.append(got.status)
    return statuses


def test_every_truncation_is_refused(probe, tiny_path):
    data = tiny_path.read_bytes()
    statuses = truncation_statuses(probe, data)
    need = needed_bytes(tiny_path)
    assert all(s == ERR_FORMAT for s in statuses[:need])
    assert all(s == OK for s in statuses[need:])  # only the padding after the last tensor is missing


def mutations(data: bytes, header: int, count: int, seed: int):
    """Seeded damage: 1-4 changed bytes or 8-byte words, half of them in the first
    `header` bytes (keys and tensor infos), where nearly all the checks are."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        buf = bytearray(data)
        for _ in range(rng.integers(1, 5)):
            pos = int(rng.integers(0, header if rng.integers(2) else len(buf)))
            kind = rng.integers(3)
            if kind == 0:
                buf[pos] = int(rng.integers(256))
            elif kind == 1:
                buf[pos] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF]))
            else:
                word = rng.bytes(8)[:len(buf) - pos]
                buf[pos:pos + len(word)] = word
        yield bytes(buf)


def test_random_mutations_never_crash(probe, tiny_path):
    data = tiny_path.read_bytes()
    header = min(int(t.data_offset) for t in GGUFReader(tiny_path).tensors)
    counts = np.zeros(6, int)
    for damaged in mutations(data, header, 3000, seed=1):
        got = probe.load(damaged)
        assert 0 <= got.status <= ERR_CAPACITY
        assert got.status == OK or got.message
        counts[got.status] += 1
    # Damage to weights or scores still loads; most header damage is refused.
    assert counts[OK] > 100 and counts[ERR_FORMAT] > 500, counts


@pytest.fixture(scope="module")
def sanitized_probe(tmp_path_factory):
    """gguf_probe as a program built with AddressSanitizer and UBSan (no ctypes: ASan
    needs to be the first library loaded, which a Python process cannot arrange)."""
    exe = tmp_path_factory.mktemp("asan") / "gguf_probe"
    flags = [*C_FLAGS, "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=all", "-DPROBE_MAIN", f"-I{CORE}"]
    result = subprocess.run([host_compiler(), *flags, "-o", str(exe), *map(str, SOURCES)], check=False,
                            capture_output=True, text=True)
    if result.returncode != 0 and "sanitize" in result.stderr and "cannot find" in result.stderr:
        pytest.skip(f"no sanitizer runtime: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    return exe


def run_sanitized(exe, *args):
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    result = subprocess.run([str(exe), *map(str, args)], check=False, capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0 and "Sanitizer" not in result.stderr and "runtime error" not in result.stderr, \
        result.stderr[-3000:] + result.stdout[-500:]
    return [line.split(None, 1) for line in result.stdout.splitlines()]


def test_sanitizers_find_nothing(probe, sanitized_probe, tiny_path, stories, tmp_path):
    data = tiny_path.read_bytes()
    # Every prefix, each in a heap block of exactly its length; same answers as the library.
    lines = run_sanitized(sanitized_probe, "--truncate", tiny_path)
    assert [int(status) for _, status in lines] == truncation_statuses(probe, data)
    statuses = [int(status) for _, status in run_sanitized(sanitized_probe, "--mutate", 7, 3000, tiny_path)]
    assert len(statuses) == 3000 and statuses.count(OK) > 100 and statuses.count(ERR_FORMAT) > 500
    # Whole files of every type, and the hand-built damaged ones, load cleanly too.
    paths = []
    for quant in ("f32", "f16", "q8_0", "q4_0"):
        paths.append(tmp_path / f"{quant}.gguf")
        write_gguf(stories, paths[-1], quant)
    tiny_parts = read_parts(tiny_path)
    for i, (make, status, _) in enumerate(REJECTED.values()):
        paths.append(tmp_path / f"rejected{i}.gguf")
        paths[-1].write_bytes(make(copy.deepcopy(tiny_parts), data))
    lines = run_sanitized(sanitized_probe, *paths)
    assert [int(line[0]) for line in lines] == [OK] * 4 + [status for _, status, _ in REJECTED.values()]


# ---------------------------------------------------------------- portability

CLANG = runtime_build.clang_compiler()  # scripts/setup.sh test installs clang-19


@pytest.mark.parametrize("define", [[], ["-DPROBE_MAIN"]])
def test_clang_builds_warning_free(tmp_path, define):
    for source in SOURCES:
        result = subprocess.run([CLANG, *C_FLAGS, *define, f"-I{CORE}", "-c", str(source), "-o",
                                 str(tmp_path / (source.stem + ".o"))], check=False, capture_output=True, text=True)
        assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm is not installed")
def test_reader_and_loader_call_nothing_outside_the_core(tmp_path):
    """No libc, not even the memcpy/memset/strlen a compiler may substitute for a loop."""
    for source in (CORE / "el_gguf.c", CORE / "el_model.c"):
        obj = tmp_path / (source.stem + ".o")
        subprocess.run([host_compiler(), *C_FLAGS, "-c", str(source), "-o", str(obj)], check=True)
        undefined = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split()
        assert all(sym == "U" or sym.startswith("el_") for sym in undefined), undefined
