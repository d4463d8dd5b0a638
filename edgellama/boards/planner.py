"""Plan before build: will this model run on this board, and in what memory?

`plan(board, model)` answers with the arithmetic of the C runtime's own allocations
(firmware/core), done in Python for the board's pointer width, so no compiler for the
board is needed:

- **Weights** are read in place, never copied: the whole GGUF file (tensors, header,
  vocabulary) must sit somewhere addressable. Linux boards mmap it, so it needs RAM
  as page cache ("file (mmap)"). Bare-metal and PlatformIO boards keep it in flash
  when it fits there (flash less FLASH_PROGRAM_RESERVE for the program), else in
  PSRAM when that has room (beside the arena, when the arena is in PSRAM too); a
  board without flash (qemu-virt-rv64: the loader puts the whole image in RAM) keeps
  it in RAM beside the arena. Otherwise it does not fit.
- **The arena** is the one block everything else comes from, in el_runtime_open's
  order: the el_runtime struct; the model's tables (GGUF key and tensor tables, the
  vocabulary's pieces, scores and types, the layer table); the tokenizer's piece hash
  table; the KV pool (blocks x el_kv_block_bytes); the forward pass's activations
  (el_forward_bytes); the sampler's scratch; the sequences (struct, tokens, block
  table, text buffer sized from max_model_len and the longest piece); the batch rows;
  and, above that, the scratch of tokenizing one prompt (or chat turn) of
  `prompt_bytes` bytes. el_kv_block_bytes and el_forward_bytes are called in the host
  library itself (they do not depend on the pointer width); the structs are laid out
  here for the board's pointer width (4 bytes on the 32-bit MCUs and armhf, 8 on
  aarch64/riscv64; an unknown arch counts as 8, which only overestimates); 64-bit
  integers are 8-aligned and enums 4 bytes everywhere, never smaller than a target's
  real layout (arm-none-eabi packs enums smaller; tests compile the structs with the
  host and 32-bit ARM compilers to check struct_sizes). The total is therefore an upper bound: on the host it is within a few
  hundred bytes of the runtime's measured arena high-water mark (tests/test_planner.py).
- **The arena budget** is the board's `runtime.arena` when it sets one (it must lie in
  RAM less the reserve below, or in PSRAM); otherwise the larger of RAM less the
  reserve and PSRAM, less the weights when they share it. On Linux it is the board's
  arena (or RAM less the OS reserve, less the weights), and weights plus arena must
  fit RAM less LINUX_OS_RESERVE.

Defaults, decided here (the build must use the same engine options: Plan.engine_options(),
an EngineOptions, edgellama/runtime/engine_options.py, which also checks every value):

- ctx (max_model_len): the model's context. When it does not fit, the verdict says so
  and names the largest context that does (`--ctx N`).
- max_seqs: 1 on bare-metal and PlatformIO boards (one prompt at a time over a UART),
  8 on Linux (the runtime's own default).
- max_batch_tokens (rows per forward step): 8 on MCUs, so a prompt is prefilled 8
  tokens per pass over the weights without paying for the runtime's default of 32
  rows of activations; the runtime's default max(max_seqs, 32) on Linux.
- block_size: the board's kv_block_size. kv_dtype: f32 (int8 needs about a third).
- prompt_bytes (the longest prompt the scratch is planned for): 4 bytes per token of
  context, at most 256 on MCUs. A longer prompt still works while the arena has room.
- The KV pool is the runtime's default: max_seqs full sequences (kv_cache_bytes 0).

Reserves: FLASH_PROGRAM_RESERVE (256 KiB bare metal, 512 KiB PlatformIO) is the flash the
program itself takes (the runtime is about 42 KB of Cortex-M4 code at -O2; the rest is
the port, libgcc and, for PlatformIO, the framework and bootloader); RAM_RESERVE (64 KiB
bare metal, 96 KiB PlatformIO) is RAM for the stack, the program's data and the
framework's heap (plus FLASH_PROGRAM_RESERVE on a board without flash, which runs its
program from RAM), plus the protocol server's static memory (SERVE_STATIC_BYTES and the
board's structured-output buffer, constraint_bytes), counted where the board sets no
arena and to check that its arena fits; LINUX_OS_RESERVE (128 MiB) is what the OS and its services keep.
"""

import ctypes as C
import difflib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from edgellama.boards.catalog import Board, get_board
from edgellama.errors import EdgeLlamaError
from edgellama.model import gguf_file as G
from edgellama.model import quant as Q
from edgellama.model.loading import load_model, resolve
from edgellama.runtime.engine_options import KV_DTYPES, EngineOptions
from edgellama.runtime.sampling_params import MAX_BEAM_WIDTH, MAX_LOGPROBS

KiB, MiB = 1 << 10, 1 << 20
MCU_OS = ("baremetal", "platformio")
FLASH_PROGRAM_RESERVE = {"baremetal": 256 * KiB, "platformio": 512 * KiB}

# the RAM a microcontroller keeps beside the arena and the weights: stack, program data,
# the framework's heap, and the protocol server's static memory (its frames, token buffer
# and system prompt: SERVE_STATIC_BYTES; its structured-output buffer is the board's
# constraint_bytes, added where it is counted)
SERVE_STATIC_BYTES = 10 * KiB
RAM_RESERVE = {"baremetal": 64 * KiB + SERVE_STATIC_BYTES, "platformio": 96 * KiB + SERVE_STATIC_BYTES}
LINUX_OS_RESERVE = 128 * MiB
MCU_MAX_SEQS, LINUX_MAX_SEQS = 1, 8
MCU_MAX_BATCH_TOKENS = 8
PROMPT_BYTES_PER_TOKEN, MCU_MAX_PROMPT_BYTES = 4, 256
POINTER_BYTES = {
    **dict.fromkeys(("aarch64", "arm64", "riscv64", "rv64", "x86_64", "amd64"), 8),
    **dict.fromkeys(("armhf", "armel", "armv6m", "armv7", "armv7m", "armv7em", "armv8m", "xtensa", "riscv32",
                     "rv32", "i386", "i686"), 4),
}
# alignment slack of the KV pool's ~12 arrays (16-, 8-, 4- and 1-aligned), an upper bound
KV_ALIGN_SLACK = 128
# EL_SAMPLER_BUCKETS (el_sampler.h): the radix select's 64-bit bucket measures
SAMPLER_BUCKETS = 260

PARTS = {
    "model tables": "GGUF key and tensor tables, vocabulary pieces, scores, types, layer table",
    "tokenizer": "piece hash table",
    "KV pool": "",
    "activations": "",
    "sampler": "probabilities, integer weights and counts over the vocabulary; the radix select's buckets",
    "sequences": "",
    "prompt scratch": "",
    "other": "runtime struct, batch rows, token text scratch, alignment",
}


# ---------------------------------------------------------------- the C structs

def _struct(*fields):
    """(size, align) of a C struct of fields given as (size, align), laid out in order."""
    offset, align = 0, 1
    for size, a in fields:
        offset = -(-offset // a) * a + size
        align = max(align, a)
    return -(-offset // align) * align, align


def _array(t, n):
    return t[0] * n, t[1]


def struct_sizes(pointer_bytes: int) -> dict:
    """sizeof of the runtime's structs that live in the arena, for a pointer width.

    Mirrors the headers in firmware/core field for field (tests compile a probe with
    the host compiler and a 32-bit cross compiler to check these numbers)."""
    P = Z = (pointer_bytes, pointer_bytes)  # pointers, size_t
    I, U64, B = (4, 4), (8, 8), (1, 1)      # int/float/enum/int32; uint64_t/long long (8-aligned); uint8_t
    el_str = _struct(P, I)
    el_arena = _struct(P, Z, Z, Z)
    el_config = _struct(*[I] * 11)
    el_matrix = _struct(I, I, I, I, I, P)  # type, rows, cols, layout, streamed, data
    el_layer_weights = _struct(P, P, *[el_matrix] * 7)
    el_vocab = _struct(I, P, P, P, I, I, I)
    el_gguf_kv = _struct(el_str, I, I, U64, P)
    el_gguf_tensor = _struct(el_str, I, _array(U64, 4), I, U64, P, U64)
    el_gguf = _struct(P, Z, I, I, U64, U64, P, P, U64)
    el_model = _struct(el_config, el_matrix, el_matrix, P, P, el_vocab, el_str, el_str, el_gguf)
    el_engine_options = _struct(I, I, U64, I, I, I, I, I, I, I, I, I, I)
    el_tokenizer = _struct(el_vocab, _array(I, 256), P, I, I, I, I, I)
    el_kv_cache = _struct(*[I] * 7, P, P, P, P, P, P, P, I, I, I, P, P, P, P, P, I, U64, U64, U64, U64, I)
    el_forward_state = _struct(I, I, I, I, *[P] * 11, _struct(P, P), P, _struct(P, P, I))
    el_sampler_scratch = _struct(I, P, P, P, P)
    el_scheduler = _struct(P, I, P, I, I, I, U64, I, U64)
    el_engine = _struct(P, el_engine_options, el_tokenizer, el_kv_cache, el_forward_state, el_sampler_scratch,
                        el_scheduler, P, P, P, P, P, P, U64, U64, U64, U64, U64, U64, U64, P, I, P)
    el_runtime = _struct(el_arena, el_model, el_engine, Z)
    el_sampling = _struct(I, I, I, I, I, I, I, U64)
    el_request = _struct(el_sampling, I, I, I, I, _array(I, 8), I, _array(B, 4 * 32), _array(I, 4), I, I, I, I, I,
                         P, I)
    el_sequence = _struct(I, I, U64, el_request, P, I, I, I, I, P, I, I, I, I, _struct(U64, U64), I, I, I, P,
                          I, I, I, _struct(_array(B, 4), I), I, I, I, I, I, U64, I, I, I, I, I, I, I, I,
                          _array(I, 2 * MAX_BEAM_WIDTH), _array(I, 2 * MAX_BEAM_WIDTH))
    el_logprob_entry = _struct(I, I, I, I, _array(I, MAX_LOGPROBS), _array(I, MAX_LOGPROBS))
    beam_candidate = _struct(I, I, I, I)
    el_batch_row = _struct(I, I, P, I)
    tok_symbol, tok_pair, tok_split = _struct(I, I, I, I, I), _struct(I, I, I), _struct(I, I)
    return {name: value[0] for name, value in locals().items() if name.startswith(("el_", "tok_", "beam_"))}


# ---------------------------------------------------------------- C size functions

def _c_config(cfg: dict):
    from edgellama.runtime import capi
    return capi.Config(cfg["dim"], cfg["n_layers"], cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"],
                       cfg["kv_dim"], cfg["hidden_dim"], cfg["vocab_size"], cfg["context_length"],
                       cfg["norm_eps"], cfg["rope_theta"])


_LIB = None


def _library():
    """The host runtime library with el_forward_bytes declared (capi declares el_kv_block_bytes),
    or None where it cannot be built (no C compiler): then the formulas below stand in."""
    global _LIB
    if _LIB is None:
        from edgellama.runtime import capi
        try:
            lib = capi.library()
        except (EdgeLlamaError, OSError):
            _LIB = False
            return None
        lib.el_forward_bytes.restype = C.c_size_t
        lib.el_forward_bytes.argtypes = [C.POINTER(capi.Config), C.c_int, C.c_int, C.c_int, C.c_int]
        _LIB = lib
    return _LIB or None


def kv_block_bytes(cfg: dict, block_size: int, kv_dtype: str) -> int:
    """el_kv_block_bytes (el_kv_cache.c): one block's keys, values and bookkeeping."""
    lib = _library()
    if lib is None:
        return kv_block_bytes_formula(cfg, block_size, kv_dtype)
    return int(lib.el_kv_block_bytes(C.byref(_c_config(cfg)), block_size, KV_DTYPES[kv_dtype]))


def forward_bytes(cfg: dict, max_rows: int, max_logits: int, max_context: int, threads: int = 1) -> int:
    """el_forward_bytes (el_forward.c): the activations el_forward_init takes, alignment included
    (attention scores for each of `threads` workers)."""
    lib = _library()
    if lib is None:
        return forward_bytes_formula(cfg, max_rows, max_logits, max_context, threads)
    return int(lib.el_forward_bytes(C.byref(_c_config(cfg)), max_rows, max_logits, max_context, threads))


def kv_block_bytes_formula(cfg: dict, block_size: int, kv_dtype: str) -> int:
    """el_kv_block_bytes written out, for where the library cannot be built (tests keep them equal)."""
    per_position = 8 * cfg["kv_dim"] if kv_dtype == "f32" else 2 * (cfg["kv_dim"] + 4 * cfg["n_kv_heads"])
    return cfg["n_layers"] * block_size * per_position + 5 * 4 + 1 + 8 + 4 * block_size


def forward_bytes_formula(cfg: dict, max_rows: int, max_logits: int, max_context: int, threads: int = 1) -> int:
    """el_forward_bytes written out (see kv_block_bytes_formula)."""
    widest = max(cfg["dim"], cfg["hidden_dim"])
    floats = (max_rows * (4 * cfg["dim"] + 2 * cfg["kv_dim"] + 2 * cfg["hidden_dim"] + cfg["head_dim"])
              + max_context * max(threads, 1) * (cfg["n_heads"] // cfg["n_kv_heads"])
              + cfg["head_dim"] // 2 + max_logits * cfg["vocab_size"] + max_rows * widest // 32)
    return floats * 4 + max_rows * widest + 16 * 16


# ---------------------------------------------------------------- the model

@dataclass
class ModelInfo:
    """What the arena arithmetic needs to know about a model file (as stored or as exported)."""
    path: str
    name: str
    config: dict          # el_config's fields
    file_bytes: int       # what must be stored for the runtime to read in place
    n_kv: int
    n_tensors: int
    n_tokens: int
    max_piece_len: int
    has_unused: bool
    types: dict           # tensor type name -> bytes of tensors of that type
    quant: str | None     # the export type the sizes are for, None: as stored


def _kv_value_bytes(value) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return 4
    if isinstance(value, str):
        return 8 + len(value.encode("utf-8"))
    if isinstance(value, list):  # typed array: element type u32, count u64, elements
        return 4 + 8 + sum(_kv_value_bytes(v) for v in value)
    raise TypeError(type(value))


def _export_header(model, quant: str, tensors: list) -> tuple:
    """(n_kv, header bytes) of the file gguf_file.write_gguf writes: the same keys, in its order."""
    vocab = model.vocab
    kvs = [(G.KEY_ARCH, G.ARCH), (G.KEY_NAME, model.name), (G.KEY_FILE_TYPE, 0)]
    if quant in ("q8_0", "q4_0"):
        kvs.append((G.KEY_QUANT_VERSION, 0))
    kvs += [(key, 0) for key in (G.KEY_CONTEXT, G.KEY_DIM, G.KEY_LAYERS, G.KEY_HIDDEN, G.KEY_HEADS,
                                 G.KEY_KV_HEADS, G.KEY_NORM_EPS, G.KEY_ROPE_DIM, G.KEY_ROPE_BASE, G.KEY_VOCAB_SIZE)]
    kvs += [(G.KEY_TOK_MODEL, "llama"), (G.KEY_TOKENS, list(vocab.tokens)), (G.KEY_SCORES, [0.0] * len(vocab)),
            (G.KEY_TOKEN_TYPES, [0] * len(vocab)), (G.KEY_BOS, 0), (G.KEY_EOS, 0), (G.KEY_UNK, 0),
            (G.KEY_ADD_BOS, True), (G.KEY_ADD_EOS, False)]
    header = 4 + 4 + 8 + 8
    header += sum(8 + len(key.encode()) + 4 + _kv_value_bytes(value) for key, value in kvs)
    header += sum(8 + len(name.encode()) + 4 + 8 * len(shape) + 4 + 8 for name, shape, _ in tensors)
    return len(kvs), header


def _tensor_bytes(shape, qtype) -> int:
    block, type_size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * type_size


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def model_info(model_path=None, quant: str | None = None) -> ModelInfo:
    """The model at model_path (None: the embedded default) as stored, or, with `quant`,
    as `edgellama export --quant` would write it (sizes computed, nothing written).
    A training checkpoint counts as its F32 export when no quant is given."""
    path = resolve(model_path)
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise EdgeLlamaError(f"{path}: cannot read ({e.strerror})") from None
    is_gguf = head[:4] == G.GGUF_MAGIC
    if is_gguf:
        g = G.read_gguf(path)
        model, stored = g.model, [(e.name, e.shape, e.qtype) for e in g.entries]
    else:
        model, stored = load_model(path), None
        quant = quant or "f32"
    cfg, vocab = model.config, model.vocab
    if quant is None:
        tensors, file_bytes = stored, g.file_size
        n_tensors, n_kv = int.from_bytes(head[8:16], "little"), int.from_bytes(head[16:24], "little")
    else:
        shapes = [(name, shape) for name, shape, _ in stored] if stored else list(cfg.tensor_shapes().items())
        tensors = [(name, shape, Q.choose_type(name, shape, quant).qtype) for name, shape in shapes]
        n_kv, header = _export_header(model, quant, tensors)
        file_bytes = _align(header, 32) + sum(_align(_tensor_bytes(s, t), 32) for _, s, t in tensors)
        n_tensors = len(tensors)
    types = {}
    for _, shape, qtype in tensors:
        name = GGMLQuantizationType(qtype).name
        types[name] = types.get(name, 0) + _tensor_bytes(shape, qtype)
    pieces = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in vocab.tokens]
    config = {"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
              "head_dim": cfg.head_dim, "kv_dim": cfg.kv_dim, "hidden_dim": cfg.hidden_dim,
              "vocab_size": len(pieces), "context_length": cfg.max_seq_len, "norm_eps": cfg.norm_eps,
              "rope_theta": cfg.rope_theta}
    return ModelInfo(str(path), model.name, config, file_bytes, n_kv, n_tensors, len(pieces),
                     max((len(p) for p in pieces), default=0), any(int(t) == 5 for t in vocab.types),
                     dict(sorted(types.items(), key=lambda kv: -kv[1])), quant)


# ---------------------------------------------------------------- the arena

class _Arena:
    """el_arena_alloc's arithmetic: offsets aligned up, bytes charged to a part."""

    def __init__(self):
        self.used = 0
        self.parts = dict.fromkeys(PARTS, 0)

    def take(self, part: str, nbytes: int, align: int):
        start = _align(self.used, align)
        self.parts["other"] += start - self.used  # alignment padding
        self.parts[part] += nbytes
        self.used = start + nbytes


def tokenize_scratch_bytes(prompt_bytes: int, has_unused: bool, pointer_bytes: int) -> int:
    """el_tokenize's scratch for a text of prompt_bytes (el_tokenizer.c: encode_text,
    alloc_bpe), after a chat turn's text buffer (el_runtime.c: chat_begin), alignment included."""
    s = struct_sizes(pointer_bytes)
    n_sym = prompt_bytes + 1  # a U+2581 in front, then at most one symbol per byte
    a = _Arena()
    a.take("other", prompt_bytes + 128, 1)           # chat_begin's text
    a.take("other", 3 + 3 * prompt_bytes, 1)         # the normalized text
    a.take("other", n_sym * s["tok_symbol"], pointer_bytes)
    a.take("other", 3 * n_sym * s["tok_pair"], 4)
    if has_unused:
        a.take("other", 3 * n_sym * s["tok_split"], 4)
    return a.used


def arena_parts(info: ModelInfo, ctx: int, block_size: int, max_seqs: int, max_batch_tokens: int, kv_dtype: str,
                prompt_bytes: int, pointer_bytes: int, threads: int = 1, speculative_tokens: int = 0) -> tuple:
    """(parts dict, kv blocks, kv block bytes): the arena el_runtime_open carves, in its order.
    Each sequence's step holds a logits row, and one per speculative draft."""
    max_logits = max_seqs * (1 + speculative_tokens)
    s, cfg = struct_sizes(pointer_bytes), info.config
    a = _Arena()
    a.take("other", s["el_runtime"], 16)
    # el_model_load: el_gguf_parse's tables, read_vocab, load_layers
    a.take("model tables", info.n_kv * s["el_gguf_kv"], 8)
    a.take("model tables", info.n_tensors * s["el_gguf_tensor"], 8)
    a.take("model tables", info.n_tokens * s["el_str"], 8)
    a.take("model tables", info.n_tokens * 4, 8)
    a.take("model tables", info.n_tokens * 4, 8)
    a.take("model tables", cfg["n_layers"] * s["el_layer_weights"], 8)
    # el_engine_init: tokenizer, KV pool, forward state, sampler, sequences, batch
    n_slots = 2
    while n_slots < 2 * info.n_tokens:
        n_slots *= 2
    a.take("tokenizer", n_slots * 4, 4)
    block_bytes = kv_block_bytes(cfg, block_size, kv_dtype)
    blocks_per_seq = -(-ctx // block_size)
    n_blocks = max_seqs * blocks_per_seq
    a.take("KV pool", n_blocks * block_bytes + KV_ALIGN_SLACK, 16)
    a.take("activations", forward_bytes(cfg, max_batch_tokens, max_logits, ctx, threads), 16)
    for _ in range(3):
        a.take("sampler", info.n_tokens * 4, 4)
    a.take("sampler", SAMPLER_BUCKETS * 8, 8)
    text_capacity = ctx * (info.max_piece_len + 4) + 8
    a.take("sequences", s["el_sequence"] * max_seqs, 8)
    for _ in range(max_seqs):
        a.take("sequences", 4 * ctx, 4)
        a.take("sequences", 4 * blocks_per_seq, 4)
        a.take("sequences", text_capacity, 1)
    a.take("other", s["el_batch_row"] * max_batch_tokens, 8)
    a.take("other", 4 * max_batch_tokens, 4)
    a.take("other", 2 * max(info.max_piece_len, 5) + 8, 1)
    # logprobs: one entry per event; beam search: one search's candidates (2W for each
    # of W beams, W <= max_seqs / 2)
    a.take("other", s["el_logprob_entry"] * max_seqs * (2 + speculative_tokens), 8)  # el_engine_max_events
    beam_width = min(MAX_BEAM_WIDTH, max_seqs // 2)
    if beam_width > 0:
        a.take("other", s["beam_candidate"] * 2 * beam_width * beam_width, 8)
    # above the engine's share: the largest scratch one call takes (tokenizing a prompt
    # or chat turn; the logits row a step with forks or logprobs keeps; el_runtime_logits'
    # block table is smaller)
    scratch = max(tokenize_scratch_bytes(prompt_bytes, info.has_unused, pointer_bytes), 4 * n_blocks + 4,
                  4 * info.n_tokens + 16)
    a.take("prompt scratch", scratch, 1)
    return a.parts, n_blocks, block_bytes


# ---------------------------------------------------------------- the plan

@dataclass
class Plan:
    board: str
    os: str
    arch: str
    pointer_bytes: int
    model: str
    model_name: str
    quant: str | None             # None: as stored
    tensor_types: dict            # type -> bytes
    context_length: int           # the model's
    ctx: int                      # max_model_len planned for
    block_size: int
    max_seqs: int
    max_batch_tokens: int
    kv_dtype: str
    threads: int                  # workers the runtime runs with (each has its own attention scratch)
    prompt_bytes: int
    weights_bytes: int            # the model file, read in place
    weights_location: str         # "file (mmap)", "flash", "psram", "ram", or "" when it fits nowhere
    weights_room: int             # bytes free where the weights go (or in the best place, when none fits)
    kv_blocks: int
    kv_block_bytes: int
    parts: dict                   # arena part -> bytes, in allocation order
    part_notes: dict
    arena_total: int
    arena_budget: int
    arena_location: str           # "RAM", "PSRAM", "process memory", or ""
    largest_ctx: int              # 0 when not even one token fits
    fits: bool
    reasons: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    # A request's samples are sequences (forks share the prompt's blocks, so the pool of
    # max_seqs full sequences holds them); a beam search of width W holds 2W of them.
    max_samples: int = 1
    max_beam_width: int = 0
    constraint_bytes: int = 0  # the largest structured-output automaton its protocol server holds
    speculative_tokens: int = 0  # n-gram drafts a sequence verifies per step, and the n-grams looked up
    prompt_lookup_max: int = 0
    prompt_lookup_min: int = 0

    @property
    def verdict(self) -> str:
        if self.fits:
            return f"fits ({self.arena_budget - self.arena_total:,} bytes of the arena to spare)"
        return "does not fit: " + "; ".join(self.reasons)

    def engine_options(self) -> EngineOptions:
        """The el_engine_options the plan is for: a build must open the runtime with these
        (the KV pool is the runtime's default, kv_cache_bytes 0: max_seqs full sequences)."""
        return EngineOptions(max_model_len=self.ctx, block_size=self.block_size, kv_dtype=self.kv_dtype,
                             max_seqs=self.max_seqs, max_batch_tokens=self.max_batch_tokens, kv_cache_bytes=0,
                             arena_bytes=self.arena_budget, threads=self.threads,
                             speculative_tokens=self.speculative_tokens, prompt_lookup_max=self.prompt_lookup_max,
                             prompt_lookup_min=self.prompt_lookup_min)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = self.verdict
        d["engine_options"] = self.engine_options().to_dict()
        return d


def _board(board) -> Board:
    return get_board(board if isinstance(board, Board) else str(board))


def model_store_kept(board: Board, weights: int) -> int:
    """The flash a PlatformIO board keeps for models over the line (its model_store), or 0
    when the image's own model of `weights` bytes would not fit beside it: then the image
    keeps the room, as it did before there was a store, and has no store."""
    if not board.model_store or not board.flash:
        return 0
    return board.model_store if weights <= board.image_flash - FLASH_PROGRAM_RESERVE[board.os] - board.model_store else 0


def _placement(board: Board, weights: int) -> dict:
    """Where the weights and the arena go, and the arena's budget (see the module docstring)."""
    out = {"weights_location": "", "weights_room": 0, "arena_location": "", "arena_budget": 0, "problems": []}
    if board.os not in MCU_OS:
        out["weights_location"] = "file (mmap)"
        ram_free = board.ram - LINUX_OS_RESERVE
        out["arena_budget"] = board.arena or max(ram_free - weights, 0)
        out["arena_location"] = "process memory"
        out["weights_room"] = ram_free - out["arena_budget"]
        if board.storage and weights > board.storage:
            out["problems"].append(f"the model file of {weights:,} bytes is larger than the storage of "
                                   f"{board.storage:,} bytes")
        return out
    # the program, and the flash a PlatformIO board keeps for models over the line, are not the image's
    store = model_store_kept(board, weights)
    flash_free = max(board.image_flash - FLASH_PROGRAM_RESERVE[board.os] - store, 0) if board.flash else 0
    # a board without flash runs its program from RAM too
    ram_reserve = RAM_RESERVE[board.os] + board.constraint_bytes + (0 if board.flash else
                                                                     FLASH_PROGRAM_RESERVE[board.os])
    ram_free = max(board.ram - ram_reserve, 0)
    arena_in_ram = arena_in_psram = 0
    if board.arena:
        out["arena_budget"] = board.arena
        if board.arena <= ram_free:
            out["arena_location"], arena_in_ram = "RAM", board.arena
        elif board.arena <= board.psram:
            out["arena_location"], arena_in_psram = "PSRAM", board.arena
        else:
            out["problems"].append(f"the board's arena of {board.arena:,} bytes fits neither RAM ({board.ram:,} "
                                   f"bytes less {ram_reserve // KiB} KiB for stack and program) "
                                   f"nor PSRAM ({board.psram:,} bytes)")
    psram_room, ram_room = board.psram - arena_in_psram, ram_free - arena_in_ram
    if board.flash and weights <= flash_free:
        out["weights_location"], out["weights_room"] = "flash", flash_free
    elif board.psram and weights <= psram_room:
        out["weights_location"], out["weights_room"] = "psram", psram_room
    elif not board.flash and weights <= ram_room:
        out["weights_location"], out["weights_room"] = "ram", ram_room
    else:
        flash = (f"the app partition of {board.image_flash:,} bytes" if board.image_flash != board.flash
                 else f"{board.flash:,} bytes")
        where = [f"flash ({flash} less {FLASH_PROGRAM_RESERVE[board.os] // KiB} KiB for the program"
                 f" = {flash_free:,})" if board.flash else "flash (none)",
                 f"PSRAM ({psram_room:,} bytes free)" if board.psram else "PSRAM (none)"]
        if not board.flash:
            where.append(f"RAM ({ram_room:,} bytes free beside the arena)")
        out["weights_room"] = max(flash_free, psram_room, 0 if board.flash else ram_room)
        out["problems"].append(f"the model file of {weights:,} bytes fits neither " + " nor ".join(where))
    if not board.arena:
        w = weights if out["weights_location"] in ("psram", "ram") else 0
        psram_left = board.psram - (w if out["weights_location"] == "psram" else 0)
        ram_left = ram_free - (w if out["weights_location"] == "ram" else 0)
        if psram_left > ram_left:
            out["arena_location"], out["arena_budget"] = "PSRAM", psram_left
        else:
            out["arena_location"], out["arena_budget"] = "RAM", max(ram_left, 0)
    return out


def plan(board, model_path=None, ctx=None, quant=None, max_seqs=None, kv_dtype="f32", *, block_size=None,
         max_batch_tokens=None, prompt_bytes=None, threads=None, speculative_tokens=0, prompt_lookup_max=0,
         prompt_lookup_min=0, info=None) -> Plan:
    """The plan for running the model (None: the embedded default) on `board` (a Board or
    its name). quant None plans the model as stored, else as `edgellama export --quant`
    would write it. Defaults for the rest (None or 0) are in the module docstring; every
    value is checked by EngineOptions before any arithmetic; `info` (from
    model_info, for the same model and quant) saves reading the file again."""
    board = _board(board)
    requested = EngineOptions(max_model_len=ctx or 0, block_size=block_size or 0, kv_dtype=kv_dtype,
                              max_seqs=max_seqs or 0, max_batch_tokens=max_batch_tokens or 0,
                              threads=threads or 0, speculative_tokens=speculative_tokens or 0,
                              prompt_lookup_max=prompt_lookup_max or 0,
                              prompt_lookup_min=prompt_lookup_min or 0)  # checks every value before any arithmetic
    if quant is not None and quant not in Q.QUANT_NAMES:
        close = difflib.get_close_matches(quant, list(Q.QUANT_NAMES), n=1)
        raise EdgeLlamaError(f"--quant: unknown type {quant!r}; use one of {', '.join(Q.QUANT_NAMES)}"
                             + (f" (did you mean {close[0]}?)" if close else ""))
    info = info or model_info(model_path, quant)
    mcu = board.os in MCU_OS
    model_ctx = info.config["context_length"]
    ctx_given = bool(requested.max_model_len)
    options = planned_options(board, requested, model_ctx)
    ctx, max_seqs, block_size = options.max_model_len, options.max_seqs, options.block_size
    max_batch_tokens, threads = options.max_batch_tokens, options.threads

    def prompt_for(c):
        if prompt_bytes is not None:
            return prompt_bytes
        return min(PROMPT_BYTES_PER_TOKEN * c, MCU_MAX_PROMPT_BYTES) if mcu else PROMPT_BYTES_PER_TOKEN * c

    pointer_bytes = POINTER_BYTES.get(board.arch, 8)

    def total(c, dtype):
        parts, _, _ = arena_parts(info, c, block_size, max_seqs, max_batch_tokens, dtype, prompt_for(c),
                                  pointer_bytes, threads, speculative_tokens or 0)
        return sum(parts.values())

    def largest_ctx(dtype):
        """The arena grows with the context, so bisect on [0, the model's context]."""
        lo, hi = 0, model_ctx
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if total(mid, dtype) <= budget else (lo, mid - 1)
        return lo

    parts, n_blocks, block_bytes = arena_parts(info, ctx, block_size, max_seqs, max_batch_tokens, kv_dtype,
                                               prompt_for(ctx), pointer_bytes, threads, speculative_tokens or 0)
    arena_total = sum(parts.values())
    place = _placement(board, info.file_bytes)
    budget = place["arena_budget"]
    largest = largest_ctx(kv_dtype)
    reasons = list(place["problems"])
    if ctx > model_ctx:
        reasons.append(f"ctx {ctx} is longer than the model's context of {model_ctx}")
    if arena_total > budget:
        where = f"the board's arena holds only {budget:,} bytes" if board.arena else \
            f"only {budget:,} bytes of {place['arena_location'] or 'memory'} are left for the arena"
        hint = (f"the largest context that fits is {largest} tokens (--ctx {largest})" if largest
                else "not even a context of one token fits")
        if kv_dtype == "f32":
            int8 = largest_ctx("int8")
            if int8 > largest:
                hint += f", or {int8} with --kv-dtype int8"
        reasons.append(f"the arena needs {arena_total:,} bytes at ctx {ctx} but {where}; {hint}")
    if not mcu:
        ram_free = board.ram - LINUX_OS_RESERVE
        if info.file_bytes + arena_total > ram_free:
            reasons.append(f"the model file ({info.file_bytes:,} bytes, mmap'ed) and the arena "
                           f"({arena_total:,} bytes) need more than the {ram_free:,} bytes of RAM left beside the "
                           f"OS ({LINUX_OS_RESERVE // MiB} MiB)")
    notes = []
    if not ctx_given:
        notes.append(f"ctx defaults to the model's context ({model_ctx})")
    if board.model_store and mcu and not model_store_kept(board, info.file_bytes):
        notes.append(f"no model store: the model leaves no room for the board's {board.model_store // KiB} KiB of "
                     "flash for models over the line (a smaller one, e.g. Q8_0, leaves it)")
    elif board.model_store and mcu:
        notes.append(f"{board.model_store // KiB} KiB of flash kept for models over the line (`edgellama flash "
                     "--port`)")
    part_notes = dict(PARTS)
    part_notes["KV pool"] = (f"{n_blocks} blocks x {block_bytes:,} bytes ({block_size} tokens x "
                             f"{info.config['n_layers']} layers, {kv_dtype}, bookkeeping included)")
    group = info.config["n_heads"] // info.config["n_kv_heads"]
    part_notes["activations"] = (f"forward pass: {max_batch_tokens} rows, "
                                 f"{max_seqs * (1 + (speculative_tokens or 0))} logits row(s), "
                                 f"{ctx} attention scores x {group} head(s) of a kv group x {threads} thread(s)")
    part_notes["sequences"] = (f"{max_seqs} x (struct, {ctx} tokens, {-(-ctx // block_size)}-entry block table, "
                               f"{ctx * (info.max_piece_len + 4) + 8:,} bytes of text)")
    part_notes["prompt scratch"] = (f"tokenizing a prompt or chat turn of {prompt_for(ctx):,} bytes, or the "
                                    f"logits row a step with forks or logprobs keeps")
    part_notes["tokenizer"] = f"piece hash table for {info.n_tokens:,} pieces"
    return Plan(
        board=board.name, os=board.os, arch=board.arch, pointer_bytes=pointer_bytes, model=info.path,
        model_name=info.name, quant=info.quant, tensor_types=info.types, context_length=model_ctx, ctx=ctx,
        block_size=block_size, max_seqs=max_seqs, max_batch_tokens=max_batch_tokens, kv_dtype=kv_dtype,
        threads=threads, prompt_bytes=prompt_for(ctx), weights_bytes=info.file_bytes,
        weights_location=place["weights_location"],
        weights_room=place["weights_room"], kv_blocks=n_blocks, kv_block_bytes=block_bytes, parts=parts,
        part_notes=part_notes, arena_total=arena_total, arena_budget=budget,
        arena_location=place["arena_location"], largest_ctx=largest, fits=not reasons, reasons=reasons,
        notes=notes, max_samples=max_seqs, max_beam_width=min(MAX_BEAM_WIDTH, max_seqs // 2),
        constraint_bytes=board.constraint_bytes, speculative_tokens=requested.speculative_tokens,
        prompt_lookup_max=requested.prompt_lookup_max, prompt_lookup_min=requested.prompt_lookup_min)


def planned_options(board: Board, requested: EngineOptions, model_ctx: int) -> EngineOptions:
    """The requested options with every 0 replaced by the default for this board (module docstring)."""
    mcu = board.os in MCU_OS
    max_seqs = requested.max_seqs or (MCU_MAX_SEQS if mcu else LINUX_MAX_SEQS)
    return replace(
        requested,
        max_model_len=requested.max_model_len or model_ctx,
        block_size=requested.block_size or board.kv_block_size,
        max_seqs=max_seqs,
        max_batch_tokens=requested.max_batch_tokens or (max(MCU_MAX_BATCH_TOKENS, max_seqs) if mcu
                                                        else max(max_seqs, 32)),
        threads=1 if mcu else (requested.threads or board.threads),  # bare metal runs the plain loop
    )


def plan_engine(board, model_path=None, quant=None, requested: EngineOptions | None = None, *, info=None) -> Plan:
    """plan() for the engine options a build asks for (0: the planner's default). The KV pool
    and the arena are the planner's to size, so a build cannot ask for them."""
    requested = requested or EngineOptions()
    for name in ("kv_cache_bytes", "arena_bytes"):
        if getattr(requested, name):
            raise EdgeLlamaError(f"engine option {name}: decided by the plan (from the board's memory), "
                                 f"not per build; got {getattr(requested, name)}")
    return plan(board, model_path, requested.max_model_len or None, quant, requested.max_seqs or None,
                requested.kv_dtype, block_size=requested.block_size or None,
                max_batch_tokens=requested.max_batch_tokens or None, threads=requested.threads or None,
                speculative_tokens=requested.speculative_tokens, prompt_lookup_max=requested.prompt_lookup_max,
                prompt_lookup_min=requested.prompt_lookup_min, info=info)


def require_fits(p: Plan) -> Plan:
    """The plan when it fits; otherwise an EdgeLlamaError with its numbers (for `build`)."""
    if not p.fits:
        raise EdgeLlamaError(f"{p.model_name} ({Path(p.model).name}) does not fit {p.board}: " + "; ".join(p.reasons))
    return p


# ---------------------------------------------------------------- printing

def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n % scale else f"{n // scale} {unit}"
    return f"{n} B"


def format_plan(p: Plan) -> str:
    types = "+".join(p.tensor_types) or "?"
    quant = f"exported as {p.quant}" if p.quant else "as stored"
    if p.weights_location == "file (mmap)":
        weights = f"file (mmap), {p.weights_bytes:,} bytes of page cache"
    elif p.weights_location:
        weights = f"{p.weights_location}: {p.weights_bytes:,} of {p.weights_room:,} bytes free"
    else:
        weights = f"nowhere: {p.weights_bytes:,} bytes, at most {p.weights_room:,} free in any one place"
    lines = [
        f"plan     {p.model_name} ({types}, {quant}) on {p.board} ({p.os}, {p.arch}, {8 * p.pointer_bytes}-bit)",
        (f"engine   ctx {p.ctx} (model: {p.context_length}), KV blocks of {p.block_size} tokens in {p.kv_dtype}, "
         f"{p.max_seqs} sequence(s), {p.max_batch_tokens} rows per step"),
        f"weights  {weights}",
        (f"arena    {p.arena_total:,} of {p.arena_budget:,} bytes ({_size(p.arena_budget)}) in "
         f"{p.arena_location or 'nowhere'}"),
    ]
    width = max(len(k) for k in p.parts)
    for name, nbytes in p.parts.items():
        lines.append(f"  {name:<{width}} {nbytes:>12,}  {p.part_notes.get(name, '')}")
    lines.append(f"  {'total':<{width}} {p.arena_total:>12,}")
    largest = f"{p.largest_ctx} tokens" + (" (the model's context)" if p.largest_ctx == p.context_length else "")
    lines.append(f"largest  context that fits: {largest}")
    beams = (f"beam search up to width {p.max_beam_width}" if p.max_beam_width
             else "no beam search (width W holds 2W sequences: --max-seqs 2 or more)")
    lines.append(f"samples  up to n={p.max_samples} per request (forks of one prefill), {beams}")
    lines.append(f"outputs  structured outputs whose automaton is at most {p.constraint_bytes:,} bytes "
                 "(static, beside the arena)")
    if p.speculative_tokens:
        lines.append(f"drafts   n-gram speculation: {p.speculative_tokens} drafts a step per sequence, each a "
                     "logits row of the activations")
    lines.append(f"verdict  {p.verdict}")
    lines += [f"note     {n}" for n in p.notes]
    return "\n".join(lines)


def plan_json(p: Plan) -> str:
    return json.dumps(p.to_dict(), indent=1)
