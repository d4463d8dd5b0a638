"""The model as plain data: hyper-parameters, vocabulary and float32 weights.

Every reader (training checkpoint, GGUF, llama2.c .bin, Hugging Face folder) produces
a LlamaModel and every writer consumes one. Tensors are named once, with llama.cpp's
GGUF names, and stored as numpy arrays in PyTorch's (out_features, in_features)
order; the PyTorch reference model uses the same names for its parameters.
No torch here, so building and flashing never need it.
"""

from dataclasses import asdict, dataclass, field

from edgellama.errors import EdgeLlamaError

# sentencepiece piece types; GGUF's tokenizer.ggml.token_type uses the same numbers.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class LlamaConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    hidden_dim: int
    max_seq_len: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tied_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def validate(self, where="model config"):
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise EdgeLlamaError(f"{where}: {name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise EdgeLlamaError(f"{where}: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise EdgeLlamaError(f"{where}: head size {self.head_dim} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            raise EdgeLlamaError(f"{where}: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if not self.norm_eps > 0:
            raise EdgeLlamaError(f"{where}: norm_eps must be positive, got {self.norm_eps}")
        return self

    def tensor_shapes(self) -> dict:
        """Every tensor the model has, by GGUF name, in (out, in) order."""
        d, h, kv = self.dim, self.hidden_dim, self.kv_dim
        shapes = {"token_embd.weight": (self.vocab_size, d)}
        for i in range(self.n_layers):
            shapes.update({
                f"blk.{i}.attn_norm.weight": (d,),
                f"blk.{i}.attn_q.weight": (d, d),
                f"blk.{i}.attn_k.weight": (kv, d),
                f"blk.{i}.attn_v.weight": (kv, d),
                f"blk.{i}.attn_output.weight": (d, d),
                f"blk.{i}.ffn_norm.weight": (d,),
                f"blk.{i}.ffn_gate.weight": (h, d),
                f"blk.{i}.ffn_down.weight": (d, h),
                f"blk.{i}.ffn_up.weight": (h, d),
            })
        shapes["output_norm.weight"] = (d,)
        if not self.tied_embeddings:
            shapes["output.weight"] = (self.vocab_size, d)
        return shapes

    def n_params(self) -> int:
        # Arithmetic rather than a sum over tensor_shapes(): a corrupt header with a huge
        # layer count must be rejected by size before anything is allocated for it.
        d, h, kv = self.dim, self.hidden_dim, self.kv_dim
        per_layer = 2 * d + 2 * d * d + 2 * d * kv + 3 * d * h
        classifiers = 1 if self.tied_embeddings else 2
        return classifiers * self.vocab_size * d + self.n_layers * per_layer + d

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Vocab:
    """A sentencepiece-style vocabulary: pieces with '▁' for spaces, scores, types."""

    tokens: list
    scores: list
    types: list
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 0
    chat_template: str = ""  # Jinja text (GGUF tokenizer.chat_template); the runtime picks its template from it

    def __len__(self):
        return len(self.tokens)

    def validate(self, where="vocabulary"):
        n = len(self.tokens)
        if n == 0 or len(self.scores) != n or len(self.types) != n:
            raise EdgeLlamaError(f"{where}: tokens, scores and types must be non-empty lists of one length")
        for name in ("bos_id", "eos_id", "unk_id"):
            if not 0 <= getattr(self, name) < n:
                raise EdgeLlamaError(f"{where}: {name} {getattr(self, name)} is outside the vocabulary of {n}")
        return self


@dataclass
class LlamaModel:
    config: LlamaConfig
    vocab: Vocab
    tensors: dict = field(default_factory=dict)  # GGUF name -> float32 ndarray
    name: str = "edgellama"

    def validate(self, where="model"):
        self.config.validate(where)
        self.vocab.validate(where)
        if len(self.vocab) != self.config.vocab_size:
            raise EdgeLlamaError(
                f"{where}: vocabulary has {len(self.vocab)} tokens but the model expects {self.config.vocab_size}")
        expected = self.config.tensor_shapes()
        for name, shape in expected.items():
            if name not in self.tensors:
                raise EdgeLlamaError(f"{where}: tensor {name} is missing")
            if tuple(self.tensors[name].shape) != shape:
                raise EdgeLlamaError(f"{where}: tensor {name} has shape {tuple(self.tensors[name].shape)}, expected {shape}")
        extra = sorted(set(self.tensors) - set(expected))
        if extra:
            raise EdgeLlamaError(f"{where}: unexpected tensor {extra[0]}")
        return self
