"""The engine options a build opens the runtime with: one typed object from the plan
to the build, its manifest and the program on the device.

EngineOptions mirrors el_engine_options (firmware/core/el_engine.h) plus the arena's
size, which the C side takes beside the options. A field of 0 means "the default":
the runtime's (el_engine.c) on Linux, the main loop's (firmware/apps/baremetal/main.c)
on bare-metal and PlatformIO boards. The planner (edgellama/boards/planner.py) fills
every field in; `edgellama build` writes them to manifest.json under "engine", and each
target turns them into what its program reads (edgellama-run flags, config.mk, -D
defines). Bad values are refused here, once, as one EdgeLlamaError line naming the field.
"""

from dataclasses import asdict, dataclass, fields

from edgellama.errors import EdgeLlamaError

# el_kv_dtype (el_kv_cache.h): the name users write and the C enum's value
KV_DTYPES = {"f32": 0, "int8": 1}
C_INT_MAX = (1 << 31) - 1
C_LONG_LONG_MAX = (1 << 63) - 1
MAX_BLOCK_SIZE = 1 << 20  # el_engine_init refuses larger blocks


@dataclass(frozen=True)
class EngineOptions:
    max_model_len: int = 0      # tokens per sequence, prompt and output; 0 = the model's context
    block_size: int = 0         # tokens per KV block; 0 = 16
    kv_dtype: str = "f32"       # a key of KV_DTYPES
    max_seqs: int = 0           # sequences at once; 0 = 8 on Linux, 1 on bare metal
    max_batch_tokens: int = 0   # rows per forward step; 0 = max(max_seqs, 32) on Linux, 8 on bare metal
    kv_cache_bytes: int = 0     # the KV pool; 0 = enough for max_seqs full sequences
    arena_bytes: int = 0        # the one block the runtime allocates from; 0 = the board's
    threads: int = 0            # workers of the parallel hook (sizes per-worker scratch); 0 = 1
    speculative_tokens: int = 0  # n-gram drafts a sequence verifies per step (el_speculate.h); 0 = none
    prompt_lookup_max: int = 0  # the longest n-gram looked up for drafts; 0 = 5
    prompt_lookup_min: int = 0  # the shortest; 0 = prompt_lookup_max

    def __post_init__(self):
        for name, limit in INT_LIMITS.items():
            _check_int(name, getattr(self, name), limit)
        if self.block_size > MAX_BLOCK_SIZE:
            _fail("block_size", f"must be at most {MAX_BLOCK_SIZE:,} tokens", self.block_size)
        if not isinstance(self.kv_dtype, str) or self.kv_dtype not in KV_DTYPES:
            _fail("kv_dtype", f"must be one of {', '.join(KV_DTYPES)}", self.kv_dtype)
        # el_engine_init's rule, checked where both are given (0 leaves it to the runtime)
        if self.max_seqs and self.max_batch_tokens and self.max_batch_tokens < self.max_seqs:
            _fail("max_batch_tokens", f"must be at least max_seqs ({self.max_seqs})", self.max_batch_tokens)
        if self.prompt_lookup_min and self.prompt_lookup_max and self.prompt_lookup_min > self.prompt_lookup_max:
            _fail("prompt_lookup_min", f"must be at most prompt_lookup_max ({self.prompt_lookup_max})",
                  self.prompt_lookup_min)

    @property
    def kv_dtype_code(self) -> int:
        """The el_kv_dtype value (what EL_KV_DTYPE and the C API take)."""
        return KV_DTYPES[self.kv_dtype]

    def to_dict(self) -> dict:
        return asdict(self)

    def llm_arguments(self) -> dict:
        """The fields given (not 0) as LLM(...) keyword arguments, for the runtime on this
        machine (arena_bytes has no meaning there: the host library sizes its own)."""
        names = {"max_model_len": "max_model_len", "block_size": "block_size", "max_seqs": "max_num_seqs",
                 "max_batch_tokens": "max_num_batched_tokens", "kv_cache_bytes": "kv_cache_bytes",
                 "threads": "threads"}
        arguments = {names[k]: v for k, v in self.to_dict().items() if k in names and v}
        arguments["kv_dtype"] = self.kv_dtype
        if self.speculative_tokens:
            arguments["speculative_config"] = {
                "method": "ngram", "num_speculative_tokens": self.speculative_tokens,
                **{k: v for k, v in (("prompt_lookup_max", self.prompt_lookup_max),
                                     ("prompt_lookup_min", self.prompt_lookup_min)) if v}}
        return arguments

    @classmethod
    def from_dict(cls, data: dict) -> "EngineOptions":
        """From manifest JSON; a missing field (or null) is its default, an unknown one an error."""
        if not isinstance(data, dict):
            raise EdgeLlamaError(f"engine options: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - FIELD_NAMES)
        if unknown:
            raise EdgeLlamaError(f"engine options: unknown field {unknown[0]!r} "
                                 f"(known: {', '.join(FIELD_NAMES_ORDERED)})")
        return cls(**{name: value for name, value in data.items() if value is not None})


FIELD_NAMES_ORDERED = tuple(f.name for f in fields(EngineOptions))
FIELD_NAMES = frozenset(FIELD_NAMES_ORDERED)
INT_LIMITS = {"max_model_len": C_INT_MAX, "block_size": C_INT_MAX, "max_seqs": C_INT_MAX,
              "max_batch_tokens": C_INT_MAX, "kv_cache_bytes": C_LONG_LONG_MAX, "arena_bytes": C_LONG_LONG_MAX,
              "threads": C_INT_MAX, "speculative_tokens": 16, "prompt_lookup_max": 1024, "prompt_lookup_min": 1024}


def _fail(name: str, rule: str, value):
    raise EdgeLlamaError(f"engine option {name}: {rule}, got {value!r}")


def _check_int(name: str, value, limit: int):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, "must be a whole number", value)
    if not 0 <= value <= limit:
        _fail(name, f"must be 0 (the default) to {limit:,}", value)
