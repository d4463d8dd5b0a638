"""The model card's figures for the embedded default model (README, "The default model"):

- validation loss on held-out whole stories in F32, Q8_0 and Q4_0, with their bars: Q8_0
  within 0.1% of F32, Q4_0 within 2.5% (2% for the first default model, which lost 1.44%;
  the one trained on whole stories loses 2.03%, see the README's model card);
- stories from a few openings, greedy and sampled: tokens, paragraphs, and how each ended;
- the request-following rate: held-out requests (made from the validation stories, which
  training never saw), three seeds each, in the model's chat template.

    python scripts/quality.py CORPUS [MODEL]

CORPUS is the story corpus the chat data was made from (`edgellama data chat`); its
validation split, cut into whole stories, is the chat corpus's validation split.
"""

import sys
import tempfile
from pathlib import Path

from edgellama.model.chat_data import held_out_requests, request_following
from edgellama.model.evaluate import evaluate_model
from edgellama.model.gguf_file import read_gguf, write_gguf
from edgellama.resources import DEFAULT_MODEL
from edgellama.runtime.llm import LLM
from edgellama.runtime.sampling_params import SamplingParams

BARS = {"q8_0": 0.001, "q4_0": 0.025}
OPENINGS = ("once upon a time", "one day, a little girl named lily", "tom and his dog", "the sun was hot")


def loss_table(base, corpus, folder: Path) -> bool:
    rows = []
    for quant in ("f32", "q8_0", "q4_0"):
        path = folder / f"{quant}.gguf"
        write_gguf(base, path, quant)
        rows.append((quant, path.stat().st_size, evaluate_model(read_gguf(path).model, corpus, segment="stories")))
    f32_loss = rows[0][2].loss
    print(f"held-out whole stories of {corpus}: {rows[0][2].tokens:,} tokens in windows of {rows[0][2].seq_len}")
    print("| type | file bytes | val loss | perplexity | vs f32 | bar |")
    print("|---|---:|---:|---:|---:|---|")
    ok = True
    for quant, size, r in rows:
        rel = r.loss / f32_loss - 1
        bar = BARS.get(quant)
        verdict = "" if bar is None else (f"within {bar:.1%}" if abs(rel) <= bar else f"OVER {bar:.1%}")
        ok &= bar is None or abs(rel) <= bar
        print(f"| {quant} | {size:,} | {r.loss:.4f} | {r.perplexity:.3f} | {rel:+.3%} | {verdict} |")
    return ok


def stories(llm):
    """Greedy from each opening, then sampled as the CLI samples by default, seeds 1-8."""
    print("\n| opening | sampling | tokens | paragraphs | ended by |")
    print("|---|---|---:|---:|---|")
    runs = [(opening, "greedy", SamplingParams(temperature=0, max_tokens=None)) for opening in OPENINGS]
    runs += [(OPENINGS[0], f"T 0.8, top-p 0.95, seed {seed}",
              SamplingParams(temperature=0.8, top_p=0.95, seed=seed, max_tokens=None)) for seed in range(1, 9)]
    for opening, how, params in runs:
        out = llm.generate(opening, params, use_tqdm=False)[0].outputs[0]
        paragraphs = len([p for p in (opening + out.text).split("\n\n") if p.strip()])
        ended = "the end of the text" if out.finish_reason == "stop" else "the context's end"
        print(f"| {opening} | {how} | {len(out.token_ids)} | {paragraphs} | {ended} |")


def following(llm, corpus, name):
    requests = held_out_requests(corpus)
    print(f"\nrequest following: {len(requests)} held-out requests x 3 seeds, temperature 0.8, top-p 0.95")
    print("| model | asked name in reply | every asked thing | both |")
    print("|---|---:|---:|---:|")
    f = request_following(llm, requests)
    print(f"| {name} Q8_0 | {f.name / f.replies:.1%} | {f.things / f.replies:.1%} | "
          f"{f.both / f.replies:.1%} |")


def main(corpus, model_path=DEFAULT_MODEL):
    base = read_gguf(model_path).model
    with tempfile.TemporaryDirectory() as tmp:
        ok = loss_table(base, corpus, Path(tmp))
        llm = LLM(str(Path(tmp) / "q8_0.gguf"))
        stories(llm)
        following(llm, corpus, base.name)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
