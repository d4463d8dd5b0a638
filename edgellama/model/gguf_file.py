"""GGUF model files: one file with the config, the tokenizer and the weights.

The metadata keys and tensor names are llama.cpp's for the `llama` architecture, so
files written here load in llama.cpp and other GGUF tools. This module is the one
place that spells the keys.
"""

from dataclasses import dataclass
from pathlib import Path

from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from edgellama.errors import EdgeLlamaError
from edgellama.fileio import atomic_path
from edgellama.model import quant
from edgellama.model.llama import LlamaConfig, LlamaModel, Vocab

ARCH = "llama"
GGUF_MAGIC = b"GGUF"
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
    except Exception as e:  # the reader raises many kinds on a damaged file
        raise EdgeLlamaError(f"{path}: corrupt or truncated GGUF ({type(e).__name__}: {e})") from None
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
    )
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

