"""Training data for a draft model, written by its target (sequence-level distillation).

A draft model is worth its cost only when it guesses the target's next token most of
the time. Trained on the target's corpus, a small draft learns the corpus and agrees
with the target less often than one trained on what the target itself writes (Kim and
Rush, 2016; Zhou et al., DistillSpec, 2023). So for each story of the corpus's training
split, the target continues the story's first sentence, sampled at `temperature` with a
seed of its own, and opening and continuation make one document of the output.

The held-out split (the last documents, as `edgellama train --val-fraction` cuts them) is
left out: the openings a draft is measured on stay unseen by both. Documents are
separated by `<|endoftext|>`; train the draft with `--segment endoftext` (or auto).
"""

import re
import time
from dataclasses import dataclass

from edgellama.errors import EdgeLlamaError
from edgellama.model.data import DOC_SEPARATOR, read_corpus, split_documents, validation_count, write_documents

# A story's opening: its text up to the end of its first sentence, at most this long.
MAX_OPENING_CHARS = 200
_SENTENCE_END = re.compile(r"[.!?](?=\s)")


@dataclass
class DistillStats:
    documents: int = 0
    held_out: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


def opening(story: str) -> str:
    """The story's first sentence (or its first MAX_OPENING_CHARS characters, cut at a space)."""
    end = _SENTENCE_END.search(story)
    if end and end.end() <= MAX_OPENING_CHARS:
        return story[:end.end()]
    head = story[:MAX_OPENING_CHARS]
    return head.rsplit(" ", 1)[0] if " " in head else head


def distill_documents(llm, openings: list, max_tokens: int, temperature: float, seed: int) -> tuple:
    """(documents, generated tokens): each opening and the model's continuation of it."""
    from edgellama.sampling_params import SamplingParams
    params = [SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed + i)
              for i in range(len(openings))]
    results = llm.generate(openings, params, use_tqdm=True)
    docs = [(o + r.outputs[0].text).strip() for o, r in zip(openings, results)]
    return docs, sum(len(r.outputs[0].token_ids) for r in results)


def write_distill_corpus(model, corpus, out, segment: str = "auto", val_fraction: float = 0.05,
                         max_tokens: int | None = None, temperature: float = 1.0, seed: int = 1,
                         threads: int | None = None) -> DistillStats:
    """`edgellama data distill`: the model's continuations of the corpus's training
    stories, written atomically. max_tokens: the model's context less the opening."""
    from edgellama import LLM
    if not 0 < val_fraction < 1:
        raise EdgeLlamaError(f"--val-fraction: must be between 0 and 1, got {val_fraction}")
    if temperature < 0:
        raise EdgeLlamaError(f"--temperature: must be at least 0, got {temperature}")
    if max_tokens is not None and max_tokens < 1:
        raise EdgeLlamaError(f"--max-tokens: must be at least 1, got {max_tokens}")
    stories = split_documents(read_corpus(corpus), segment)
    if len(stories) < 2:
        raise EdgeLlamaError(f"{corpus}: need at least 2 stories to hold one out")
    if any(DOC_SEPARATOR in s for s in stories):
        raise EdgeLlamaError(f"{corpus}: a story contains {DOC_SEPARATOR} (use --segment endoftext)")
    held_out = validation_count(len(stories), val_fraction)
    openings = [opening(s) for s in stories[:-held_out]]
    llm = LLM(model, threads=threads)
    # The longest opening's tokens, and room for the continuation in the context.
    budget = llm.max_model_len - max(len(llm.tokenizer.encode(o)) for o in openings)
    if budget < 1:
        raise EdgeLlamaError(f"{model}: its context ({llm.max_model_len}) has no room after an opening")
    started = time.time()
    docs, tokens = distill_documents(llm, openings, min(max_tokens or budget, budget), temperature, seed)
    write_documents(out, docs)
    return DistillStats(len(docs), held_out, tokens, time.time() - started)
