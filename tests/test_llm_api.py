"""The vLLM-style Python API over the C runtime."""

import pytest

from edgellama import LLM, CompletionOutput, RequestOutput, SamplingParams


@pytest.fixture(scope="module")
def llm():
    return LLM()


def test_sampling_params_defaults_are_vllms():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.repetition_penalty, p.frequency_penalty, p.presence_penalty) == (1.0, 0.0, 0.0)
    assert (p.max_tokens, p.min_tokens, p.seed, p.stop, p.stop_token_ids, p.ignore_eos) == (16, 0, None, [], [], False)
    assert SamplingParams(stop="x").stop == ["x"]


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2), ("min_p", 1.5),
    ("repetition_penalty", 0.0), ("frequency_penalty", 2.5), ("presence_penalty", -3.0),
    ("max_tokens", 0), ("min_tokens", -1), ("n", 0), ("seed", -1), ("logprobs", 21),
    ("logprobs", -1), ("prompt_logprobs", 21)])
def test_bad_sampling_values_name_their_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}"):
        SamplingParams(**{field: value})


def test_generate_returns_vllm_outputs_in_order(llm):
    prompts = ["once upon a time", "the little dog", "one day, tom", "lily and ben went"]
    outs = llm.generate(prompts, SamplingParams(temperature=0.8, top_p=0.95, max_tokens=24, seed=7), use_tqdm=False)
    assert [o.prompt for o in outs] == prompts
    for o in outs:
        assert isinstance(o, RequestOutput) and isinstance(o.outputs[0], CompletionOutput)
        assert o.finished and o.prompt_token_ids[0] == 1 and o.outputs[0].index == 0
        c = o.outputs[0]
        assert c.finish_reason in ("stop", "length") and 0 < len(c.token_ids) <= 24
        assert c.text == llm.get_tokenizer().decode(c.token_ids, previous=o.prompt_token_ids[-1]) or \
            c.finish_reason == "stop"
        assert o.metrics.first_token_time >= o.metrics.arrival_time
    assert len({o.request_id for o in outs}) == 4


def test_batch_equals_one_by_one_and_seeds_repeat(llm):
    prompts = ["once upon a time", "the little dog", "one day, tom"]
    params = [SamplingParams(temperature=0.9, max_tokens=30, seed=s) for s in (1, 2, 3)]
    together = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    alone = [llm.generate(p, sp, use_tqdm=False)[0].outputs[0].token_ids for p, sp in zip(prompts, params)]
    assert together == alone


def test_stop_strings_and_reasons(llm):
    greedy = SamplingParams(temperature=0, max_tokens=40)
    full = llm.generate("once upon a time", greedy, use_tqdm=False)[0].outputs[0]
    assert "lily" in full.text
    cut = llm.generate("once upon a time", SamplingParams(temperature=0, max_tokens=40, stop=["lily", "zz"]),
                       use_tqdm=False)[0].outputs[0]
    assert cut.text == full.text[:full.text.index("lily")]
    assert (cut.finish_reason, cut.stop_reason) == ("stop", "lily")
    token = full.token_ids[3]
    by_id = llm.generate("once upon a time", SamplingParams(temperature=0, max_tokens=40, stop_token_ids=[token]),
                         use_tqdm=False)[0].outputs[0]
    assert by_id.token_ids == full.token_ids[:4] and by_id.stop_reason == token
    length = llm.generate("once upon a time", SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)[0]
    assert length.outputs[0].finish_reason == "length" and len(length.outputs[0].token_ids) == 5


def test_min_tokens_and_ignore_eos(llm):
    out = llm.generate("once upon a time", SamplingParams(temperature=0.8, seed=0, max_tokens=120, min_tokens=120),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 120 and out.finish_reason == "length"


def test_token_prompts_and_cached_prefix(llm):
    ids = llm.get_tokenizer().encode("once upon a time there was a little girl named lily. she loved to play " * 2)
    a, b = llm.generate([{"prompt_token_ids": ids}] * 2, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    again = llm.generate({"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0]
    assert again.num_cached_tokens >= 16  # full blocks of the earlier identical prompt were found again


def test_stream_delivers_the_same_text(llm):
    params = SamplingParams(temperature=0.7, seed=5, max_tokens=50)
    chunks = list(llm.generate_stream("once upon a time", params))
    assert chunks[-1].finished and not any(c.finished for c in chunks[:-1])
    whole = llm.generate("once upon a time", params, use_tqdm=False)[0].outputs[0].text
    assert "".join(c.outputs[0].text for c in chunks) == whole


def test_prompt_too_long_is_refused_and_the_engine_carries_on(llm):
    with pytest.raises(ValueError, match="max_model_len 512"):
        llm.generate(["once", "word " * 400], SamplingParams(max_tokens=4), use_tqdm=False)
    out = llm.generate("once upon a time", SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 6 and llm.stats()["blocks_used"] == 0


def test_progress_bar_reports_vllm_speeds(llm, capsys):
    llm.generate(["once", "the dog"], SamplingParams(max_tokens=4))
    err = capsys.readouterr().err
    assert "Processed prompts" in err and "est. speed input:" in err and "output:" in err and "toks/s" in err


def test_chat_renders_the_template_and_replies(llm):
    messages = [{"role": "system", "content": "you tell stories."}, {"role": "user", "content": "a story about a cat"}]
    out = llm.chat(messages, SamplingParams(temperature=0.7, seed=1, max_tokens=30), use_tqdm=False)[0]
    plain = llm.get_tokenizer().decode(out.prompt_token_ids[1:])
    assert plain.endswith("you tell stories.\n\nuser: a story about a cat\nassistant:")
    assert out.outputs[0].token_ids and "\nuser:" not in out.outputs[0].text
    chatml = llm.chat(messages, SamplingParams(max_tokens=4), chat_template="chatml", use_tqdm=False)[0]
    assert "<|im_start|>user\na story about a cat<|im_end|>" in llm.get_tokenizer().decode(chatml.prompt_token_ids)
    with pytest.raises(ValueError, match="chat_template"):
        llm.chat(messages, chat_template="alpaca")


def test_chat_session_keeps_the_history_in_the_cache(llm):
    session = llm.chat_session("you tell stories.")
    first = "".join(session.send("once there was a dog.", SamplingParams(temperature=0.7, seed=2, max_tokens=20)))
    tokens_after_first, _, _ = llm._rt.tokens(session.seq_id)
    before = llm.stats()["prompt_tokens_computed"]
    second = "".join(session.send("what did the dog do?", SamplingParams(temperature=0.7, seed=2, max_tokens=20)))
    computed = llm.stats()["prompt_tokens_computed"] - before
    turn = session.chat.turn_tokens(-1, "", "what did the dog do?")
    assert first and second is not None
    # Only the new turn (and the last reply token) was computed, not the history.
    assert computed <= len(turn) + 2 < len(tokens_after_first)
    session.reset()
    assert llm.stats()["blocks_used"] == 0
