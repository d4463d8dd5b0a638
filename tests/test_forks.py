"""vLLM's sequences in the C engine: n samples forked from one prefill on copy-on-write
blocks, and log-probabilities (issue 11).

A request for n samples prefills its prompt once; at the first token it forks n - 1
sequences that share the prompt's blocks by reference, and the partly filled last
block is copied by whichever writes into it first. Sample i draws with seed + i, so it
equals a request for one sample with that seed. Logprobs are log-softmax of the raw
logits, computed in C; they are checked against the PyTorch reference.
"""


import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgellama import LLM, SamplingParams
from edgellama.model.gguf_file import read_gguf
from edgellama.runtime import capi

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

BLOCK = 16
STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside"


@pytest.fixture(scope="module")
def stories(stories260k_f32):
    return stories260k_f32


def step_all(rt: capi.Runtime, check=True) -> dict:
    """Step until nothing is pending, checking the block books after every step;
    {seq id: [events as (sample index, token, text, finish)]}."""
    seen = {}
    for _ in range(20000):
        for event in rt.step():
            seen.setdefault(event.seq_id, []).append(
                (event.parent_id, event.sample_index, event.token, event.text_bytes(), event.finished))
        if check:
            rt.check_blocks()
        if not rt.pending():
            return seen
    raise AssertionError("not finished")


def samples(llm: LLM, prompt, **params) -> list:
    return [c.token_ids for c in llm.generate(prompt, SamplingParams(**params), use_tqdm=False)[0].outputs]


# ---------------------------------------------------------------- forks

@pytest.mark.parametrize("prompt_len", [BLOCK * 2, BLOCK * 2 + 5])  # on a block boundary, and part-way into one
@pytest.mark.parametrize("kv_dtype", ["f32", "int8"])
def test_each_sample_equals_its_seed_run_alone(stories, prompt_len, kv_dtype):
    llm = LLM(str(stories), kv_dtype=kv_dtype, max_num_seqs=4)
    prompt = {"prompt_token_ids": llm.get_tokenizer().encode(STORY * 3)[:prompt_len]}
    forked = samples(llm, prompt, n=4, temperature=1.0, seed=42, max_tokens=40, ignore_eos=True)
    alone = [samples(llm, prompt, temperature=1.0, seed=42 + i, max_tokens=40, ignore_eos=True)[0] for i in range(4)]
    assert forked == alone
    assert len({tuple(t) for t in forked}) == 4  # really four different samples


@pytest.mark.parametrize("prompt_len", [BLOCK * 2, BLOCK * 2 + 5])
def test_kv_blocks_of_n_samples(stories, prompt_len, capsys):
    """The prompt's blocks once, each sample's own blocks, at most one copy per sample."""
    n, new = 4, 40
    rt = capi.Runtime(stories, max_seqs=n, enable_prefix_caching=False)
    prompt = rt.tokenize(STORY * 3)[:prompt_len]
    first = rt.add(prompt, capi.make_request({"temperature": 1.0, "seed": 7}, new, ignore_eos=True, n=n))
    events = step_all(rt)
    stats = rt.stats()
    # positions computed: the prompt, then new - 1 generated ones per sample (the last is never computed)
    last_position = prompt_len + new - 2
    own_blocks = last_position // BLOCK - prompt_len // BLOCK + 1  # from the (copied) partial block on
    expected = prompt_len // BLOCK + n * own_blocks
    copies = n - 1 if prompt_len % BLOCK else 0  # the last writer keeps the shared block
    alone = n * (last_position // BLOCK + 1)
    with capsys.disabled():
        print(f"\n  {n} samples of a {prompt_len}-token prompt: {stats['blocks_high_water']} blocks at most "
              f"({alone} as {n} separate requests), {stats['blocks_copied']} copied")
    assert stats["blocks_high_water"] == expected
    assert stats["blocks_copied"] == copies
    assert stats["prompt_tokens_computed"] == prompt_len  # prefilled once
    assert {e[0] for seq in events.values() for e in seq} == {first}
    assert sorted(seq[0][1] for seq in events.values()) == list(range(n))
    for seq_id in events:
        rt.release(seq_id)
    rt.check_blocks()
    assert rt.stats()["blocks_used"] == 0  # every reference given back


def test_preempted_forks_recompute_identically(stories):
    """A pool too small for all samples: forks are preempted and recomputed, with the
    same tokens as in a pool that holds them all, and the books balance at every step."""
    prompt_text = STORY * 2
    big = LLM(str(stories), max_num_seqs=6)
    params = SamplingParams(n=6, temperature=1.0, seed=3, max_tokens=100, ignore_eos=True)
    expected = [c.token_ids for c in big.generate(prompt_text, params, use_tqdm=False)[0].outputs]

    probe = capi.Runtime(stories)
    rt = capi.Runtime(stories, max_seqs=6, kv_cache_bytes=14 * probe.kv_block_bytes)
    prompt = rt.tokenize(prompt_text)
    rt.add(prompt, capi.make_request({"temperature": 1.0, "seed": 3}, 100, ignore_eos=True, n=6))
    step_all(rt)
    assert rt.stats()["preemptions"] > 0
    got = {}
    for seq_id in range(6):
        tokens, n_prompt, _ = rt.tokens(seq_id)
        got[seq_id] = tokens[n_prompt:]
    assert sorted(got.values()) == sorted(expected)


def test_unforked_samples_are_freed_with_their_parent(stories):
    rt = capi.Runtime(stories, max_seqs=4)
    prompt = rt.tokenize(STORY)
    parent = rt.add(prompt, capi.make_request({"temperature": 1.0}, 8, n=4))
    with pytest.raises(ValueError, match="slots are busy"):
        rt.add(prompt, capi.make_request({"temperature": 1.0}, 8))  # all four slots held
    rt.abort(parent)
    rt.release(parent)
    rt.check_blocks()
    again = rt.add(prompt, capi.make_request({"temperature": 1.0, "seed": 1}, 8, n=4))
    events = step_all(rt)
    assert len(events) == 4 and all(seq[-1][4] for seq in events.values())
    assert again in events


def test_more_requests_than_sequences_wait_for_slots(stories):
    llm = LLM(str(stories), max_num_seqs=4)
    params = SamplingParams(n=3, temperature=0.9, seed=5, max_tokens=12)
    outs = llm.generate(["Once", "The cat", "A dog"], params, use_tqdm=False)
    assert [len(o.outputs) for o in outs] == [3, 3, 3]
    assert [c.index for c in outs[1].outputs] == [0, 1, 2]
    assert outs[0].outputs[0].token_ids == samples(llm, "Once", temperature=0.9, seed=5, max_tokens=12)[0]


def test_n_past_the_engine_is_refused_and_others_go_on(stories):
    llm = LLM(str(stories), max_num_seqs=4)
    with pytest.raises(ValueError, match="^n: 5 samples"):
        llm.generate("Once", SamplingParams(n=5), use_tqdm=False)
    rt = capi.Runtime(stories, max_seqs=2)
    with pytest.raises(ValueError, match="n: 3 samples need as many sequences.*max_seqs 2"):
        rt.add(rt.tokenize("Once"), capi.make_request({}, 4, n=3))
    with pytest.raises(ValueError, match="^n must be at least 1"):
        rt.add(rt.tokenize("Once"), capi.make_request({}, 4, n=0))
    assert len(samples(llm, "Once", n=2, max_tokens=4, seed=1)) == 2


def test_a_stream_of_n_samples_carries_each_text(stories):
    llm = LLM(str(stories), max_num_seqs=3)
    params = SamplingParams(n=3, temperature=1.0, seed=9, max_tokens=30)
    whole = llm.generate("Once upon a time", params, use_tqdm=False)[0]
    texts, finished = ["", "", ""], []
    for out in llm.generate_stream("Once upon a time", params):
        (c,) = out.outputs
        texts[c.index] += c.text
        if c.finish_reason:
            finished.append(c.index)
    assert texts == [c.text for c in whole.outputs]
    assert sorted(finished) == [0, 1, 2] and out.finished


# ---------------------------------------------------------------- logprobs

def reference_logprobs(path, tokens) -> np.ndarray:
    from edgellama.model.reference import Transformer
    with torch.no_grad():
        logits = Transformer.from_llama(read_gguf(path).model)(torch.tensor([tokens]))[0][0]
        return torch.log_softmax(logits.double(), dim=-1).numpy()


def test_logprobs_are_the_reference_log_softmax(stories):
    llm = LLM(str(stories))
    k = 5
    out = llm.generate("Once upon a time", SamplingParams(temperature=0.8, seed=2, max_tokens=24, logprobs=k,
                                                          prompt_logprobs=k), use_tqdm=False)[0]
    c = out.outputs[0]
    tokens = out.prompt_token_ids + c.token_ids
    ref = reference_logprobs(stories, tokens)
    n_prompt = len(out.prompt_token_ids)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == n_prompt
    assert len(c.logprobs) == len(c.token_ids)
    positions = [(i, out.prompt_logprobs[i]) for i in range(1, n_prompt)] + \
                [(n_prompt + j, c.logprobs[j]) for j in range(len(c.token_ids))]
    worst = 0.0
    for at, entry in positions:
        row = ref[at - 1]  # the logits of the position before give the token at `at`
        chosen = tokens[at]
        assert chosen in entry
        order = np.argsort(-row, kind="stable")
        for token, lp in entry.items():
            worst = max(worst, abs(lp.logprob - row[token]))
            if token != chosen or lp.rank <= k:
                assert lp.rank == int((row > row[token] + 1e-6).sum()) + 1 or \
                    abs(row[order[lp.rank - 1]] - row[token]) < 1e-5  # ties within float noise
        top = sorted((t for t in entry if entry[t].rank <= k), key=lambda t: entry[t].rank)
        assert [entry[t].rank for t in top] == list(range(1, k + 1))
        assert np.allclose([entry[t].logprob for t in top], row[order[:k]], atol=1e-4)
    assert worst <= 1e-4, worst
    assert abs(c.cumulative_logprob - sum(e[t].logprob for e, t in zip(c.logprobs, c.token_ids))) < 1e-9


def test_greedy_picks_the_rank_one_token(stories):
    llm = LLM(str(stories))
    c = llm.generate("The cat", SamplingParams(temperature=0, max_tokens=16, logprobs=0), use_tqdm=False)[0].outputs[0]
    for token, entry in zip(c.token_ids, c.logprobs):
        assert list(entry) == [token] and entry[token].rank == 1 and entry[token].logprob <= 0.0
        assert entry[token].decoded_token == llm.get_tokenizer().decode([token], previous=-1)


def test_prompt_logprobs_skip_the_prefix_cache_and_are_reported_once(stories):
    """A prompt whose blocks are cached would have no logits: with prompt_logprobs the
    prompt is computed in full, and a preempted sequence does not report them twice."""
    llm = LLM(str(stories))
    prompt = STORY * 2
    llm.generate(prompt, SamplingParams(max_tokens=2), use_tqdm=False)  # its full blocks now cached
    out = llm.generate(prompt, SamplingParams(max_tokens=2, prompt_logprobs=1), use_tqdm=False)[0]
    assert len(out.prompt_logprobs) == len(out.prompt_token_ids) and out.num_cached_tokens == 0
    first = llm.generate(prompt, SamplingParams(max_tokens=2, prompt_logprobs=1), use_tqdm=False)[0]
    assert [sorted(e.items()) if e else e for e in first.prompt_logprobs] == \
        [sorted(e.items()) if e else e for e in out.prompt_logprobs]


def test_the_c_checks_name_logprobs(stories):
    rt = capi.Runtime(stories)
    for field in ("logprobs", "prompt_logprobs"):
        with pytest.raises(ValueError, match=rf"^{field} must be -1 \(none\) or in \[0, 20\], got 21"):
            rt.add(rt.tokenize("Once"), capi.make_request({}, 4, **{field: 21}))


def test_max_logprobs_is_the_headers():
    from edgellama.runtime import build, sampling_params
    header = (build.firmware_dir() / "core" / "el_logprobs.h").read_text()
    assert f"#define EL_MAX_LOGPROBS {sampling_params.MAX_LOGPROBS}\n" in header
    assert capi.MAX_LOGPROBS == sampling_params.MAX_LOGPROBS


# ---------------------------------------------------------------- the block books, in any schedule

@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block_size=st.sampled_from([2, 5, 16]), pool_tokens=st.integers(48, 200),
       requests=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 40), st.integers(1, 30), st.booleans()),
                         min_size=1, max_size=3),
       kv_dtype=st.sampled_from(["f32", "int8"]))
def test_block_books_balance_in_any_schedule(stories, block_size, pool_tokens, requests, kv_dtype):
    """Requests of n samples, beam searches and plain ones in a pool small enough to
    preempt: after every step each block's reference count equals the block tables that
    hold it, and once everything is released no block is in use."""
    probe = capi.Runtime(stories, block_size=block_size, kv_dtype=kv_dtype)
    rt = capi.Runtime(stories, max_seqs=8, block_size=block_size, kv_dtype=kv_dtype,
                      kv_cache_bytes=-(-pool_tokens // block_size) * probe.kv_block_bytes)
    story = rt.tokenize(STORY * 3)
    for n, prompt_len, max_tokens, beam in requests:
        prompt = story[:prompt_len]
        request = capi.make_request({"temperature": 1.0, "seed": prompt_len}, max_tokens, ignore_eos=True,
                                    **({"beam_width": min(n, 2)} if beam else {"n": n}))
        try:
            rt.add(prompt, request)
        except ValueError as e:  # all slots busy, or a prompt the pool cannot hold: refused whole
            assert "slots are busy" in str(e) or "too long" in str(e), e
        for _ in range(3):
            rt.step()
            rt.check_blocks()
    while rt.pending():
        rt.step()
        rt.check_blocks()
    for seq in range(8):
        rt.release(seq)
    rt.check_blocks()
    assert rt.stats()["blocks_used"] == 0
