"""Speculative decoding with n-gram proposals (el_speculate.h): the proposer against a plain
Python version, and every output of a speculating engine equal to plain decoding's, token
for token, greedy and sampled (which is stronger than an unchanged distribution), on the
host library, the POSIX program and an emulated bare-metal board."""

import ctypes as C
import json
import random
import subprocess

import pytest
from conftest import require_board

from edgellama import LLM, SamplingParams
from edgellama.runtime import build as runtime_build
from edgellama.runtime import capi
from edgellama.runtime.speculative import engine_options
from edgellama.runtime.structured import StructuredOutputsParams

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
REPETITIVE = "the cat sat on the mat. the dog sat on the log. " * 3


def python_ngram(tokens, k, max_n, min_n):
    """The rule of el_speculate_ngram: the longest suffix (max_n down to min_n) seen before,
    at its earliest occurrence; the tokens after it, at most k."""
    n = len(tokens)
    for length in range(min(max_n, n - 1), min_n - 1, -1):
        suffix = tokens[n - length:]
        for start in range(0, n - length):
            if tokens[start:start + length] == suffix:
                return tokens[start + length:start + length + k]
    return []


def test_the_proposer_is_the_python_rule():
    fn = capi.library().el_speculate_ngram
    fn.restype = C.c_int
    fn.argtypes = [C.POINTER(C.c_int32), C.c_int, C.c_int, C.c_int, C.c_int, C.POINTER(C.c_int32)]
    rnd = random.Random(5)
    for _ in range(3000):
        tokens = [rnd.randrange(4) for _ in range(rnd.randint(1, 30))]
        k, max_n = rnd.randint(1, 6), rnd.randint(1, 6)
        min_n = rnd.randint(1, max_n)
        out = (C.c_int32 * k)()
        count = fn((C.c_int32 * len(tokens))(*tokens), len(tokens), k, max_n, min_n, out)
        assert list(out)[:count] == python_ngram(tokens, k, max_n, min_n), (tokens, k, max_n, min_n)


@pytest.fixture(scope="module")
def pair():
    """A plain LLM and a speculating one over the same model."""
    return LLM(), LLM(speculative_config=NGRAM)


def outputs(llm, prompts, params):
    return [[(o.token_ids, o.text, o.finish_reason, o.stop_reason) for o in r.outputs]
            for r in llm.generate(prompts, params, use_tqdm=False)]


CASES = [
    SamplingParams(temperature=0, max_tokens=120),
    SamplingParams(temperature=1.0, seed=3, max_tokens=120),
    SamplingParams(temperature=0.8, top_p=0.9, top_k=40, seed=11, max_tokens=100, repetition_penalty=1.1,
                   frequency_penalty=0.2),
    SamplingParams(temperature=0.7, seed=5, n=3, max_tokens=60),
    SamplingParams(temperature=0, max_tokens=80, stop=["the log"], min_tokens=5),
    SamplingParams(temperature=0, max_tokens=5),
    SamplingParams(temperature=0.9, seed=2, max_tokens=60, logprobs=2),  # decodes one token a step
    SamplingParams(temperature=1.0, seed=9, max_tokens=60,
                   structured_outputs=StructuredOutputsParams(regex=r"([a-z]+ ){3,12}[a-z]+\.")),
]


@pytest.mark.parametrize("params", CASES, ids=lambda p: repr(p)[:60])
def test_speculation_gives_the_tokens_plain_decoding_gives(pair, params):
    plain, spec = pair
    prompts = [REPETITIVE, "once upon a time", "one two three one two three one two"]
    before = spec.stats()
    assert outputs(spec, prompts, params) == outputs(plain, prompts, params)
    after = spec.stats()
    drafted = after["draft_tokens"] > before["draft_tokens"]
    assert drafted == (params.logprobs is None)  # a request with logprobs decodes one token a step
    spec._rt.check_blocks()


def test_fewer_steps_on_repetitive_text_and_the_counters(pair):
    plain, spec = pair
    params = SamplingParams(temperature=0, max_tokens=150, ignore_eos=True)
    p0, s0 = plain.stats(), spec.stats()
    assert outputs(spec, [REPETITIVE], params) == outputs(plain, [REPETITIVE], params)
    p1, s1 = plain.stats(), spec.stats()
    steps_plain, steps_spec = p1["steps"] - p0["steps"], s1["steps"] - s0["steps"]
    accepted, drafted = s1["draft_accepted"] - s0["draft_accepted"], s1["draft_tokens"] - s0["draft_tokens"]
    assert 0 < accepted <= drafted
    assert steps_spec == steps_plain - accepted  # each accepted draft is a step saved


def test_preemption_and_a_small_pool_change_nothing():
    """Eight sequences in a pool of 24 blocks: drafts are given up first, then sequences preempted."""
    from edgellama.boards.planner import kv_block_bytes, model_info
    block = kv_block_bytes(model_info(None, None).config, 16, "f32")
    options = dict(max_model_len=256, kv_cache_bytes=24 * block, max_num_seqs=8)
    plain, spec = LLM(**options), LLM(**options, speculative_config=NGRAM)
    prompts = [REPETITIVE + str(i) for i in range(8)]
    params = SamplingParams(temperature=0.5, seed=1, max_tokens=90)
    assert outputs(spec, prompts, params) == outputs(plain, prompts, params)
    assert spec.stats()["preemptions"] > 0 and spec.stats()["draft_accepted"] > 0
    spec._rt.check_blocks()


def test_a_chat_session_speculates_turn_after_turn(pair):
    plain, spec = pair
    replies = []
    for llm in pair:
        session = llm.chat_session("you repeat things.")
        replies.append([("".join(session.send(turn, SamplingParams(temperature=0, max_tokens=40))))
                        for turn in ("say: the cat sat on the mat.", "again please", "and once more")])
    assert replies[0] == replies[1]


@pytest.mark.parametrize("config, message", [
    ({"method": "ngram"}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 17}, "num_speculative_tokens"),
    ({"method": "eagle", "num_speculative_tokens": 2}, "not supported"),
    ({"model": "no-such-draft.gguf", "num_speculative_tokens": 2}, "not a file"),
    ({"method": "draft_model", "num_speculative_tokens": 2}, "model must be the path"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 2}, "above"),
    ({"method": "ngram", "num_speculative_tokens": 2, "lookahead": 1}, "unknown key")])
def test_bad_speculative_configs_name_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        engine_options(config)


def test_vllms_lookup_defaults():
    assert engine_options({"num_speculative_tokens": 3}) == {
        "speculative_tokens": 3, "prompt_lookup_max": 5, "prompt_lookup_min": 5}
    assert engine_options({"num_speculative_tokens": 3, "prompt_lookup_max": 4})["prompt_lookup_min"] == 4


def test_the_posix_program_speculates_with_the_same_tokens():
    program, model = runtime_build.host_program(), str(LLM().model)

    def run(*flags):
        out = subprocess.run([str(program), model, *flags], capture_output=True, text=True, timeout=120, check=True)
        return out.stdout

    for flags in (["--temperature", "0"], ["--temperature", "1", "--seed", "4"]):
        plain = run("generate", REPETITIVE, "--max-tokens", "80", *flags)
        assert run("generate", REPETITIVE, "--max-tokens", "80", *flags, "--speculative-tokens", "4",
                   "--prompt-lookup-min", "1") == plain
    bench = [json.loads(run("bench", "--prompt", REPETITIVE, "--gen-tokens", "100", "--temperature", "0", *extra))
             for extra in ([], ["--speculative-tokens", "4", "--prompt-lookup-min", "2"])]
    assert bench[0]["tokens_fnv1a64"] == bench[1]["tokens_fnv1a64"]
    assert bench[1]["draft_accepted"] > 0 == bench[0]["draft_tokens"]


@pytest.mark.emulated
def test_an_emulated_bare_metal_board_built_to_speculate(tmp_path):
    from edgellama.boards import builder
    from edgellama.devices.opener import open_device
    from edgellama.runtime.engine_options import EngineOptions
    require_board("mps2-an386")
    result = builder.build("mps2-an386", None, quant="q8_0", out_dir=tmp_path / "b",
                           options=EngineOptions(speculative_tokens=4, prompt_lookup_max=4, prompt_lookup_min=1))
    assert result.manifest["engine"]["speculative_tokens"] == 4
    host = LLM(str(result.out_dir / "model.gguf"))
    with open_device(board="mps2-an386", output=str(result.out_dir), timeout=120) as dev:
        for params in (SamplingParams(temperature=0, max_tokens=60), SamplingParams(temperature=1, seed=3,
                                                                                   max_tokens=60)):
            want = host.generate(REPETITIVE, params, use_tqdm=False)[0].outputs[0].text
            assert "".join(dev.generate(REPETITIVE, params)) == want
        assert dev.stats()["draft_accepted"] > 0


def test_edgellama_bench_reports_the_drafts(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edgellama.cli import main
    monkeypatch.setenv("EDGELLAMA_HOME", str(tmp_path))
    # 200 tokens: the default model's text from bench's prompt repeats itself within them
    result = CliRunner().invoke(main, ["bench", "-r", "1", "-n", "200", "--warmup", "0", "--speculative-tokens", "4",
                                       "--no-history", "--output", "json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)["info"]
    assert 0 < info["draft_accepted"] <= info["draft_tokens"]
    plain = CliRunner().invoke(main, ["bench", "-r", "1", "-n", "16", "--warmup", "0", "--no-history"])
    assert plain.exit_code == 0 and "drafts accepted" not in plain.stdout
