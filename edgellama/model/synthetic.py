"""Random-weight models of a preset's shape, for benchmarks and tests.

Speed depends on a model's shape, not on what it learned, so `edgellama bench --suite`
measures shapes such as llama2.c's stories15M without shipping or downloading them: the
weights are N(0, 0.02) from a seed, the norms 1, and the vocabulary is synthetic (the
sentencepiece control and byte tokens, then pieces "▁a", "▁b", ... "▁aa", ...), so the
tokenizer, sampler and classifier do the work of a real vocabulary of that size.
"""

import numpy as np

from edgellama.model.gguf_file import write_gguf
from edgellama.model.llama import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, LlamaConfig, LlamaModel, Vocab
from edgellama.model.presets import preset

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _piece(i: int) -> str:
    """The i-th of "a", "b", ..., "z", "aa", "ab", ... (bijective base 26)."""
    text = ""
    i += 1
    while i > 0:
        i, digit = divmod(i - 1, 26)
        text = LETTERS[digit] + text
    return "\u2581" + text


def synthetic_vocab(size: int) -> Vocab:
    if size < 260:
        raise ValueError(f"a synthetic vocabulary needs at least 260 tokens (3 control, 256 bytes), got {size}")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256
    tokens += [_piece(i) for i in range(size - len(tokens))]
    types += [TOKEN_NORMAL] * (size - len(types))
    return Vocab(tokens=tokens, scores=[-float(i) for i in range(size)], types=types)


def synthetic_model(preset_name: str, vocab_size: int | None = None, seed: int = 0, **overrides) -> LlamaModel:
    """A model of the preset's shape (fields overridable) with random weights."""
    shape = {**preset(preset_name), **overrides}
    if vocab_size is not None:
        shape["vocab_size"] = vocab_size
    config = LlamaConfig(**shape).validate()
    rng = np.random.default_rng(seed)
    tensors = {name: (np.ones(shape, np.float32) if len(shape) == 1 else
                      rng.normal(0.0, 0.02, shape).astype(np.float32))
               for name, shape in config.tensor_shapes().items()}
    return LlamaModel(config, synthetic_vocab(config.vocab_size), tensors,
                      name=f"synthetic-{preset_name}").validate()


def write_synthetic(path, preset_name: str, quant: str = "f32", vocab_size: int | None = None, seed: int = 0,
                    **overrides):
    """Write a synthetic model as GGUF (quant: f32, f16, q8_0, q4_0); returns the path."""
    write_gguf(synthetic_model(preset_name, vocab_size, seed, **overrides), path, quant)
    return path
