"""What `edgellama inspect` reports about a GGUF file."""

from edgellama.errors import EdgeLlamaError
from edgellama.model import quant
from edgellama.model.gguf_file import ARCH, KEY_FILE_TYPE, file_type_name, is_known_file_type, layout_problem, read_gguf
from edgellama.model.loading import resolve


def runtime_view(path) -> tuple:
    """(problem, chat template): what the C runtime's loader refuses in a model file (its
    one-line message, or None), the same checks `generate` meets, so inspect never passes
    a file the runtime refuses; and the chat template the runtime picks for it. (None,
    None) when the host library cannot be built here (the Python checks still run)."""
    from edgellama.runtime import capi
    try:
        capi.library()
    except Exception:  # no C compiler on this machine: nothing to ask
        return None, None
    try:
        runtime = capi.Runtime(path, max_seqs=1, threads=1)
    except EdgeLlamaError as e:
        return str(e).removeprefix(f"{path}: "), None
    return None, capi.Chat(runtime).name


def _checked_gguf(path):
    """(read_gguf, the runtime's chat template) after the layout and runtime checks, so a
    damaged file is described in words about the file, never in the words of numpy or struct."""
    problem, chat_template = layout_problem(path), None
    if not problem:
        problem, chat_template = runtime_view(path)
    if problem:
        raise EdgeLlamaError(f"{path}: {problem}")
    try:
        return read_gguf(path), chat_template
    except EdgeLlamaError:
        raise
    except Exception:  # gguf/numpy choked on something the checks above let through
        raise EdgeLlamaError(f"{path}: corrupt GGUF (its metadata or tensors cannot be decoded)") from None


def describe_dict(path) -> dict:
    path = resolve(path)
    g, chat_template = _checked_gguf(path)
    cfg, vocab = g.model.config, g.model.vocab
    file_type = file_type_name(g.metadata.get(KEY_FILE_TYPE))
    known = is_known_file_type(file_type)  # only then do the rules say why each tensor has its type
    tensors = []
    for e in g.entries:
        choice = quant.choose_type(e.name, e.shape, file_type) if known else None
        tensors.append(dict(name=e.name, shape=list(e.shape), type=e.qtype.name, bytes=e.nbytes,
                            note=choice.reason if choice and choice.qtype == e.qtype else ""))
    kv_bytes_per_token = 2 * cfg.n_layers * cfg.kv_dim * 4
    return dict(
        file=str(path), file_bytes=g.file_size, name=g.model.name, architecture=ARCH,
        file_type=[file_type if known else None],
        config=cfg.to_dict(), head_dim=cfg.head_dim, parameters=cfg.n_params(),
        vocab=dict(size=len(vocab), bos_id=vocab.bos_id, eos_id=vocab.eos_id, unk_id=vocab.unk_id,
                   chat_template=chat_template, chat_template_stored=bool(vocab.chat_template)),
        weight_bytes=g.weight_bytes, kv_bytes_per_token_f32=kv_bytes_per_token, tensors=tensors)


def _chat_line(vocab: dict) -> str:
    if vocab["chat_template"] is None:
        return ""
    return f", chat template {vocab['chat_template']}" + ("" if vocab["chat_template_stored"] else " (none stored)")


def describe(path) -> str:
    d = describe_dict(path)
    c = d["config"]
    lines = [
        f"file          {d['file']} ({d['file_bytes']:,} bytes)",
        f"model         {d['name']}: llama, {d['parameters']:,} parameters, file type {d['file_type'][0]}",
        f"shape         dim {c['dim']}, {c['n_layers']} layers, {c['n_heads']} heads ({c['n_kv_heads']} kv, "
        f"head {d['head_dim']}), ffn {c['hidden_dim']}, context {c['max_seq_len']}",
        f"              rms eps {c['norm_eps']:g}, rope base {c['rope_theta']:g}, "
        f"{'tied' if c['tied_embeddings'] else 'separate'} classifier",
        f"tokenizer     {d['vocab']['size']} tokens (sentencepiece BPE), bos {d['vocab']['bos_id']}, "
        f"eos {d['vocab']['eos_id']}" + _chat_line(d["vocab"]),
        f"weights       {d['weight_bytes']:,} bytes: the RAM (or flash) they need, read in place",
        f"KV cache      {d['kv_bytes_per_token_f32']:,} bytes per token in f32 "
        f"({d['kv_bytes_per_token_f32'] * c['max_seq_len']:,} for the full context)",
        "",
        f"{'tensor':<26} {'shape':>12} {'type':>5} {'bytes':>10}  note",
    ]
    for t in d["tensors"]:
        shape = "x".join(str(n) for n in t["shape"])
        lines.append(f"{t['name']:<26} {shape:>12} {t['type']:>5} {t['bytes']:>10,}  {t['note']}")
    return "\n".join(lines)

