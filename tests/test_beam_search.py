"""Beam search in the C engine (el_beam.c), driven through vLLM's LLM.beam_search.

Checked against a plain Python version of vLLM's algorithm on the same model's logits,
against an exhaustive search of every two-token continuation, and against greedy; a
pruned beam gives its blocks back at once (the block books are checked every step),
and preempted beams recompute to the same result.
"""

import numpy as np
import pytest

from edgellama import LLM, BeamSearchParams, SamplingParams
from edgellama.runtime import capi

PROMPTS = ["Once upon a time", "The cat sat on the", "Lily wanted to"]
BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def stories(stories260k_f32):
    return stories260k_f32


@pytest.fixture(scope="module")
def llm(stories):
    return LLM(str(stories), max_num_seqs=8)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def reference_beam_search(rt, prompt, width, max_tokens, length_penalty=1.0, ignore_eos=False) -> list:
    """vLLM's LLM.beam_search, written out: [(tokens, cum_logprob)] best first."""
    def score(tokens, cum):
        length = len(tokens) - (1 if tokens[-1] in (EOS, BOS) and not ignore_eos else 0)
        return cum / length ** length_penalty

    beams, completed = [(list(prompt), 0.0)], []
    for _ in range(max_tokens):
        candidates = []
        for tokens, cum in beams:
            lp = log_softmax(rt.logits(tokens)[-1])
            for token in np.argsort(-lp, kind="stable")[:2 * width]:
                extended = (tokens + [int(token)], cum + lp[token])
                (completed if token in (EOS, BOS) and not ignore_eos else candidates).append(extended)
        beams = sorted(candidates, key=lambda b: score(*b), reverse=True)[:width]
    return sorted(completed + beams, key=lambda b: score(*b), reverse=True)[:width]


@pytest.mark.parametrize("width, length_penalty", [(1, 1.0), (2, 1.0), (4, 1.0), (3, 0.0)])
def test_the_engine_searches_as_vllms_algorithm_does(llm, stories, width, length_penalty):
    rt = capi.Runtime(stories)
    params = BeamSearchParams(beam_width=width, max_tokens=10, length_penalty=length_penalty)
    outputs = llm.beam_search(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outputs):
        expected = reference_beam_search(rt, rt.tokenize(prompt), width, 10, length_penalty)
        assert [s.tokens for s in out.sequences] == [tokens for tokens, _ in expected]
        assert np.allclose([s.cum_logprob for s in out.sequences], [cum for _, cum in expected], atol=1e-4)
        assert out.sequences[0].text.startswith(prompt)  # as vLLM decodes them: the prompt too


def test_two_tokens_deep_it_finds_the_exhaustive_best(llm, stories):
    """Every one of the vocabulary's 512 * 512 continuations of two tokens scored: the
    search's best is the best there is."""
    rt = capi.Runtime(stories)
    for prompt in PROMPTS:
        ids = rt.tokenize(prompt)
        first = log_softmax(rt.logits(ids)[-1])
        best_cum, best = -np.inf, None
        for a in range(len(first)):
            second = log_softmax(rt.logits(ids + [a])[-1])
            b = int(np.argmax(second))
            if first[a] + second[b] > best_cum:
                best_cum, best = first[a] + second[b], ids + [a, b]
        out = llm.beam_search(prompt, BeamSearchParams(beam_width=4, max_tokens=2, ignore_eos=True))[0]
        assert out.sequences[0].tokens == best
        assert abs(out.sequences[0].cum_logprob - best_cum) < 1e-4


def test_the_best_beam_never_scores_below_greedy(llm):
    for prompt in PROMPTS:
        greedy = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=0),
                              use_tqdm=False)[0].outputs[0]
        out = llm.beam_search(prompt, BeamSearchParams(beam_width=4, max_tokens=20, ignore_eos=True))[0]
        assert out.sequences[0].cum_logprob >= greedy.cumulative_logprob - 1e-4
        assert [s.cum_logprob for s in out.sequences] == sorted((s.cum_logprob for s in out.sequences), reverse=True)


def test_pruned_beams_give_their_blocks_back_at_once(stories):
    """Block books balance at every step, and a search never holds more than the
    prompt's blocks plus each live beam's own."""
    rt = capi.Runtime(stories, max_seqs=8, enable_prefix_caching=False)
    prompt = rt.tokenize("Once upon a time there was a little dog who liked to run in the park")
    width, new = 4, 40
    rt.add(prompt, capi.make_request({}, new, beam_width=width, ignore_eos=True))
    most, events = 0, []
    while rt.pending():
        events += rt.step()
        rt.check_blocks()
        most = max(most, rt.stats()["blocks_used"])
    bound = len(prompt) // 16 + width * ((len(prompt) + new) // 16 - len(prompt) // 16 + 1)
    assert 0 < most <= bound, (most, bound)
    assert len(events) == width and sorted(e.sample_index for e in events) == list(range(width))
    assert rt.stats()["blocks_copied"] > 0
    for event in events:
        rt.release(event.seq_id)
    rt.check_blocks()
    assert rt.stats()["blocks_used"] == 0


def test_preempted_beams_recompute_to_the_same_result(stories, llm):
    params = BeamSearchParams(beam_width=4, max_tokens=60, ignore_eos=True)
    expected = llm.beam_search("Once upon a time", params)[0]
    probe = capi.Runtime(stories)
    small = LLM(str(stories), max_num_seqs=8, kv_cache_bytes=9 * probe.kv_block_bytes)
    got = small.beam_search("Once upon a time", params)[0]
    assert small.stats()["preemptions"] > 0
    assert [s.tokens for s in got.sequences] == [s.tokens for s in expected.sequences]


def test_an_abandoned_search_frees_every_slot(stories):
    rt = capi.Runtime(stories, max_seqs=8)
    leader = rt.add(rt.tokenize("Once upon a time"), capi.make_request({}, 30, beam_width=4))
    for _ in range(5):
        rt.step()
    rt.abort(leader)
    rt.release(leader)
    rt.check_blocks()
    assert rt.stats()["blocks_used"] == 0 and not rt.pending()
    rt.add(rt.tokenize("Once"), capi.make_request({}, 4, n=8))  # all eight slots are free again


def test_bad_beam_parameters_name_their_field(stories, llm):
    for kwargs, field in [(dict(beam_width=0, max_tokens=4), "beam_width"), (dict(beam_width=9, max_tokens=4),
                          "beam_width"), (dict(beam_width=2, max_tokens=0), "max_tokens"),
                          (dict(beam_width=2, max_tokens=4, length_penalty=float("nan")), "length_penalty")]:
        with pytest.raises(ValueError, match=f"^{field}"):
            BeamSearchParams(**kwargs)
    with pytest.raises(ValueError, match="^beam_width: a search of width 8 holds 16 sequences"):
        llm.beam_search("Once", BeamSearchParams(beam_width=8, max_tokens=4))
    rt = capi.Runtime(stories, max_seqs=4)
    with pytest.raises(ValueError, match="^beam_width: a beam search of width 3 holds twice"):
        rt.add(rt.tokenize("Once"), capi.make_request({}, 4, beam_width=3))
    with pytest.raises(ValueError, match=r"^beam_width must be in \[1, 8\]"):
        rt.add(rt.tokenize("Once"), capi.make_request({}, 4, beam_width=9))
    with pytest.raises(ValueError, match="^n: a beam search"):
        rt.add(rt.tokenize("Once"), capi.make_request({}, 4, beam_width=2, n=2))
    assert len(llm.beam_search("Once", BeamSearchParams(beam_width=2, max_tokens=4))[0].sequences) == 2


def test_max_beam_width_is_the_headers():
    from edgellama.runtime import build, sampling_params
    header = (build.firmware_dir() / "core" / "el_sequence.h").read_text()
    assert f"#define EL_MAX_BEAM_WIDTH {sampling_params.MAX_BEAM_WIDTH}\n" in header
