"""Hugging Face LlamaForCausalLM folders: config.json, safetensors weights, tokenizer.model,
and the chat template when the folder has one.

The safetensors format is an 8-byte little-endian header length, a JSON header of
name -> dtype, shape and byte range, then the raw little-endian data; it is read here
directly so importing needs neither torch nor the safetensors package. Weights may be
one model.safetensors or shards listed by model.safetensors.index.json.

Hugging Face stores q and k for "rotate half" RoPE (pairs x[i], x[i + head_dim/2]);
they are permuted back to the adjacent pairs this package and llama.cpp use.

The chat template (chat_template.jinja, or "chat_template" in tokenizer_config.json) is
stored as GGUF tokenizer.chat_template, as llama.cpp's converter does; the runtime picks
its own rendering from the template's markers (edgellama/model/chat_format.py).
"""

import json
import os
import struct
from pathlib import Path

import numpy as np

from edgellama.errors import EdgeLlamaError
from edgellama.model.llama import LlamaConfig, LlamaModel
from edgellama.model.tokenizer import load_vocab

ARCHITECTURE = "LlamaForCausalLM"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE = "chat_template.jinja"  # where recent transformers versions save it
# bf16 is read as uint16 and widened by hand: numpy has no bfloat16.
DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}
# Anything else rescales RoPE and would give silently wrong logits.
PLAIN_ROPE = (None, "default")

LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_down": "mlp.down_proj", "ffn_up": "mlp.up_proj",
}
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}


def hf_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    _, layer, kind, _ = gguf_name.split(".")
    return f"model.layers.{layer}.{LAYER_NAMES[kind]}.weight"


def import_hf(directory) -> LlamaModel:
    """Load a Hugging Face LlamaForCausalLM folder; any problem is an EdgeLlamaError naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EdgeLlamaError(f"{directory}: not a folder")
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise EdgeLlamaError(f"{config_path}: missing; a Hugging Face model folder needs {CONFIG}")
    cfg = _config(config_path)
    weights = _weight_index(directory)
    cfg.tied_embeddings = cfg.tied_embeddings or "lm_head.weight" not in weights
    tok_path = directory / TOKENIZER
    if not tok_path.is_file():
        raise EdgeLlamaError(f"{tok_path}: missing; only sentencepiece tokenizers can be imported")
    vocab = load_vocab(tok_path)
    if len(vocab) != cfg.vocab_size:
        raise EdgeLlamaError(f"{tok_path}: tokenizer has {len(vocab)} tokens but {CONFIG} says vocab_size "
                             f"{cfg.vocab_size}")
    vocab.chat_template = _chat_template(directory)
    tensors = {}
    for name, shape in cfg.tensor_shapes().items():
        source = hf_name(name)
        if source not in weights:
            index = directory / WEIGHTS_INDEX
            raise EdgeLlamaError(f"{index if index.is_file() else directory / WEIGHTS}: missing tensor {source}")
        path, entry = weights[source]
        if tuple(entry["shape"]) != shape:
            raise EdgeLlamaError(f"{path}: tensor {source} has shape {tuple(entry['shape'])}, expected {shape}")
        array = _read_tensor(path, source, entry)
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            array = _interleave_rope(array, cfg.n_heads if name.endswith("q.weight") else cfg.n_kv_heads)
        tensors[name] = array
    return LlamaModel(cfg, vocab, tensors, directory.resolve().name).validate(str(directory))


def _interleave_rope(w, n_heads):
    # Each head's rows are [first halves..., second halves...]; llama.cpp's convert
    # permute (the inverse of transformers' Meta -> HF permute) puts them in pairs.
    return np.ascontiguousarray(w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, -1).swapaxes(1, 2).reshape(w.shape))


# ---------------------------------------------------------------- chat template

def _chat_template(directory) -> str:
    """The folder's Jinja chat template, "" when it has none. A list of named templates
    (tokenizer_config.json may hold one) gives its "default"."""
    jinja = directory / CHAT_TEMPLATE
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except OSError as e:
            raise EdgeLlamaError(f"{jinja}: cannot read ({e.strerror})") from None
        except UnicodeDecodeError:
            raise EdgeLlamaError(f"{jinja}: not UTF-8 text") from None
    config = directory / TOKENIZER_CONFIG
    if not config.is_file():
        return ""
    template = _read_json(config).get("chat_template") or ""  # tokenizers without one may say null
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or ""
    if not isinstance(template, str):
        raise EdgeLlamaError(f"{config}: chat_template must be a string or a list of named templates "
                             f"with a \"default\" one")
    return template


# ---------------------------------------------------------------- config.json

def _read_json(path):
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise EdgeLlamaError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgeLlamaError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise EdgeLlamaError(f"{path}: expected a JSON object")
    return data


def _config(path) -> LlamaConfig:
    raw = _read_json(path)
    archs = raw.get("architectures") or []
    if ARCHITECTURE not in archs:
        raise EdgeLlamaError(f"{path}: architecture {', '.join(map(str, archs)) or 'not given'} is not supported "
                             f"(only {ARCHITECTURE})")

    def positive(key, default=None):
        value = raw.get(key) if raw.get(key) is not None else default
        if value is None:
            raise EdgeLlamaError(f"{path}: missing field {key}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise EdgeLlamaError(f"{path}: {key} must be a positive integer, got {value!r}")
        return value

    def number(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise EdgeLlamaError(f"{path}: {key} must be a positive number, got {value!r}")
        return float(value)

    if raw.get("hidden_act", "silu") != "silu":
        raise EdgeLlamaError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported (only 'silu')")
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key):
            raise EdgeLlamaError(f"{path}: {key} is true; biases are not supported")
    dim, heads = positive("hidden_size"), positive("num_attention_heads")
    if raw.get("head_dim") is not None and (dim % heads or raw["head_dim"] != dim // heads):
        raise EdgeLlamaError(f"{path}: head_dim {raw['head_dim']!r} is not hidden_size / num_attention_heads "
                             f"({dim} / {heads}); only that head size is supported")
    # transformers 5 moved rope_theta into rope_parameters; 4.x has it at the top level.
    theta = raw.get("rope_theta")
    for key in ("rope_parameters", "rope_scaling"):
        rope = raw.get(key)
        if rope is None:
            continue
        if not isinstance(rope, dict):
            raise EdgeLlamaError(f"{path}: {key} must be an object, got {rope!r}")
        kind = rope.get("rope_type", rope.get("type"))
        if kind not in PLAIN_ROPE:
            raise EdgeLlamaError(f"{path}: {key} type {kind!r} is not supported (only plain RoPE)")
        theta = rope.get("rope_theta", theta)
    return LlamaConfig(
        dim=dim, n_layers=positive("num_hidden_layers"), n_heads=heads,
        n_kv_heads=positive("num_key_value_heads", heads), vocab_size=positive("vocab_size"),
        hidden_dim=positive("intermediate_size"), max_seq_len=positive("max_position_embeddings"),
        norm_eps=number("rms_norm_eps", raw.get("rms_norm_eps", 1e-6)),  # transformers' default
        rope_theta=number("rope_theta", 10000.0 if theta is None else theta),
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),  # transformers' default for Llama
    ).validate(str(path))


# ---------------------------------------------------------------- safetensors

def _weight_index(directory):
    """Every tensor in the folder's safetensors files: HF name -> (file, header entry)."""
    single, index = directory / WEIGHTS, directory / WEIGHTS_INDEX
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise EdgeLlamaError(f"{index}: missing or empty weight_map")
        names = sorted(set(map(str, weight_map.values())))
        bad = [n for n in names if os.path.basename(n) != n]  # shards live beside the index
        if bad:
            raise EdgeLlamaError(f"{index}: shard name {bad[0]!r} is not a file name")
        files = [directory / n for n in names]
        for f in files:
            if not f.is_file():
                raise EdgeLlamaError(f"{f}: missing; {index.name} lists it as a shard")
    else:
        raise EdgeLlamaError(f"{directory}: no weights ({WEIGHTS} or {WEIGHTS_INDEX}); only safetensors is read")
    return {name: (f, entry) for f in files for name, entry in _safetensors_header(f).items()}


def _safetensors_header(path) -> dict:
    """name -> {"dtype", "shape", "offset"}: the byte ranges checked, the offset from the file start."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            n = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
            if n is None or 8 + n > size:
                raise EdgeLlamaError(f"{path}: truncated safetensors header")
            header = json.loads(f.read(n))
    except OSError as e:
        raise EdgeLlamaError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgeLlamaError(f"{path}: invalid safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise EdgeLlamaError(f"{path}: invalid safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    start, entries = 8 + n, {}
    for name, entry in header.items():
        try:
            shape, (begin, end) = [int(d) for d in entry["shape"]], entry["data_offsets"]
            itemsize = np.dtype(DTYPES[entry["dtype"]]).itemsize if entry["dtype"] in DTYPES else None
            ok = isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end and min(shape, default=0) >= 0
        except (KeyError, TypeError, ValueError):
            raise EdgeLlamaError(f"{path}: invalid safetensors entry for tensor {name}") from None
        if not ok or (itemsize and end - begin != int(np.prod(shape)) * itemsize):
            raise EdgeLlamaError(f"{path}: tensor {name} has a byte range {begin}..{end} that does not fit its "
                                 f"shape {tuple(shape)}")
        if start + end > size:
            raise EdgeLlamaError(f"{path}: truncated: tensor {name} ends at byte {start + end}, file has {size}")
        entries[name] = {"dtype": entry["dtype"], "shape": shape, "offset": start + begin}
    return entries


def _read_tensor(path, name, entry) -> np.ndarray:
    dtype = DTYPES.get(entry["dtype"])
    if dtype is None:
        raise EdgeLlamaError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']} "
                             f"(supported: {', '.join(DTYPES)})")
    count = int(np.prod(entry["shape"]))
    data = np.fromfile(path, dtype=dtype, count=count, offset=entry["offset"])
    if entry["dtype"] == "BF16":
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32).reshape(entry["shape"])
