"""Validation loss of the embedded default model in F32, Q8_0 and Q4_0: the README's
model card table, and the foundation issue's bars (Q8_0 within 0.1%, Q4_0 within 2%).

    python scripts/quality.py CORPUS [MODEL]
"""

import sys
import tempfile
from pathlib import Path

from edgellama.model.evaluate import evaluate_model
from edgellama.model.gguf_file import read_gguf, write_gguf
from edgellama.resources import DEFAULT_MODEL

BARS = {"q8_0": 0.001, "q4_0": 0.02}


def main(corpus, model_path=DEFAULT_MODEL):
    base = read_gguf(model_path).model
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for quant in ("f32", "q8_0", "q4_0"):
            path = Path(tmp) / f"{quant}.gguf"
            write_gguf(base, path, quant)
            result = evaluate_model(read_gguf(path).model, corpus)
            rows.append((quant, path.stat().st_size, result))
    f32_loss = rows[0][2].loss
    print(f"validation split of {corpus}: {rows[0][2].tokens:,} tokens in windows of {rows[0][2].seq_len}")
    print("| type | file bytes | val loss | perplexity | vs f32 | bar |")
    print("|---|---:|---:|---:|---:|---|")
    ok = True
    for quant, size, r in rows:
        rel = r.loss / f32_loss - 1
        bar = BARS.get(quant)
        verdict = "" if bar is None else (f"within {bar:.1%}" if abs(rel) <= bar else f"OVER {bar:.1%}")
        ok &= bar is None or abs(rel) <= bar
        print(f"| {quant} | {size:,} | {r.loss:.4f} | {r.perplexity:.3f} | {rel:+.3%} | {verdict} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
