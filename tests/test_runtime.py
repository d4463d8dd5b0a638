"""The C runtime through its Python bindings (edgellama.runtime.capi): against the
PyTorch reference, the llama2.c reference text, the paged KV cache's invariants,
quantized weights and KV, quality on held-out text, and bad input.

Measured figures (logit error, loss ratios, agreement lengths) are printed; run with
`pytest -s` to see them.
"""

import dataclasses
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgellama.errors import EdgeLlamaError
from edgellama.model import data
from edgellama.model.gguf_file import read_gguf, write_gguf
from edgellama.model.llama import LlamaModel
from edgellama.model.llama2c import read_llama2c
from edgellama.model.tokenizer import load_vocab, sentencepiece_proto
from edgellama.resources import DEFAULT_MODEL
from edgellama.runtime import capi

torch = pytest.importorskip("torch")
from edgellama.model.reference import Transformer  # noqa: E402

GREEDY = {"temperature": 0.0}
BOS, EOS = 1, 2
ENGLISH = {"the", "a", "was", "and", "to", "she", "he", "her", "his", "it", "they", "said", "in", "of"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- helpers

def run(rt: capi.Runtime, prompts, max_tokens, sampling=GREEDY, release=True, max_steps=20000, **request):
    """Add every prompt, step until all finish; [(output tokens, text bytes, finish reason)].
    Text is what the events streamed, so it checks the streaming path, not a re-decode.
    Events of sequences added before are consumed but not reported."""
    ids = [rt.add(p, capi.make_request(sampling, max_tokens, **request)) for p in prompts]
    text = {i: b"" for i in ids}
    finish = {}
    for _ in range(max_steps):
        for event in rt.step():
            if event.seq_id not in text:
                continue
            text[event.seq_id] += event.text_bytes()
            if event.finished:
                finish[event.seq_id] = capi.FINISH_REASONS[event.finish]
        if not rt.pending():
            break
    else:
        raise AssertionError(f"not finished after {max_steps} steps: {rt.stats()}")
    out = []
    for i in ids:
        tokens, n_prompt, _ = rt.tokens(i)
        out.append((tokens[n_prompt:], text[i], finish.get(i)))
        if release:
            rt.release(i)
    return out


def tokens_of(results):
    return [r[0] for r in results]


def english_words(text: bytes) -> int:
    return sum(w.strip(b".,!?\"'").decode("utf-8", "replace") in ENGLISH for w in text.lower().split())


def relative_error(c_logits, ref_logits) -> float:
    return float(np.abs(c_logits - ref_logits).max() / np.abs(ref_logits).max())


# ---------------------------------------------------------------- models

@pytest.fixture(scope="module")
def stories(shared_data, tmp_path_factory) -> dict:
    """stories260K imported from llama2.c, as f32, q8_0 and q4_0 GGUF files."""
    model = read_llama2c(shared_data / "stories260K.bin", load_vocab(shared_data / "tok512.model"))
    folder = tmp_path_factory.mktemp("stories")
    paths = {"model": model}
    for quant in ("f32", "q8_0", "q4_0"):
        paths[quant] = folder / f"stories260K-{quant}.gguf"
        write_gguf(model, paths[quant], quant)
    return paths


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> dict:
    """The embedded default model (stored F32) and its q8_0 and q4_0 exports."""
    g = read_gguf(DEFAULT_MODEL)
    assert {e.qtype.name for e in g.entries} == {"F32"}
    folder = tmp_path_factory.mktemp("default")
    paths = {"model": g.model, "f32": DEFAULT_MODEL}
    for quant in ("q8_0", "q4_0"):
        paths[quant] = folder / f"default-{quant}.gguf"
        write_gguf(g.model, paths[quant], quant)
    return paths


@pytest.fixture(scope="module")
def tiny_gguf(tiny_checkpoint, tmp_path_factory):
    from edgellama.model.checkpoint import llama_from_checkpoint
    path = tmp_path_factory.mktemp("tiny") / "tiny-f32.gguf"
    write_gguf(llama_from_checkpoint(tiny_checkpoint), path, "f32")
    return path


@pytest.fixture(scope="module")
def stories_rt(stories):
    return capi.Runtime(stories["f32"])


@pytest.fixture(scope="module")
def prompts(stories_rt):
    """Eight different prompts, a few longer than one 32-row step (chunked prefill)."""
    texts = ["Once upon a time", "The cat sat", "Lily and Tom went to the park to play with a ball.",
             "One day, a big red", ("Tim had a toy car. He loved it very much. Every day he played with it "
                                    "in the garden and his mom watched him from the window."),
             "The sun", "She was happy because",
             ("There was a little bird who could not fly, so it sat in a tree all day and sang a sad song to "
              "the other birds that flew past.")]
    return [stories_rt.tokenize(t) for t in texts]


# ---------------------------------------------------------------- 1. C against the PyTorch reference

@pytest.mark.parametrize("which", ["tiny", "stories260K"])
def test_logits_match_reference(which, request, capsys):
    path = request.getfixturevalue("tiny_gguf") if which == "tiny" else request.getfixturevalue("stories")["f32"]
    model = read_gguf(path).model
    rng = np.random.default_rng(0)
    tokens = [BOS] + rng.integers(3, model.config.vocab_size, 63).tolist()
    c_logits = capi.Runtime(path).logits(tokens)
    with torch.no_grad():
        ref = Transformer.from_llama(model)(torch.tensor([tokens]))[0][0].numpy()
    err = relative_error(c_logits, ref)
    with capsys.disabled():
        print(f"\n  {which}: 64 positions, max|C - torch| / max|torch| = {err:.2e}")
    assert err <= 1e-4
    assert np.array_equal(c_logits.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("which", ["stories260K", "default"])
def test_greedy_matches_reference_for_200_steps(which, stories, default):
    paths = stories if which == "stories260K" else default
    rt = capi.Runtime(paths["f32"])
    prompt = rt.tokenize("Once upon a time" if which == "stories260K" else "once upon a time")
    ref = Transformer.from_llama(paths["model"]).generate(prompt, 200)[len(prompt):]
    (tokens, _, finish), = run(rt, [prompt], 200, ignore_eos=True)
    assert len(ref) == 200 and finish == "length"
    assert tokens == ref


# ---------------------------------------------------------------- 2. llama2.c's reference text

def test_stories260K_greedy200_exact(stories, shared_data):
    """run.c -t 0 -n 200 -i 'Once upon a time': 200 positions after BOS, stopping at BOS."""
    expected = (shared_data / "stories260K_greedy200.txt").read_bytes()
    rt = capi.Runtime(stories["f32"])
    prompt = rt.tokenize("Once upon a time")
    (_, text, _), = run(rt, [prompt], 200 - len(prompt) + 1)
    assert b"Once upon a time" + text == expected


# ---------------------------------------------------------------- 3. paging invariants

def test_block_sizes_give_identical_output(stories, prompts):
    outputs = {}
    for block_size in (1, 4, 16, 64):
        rt = capi.Runtime(stories["f32"], block_size=block_size)
        outputs[block_size] = tokens_of(run(rt, prompts[:4], 60, ignore_eos=True))
    assert outputs[1] == outputs[4] == outputs[16] == outputs[64]


def test_batch_equals_each_alone(stories_rt, prompts):
    together = run(stories_rt, prompts, 80, ignore_eos=True)
    alone = [run(stories_rt, [p], 80, ignore_eos=True)[0] for p in prompts]
    assert together == alone
    assert len({tuple(t) for t in tokens_of(together)}) == len(prompts)


def test_preemption_gives_identical_output(stories, stories_rt, prompts, capsys):
    unconstrained = run(stories_rt, prompts, 100, ignore_eos=True)
    # 16 blocks of 16 tokens: the longest sequence (159 tokens) fits alone, all
    # eight together (962 tokens) are far from fitting.
    probe = capi.Runtime(stories["f32"])
    rt = capi.Runtime(stories["f32"], kv_cache_bytes=16 * probe.kv_block_bytes)
    assert rt.stats()["blocks_total"] == 16
    # Sequences are released only at the end: finished ones must not starve the rest.
    constrained = run(rt, prompts, 100, ignore_eos=True, release=False)
    stats = rt.stats()
    with capsys.disabled():
        print(f"\n  8 sequences in 16 blocks: {stats['preemptions']} preemptions, {stats['rows']} rows computed "
              f"for {stats['tokens_generated']} tokens, {stats['prefix_hits']} blocks found again on recompute")
    assert stats["preemptions"] > 0, stats
    assert constrained == unconstrained
    assert {r[2] for r in constrained} == {"length"}


def test_sequence_longer_than_the_pool_finishes_by_length(stories, stories_rt):
    prompt = stories_rt.tokenize("Once upon a time")
    full = run(stories_rt, [prompt], 150, ignore_eos=True)[0][0]
    probe = capi.Runtime(stories["f32"])
    rt = capi.Runtime(stories["f32"], kv_cache_bytes=4 * probe.kv_block_bytes)  # 64 tokens in all
    (tokens, _, finish), = run(rt, [prompt], 150, ignore_eos=True)
    assert finish == "length" and len(prompt) + len(tokens) == 64
    assert tokens == full[:len(tokens)]


def test_shared_system_prompt_uses_fewer_blocks(stories_rt, stories, capsys):
    system = stories_rt.tokenize("You are a storyteller. Tell short, happy stories for small children about "
                                 "animals, friends and toys, with simple words and a good ending. " * 2)[:48]
    questions = ["Tell me about a cat.", "What did the dog do?", "A story about a red ball.", "Who is Lily?"]
    prompts = [system + stories_rt.tokenize(q, add_bos=False) for q in questions]

    def serve(enable_prefix_caching):
        rt = capi.Runtime(stories["f32"], enable_prefix_caching=enable_prefix_caching)
        # The first request computes the system prompt; the others arrive after it.
        first = rt.add(prompts[0], capi.make_request(GREEDY, 40, ignore_eos=True))
        while not rt.step():
            pass
        rest = run(rt, prompts[1:], 40, ignore_eos=True, release=False)  # `first` finishes too
        cached = [rt.tokens(i)[2] for i in range(4) if i != first]
        tokens, n_prompt, _ = rt.tokens(first)
        return [tokens[n_prompt:]] + tokens_of(rest), rt.stats(), cached

    with_sharing, shared_stats, cached = serve(True)
    without, plain_stats, _ = serve(False)
    with capsys.disabled():
        print(f"\n  4 requests sharing a 48-token prefix: {shared_stats['blocks_high_water']} blocks at most with "
              f"prefix caching, {plain_stats['blocks_high_water']} without; {shared_stats['prefix_hits']} hits")
    assert with_sharing == without
    assert shared_stats["prefix_hits"] >= 3 * 3 and plain_stats["prefix_hits"] == 0
    assert cached == [48, 48, 48]
    # 3 blocks of system prompt stored once instead of four times
    assert shared_stats["blocks_high_water"] <= plain_stats["blocks_high_water"] - 9, (shared_stats, plain_stats)


def test_kv_memory_grows_with_tokens_not_context(stories):
    used = {}
    for max_model_len in (64, 512):
        rt = capi.Runtime(stories["f32"], max_model_len=max_model_len, block_size=16)
        prompt = rt.tokenize("Once upon a time, there was a")
        rt.add(prompt, capi.make_request(GREEDY, 40, ignore_eos=True))
        rt.step()  # prefill and the first token
        after_prompt = rt.stats()["blocks_used"]
        while rt.pending():
            rt.step()
        stats = rt.stats()
        used[max_model_len] = (after_prompt, stats["blocks_high_water"], stats["blocks_total"])
        assert after_prompt == math.ceil((len(prompt) + 1) / 16)
        # the last token sampled is never run through the model, so it has no KV
        assert stats["blocks_high_water"] == math.ceil((len(prompt) + 40 - 1) / 16)
    assert used[64][:2] == used[512][:2]
    assert used[512][2] == 8 * used[64][2]  # the pool was sized for 8 full sequences; use was not


# ---------------------------------------------------------------- 4. quantized weights and KV

@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_quantized_models_write_sane_text(quant, default, stories, capsys):
    rt32, rtq = capi.Runtime(default["f32"]), capi.Runtime(default[quant])
    prompt = rt32.tokenize("once upon a time")
    (ref, _, _), = run(rt32, [prompt], 100, ignore_eos=True)
    (tokens, text, _), = run(rtq, [prompt], 100, ignore_eos=True)
    same = next((i for i, (a, b) in enumerate(zip(ref, tokens)) if a != b), len(ref))
    (_, s_text, _), = run(capi.Runtime(stories[quant]), [prompt], 60, ignore_eos=True)
    with capsys.disabled():
        print(f"\n  default {quant}: first {same} of 100 greedy tokens equal f32's: {text[:70]!r}...")
    assert english_words(text) >= 10, text
    assert english_words(s_text) >= 5, s_text
    assert same >= (20 if quant == "q8_0" else 5)


def test_int8_kv_stays_close_to_f32(default, capsys):
    f32, int8 = capi.Runtime(default["f32"]), capi.Runtime(default["f32"], kv_dtype="int8")
    assert int8.kv_block_bytes < f32.kv_block_bytes / 3
    prompt = f32.tokenize("once upon a time")
    (ref, _, _), = run(f32, [prompt], 100, ignore_eos=True)
    (tokens, text, _), = run(int8, [prompt], 100, ignore_eos=True)
    same = next((i for i, (a, b) in enumerate(zip(ref, tokens)) if a != b), len(ref))
    tokens = [BOS] + ref[:63]
    err = relative_error(int8.logits(tokens), f32.logits(tokens))
    with capsys.disabled():
        print(f"\n  int8 KV: first {same} of 100 greedy tokens equal f32 KV's; logits max rel. diff {err:.2e}")
    assert same >= 20
    assert english_words(text) >= 10


# ---------------------------------------------------------------- 5. quality on held-out text

def c_loss(rt: capi.Runtime, windows: np.ndarray) -> float:
    losses = []
    for w in windows:
        logits = rt.logits(w[:-1].tolist()).astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        losses.append(-logp[np.arange(len(w) - 1), w[1:]].mean())
    return float(np.mean(losses))


def test_quantized_loss_within_bars(default, shared_data, capsys):
    model = default["model"]
    corpus = data.pretokenize(shared_data / "tinystories_train_prefix_4m_lowercase.txt", sentencepiece_proto(model.vocab),
                              segment="stories")
    windows = data.eval_windows(corpus.val, 256, 16)
    losses = {q: c_loss(capi.Runtime(default[q], max_seqs=32), windows) for q in ("f32", "q8_0", "q4_0")}
    with torch.no_grad():
        xy = torch.from_numpy(windows)
        _, ref = Transformer.from_llama(model)(xy[:, :-1], xy[:, 1:])
    q8, q4 = losses["q8_0"] / losses["f32"] - 1, losses["q4_0"] / losses["f32"] - 1
    with capsys.disabled():
        print(f"\n  loss over 16 x 256 held-out tokens: torch f32 {ref.item():.5f}, C f32 {losses['f32']:.5f}, "
              f"q8_0 {losses['q8_0']:.5f} ({q8:+.3%}), q4_0 {losses['q4_0']:.5f} ({q4:+.3%})")
    assert abs(losses["f32"] / ref.item() - 1) < 1e-5
    assert abs(q8) <= 0.001
    assert abs(q4) <= 0.025  # scripts/quality.py's bars


# ---------------------------------------------------------------- 6. bad input

CORRUPTION_PROBE = textwrap.dedent("""
    import sys, numpy as np
    from edgellama.errors import EdgeLlamaError
    from edgellama.runtime import capi
    good = open(sys.argv[1], "rb").read()
    rng = np.random.default_rng(0)
    cases = [good[:n] for n in (0, 3, 4, 8, 23, 100, 1000, len(good) // 2, len(good) - 1)]
    for _ in range(40):  # bytes flipped in the header and metadata, where every field is checked
        data = bytearray(good)
        for at in rng.integers(0, 4096, 4):
            data[at] ^= int(rng.integers(1, 256))
        cases.append(bytes(data))
    messages, opened = [], 0
    for i, data in enumerate(cases):
        path = sys.argv[2] + f"/case{i}.gguf"
        open(path, "wb").write(data)
        try:
            rt = capi.Runtime(path, max_seqs=1)
        except EdgeLlamaError as e:
            messages.append(str(e))
            continue
        opened += 1  # corrupt weights or unused metadata can make a valid file: it must still run
        rt.add([1, 5, 6], capi.make_request({"temperature": 0.0}, 4))
        while rt.pending():
            rt.step()
    print(len(messages), opened)
    print("\\n".join(messages[:9]))
""")


def test_truncated_or_corrupt_gguf_is_an_error_not_a_crash(stories, tmp_path):
    result = subprocess.run([sys.executable, "-c", CORRUPTION_PROBE, str(stories["q8_0"]), str(tmp_path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"crashed ({result.returncode}): {result.stderr[-2000:]}"
    lines = result.stdout.splitlines()
    n_errors, _opened = map(int, lines[0].split())
    assert n_errors >= 9  # every truncation at least
    for message in lines[1:]:
        assert message.startswith(str(tmp_path)) and len(message) > len(str(tmp_path)) + 20, message


def test_prompt_longer_than_context_is_refused_and_others_finish(stories, stories_rt, prompts):
    alone = run(stories_rt, prompts[:2], 30, ignore_eos=True)
    rt = capi.Runtime(stories["f32"], max_model_len=64)
    a = rt.add(prompts[0], capi.make_request(GREEDY, 30, ignore_eos=True))
    rt.step()
    with pytest.raises(ValueError, match=r"prompt of 64 tokens is too long: at most 63 fit.*max_model_len 64"):
        rt.add(list(range(3, 67)), capi.make_request(GREEDY, 5))
    b = rt.add(prompts[1], capi.make_request(GREEDY, 30, ignore_eos=True))
    while rt.pending():
        rt.step()
    assert [rt.tokens(a)[0][len(prompts[0]):], rt.tokens(b)[0][len(prompts[1]):]] == tokens_of(alone)


@pytest.mark.parametrize("field, value, message", [
    ("top_p", 1.5, r"top_p must be in \(0, 1\], got 1.5"),
    ("temperature", -1.0, "temperature"),
    ("top_k", -5, "top_k"),
    ("min_p", 2.0, "min_p"),
    ("repetition_penalty", 0.0, "repetition_penalty"),
    ("frequency_penalty", 3.0, "frequency_penalty"),
    ("presence_penalty", float("nan"), "presence_penalty"),
])
def test_impossible_sampling_values_name_the_field(stories_rt, field, value, message):
    with pytest.raises(ValueError, match=message):
        stories_rt.add([BOS, 5], capi.make_request({field: value}, 5))
    assert stories_rt.pending() == 0  # nothing half-added


def test_impossible_request_values(stories_rt, stories):
    with pytest.raises(ValueError, match="max_tokens must be at least 1, got 0"):
        stories_rt.add([BOS, 5], capi.make_request(GREEDY, 0))
    with pytest.raises(ValueError, match="min_tokens"):
        stories_rt.add([BOS, 5], capi.make_request(GREEDY, 5, min_tokens=9))
    with pytest.raises(ValueError, match="unknown field 'top_pp'"):
        capi.make_request({"top_pp": 0.5}, 5)
    with pytest.raises(ValueError, match="token id 512 is outside the vocabulary"):
        stories_rt.add([BOS, 512], capi.make_request(GREEDY, 5))
    with pytest.raises(ValueError, match="stop_token_ids: token id 600 is outside the vocabulary of 512"):
        stories_rt.add([BOS, 5], capi.make_request(GREEDY, 5, min_tokens=2, stop_token_ids=[600]))
    with pytest.raises(ValueError, match="stop_token_ids: token id -1"):
        stories_rt.add([BOS, 5], capi.make_request(GREEDY, 5, min_tokens=2, stop_token_ids=[-1]))
    with pytest.raises(ValueError, match="no tokens"):
        stories_rt.add([], capi.make_request(GREEDY, 5))
    with pytest.raises(ValueError, match="kv_dtype"):
        capi.Runtime(stories["f32"], kv_dtype="int4")
    assert run(stories_rt, [[BOS, 5]], 5)[0][2] == "length"


def test_pool_too_small_for_one_sequence(stories, stories_rt, prompts):
    probe = capi.Runtime(stories["f32"])
    with pytest.raises(EdgeLlamaError, match="kv_cache_bytes is smaller than one KV block"):
        capi.Runtime(stories["f32"], kv_cache_bytes=probe.kv_block_bytes - 1)
    rt = capi.Runtime(stories["f32"], kv_cache_bytes=2 * probe.kv_block_bytes)  # 32 tokens
    long_prompt = prompts[7]
    assert len(long_prompt) >= 32
    with pytest.raises(ValueError, match=r"too long: at most 31 fit.*KV pool of 32 tokens"):
        rt.add(long_prompt, capi.make_request(GREEDY, 5))
    # the engine carries on with what fits
    assert run(rt, [prompts[0]], 10, ignore_eos=True) == run(stories_rt, [prompts[0]], 10, ignore_eos=True)


# ---------------------------------------------------------------- text assembly

def with_piece(model: LlamaModel, token: int, piece: str, kind: int = 1) -> LlamaModel:
    tokens, types = list(model.vocab.tokens), list(model.vocab.types)
    tokens[token], types[token] = piece, kind
    vocab = dataclasses.replace(model.vocab, tokens=tokens, types=types)
    return LlamaModel(model.config, vocab, model.tensors, model.name)


def test_long_pieces_are_streamed_whole(stories, stories_rt, tmp_path):
    """A vocabulary piece longer than any fixed buffer still reaches the text in full."""
    prompt = stories_rt.tokenize("Once upon a time")
    (tokens, _, _), = run(stories_rt, [prompt], 12)
    comma = tokens[0]
    assert stories_rt.token_bytes(prompt[-1], comma) == b","
    path = tmp_path / "long-piece.gguf"
    write_gguf(with_piece(stories["model"], comma, "," + "\u00e9" * 150), path, "f32")
    rt = capi.Runtime(path)
    (tokens2, text, _), = run(rt, [prompt], 12)
    assert tokens2 == tokens
    expected = b"".join(rt.token_bytes(p, t) for p, t in zip([prompt[-1]] + tokens, tokens))
    assert text == expected and text.count("\u00e9".encode()) == 150 * tokens.count(comma)


def test_character_cut_short_by_max_tokens_is_kept(stories, stories_rt, tmp_path):
    """The last token is the first byte of a UTF-8 character: it ends the text as a byte,
    it is not lost (the Python side shows it as U+FFFD, like vLLM)."""
    prompt = stories_rt.tokenize("Once upon a time")
    (tokens, _, _), = run(stories_rt, [prompt], 1)
    path = tmp_path / "byte-piece.gguf"
    write_gguf(with_piece(stories["model"], tokens[0], "<0xE2>", kind=6), path, "f32")
    (tokens2, text, finish), = run(capi.Runtime(path), [prompt], 1)
    assert tokens2 == tokens and finish == "length"
    assert text == b"\xe2"


# ---------------------------------------------------------------- chat turns and stops

def finish_turn(rt, seq):
    """Step until `seq` finishes; its output tokens for this turn."""
    while rt.pending():
        rt.step()
    tokens, n_prompt, n_cached = rt.tokens(seq)
    return tokens[n_prompt:], n_cached


@pytest.mark.parametrize("pool_blocks", [None, 8])
def test_continued_turn_equals_a_fresh_sequence(stories, stories_rt, pool_blocks):
    """A chat's next turn reuses the sequence's KV. With a pool of 8 blocks, another
    request in between takes the finished sequence's blocks back (it was not released),
    and the next turn recomputes what the prefix cache no longer holds; same tokens."""
    probe = capi.Runtime(stories["f32"])
    rt = capi.Runtime(stories["f32"], kv_cache_bytes=(pool_blocks or 0) * probe.kv_block_bytes)
    first = stories_rt.tokenize("Once upon a time")
    turn = capi.make_request({"temperature": 0.8, "seed": 7}, 30, ignore_eos=True)
    a = rt.add(first, turn)
    out1, _ = finish_turn(rt, a)
    if pool_blocks:
        other = stories_rt.tokenize("The cat sat")
        assert run(rt, [other], 100, ignore_eos=True) == run(stories_rt, [other], 100, ignore_eos=True)
    extra = stories_rt.tokenize("Then the sun came out.", add_bos=False)
    rt.cont(a, extra, turn)
    out2, n_cached = finish_turn(rt, a)
    history = first + out1 + extra
    (fresh, _, _), = run(stories_rt, [history], 30, sampling={"temperature": 0.8, "seed": 7}, ignore_eos=True)
    assert out2 == fresh
    if pool_blocks is None:
        assert n_cached == len(first) + len(out1) - 1  # all but the last token of turn one
    rt.release(a)


def test_stop_strings_and_stop_token_ids(stories_rt):
    prompt = stories_rt.tokenize("Once upon a time")
    (tokens, text, _), = run(stories_rt, [prompt], 60)
    assert b" Lily" in text
    (cut_tokens, cut_text, cut_finish), = run(stories_rt, [prompt], 60, stop=["Lily"])
    assert cut_finish == "stop" and cut_text == text[:text.index(b"Lily")]
    assert cut_tokens == tokens[:len(cut_tokens)]
    stop_id = tokens[10]
    (id_tokens, _, id_finish), = run(stories_rt, [prompt], 60, stop_token_ids=[stop_id])
    assert id_finish == "stop" and id_tokens == tokens[:tokens.index(stop_id) + 1]
    # the same stops are ignored before min_tokens
    (late, _, _), = run(stories_rt, [prompt], 60, stop_token_ids=[stop_id], min_tokens=tokens.index(stop_id) + 1)
    assert len(late) > tokens.index(stop_id) + 1
