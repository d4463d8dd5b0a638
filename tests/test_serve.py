"""edgellama serve: the OpenAI-compatible server, driven by the official openai client."""

import json
import threading
import urllib.error
import urllib.request

import pytest

openai = pytest.importorskip("openai")

from edgellama.devices import serve
from edgellama.devices.device import Device, LocalDevice
from edgellama.devices.opener import open_device


def start(device, **options):
    server = serve.make_server(device, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def server():
    device = open_device(local=True)
    server = start(device)
    yield server
    server.shutdown()
    server.server_close()
    device.close()


def test_models_and_health(server, client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tinystories-850k"]
    assert client.models.retrieve("tinystories-850k").id == "tinystories-850k"
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        assert r.status == 200 and json.load(r)["status"] == "ok"


def test_completion_stream_equals_whole(client, model):
    whole = client.completions.create(model=model, prompt="once upon a time", max_tokens=24, temperature=0)
    choice = whole.choices[0]
    assert choice.text.strip() and choice.finish_reason == "length"
    assert whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens == 24
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 24
    chunks = list(client.completions.create(model=model, prompt="once upon a time", max_tokens=24, temperature=0,
                                            stream=True))
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completion_stops_at_a_stop_string(client, model):
    full = client.completions.create(model=model, prompt="once upon a time", max_tokens=30, temperature=0)
    assert "lily" in full.choices[0].text
    cut = client.completions.create(model=model, prompt="once upon a time", max_tokens=30, temperature=0, stop="lily")
    assert cut.choices[0].text == full.choices[0].text[:full.choices[0].text.index("lily")]
    assert cut.choices[0].finish_reason == "stop"


def test_chat_both_forms(client, model):
    messages = [{"role": "system", "content": "you tell stories."},
                {"role": "user", "content": "tell me about a dog."}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=20, temperature=0)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens > 0
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == choice.message.content and finish == choice.finish_reason
    assert usage.total_tokens == whole.usage.total_tokens


def test_vllm_extra_fields_accepted(client, model):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "once upon a time"}], max_tokens=8, seed=3,
        extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "presence_penalty": 0.1,
                    "frequency_penalty": 0.1, "min_tokens": 2, "ignore_eos": True, "stop_token_ids": [2]})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8


def test_bad_fields_are_400_naming_them(client, model):
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.completions.create(model=model, prompt="hi", top_p=2)
    with pytest.raises(openai.BadRequestError, match="top_k"):
        client.completions.create(model=model, prompt="hi", extra_body={"top_k": "many"})
    with pytest.raises(openai.BadRequestError, match="n: 100 samples need as many sequences") as e:
        client.completions.create(model=model, prompt="hi", n=100)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError, match="logprobs must be in") as e:
        client.completions.create(model=model, prompt="hi", logprobs=21)
    assert e.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError, match="top_logprobs must be in") as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], logprobs=True,
                                       top_logprobs=30)
    assert e.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], top_logprobs=2)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=model, messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="nope"):
        client.completions.create(model="nope", prompt="hi")


def test_unknown_route_and_bad_json(server):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + "/v1/nothing", timeout=10)
    assert e.value.code == 404 and "error" in json.load(e.value)
    request = urllib.request.Request(server.url + "/v1/completions", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    assert e.value.code == 400 and "JSON" in json.load(e.value)["error"]["message"]


def test_a_client_that_leaves_mid_stream_frees_the_device(server, client, model):
    body = json.dumps({"model": model, "prompt": "once upon a time", "max_tokens": 200, "stream": True,
                       "ignore_eos": True}).encode()
    request = urllib.request.Request(server.url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.readline().startswith(b"data: ")
    r = client.completions.create(model=model, prompt="the cat", max_tokens=5, temperature=0)
    assert r.usage.completion_tokens == 5


def test_concurrent_requests_take_turns(client, model):
    from concurrent.futures import ThreadPoolExecutor

    def ask(stream):
        kw = dict(model=model, prompt="the little dog", max_tokens=20, temperature=0.8, seed=7)
        if stream:
            return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw))
        return client.completions.create(**kw).choices[0].text

    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(ask, [False, True, False, True]))
    assert texts[0] and len(set(texts)) == 1  # seeded: the same story each time, streamed or not


class DeviceProxy(Device):
    """A device that is not LocalDevice, so the server takes the protocol devices' path."""

    name = "proxy"

    def __init__(self):
        self.inner = LocalDevice()
        self.resets = []

    def info(self):
        return self.inner.info()

    def generate(self, prompt, params, chat=False):
        yield from self.inner.generate(prompt, params, chat)
        self.last_stats = self.inner.last_stats

    def cancel(self):
        self.inner.cancel()

    def reset(self, system=None):
        self.resets.append(system)
        self.inner.reset(system)

    def stats(self):
        return self.inner.stats()


def test_protocol_device_path_keeps_the_conversation():
    device = DeviceProxy()
    server = start(device, model_name="tiny")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        messages = [{"role": "system", "content": "be kind."}, {"role": "user", "content": "hello."}]
        first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
        assert first.choices[0].message.content and first.usage.prompt_tokens > 0
        assert device.resets == ["be kind."]
        # The same conversation, one turn on: no reset, only the new message goes.
        messages += [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "and then?"}]
        chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                     stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert device.resets == ["be kind."]
        # A different history: the device starts over.
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi."}], max_tokens=5)
        assert device.resets == ["be kind.", ""]
        r = client.completions.create(model="tiny", prompt="once upon a time", max_tokens=6, temperature=0)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    finally:
        server.shutdown()
        server.server_close()


class BrokenDevice(DeviceProxy):
    def generate(self, prompt, params, chat=False):
        from edgellama.errors import EdgeLlamaError
        raise EdgeLlamaError("the serial link dropped")
        yield


def test_a_device_error_is_a_500():
    server = start(BrokenDevice(), model_name="tiny")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError, match="serial link dropped"):
                client.completions.create(model="tiny", prompt="hi", stream=stream)
    finally:
        server.shutdown()
        server.server_close()


def test_the_serve_command():
    import socket
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "edgellama", "serve", "--local", "--listen", "127.0.0.1:0",
                          "--request-timeout", "1"], stderr=subprocess.PIPE, text=True)
    try:
        line = p.stderr.readline()
        assert "serving tinystories-850k on http://127.0.0.1:" in line, line
        url = line.split(" on ", 1)[1].split("/v1")[0]
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        r = client.completions.create(model="tinystories-850k", prompt="once upon a time", max_tokens=4)
        assert r.usage.completion_tokens == 4
        # a silent connection is dropped after --request-timeout (1 s), well before the default 30 s
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=15) as silent:
            assert silent.recv(1) == b""
    finally:
        p.terminate()
        p.wait(timeout=10)


@pytest.mark.emulated
def test_serve_an_emulated_board(board_builds):
    device = open_device(board="qemu-aarch64", output=str(board_builds("qemu-aarch64", "q8_0").out_dir))
    server = start(device)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        whole = client.completions.create(model=model, prompt="once upon a time", max_tokens=16, temperature=0)
        assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 16
        assert whole.usage.prompt_tokens > 0
        chunks = client.completions.create(model=model, prompt="once upon a time", max_tokens=16, temperature=0,
                                           stream=True)
        assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
        messages = [{"role": "user", "content": "once there was a dog."}]
        first = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
        messages += [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "what did it do?"}]
        second = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0,
                                                extra_body={"top_k": 5, "repetition_penalty": 1.1})
        assert first.choices[0].message.content and second.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="shorten the prompt"):
            client.completions.create(model=model, prompt="a " * 400, max_tokens=4)
        # the board's model file is here, so prompt + max_tokens is checked before the device is asked
        context = client.models.list().data[0].model_extra["max_model_len"]
        with pytest.raises(openai.BadRequestError, match=r"max_tokens: .*maximum context length is "
                           rf"{context} tokens, but {whole.usage.prompt_tokens + context - 1} were requested"):
            client.completions.create(model=model, prompt="once upon a time", max_tokens=context - 1)
        edge = client.completions.create(model=model, prompt="once upon a time", temperature=0,
                                         max_tokens=context - whole.usage.prompt_tokens,
                                         extra_body={"ignore_eos": True})
        assert edge.usage.total_tokens == context
        assert client.completions.create(model=model, prompt="the cat", max_tokens=3).usage.completion_tokens == 3
    finally:
        server.shutdown()
        server.server_close()
        device.close()


class DropsMidReply(DeviceProxy):
    def generate(self, prompt, params, chat=False):
        yield "once"
        raise OSError("the serial link dropped")


def test_a_device_failing_mid_stream_reports_an_error():
    server = start(DropsMidReply(), model_name="tiny")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        with pytest.raises(openai.APIError, match="serial link dropped"):
            list(client.completions.create(model="tiny", prompt="hi", stream=True))
        with pytest.raises(openai.InternalServerError, match="serial link dropped"):
            client.completions.create(model="tiny", prompt="hi")
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- n samples and logprobs (issue 11)

@pytest.fixture(scope="module")
def llm(server):
    """The LLM behind the server (the same runtime), for the expected answers."""
    return server.api.device.llm


def test_n_samples_are_forks_with_their_own_seeds(client, model, llm):
    from edgellama import SamplingParams
    whole = client.completions.create(model=model, prompt=["once upon a time", "the dog"], n=3, max_tokens=12,
                                      temperature=1.0, seed=21)
    assert [c.index for c in whole.choices] == list(range(6))
    expected = llm.generate(["once upon a time", "the dog"], SamplingParams(n=3, max_tokens=12, temperature=1.0,
                                                                            seed=21), use_tqdm=False)
    assert [c.text for c in whole.choices] == [c.text for out in expected for c in out.outputs]
    assert whole.usage.completion_tokens == sum(len(c.token_ids) for out in expected for c in out.outputs)
    alone = llm.generate("the dog", SamplingParams(max_tokens=12, temperature=1.0, seed=23), use_tqdm=False)[0]
    assert whole.choices[5].text == alone.outputs[0].text  # prompt 1, sample 2: seed + 2
    streamed = ["" for _ in range(6)]
    finished = set()
    for chunk in client.completions.create(model=model, prompt=["once upon a time", "the dog"], n=3, max_tokens=12,
                                           temperature=1.0, seed=21, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.text
            if c.finish_reason:
                finished.add(c.index)
    assert streamed == [c.text for c in whole.choices] and finished == set(range(6))


def test_chat_n_streamed_and_not(client, model):
    messages = [{"role": "user", "content": "tell me a story"}]
    whole = client.chat.completions.create(model=model, messages=messages, n=2, max_tokens=10, temperature=1.0,
                                           seed=4)
    assert [c.index for c in whole.choices] == [0, 1]
    texts = ["", ""]
    for chunk in client.chat.completions.create(model=model, messages=messages, n=2, max_tokens=10, temperature=1.0,
                                                seed=4, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == [c.message.content for c in whole.choices] and texts[0] != texts[1]


def test_completion_logprobs_and_echo(client, model, llm):
    from edgellama import SamplingParams
    r = client.completions.create(model=model, prompt="once upon a time", max_tokens=8, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    out = llm.generate("once upon a time", SamplingParams(max_tokens=8, temperature=0, logprobs=3),
                       use_tqdm=False)[0].outputs[0]
    assert len(lp.tokens) == len(out.token_ids) == 8
    assert lp.token_logprobs == [e[t].logprob for e, t in zip(out.logprobs, out.token_ids)]
    assert all(3 <= len(top) <= 4 and max(top.values()) <= 0 for top in lp.top_logprobs)
    assert "".join(lp.tokens).strip() == r.choices[0].text.strip()
    assert lp.text_offset == sorted(lp.text_offset)

    echoed = client.completions.create(model=model, prompt="once upon a time", max_tokens=8, temperature=0,
                                       logprobs=2, echo=True)
    c = echoed.choices[0]
    assert c.text == "once upon a time" + r.choices[0].text
    n_prompt = echoed.usage.prompt_tokens
    assert len(c.logprobs.tokens) == n_prompt + 8
    assert c.logprobs.token_logprobs[0] is None and c.logprobs.top_logprobs[0] is None  # BOS: nothing before it
    assert all(v is not None and v <= 0 for v in c.logprobs.token_logprobs[1:])
    assert c.logprobs.token_logprobs[n_prompt:] == lp.token_logprobs

    chunks = list(client.completions.create(model=model, prompt="once upon a time", max_tokens=8, temperature=0,
                                            logprobs=3, stream=True))
    tokens = [t for ch in chunks for c in ch.choices if c.logprobs for t in c.logprobs.token_logprobs]
    assert tokens == lp.token_logprobs


def test_chat_logprobs_with_top_logprobs(client, model):
    messages = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and bytes(item.bytes).decode("utf-8", "replace") == item.token
        assert len(item.top_logprobs) == 2 and item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert item.top_logprobs[0].token == item.token  # greedy takes the most likely
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0)
    assert plain.choices[0].logprobs is None
    streamed = [item for ch in client.chat.completions.create(model=model, messages=messages, max_tokens=6,
                                                              temperature=0, logprobs=True, stream=True)
                for c in ch.choices if c.logprobs for item in c.logprobs.content]
    assert [i.logprob for i in streamed] == [i.logprob for i in content]
    assert all(i.top_logprobs == [] for i in streamed)  # top_logprobs defaults to 0


def test_use_beam_search_returns_the_n_best_beams(client, model, llm):
    from edgellama import BeamSearchParams
    r = client.completions.create(model=model, prompt="once upon a time", n=3, max_tokens=10,
                                  extra_body={"use_beam_search": True, "length_penalty": 1.0})
    ids = llm.get_tokenizer().encode("once upon a time")
    expected = llm.beam_search({"prompt_token_ids": ids}, BeamSearchParams(beam_width=3, max_tokens=10))[0]
    assert [c.text for c in r.choices] == [llm.get_tokenizer().decode(s.tokens[len(ids):], previous=ids[-1])
                                           for s in expected.sequences]
    assert [c.index for c in r.choices] == [0, 1, 2]
    chunks = list(client.completions.create(model=model, prompt="once upon a time", n=3, max_tokens=10, stream=True,
                                            extra_body={"use_beam_search": True}))
    texts = ["", "", ""]
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] += c.text
    assert texts == [c.text for c in r.choices]
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=2,
                                          max_tokens=6, extra_body={"use_beam_search": True})
    assert len(chat.choices) == 2 and chat.choices[0].message.content != chat.choices[1].message.content
    with pytest.raises(openai.BadRequestError, match="n: a beam search of width 5 holds 10 sequences") as e:
        client.completions.create(model=model, prompt="hi", n=5, extra_body={"use_beam_search": True})
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError, match="length_penalty must be a number"):
        client.completions.create(model=model, prompt="hi", extra_body={"use_beam_search": True,
                                                                         "length_penalty": "long"})


def test_n_and_logprobs_through_a_protocol_device(llm):
    """A device behind the server (edgellama-run serve over pipes, as over a serial line)
    forks n samples and reports logprobs in GENERATE's frames: the same choices as here."""
    from edgellama import SamplingParams
    from edgellama.devices.protocol_device import ProtocolDevice
    from edgellama.devices.streams import ProcessStream
    from edgellama.runtime import build
    device = ProtocolDevice(ProcessStream([build.host_program(), llm.model, "serve", "--max-seqs", "6"], "serve"),
                            timeout=30)
    server = start(device)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        r = client.completions.create(model=model, prompt="once upon a time", n=2, max_tokens=8, temperature=1.0,
                                      seed=3, logprobs=1)
        expected = llm.generate("once upon a time", SamplingParams(n=2, max_tokens=8, temperature=1.0, seed=3,
                                                                   logprobs=1), use_tqdm=False)[0]
        assert [c.text for c in r.choices] == [c.text for c in expected.outputs]
        assert r.choices[1].logprobs.token_logprobs == \
            [e[t].logprob for e, t in zip(expected.outputs[1].logprobs, expected.outputs[1].token_ids)]
        assert r.usage.completion_tokens == 16 and r.usage.prompt_tokens > 0
        with pytest.raises(openai.BadRequestError, match="n: 7 samples need as many sequences") as e:
            client.completions.create(model=model, prompt="hi", n=7)
        assert e.value.body["param"] == "n"
        with pytest.raises(openai.BadRequestError, match="n: a device's chat turn is one sample"):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=2)
        beams = client.completions.create(model=model, prompt="once upon a time", n=3, max_tokens=8,
                                          extra_body={"use_beam_search": True})
        from edgellama import BeamSearchParams
        ids = llm.get_tokenizer().encode("once upon a time")
        local = llm.beam_search({"prompt_token_ids": ids}, BeamSearchParams(beam_width=3, max_tokens=8))[0]
        assert [c.text for c in beams.choices] == [llm.get_tokenizer().decode(s.tokens[len(ids):], previous=ids[-1])
                                                   for s in local.sequences]
    finally:
        server.shutdown()
        server.server_close()
        device.close()
