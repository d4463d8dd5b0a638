"""Speculative decoding with a draft model (el_draft.h): greedy output equal to plain
decoding token for token, sampled output with plain decoding's distribution (the
rejection rule, checked by a two-sample chi-square fit), and the drafts' own cache kept in
step through rejections, preemptions, forks and chat turns; on the host library, the
POSIX program and the CLI. The drafts come from the default model itself: a Q8_0 copy
(most drafts kept) and its first layers alone (most rejected)."""

import dataclasses
import json
import subprocess
from collections import Counter

import pytest
from click.testing import CliRunner
from conftest import write_first_layers

from edgellama import LLM, SamplingParams
from edgellama.cli import main
from edgellama.model.gguf_file import write_gguf
from edgellama.model.loading import load_model
from edgellama.runtime import build as runtime_build
from edgellama.runtime.speculative import engine_options
from edgellama.runtime.structured import StructuredOutputsParams

REPETITIVE = "the cat sat on the mat. the dog sat on the log. " * 3
PROMPTS = [REPETITIVE, "once upon a time", "one day a little girl named"]


@pytest.fixture(scope="module")
def drafts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drafts")
    model = load_model(None)
    paths = {"q8_0 copy": folder / "copy-q8_0.gguf", "two layers": folder / "two-layers.gguf",
             "short context": folder / "short.gguf"}
    write_gguf(model, paths["q8_0 copy"], "q8_0")
    write_first_layers(paths["two layers"], 2)
    short = dataclasses.replace(model, config=dataclasses.replace(model.config, max_seq_len=64))
    write_gguf(short, paths["short context"], "q8_0")
    return paths


def spec_llm(path, k=4, **options):
    return LLM(speculative_config={"model": str(path), "num_speculative_tokens": k}, **options)


def outputs(llm, prompts, params):
    return [[(o.token_ids, o.text, o.finish_reason, o.stop_reason) for o in r.outputs]
            for r in llm.generate(prompts, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def plain():
    return LLM()


GREEDY = [
    SamplingParams(temperature=0, max_tokens=120),
    SamplingParams(temperature=0, max_tokens=80, stop=["the log"], min_tokens=5),
    SamplingParams(temperature=0, max_tokens=60, repetition_penalty=1.3),
    SamplingParams(temperature=0, max_tokens=3),
    SamplingParams(temperature=0, max_tokens=60, n=2),
    SamplingParams(temperature=0, max_tokens=60,
                   structured_outputs=StructuredOutputsParams(regex=r"([a-z]+ ){3,12}[a-z]+\.")),
]


@pytest.mark.parametrize("draft", ["q8_0 copy", "two layers"])
@pytest.mark.parametrize("params", GREEDY, ids=lambda p: repr(p)[:60])
def test_greedy_tokens_are_plain_decodings(plain, drafts, draft, params):
    spec = spec_llm(drafts[draft])
    assert outputs(spec, PROMPTS, params) == outputs(plain, PROMPTS, params)
    stats = spec.stats()
    assert 0 < stats["draft_accepted"] <= stats["draft_tokens"] and stats["draft_rows"] > 0
    spec._rt.check_blocks()


def test_the_drafts_acceptance_follows_the_draft(plain, drafts):
    params = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
    rates = {}
    for name in ("q8_0 copy", "two layers"):
        spec = spec_llm(drafts[name])
        assert outputs(spec, PROMPTS, params) == outputs(plain, PROMPTS, params)
        s = spec.stats()
        rates[name] = s["draft_accepted"] / s["draft_tokens"]
    assert rates["q8_0 copy"] > 0.8 > rates["two layers"]


def chi_square_bound(df: int, z: float = 3.09) -> float:
    """The statistic a fit passes below at about the 0.1% level (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def two_sample_chi_square(a: Counter, b: Counter) -> tuple:
    """(statistic, degrees of freedom) of two samples of the same size drawn from one
    distribution; tokens seen fewer than 10 times together share a bin."""
    rare = {t for t in a.keys() | b.keys() if a[t] + b[t] < 10}
    bins = [(a[t], b[t]) for t in a.keys() | b.keys() if t not in rare]
    bins.append((sum(a[t] for t in rare), sum(b[t] for t in rare)))
    bins = [(x, y) for x, y in bins if x + y > 0]
    return sum((x - y) ** 2 / (x + y) for x, y in bins), len(bins) - 1


def test_sampled_tokens_keep_plain_decodings_distribution(plain, drafts):
    """1,200 seeded samples of four tokens each way, at temperature 1 with a draft that
    is mostly rejected: each position's tokens are distributed alike (drafts reach the
    first one too, when a prefill chunk ends one token short of the prompt's end). Seeds
    are fixed, so the outcome is too."""
    spec = spec_llm(drafts["two layers"], k=3)
    seeds = range(1200)
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=4, ignore_eos=True) for s in seeds]
    runs = {}
    for name, llm in (("plain", plain), ("draft", spec)):
        results = llm.generate(["once upon a time"] * len(params), params, use_tqdm=False)
        runs[name] = [r.outputs[0].token_ids for r in results]
    assert runs["plain"] != runs["draft"]  # other random numbers: not the same tokens
    for position in (0, 1, 2, 3):
        statistic, df = two_sample_chi_square(Counter(t[position] for t in runs["plain"]),
                                              Counter(t[position] for t in runs["draft"]))
        assert statistic < chi_square_bound(df), (position, statistic, df)
    stats = spec.stats()
    assert 0 < stats["draft_accepted"] < stats["draft_tokens"]


def test_preemption_a_small_pool_and_a_chat(drafts):
    """Eight sequences in a pool of 24 blocks, then a chat of three turns: the draft's
    cache follows the sequences through preemption, slot reuse and appended turns."""
    from edgellama.boards.planner import kv_block_bytes, model_info
    block = kv_block_bytes(model_info(None, None).config, 16, "f32")
    options = dict(max_model_len=256, kv_cache_bytes=24 * block, max_num_seqs=8)
    plain, spec = LLM(**options), spec_llm(drafts["q8_0 copy"], **options)
    prompts = [REPETITIVE + str(i) for i in range(8)]
    params = SamplingParams(temperature=0, max_tokens=90)
    assert outputs(spec, prompts, params) == outputs(plain, prompts, params)
    assert spec.stats()["preemptions"] > 0 and spec.stats()["draft_accepted"] > 0
    spec._rt.check_blocks()
    replies = []
    for llm in (plain, spec):
        session = llm.chat_session("you repeat things.")
        replies.append(["".join(session.send(turn, SamplingParams(temperature=0, max_tokens=40)))
                        for turn in ("say: the cat sat on the mat.", "again please", "and once more")])
    assert replies[0] == replies[1]


def test_a_draft_that_does_not_fit_is_refused(drafts, tmp_path):
    from edgellama.errors import EdgeLlamaError
    from edgellama.model.synthetic import write_synthetic
    other = write_synthetic(tmp_path / "other.gguf", "260k", "f32", vocab_size=512)
    for path, message in ((other, "vocabulary differs from the model's at token"),
                          (drafts["short context"], "context of 64 tokens is shorter than max_model_len 512")):
        with pytest.raises(EdgeLlamaError, match=message):
            spec_llm(path)
    with pytest.raises(ValueError, match="prompt_lookup_max is for the ngram method"):
        engine_options({"model": str(drafts["q8_0 copy"]), "num_speculative_tokens": 2, "prompt_lookup_max": 3})
    spec_llm(drafts["short context"], max_model_len=64)  # fits a shorter engine


def test_the_posix_program_takes_a_draft_model(drafts):
    program, model = runtime_build.host_program(), str(LLM().model)

    def run(*flags):
        out = subprocess.run([str(program), model, *flags], capture_output=True, text=True, timeout=120)
        return out

    draft = ["--speculative-tokens", "4", "--draft-model", str(drafts["two layers"])]
    plain = run("generate", "once upon a time", "--max-tokens", "80", "--temperature", "0")
    assert run("generate", "once upon a time", "--max-tokens", "80", "--temperature", "0", *draft).stdout == plain.stdout
    bench = [json.loads(run("bench", "--gen-tokens", "64", "--temperature", "0", *extra).stdout)
             for extra in ([], draft)]
    assert bench[0]["tokens_fnv1a64"] == bench[1]["tokens_fnv1a64"]
    assert bench[1]["draft_rows"] > 0 == bench[0]["draft_rows"] and bench[1]["draft_model"].endswith("two-layers.gguf")
    bad = run("generate", "x", "--speculative-tokens", "0", "--draft-model", str(drafts["two layers"]))
    assert bad.returncode != 0 and "speculative_tokens must be 1 or more" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_cli_speculates_here_and_refuses_boards(drafts, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELLAMA_HOME", str(tmp_path))
    runner, draft = CliRunner(), ["--draft-model", str(drafts["q8_0 copy"])]
    want = runner.invoke(main, ["generate", "once upon a time", "--temperature", "0", "--max-tokens", "40"])
    got = runner.invoke(main, ["generate", "once upon a time", "--temperature", "0", "--max-tokens", "40", *draft])
    assert got.exit_code == 0 and got.stdout == want.stdout
    bench = runner.invoke(main, ["bench", "-r", "1", "-n", "48", "--warmup", "0", "--no-history", "--output", "json",
                                 *draft])
    assert bench.exit_code == 0, bench.output
    assert json.loads(bench.stdout)["info"]["draft_accepted"] > 0
    refused = runner.invoke(main, ["generate", "x", "--board", "mps2-an386", *draft])
    assert refused.exit_code != 0 and "--draft-model runs with the runtime on this machine" in refused.output
