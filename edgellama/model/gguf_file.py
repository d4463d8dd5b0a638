"""GGUF model files: one file with the config, the tokenizer and the weights.

The metadata keys and tensor names are llama.cpp's for the `llama` architecture, so
files written here load in llama.cpp and other GGUF tools. This module is the one
place that spells the keys.
"""

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from edgellama.errors import EdgeLlamaError
from edgellama.fileio import atomic_path
from edgellama.model import quant
from edgellama.model.llama import LlamaConfig, LlamaModel, Vocab

ARCH = "llama"
GGUF_MAGIC = b"GGUF"


def file_magic(path) -> bytes:
    """The first four bytes of a model file (GGUF_MAGIC for GGUF); one line when unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError as e:
        raise EdgeLlamaError(f"{path}: cannot read ({e.strerror})") from None
KEY_ARCH = "general.architecture"
KEY_NAME = "general.name"
KEY_FILE_TYPE = "general.file_type"
KEY_QUANT_VERSION = "general.quantization_version"
KEY_CONTEXT = f"{ARCH}.context_length"
KEY_DIM = f"{ARCH}.embedding_length"
KEY_LAYERS = f"{ARCH}.block_count"
KEY_HIDDEN = f"{ARCH}.feed_forward_length"
KEY_HEADS = f"{ARCH}.attention.head_count"
KEY_KV_HEADS = f"{ARCH}.attention.head_count_kv"
KEY_NORM_EPS = f"{ARCH}.attention.layer_norm_rms_epsilon"
KEY_ROPE_DIM = f"{ARCH}.rope.dimension_count"
KEY_ROPE_BASE = f"{ARCH}.rope.freq_base"
KEY_VOCAB_SIZE = f"{ARCH}.vocab_size"
KEY_TOK_MODEL = "tokenizer.ggml.model"
KEY_TOKENS = "tokenizer.ggml.tokens"
KEY_SCORES = "tokenizer.ggml.scores"
KEY_TOKEN_TYPES = "tokenizer.ggml.token_type"
KEY_BOS = "tokenizer.ggml.bos_token_id"
KEY_EOS = "tokenizer.ggml.eos_token_id"
KEY_UNK = "tokenizer.ggml.unknown_token_id"
KEY_ADD_BOS = "tokenizer.ggml.add_bos_token"
KEY_ADD_EOS = "tokenizer.ggml.add_eos_token"
KEY_CHAT_TEMPLATE = "tokenizer.chat_template"
REQUIRED_KEYS = (KEY_ARCH, KEY_CONTEXT, KEY_DIM, KEY_LAYERS, KEY_HIDDEN, KEY_HEADS,
                 KEY_NORM_EPS, KEY_TOKENS, KEY_SCORES, KEY_TOKEN_TYPES)


@dataclass
class TensorEntry:
    """One tensor as stored in a file."""
    name: str
    shape: tuple   # (out, in) order, as in LlamaModel
    qtype: GGMLQuantizationType
    nbytes: int
    reason: str = ""


@dataclass
class GGUFModel:
    model: LlamaModel           # weights dequantized to float32
    entries: list               # TensorEntry per tensor, file order
    metadata: dict
    file_size: int

    @property
    def weight_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


# ---------------------------------------------------------------- writing

def write_gguf(model: LlamaModel, path, quant_name: str = "f32") -> list:
    """Write `model` to `path` with tensors stored as `quant_name`; return the entries."""
    model.validate()
    cfg, vocab = model.config, model.vocab
    choices = [quant.choose_type(name, model.tensors[name].shape, quant_name) for name in cfg.tensor_shapes()]
    with atomic_path(path) as tmp:
        writer = GGUFWriter(str(tmp), ARCH)
        writer.add_string(KEY_NAME, model.name)
        writer.add_uint32(KEY_FILE_TYPE, int(quant.FILE_TYPES[quant_name]))
        if quant_name in ("q8_0", "q4_0"):
            writer.add_uint32(KEY_QUANT_VERSION, 2)
        writer.add_uint32(KEY_CONTEXT, cfg.max_seq_len)
        writer.add_uint32(KEY_DIM, cfg.dim)
        writer.add_uint32(KEY_LAYERS, cfg.n_layers)
        writer.add_uint32(KEY_HIDDEN, cfg.hidden_dim)
        writer.add_uint32(KEY_HEADS, cfg.n_heads)
        writer.add_uint32(KEY_KV_HEADS, cfg.n_kv_heads)
        writer.add_float32(KEY_NORM_EPS, cfg.norm_eps)
        writer.add_uint32(KEY_ROPE_DIM, cfg.head_dim)
        writer.add_float32(KEY_ROPE_BASE, cfg.rope_theta)
        writer.add_uint32(KEY_VOCAB_SIZE, cfg.vocab_size)
        writer.add_string(KEY_TOK_MODEL, "llama")
        writer.add_array(KEY_TOKENS, list(vocab.tokens))
        writer.add_array(KEY_SCORES, [float(s) for s in vocab.scores])
        writer.add_array(KEY_TOKEN_TYPES, [int(t) for t in vocab.types])
        writer.add_uint32(KEY_BOS, vocab.bos_id)
        writer.add_uint32(KEY_EOS, vocab.eos_id)
        writer.add_uint32(KEY_UNK, vocab.unk_id)
        writer.add_bool(KEY_ADD_BOS, True)
        writer.add_bool(KEY_ADD_EOS, False)
        if vocab.chat_template:
            writer.add_string(KEY_CHAT_TEMPLATE, vocab.chat_template)
        entries = []
        for choice in choices:
            data = quant.encode(model.tensors[choice.name], choice.qtype)
            raw_dtype = None if choice.qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16) else choice.qtype
            writer.add_tensor(choice.name, data, raw_dtype=raw_dtype)
            entries.append(TensorEntry(choice.name, choice.shape, choice.qtype, data.nbytes, choice.reason))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return entries


# ---------------------------------------------------------------- reading

class _Damaged(Exception):
    """What is wrong with a GGUF file's layout, in words."""


# Fixed sizes of GGUF metadata value types (strings and arrays are walked instead).
_VALUE_BYTES = {GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1, GGUFValueType.UINT16: 2,
                GGUFValueType.INT16: 2, GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
                GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8}
_DEFAULT_ALIGNMENT = 32


class _Cursor:
    """Reads little-endian GGUF fields from a buffer, refusing to read past its end."""

    def __init__(self, buf, what="the header"):
        self.buf, self.pos, self.what = buf, 0, what

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > len(self.buf):
            raise _Damaged(f"truncated: {self.what} runs past the end of the file ({len(self.buf):,} bytes)")
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, fmt: str):
        return struct.unpack_from("<" + fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        n = self.unpack("Q")
        return bytes(self.buf[self.take(n):self.pos])

    def count(self, n: int, min_bytes: int, what: str) -> int:
        """A count read from the file, checked against the bytes that are left for its items."""
        if n * min_bytes > len(self.buf) - self.pos:
            raise _Damaged(f"truncated or corrupt: {self.what} counts {n:,} {what} items, more than the "
                           f"{len(self.buf) - self.pos:,} bytes left in the file can hold")
        return n


def _skip_value(cur: _Cursor, vtype: int):
    if vtype == GGUFValueType.STRING:
        cur.string()
    elif vtype == GGUFValueType.ARRAY:
        item_type, n = cur.unpack("I"), cur.unpack("Q")
        if item_type in _VALUE_BYTES:
            cur.take(cur.count(n, _VALUE_BYTES[item_type], "array") * _VALUE_BYTES[item_type])
        else:
            for _ in range(cur.count(n, 8 if item_type == GGUFValueType.STRING else 12, "array")):
                _skip_value(cur, item_type)
    elif vtype in _VALUE_BYTES:
        cur.take(_VALUE_BYTES[vtype])
    else:
        raise _Damaged(f"corrupt: unknown metadata value type {vtype} at byte {cur.pos - 4:,}")


def _walk_metadata(cur: _Cursor) -> int:
    """Skip the key/value table; returns the data alignment it names."""
    alignment = _DEFAULT_ALIGNMENT
    for _ in range(cur.count(cur.unpack("Q"), 12, "metadata key")):
        cur.what = "the metadata"
        key, vtype = cur.string(), cur.unpack("I")
        if key == b"general.alignment" and vtype == GGUFValueType.UINT32:
            alignment = cur.unpack("I") or _DEFAULT_ALIGNMENT
        else:
            _skip_value(cur, vtype)
    return alignment


def _tensor_bytes(name: str, dims: list, qtype: int) -> int:
    try:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        raise _Damaged(f"corrupt: tensor {name} has unknown type {qtype}") from None
    elements = 1
    for n in dims:
        elements *= n
    return elements // block * block_bytes


def _check_layout(buf):
    cur = _Cursor(buf)
    if bytes(buf[cur.take(4):cur.pos]) != GGUF_MAGIC:
        raise _Damaged("not a GGUF file")
    cur.unpack("I")  # version
    n_tensors = cur.unpack("Q")
    alignment = _walk_metadata(cur)
    cur.what = "the tensor table"
    tensors = []
    for _ in range(cur.count(n_tensors, 28, "tensor")):
        name = cur.string().decode("utf-8", "replace")
        dims = [cur.unpack("Q") for _ in range(cur.count(cur.unpack("I"), 8, f"tensor {name} dimension"))]
        qtype, offset = cur.unpack("I"), cur.unpack("Q")
        tensors.append((name, offset + _tensor_bytes(name, dims, qtype)))
    data_start = -(-cur.pos // alignment) * alignment
    for name, end in tensors:
        if data_start + end > len(buf):
            raise _Damaged(f"truncated: tensor {name} ends at byte {data_start + end:,}, past the end of the "
                           f"file ({len(buf):,} bytes)")


def layout_problem(path) -> str | None:
    """What makes a GGUF file unreadable (truncated where, or which count is impossible),
    checked with plain bounds checks; None when its layout is sound."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf, \
                memoryview(buf) as view:
            _check_layout(view)
    except _Damaged as e:
        return str(e)
    except ValueError:  # mmap of an empty file
        return "truncated: the file is empty"
    return None


def file_type_name(value) -> str | None:
    """edgellama's name (f32, f16, q8_0, q4_0) for a general.file_type value; None for None."""
    if value is None:
        return None
    names = {int(file_type): name for name, file_type in quant.FILE_TYPES.items()}
    return names.get(int(value), f"file_type_{int(value)}")


def is_known_file_type(name: str | None) -> bool:
    """Whether a file type name is one edgellama writes (so quant's rules explain each tensor)."""
    return name in quant.FILE_TYPES


def read_identity(path) -> tuple:
    """(general.name, file type name) of a GGUF file, each None when absent or unreadable:
    for labelling results, so a damaged file is not an error here."""
    try:
        fields = GGUFReader(str(path)).fields
        name = fields[KEY_NAME].contents() if KEY_NAME in fields else None
        file_type = fields[KEY_FILE_TYPE].contents() if KEY_FILE_TYPE in fields else None
        return (str(name) if name else None), file_type_name(file_type)
    except Exception:  # not a GGUF file, or a damaged one: the identity is unknown
        return None, None


def _field(reader, key, path, default=None):
    if key not in reader.fields:
        if default is not None:
            return default
        raise EdgeLlamaError(f"{path}: missing metadata key {key}")
    return reader.fields[key].contents()


def read_gguf(path) -> GGUFModel:
    """Load and check a llama GGUF file; any problem is an EdgeLlamaError naming the file."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise EdgeLlamaError(f"{path}: cannot read ({e.strerror})") from None
    if magic != GGUF_MAGIC:
        raise EdgeLlamaError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        reader = GGUFReader(path)
    except Exception:  # the reader raises numpy's errors on a damaged file: say what is wrong instead
        raise EdgeLlamaError(f"{path}: {layout_problem(path) or 'corrupt GGUF (the gguf reader cannot parse it)'}"
                             ) from None
    missing = [k for k in REQUIRED_KEYS if k not in reader.fields]
    if missing:
        raise EdgeLlamaError(f"{path}: missing metadata key {missing[0]}")
    arch = _field(reader, KEY_ARCH, path)
    if arch != ARCH:
        raise EdgeLlamaError(f"{path}: unsupported architecture {arch!r} (only {ARCH!r})")
    tokens = _field(reader, KEY_TOKENS, path)
    names = {t.name for t in reader.tensors}
    heads = int(_field(reader, KEY_HEADS, path))
    cfg = LlamaConfig(
        dim=int(_field(reader, KEY_DIM, path)),
        n_layers=int(_field(reader, KEY_LAYERS, path)),
        n_heads=heads,
        n_kv_heads=int(_field(reader, KEY_KV_HEADS, path, heads)),
        vocab_size=len(tokens),
        hidden_dim=int(_field(reader, KEY_HIDDEN, path)),
        max_seq_len=int(_field(reader, KEY_CONTEXT, path)),
        norm_eps=float(_field(reader, KEY_NORM_EPS, path)),
        rope_theta=float(_field(reader, KEY_ROPE_BASE, path, 10000.0)),
        tied_embeddings="output.weight" not in names,
    )
    cfg.validate(str(path))
    vocab = Vocab(
        tokens=list(tokens),
        scores=[float(s) for s in _field(reader, KEY_SCORES, path)],
        types=[int(t) for t in _field(reader, KEY_TOKEN_TYPES, path)],
        bos_id=int(_field(reader, KEY_BOS, path, 1)),
        eos_id=int(_field(reader, KEY_EOS, path, 2)),
        unk_id=int(_field(reader, KEY_UNK, path, 0)),
        chat_template=_field(reader, KEY_CHAT_TEMPLATE, path, ""),
    )
    if not isinstance(vocab.chat_template, str):
        raise EdgeLlamaError(f"{path}: metadata key {KEY_CHAT_TEMPLATE} is not a string")
    tensors, entries = {}, []
    for t in reader.tensors:
        qtype = GGMLQuantizationType(t.tensor_type)
        if qtype not in quant.SUPPORTED_TYPES:
            supported = ", ".join(q.name for q in quant.SUPPORTED_TYPES)
            raise EdgeLlamaError(f"{path}: tensor {t.name} has unsupported type {qtype.name} (supported: {supported})")
        shape = tuple(int(n) for n in reversed(t.shape))
        if t.data_offset + t.n_bytes > file_size:
            raise EdgeLlamaError(f"{path}: truncated: tensor {t.name} ends past the end of the file")
        tensors[t.name] = quant.decode(t.data, qtype, shape)
        entries.append(TensorEntry(t.name, shape, qtype, int(t.n_bytes)))
    name = str(_field(reader, KEY_NAME, path, "")) or path.stem
    model = LlamaModel(cfg, vocab, tensors, name).validate(str(path))
    metadata = {k: _safe_contents(f) for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.t")
                and not k.startswith("tokenizer.ggml.s")}
    return GGUFModel(model, entries, metadata, file_size)


def _safe_contents(field):
    try:
        return field.contents()
    except Exception:
        return None

