"""Model shapes by name. The vocabulary size always comes from the tokenizer; the
one listed here is the size `edgellama train` gives a tokenizer it trains itself."""

from edgellama.errors import EdgeLlamaError

PRESETS = {
    # For tests: trains in seconds.
    "tiny": dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=384, max_seq_len=64),
    # llama2.c's stories260K shape.
    "260k": dict(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, hidden_dim=172, vocab_size=512, max_seq_len=512),
    # The embedded default model: the largest of this family whose Q8_0 file stays under 1 MiB;
    # a context of 512 holds 92% of its corpus's stories whole (343 tokens on average).
    "850k": dict(dim=128, n_layers=4, n_heads=8, n_kv_heads=4, hidden_dim=384, vocab_size=512, max_seq_len=512),
    # llama2.c's stories15M shape.
    "15m": dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, hidden_dim=768, vocab_size=32000, max_seq_len=256),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise EdgeLlamaError(f"--preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return dict(PRESETS[name])
