"""An OpenAI-compatible HTTP server in front of a device.

    from edgellama.devices.opener import open_device
    from edgellama.devices import serve
    server = serve.make_server(open_device(local=True), "127.0.0.1", 8000)
    server.serve_forever()

Endpoints: POST /v1/completions and /v1/chat/completions (JSON, or server-sent events
with "stream": true), GET /v1/models, GET /v1/models/{id}, GET /health. Requests take
OpenAI's fields (model, prompt / messages, max_tokens or max_completion_tokens,
temperature, top_p, stop, seed, n, logprobs (completions: how many top tokens; chat:
true, with top_logprobs), echo (completions: the prompt, with its logprobs when asked),
stream, stream_options.include_usage) and vLLM's extra sampling fields (top_k, min_p,
repetition_penalty, presence_penalty, frequency_penalty, min_tokens, ignore_eos,
stop_token_ids, skip_special_tokens, use_beam_search with n as the beam width and
length_penalty). Structured outputs: OpenAI's response_format ({"type": "json_object"} or
{"type": "json_schema", "json_schema": {"schema": ...}}), vLLM's structured_outputs
object (choice, regex, json, grammar, json_object) or its older guided_choice,
guided_regex, guided_json and guided_grammar; one per request. The n samples of a
prompt are one engine request (forks of one prefill); choice i*n + j is sample j of
prompt i (with beam search: its j-th best beam). Errors come back as OpenAI error bodies: 400 naming the bad field, 404 for an unknown route or
model, 405 (with Allow) for a method a route does not take, 408 for a body that does not
arrive, 413 for one over MAX_BODY_BYTES, 500 when the device fails.

Hostile input is refused before it costs anything: the Content-Length must be one plain
decimal number no larger than MAX_BODY_BYTES (the body is read only then, with a socket
timeout), JSON may not hold Infinity or NaN or nest past Python's recursion limit, every
number must fit the C type it travels in (SamplingParams checks), and a prompt plus
max_tokens must fit the context (on a protocol device, counted with the board's model
file where its build is here; without it, and for a chat turn the device adds to its own
conversation, max_tokens alone is checked and the device stops at its context). A
client that goes away is no error worth a traceback.

A device answers one request at a time, so requests take turns on a lock.

On the local runtime (LocalDevice) the server drives the LLM API directly: a completion
is a prompt, a chat is the whole messages list rendered with the model's chat template
(as LLM.chat does), and usage counts are exact. A protocol device (--board, --host,
--port) keeps its own conversation: the server sends the last user message with
chat=True and remembers what the device has heard; when a request's earlier messages
are not that conversation, the device is reset (with the request's system prompt) and
only the last user message is sent, so earlier turns that the device never saw are
lost. Usage counts there are what the device reports.
"""

import codecs
import dataclasses
import json
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from edgellama.devices.device import Device, LocalDevice
from edgellama.errors import EdgeLlamaError
from edgellama.runtime.sampling_params import BeamSearchParams, SamplingParams

MAX_BODY_BYTES = 4 << 20
REQUEST_TIMEOUT_S = 30.0  # a client silent this long mid-request (or idle between requests) is dropped
LINGER_BYTES, LINGER_S = 1 << 20, 1.0  # after refusing a body: read this much of it at most, then close

FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
INT_FIELDS = ("top_k", "min_tokens", "seed", "n")
BOOL_FIELDS = ("ignore_eos", "skip_special_tokens")
FIELD_NAMES = FLOAT_FIELDS + INT_FIELDS + BOOL_FIELDS + ("max_tokens", "stop", "stop_token_ids", "prompt", "messages",
                                                         "logprobs", "top_logprobs", "echo", "use_beam_search",
                                                         "length_penalty", "response_format", "structured_outputs",
                                                         "guided_json", "guided_regex", "guided_choice",
                                                         "guided_grammar")
# Fields that would change what comes back in ways this server does not do: refused, not ignored.
UNSUPPORTED = ("suffix", "tools", "functions", "logit_bias")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type = type or ("server_error" if status >= 500 else
                             "not_found_error" if status == 404 else "invalid_request_error")
        self.headers = {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}


def bad(message, param=None):
    return APIError(400, message, param)


# ---------------------------------------------------------------------- the body

class _NonFinite:
    """What json hands back for the literals Infinity, -Infinity and NaN (valid JS, not
    JSON): found after parsing and refused, naming the field that held it."""

    def __init__(self, literal):
        self.literal = literal


def parse_body(data: bytes):
    """The JSON request body; anything but strict, finite JSON is a 400."""
    try:
        body = json.loads(data, parse_constant=_NonFinite)
    except RecursionError:
        raise bad("the request body is not valid JSON: it nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # ValueError also covers ints past 4300 digits
        raise bad(f"the request body is not valid JSON: {e}") from None
    # Walk it without recursion (a body may nest almost to the recursion limit).
    stack = list(body.items()) if isinstance(body, dict) else [(None, body)]
    while stack:
        field, value = stack.pop()
        if isinstance(value, _NonFinite):
            where = f"{field}: " if field else ""
            raise bad(f"{where}{value.literal} is not a JSON number; numbers must be finite", field)
        if isinstance(value, dict):
            stack.extend((field, v) for v in value.values())
        elif isinstance(value, list):
            stack.extend((field, v) for v in value)
    return body


# ---------------------------------------------------------------------- request fields

def logprob_fields(body: dict, kind: str) -> dict:
    """SamplingParams' logprobs and prompt_logprobs from OpenAI's fields: completions take
    `logprobs` as a count (and `echo` asks for the prompt's too), chat takes `logprobs`
    true/false with `top_logprobs` as the count."""
    def count(name):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise bad(f"{name} must be an integer, got {v!r}", name)
        return v

    if body.get("echo") not in (None, True, False):
        raise bad(f"echo must be true or false, got {body['echo']!r}", "echo")
    if kind == "chat":
        if body.get("echo"):
            raise bad("echo is for completions, not chat", "echo")
        if body.get("logprobs") not in (None, True, False):
            raise bad(f"logprobs must be true or false, got {body['logprobs']!r}", "logprobs")
        top = count("top_logprobs")
        if top is not None and not body.get("logprobs"):
            raise bad("top_logprobs needs logprobs set to true", "top_logprobs")
        return {"logprobs": (top or 0) if body.get("logprobs") else None}
    if body.get("top_logprobs") is not None:
        raise bad("top_logprobs is for chat; completions take logprobs as a count", "top_logprobs")
    k = count("logprobs")
    return {"logprobs": k, "prompt_logprobs": k if body.get("echo") and k is not None else None}


def sampling_params(body: dict, default_max_tokens: int | None, kind: str = "completion") -> SamplingParams:
    """SamplingParams from an OpenAI/vLLM request body; a bad field raises a 400 naming it."""
    for name in UNSUPPORTED:
        value = body.get(name)
        if value not in (None, False, 0, [], {}):
            raise bad(f"{name} is not supported by this server", name)
    if body.get("best_of") not in (None, 1):
        raise bad("best_of must be 1", "best_of")
    values = {"structured_outputs": structured_outputs(body)}
    for name in FLOAT_FIELDS:
        if body.get(name) is not None:
            v = body[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise bad(f"{name} must be a number, got {v!r}", name)
            try:
                values[name] = float(v)
            except OverflowError:  # an integer past float's range
                raise bad(f"{name} must be a finite number, got an integer of {len(str(v))} digits", name) from None
    for name in INT_FIELDS:
        if body.get(name) is not None:
            v = body[name]
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(f"{name} must be an integer, got {v!r}", name)
            values[name] = v
    for name in BOOL_FIELDS:
        if body.get(name) is not None:
            if not isinstance(body[name], bool):
                raise bad(f"{name} must be true or false, got {body[name]!r}", name)
            values[name] = body[name]
    max_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(max_name, default_max_tokens)
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise bad(f"{max_name} must be an integer, got {max_tokens!r}", max_name)
    values["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad("stop must be a string or a list of strings", "stop")
        values["stop"] = stop
    ids = body.get("stop_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise bad("stop_token_ids must be a list of integers", "stop_token_ids")
        values["stop_token_ids"] = ids
    values.update(logprob_fields(body, kind))
    try:
        params = SamplingParams(**values)
    except ValueError as e:
        message = str(e)
        field = message.split(" ", 1)[0]
        if field == "max_tokens":
            field = max_name
            message = message.replace("max_tokens", max_name, 1)
        elif field == "logprobs" and kind == "chat":
            field = "top_logprobs"
            message = message.replace("logprobs", "top_logprobs", 1)
        elif field == "prompt_logprobs":
            field = "logprobs"
        raise bad(message, field if field in values or field in (max_name, "top_logprobs") else None) from None
    return params


GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                 "guided_grammar": "grammar"}  # vLLM's older names for structured_outputs' fields


def structured_outputs(body: dict):
    """StructuredOutputsParams from OpenAI's response_format (json_object, json_schema),
    vLLM's structured_outputs object, or its older guided_* fields; None without one.
    Compiled here, so an impossible or too large constraint is a 400 naming its field."""
    from edgellama.runtime.structured import StructuredOutputsParams, compile_constraint
    found = []
    fmt = body.get("response_format")
    if fmt not in (None, {}):
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_object":
            found.append(("response_format", {"json_object": True}))
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise bad("response_format.json_schema.schema must be a JSON schema object", "response_format")
            found.append(("response_format", {"json": schema}))
        elif kind != "text":
            raise bad('response_format: type must be "text", "json_object" or "json_schema"', "response_format")
    given = body.get("structured_outputs")
    if given is not None:
        if not isinstance(given, dict):
            raise bad("structured_outputs must be an object", "structured_outputs")
        found.append(("structured_outputs", given))
    for name, field in GUIDED_FIELDS.items():
        if body.get(name) is not None:
            found.append((name, {field: body[name]}))
    if not found:
        return None
    if len(found) > 1:
        raise bad(f"{' and '.join(name for name, _ in found)}: give one structured-output constraint", found[1][0])
    name, fields = found[0]
    try:
        params = StructuredOutputsParams(**fields)
        compile_constraint(params)
        params.source = name  # the field a device's refusal names
    except TypeError as e:  # a field StructuredOutputsParams does not have
        raise bad(f"{name}: {e}".replace("StructuredOutputsParams.__init__() ", ""), name) from None
    except ValueError as e:
        raise bad(f"{name}: {e}", name) from None
    return params


def beam_search_params(body: dict, params: SamplingParams):
    """vLLM's extras use_beam_search (the beam width is n; the n best beams come back as the
    choices) and length_penalty: BeamSearchParams, or None for sampling."""
    use = body.get("use_beam_search")
    if use not in (None, True, False):
        raise bad(f"use_beam_search must be true or false, got {use!r}", "use_beam_search")
    penalty = body.get("length_penalty", 1.0)
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)):
        raise bad(f"length_penalty must be a number, got {penalty!r}", "length_penalty")
    if not use:
        return None
    if params.structured_outputs is not None:
        raise bad("use_beam_search: a beam search takes no structured-output constraint", "use_beam_search")
    if params.logprobs is not None or params.prompt_logprobs is not None:
        raise bad("logprobs: a beam search reports each beam's cumulative logprob only", "logprobs")
    try:
        return BeamSearchParams(beam_width=params.n, max_tokens=params.max_tokens or 16, ignore_eos=params.ignore_eos,
                                temperature=params.temperature, length_penalty=float(penalty))
    except ValueError as e:
        field = str(e).split(" ", 1)[0]
        message = str(e).replace("beam_width", "n (the beam width)", 1) if field == "beam_width" else str(e)
        raise bad(message, "n" if field == "beam_width" else field) from None


def chat_messages(body: dict) -> list:
    """The messages list with plain string contents (text parts are joined)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object with role and content", "messages")
        role = {"developer": "system"}.get(m.get("role"), m.get("role"))
        if role not in ("system", "user", "assistant"):
            raise bad(f"messages[{i}].role must be system, user or assistant, got {m.get('role')!r}", "messages")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad(f"messages[{i}].content: only text parts are supported", "messages")
                parts.append(part["text"])
            content = "".join(parts)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string or a list of text parts", "messages")
        out.append({"role": role, "content": content})
    return out


# ---------------------------------------------------------------------- backends

@dataclasses.dataclass
class _Delta:
    """What one sample of a run adds: text, the logprobs of its new tokens (one
    {token_id: Logprob} per token, when asked), and whether the sample just finished."""
    index: int
    text: str
    logprobs: list | None = None
    token_ids: list | None = None
    finished: bool = False


@dataclasses.dataclass
class _Sample:
    """A sample's end, known once it finished."""
    completion_tokens: int | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class _Run:
    """One prompt on a device, with its n samples: iterate for _Deltas; afterwards
    prompt_tokens, samples[i] and (when asked) prompt_logprobs are set. close()
    abandons it."""

    prompt_tokens: int | None = None
    prompt_token_ids: list | None = None
    prompt_text: str = ""
    prompt_logprobs: list | None = None
    token_text = None  # token id -> (text, bytes), for logprobs

    def __init__(self, gen, n: int = 1):
        self._gen = gen
        self.samples = [_Sample() for _ in range(n)]

    def __iter__(self):
        return self._gen

    def close(self):
        self._gen.close()

    @property
    def completion_tokens(self) -> int | None:
        counts = [s.completion_tokens for s in self.samples if s.completion_tokens is not None]
        return sum(counts) if counts else None


class LocalBackend:
    """The runtime in this process, through the LLM API: exact token counts, whole-
    conversation chat rendering."""

    def __init__(self, device: LocalDevice, chat_template: str | None = None):
        from edgellama.runtime import capi
        self.llm = device.llm
        self.chat_renderer = capi.Chat(self.llm._rt, chat_template)
        info = device.info()
        self.model_path, self.context_length = info["model"], info["context_length"]

    def _tokens(self, field, text_bytes, tokenize):
        from edgellama.errors import EdgeLlamaError
        try:
            return tokenize()
        except (ValueError, EdgeLlamaError) as e:
            if "scratch arena" in str(e):  # the tokenizer's working memory: far past any context
                raise bad(f"{field}: {text_bytes} bytes of text are too long for this model "
                          f"(max_model_len {self.llm.max_model_len} tokens); shorten the {field}", field) from None
            raise bad(f"{field}: {e}", field) from None

    def completion(self, prompt, params: SamplingParams, max_field=None, beam=None) -> _Run:
        if isinstance(prompt, str):
            ids = self._tokens("prompt", len(prompt.encode("utf-8", "replace")),
                               lambda: self.llm.tokenizer.encode(prompt))
            item = {"prompt": prompt, "prompt_token_ids": ids}
        else:
            item = {"prompt_token_ids": prompt}
        return self._run(item, params, "prompt", max_field, beam)

    def chat(self, messages: list, params: SamplingParams, max_field=None, beam=None) -> _Run:
        ids = self._tokens("messages", sum(len(m["content"].encode("utf-8", "replace")) for m in messages),
                           lambda: self.chat_renderer.prompt_tokens(messages))
        return self._run({"prompt_token_ids": ids}, self.llm._with_chat_stop(params, self.chat_renderer), "messages",
                         max_field, beam)

    def _beam_run(self, run, item, beam):
        """A beam search's run: its beams, best first, each whole once the search ends."""
        ids = item["prompt_token_ids"]

        def deltas():
            out = self.llm.beam_search({"prompt_token_ids": ids}, beam)[0]
            for i, seq in enumerate(out.sequences):
                generated = seq.tokens[len(ids):]
                run.samples[i] = _Sample(len(generated), seq.finish_reason, None)
                yield _Delta(i, self.llm.tokenizer.decode(generated, previous=ids[-1]), None, generated, True)

        run.samples = [_Sample(0, "length") for _ in range(beam.beam_width)]
        run._gen = deltas()
        return run

    def _run(self, item, params, field, max_field=None, beam=None) -> _Run:
        ids = item["prompt_token_ids"]
        if any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.llm._rt.config.vocab_size
               for t in ids):
            raise bad("prompt token ids must be integers in [0, vocab size)", field)
        try:
            self.llm._check_fits(0, ids, params)
        except ValueError as e:
            message = str(e).replace("prompt 0: ", "")
            if message.startswith("n: "):
                raise bad(message, "n") from None
            raise bad(f"{field}: {message}", field) from None
        params = fit_context(params, len(ids), self.llm.max_model_len, max_field, field)
        run = _Run(None, params.n)
        run.prompt_tokens, run.prompt_token_ids = len(ids), ids
        run.prompt_text = item["prompt"] if item.get("prompt") is not None else self.llm.tokenizer.decode(ids)
        run.token_text = self.token_text
        if beam is not None:
            if 2 * beam.beam_width > self.llm.max_num_seqs:
                raise bad(f"n: a beam search of width {beam.beam_width} holds {2 * beam.beam_width} sequences, and "
                          f"this server's engine holds {self.llm.max_num_seqs}", "n")
            return self._beam_run(run, item, beam)

        def deltas():
            decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(params.n)]
            for state, event, sample, output in self.llm._events([item], [params]):
                if event.prompt_pos > 0:
                    continue
                text = decoders[sample].decode(event.text_bytes(), final=bool(event.finished))
                if event.finished:
                    c = state.samples[sample].output
                    run.samples[sample] = _Sample(len(c.token_ids), c.finish_reason, c.stop_reason)
                run.prompt_logprobs = state.prompt_logprobs  # complete before the first token's event
                logprobs = state.samples[sample].logprobs
                new = logprobs[-1:] if logprobs is not None and event.token >= 0 else None
                if text or new or event.finished:
                    yield _Delta(sample, text, new, [event.token] if event.token >= 0 else [], bool(event.finished))

        run._gen = deltas()
        return run

    def token_text(self, token: int) -> tuple:
        """A token's text and bytes on its own (a leading space kept), for logprobs."""
        data = self.llm.token_bytes(token)
        return data.decode("utf-8", "replace"), data


def fit_context(params, prompt_tokens: int, limit: int, max_field, field: str = "prompt"):
    """params whose max_tokens fits the context after a prompt of prompt_tokens: a
    max_tokens the client asked for that does not fit is a 400, as vLLM answers; the
    default shrinks to the room there is."""
    if params.max_tokens is not None and prompt_tokens + params.max_tokens > limit:
        if max_field:
            raise bad(f"{max_field}: this model's maximum context length is {limit} tokens, but "
                      f"{prompt_tokens + params.max_tokens} were requested ({prompt_tokens} in the {field}, "
                      f"{params.max_tokens} in the completion); reduce {max_field} or the {field}", max_field)
        params = dataclasses.replace(params, max_tokens=max(limit - prompt_tokens, 0))
    return params


class DeviceBackend:
    """Any Device (serial, SSH, emulated board): completions are plain generate calls;
    a chat goes through the device's own conversation (see the module's docstring)."""

    def __init__(self, device: Device):
        self.device = device
        info = device.info()
        self.model_path = str(info.get("model", "model"))
        self.context_length = info.get("context_length")
        self.heard = None  # (system, messages) the device's conversation holds; None: unknown

    def completion(self, prompt, params, max_field=None, beam=None) -> _Run:
        if not isinstance(prompt, str):
            raise bad("this device takes text prompts, not token ids", "prompt")
        self._check_max_tokens(params, max_field)
        counted = self.device.count_prompt_tokens(prompt) if self.context_length else None
        if counted is not None:  # the board's model file is here: the whole request is checked
            if counted >= self.context_length:
                raise bad(f"prompt: {counted} tokens leave no room in this model's maximum context length of "
                          f"{self.context_length} tokens; shorten the prompt", "prompt")
            params = fit_context(params, counted, self.context_length, max_field)
        if beam is not None:
            return self._beam_run(prompt, beam)
        if params.prompt_logprobs is not None:
            raise bad("echo with logprobs: this device reports the logprobs of what it generates, not of the "
                      "prompt", "echo")
        if params.n != 1 or params.logprobs is not None:
            return self._samples_run(prompt, params)
        return self._run(prompt, params, chat=False)

    def _beam_run(self, prompt, beam) -> _Run:
        """A beam search on the device (GENERATE's beam_width=): its beams, best first, whole."""
        def reply():
            out = self.device.beam_search(prompt, beam)
            return [(_Sample(None, s.finish_reason), _Delta(i, s.text, None, [], True))
                    for i, s in enumerate(out.sequences)]

        return self._whole_reply_run(prompt, beam, beam.beam_width, reply, "beam_width", "n (the beam width)")

    def _samples_run(self, prompt, params) -> _Run:
        """n samples or logprobs (GENERATE's n= and logprobs=): each sample whole once the reply ends."""
        def reply():
            out = self.device.generate_samples(prompt, params)
            return [(_Sample(len(c.token_ids) if c.logprobs is not None else None, c.finish_reason),
                     _Delta(c.index, c.text, c.logprobs, c.token_ids, True)) for c in out.outputs]

        return self._whole_reply_run(prompt, params, params.n, reply, "n", "n")

    def _whole_reply_run(self, prompt, params, n, reply, field, shown) -> _Run:
        """A run whose samples all come at the end of the device's reply: reply() gives
        (_Sample, _Delta) per sample; the device refusing `field` is a 400 on n."""
        self._check_request(prompt, params, False)
        run = _Run(None, n)
        run.prompt_text = prompt
        run.token_text = self.token_text

        def deltas():
            try:
                samples = reply()
            except EdgeLlamaError as e:
                raise _refusal(e, field, shown) from None
            run.prompt_tokens = self.device.last_stats.prompt_tokens or None
            run.samples = [sample for sample, _ in samples]
            for _, delta in samples:
                yield delta

        run._gen = deltas()
        return run

    def token_text(self, token: int) -> tuple:
        """A token's text and bytes from the board's model file, or a marker with its id."""
        text = getattr(self.device, "_token_text", lambda t: None)(token)
        text = text if text is not None else f"<token {token}>"
        return text, text.encode("utf-8")

    @staticmethod
    def _check_one_plain_sample(params):
        """A chat turn on a device is one sample without logprobs (completions take both)."""
        if params.n != 1:
            raise bad(f"n: a device's chat turn is one sample, got n={params.n}", "n")
        if params.logprobs is not None or params.prompt_logprobs is not None:
            raise bad("logprobs: a device's chat turn reports no log-probabilities (completions do)", "logprobs")

    def _check_max_tokens(self, params, max_field):
        """max_tokens alone past the context (a chat turn's prompt, or a completion's where
        the board's model file is not here, only the device can count)."""
        if max_field and self.context_length and params.max_tokens is not None \
                and params.max_tokens > self.context_length:
            raise bad(f"{max_field}: this model's maximum context length is {self.context_length} tokens, but "
                      f"{params.max_tokens} were requested for the completion alone; reduce {max_field}", max_field)

    def chat(self, messages, params, max_field=None, beam=None) -> _Run:
        self._check_max_tokens(params, max_field)
        self._check_one_plain_sample(params)
        if beam is not None:
            raise bad("use_beam_search: a device's chat turn samples (completions take beam search)",
                      "use_beam_search")
        system_end = 0
        while system_end < len(messages) and messages[system_end]["role"] == "system":
            system_end += 1
        system = "\n".join(m["content"] for m in messages[:system_end])
        turns = messages[system_end:]
        if any(m["role"] == "system" for m in turns):
            raise bad("this device takes system messages only at the start of the conversation", "messages")
        if not turns or turns[-1]["role"] != "user":
            raise bad("the last message must be from the user", "messages")
        if self.heard != (system, turns[:-1]):
            self.device.reset(system)
        self.heard = None
        return self._run(turns[-1]["content"], params, chat=True, history=(system, turns))

    def _check_request(self, prompt, params, chat):
        """A request the serial protocol cannot carry (too long, a stop string over two
        lines, a constraint past the device's buffer) is the client's to fix: 400, before
        the device is touched."""
        if type(self.device).__name__ != "ProtocolDevice":
            return
        constraint = getattr(params, "constraint", None)
        room = self.device.info().get("constraint_bytes")
        if constraint is not None and len(constraint) > (room or 0):
            source = getattr(params.structured_outputs, "source", "structured_outputs")
            raise bad(f"{source}: the constraint's automaton is {len(constraint):,} bytes and this device holds "
                      f"{room or 0:,}; simplify it (fewer states)", source)
        from edgellama.devices.protocol import beam_payload, generate_payload
        try:
            if isinstance(params, BeamSearchParams):
                beam_payload(prompt, params)
            else:
                generate_payload(prompt, params, chat=chat)
        except EdgeLlamaError as e:
            raise bad(str(e), "messages" if chat else "prompt") from None

    def _run(self, prompt, params, chat, history=None) -> _Run:
        if params.max_tokens is None and self.context_length:
            params = dataclasses.replace(params, max_tokens=self.context_length)
        self._check_request(prompt, params, chat)
        run = _Run(None)
        run.prompt_text = prompt
        device = self.device

        def deltas():
            chunks, done, text = device.generate(prompt, params, chat=chat), False, []
            try:
                for chunk in chunks:
                    text.append(chunk)
                    yield _Delta(0, chunk)
                done = True
            finally:
                if not done:  # abandoned (client gone) or failed: stop the device and let it finish
                    try:
                        device.cancel()
                        for _ in chunks:
                            pass
                    except Exception:
                        pass
            stats = device.last_stats
            run.prompt_tokens = stats.prompt_tokens or None
            finish_reason = stats.finish_reason
            if finish_reason is None:
                finish_reason = "length" if params.max_tokens and stats.output_tokens >= params.max_tokens else "stop"
            run.samples[0] = _Sample(stats.output_tokens, finish_reason, stats.stop_reason)
            if history is not None and finish_reason in ("stop", "length"):
                system, turns = history
                self.heard = (system, turns + [{"role": "assistant", "content": "".join(text)}])

        run._gen = deltas()
        return run


# ---------------------------------------------------------------------- the API

class API:
    """The endpoints, independent of HTTP plumbing: handle() returns (status, body) or a
    streaming generator of SSE payloads."""

    def __init__(self, device: Device, model_name: str | None = None, chat_template: str | None = None):
        self.device = device
        self.backend = LocalBackend(device, chat_template) if isinstance(device, LocalDevice) else DeviceBackend(device)
        self.model_id = model_name or Path(self.backend.model_path).stem
        self.created = int(time.time())
        self.lock = threading.Lock()

    def model_card(self) -> dict:
        card = {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "edgellama",
                "root": self.backend.model_path}
        if self.backend.context_length:
            card["max_model_len"] = self.backend.context_length
        return card

    def check_model(self, body):
        model = body.get("model")
        if model is not None and model not in (self.model_id, self.backend.model_path):
            raise APIError(404, f"The model `{model}` does not exist (this server has `{self.model_id}`).", "model",
                           "model_not_found")

    def start(self, kind: str, body: dict):
        """Validate a completion request; returns (params, list of runs factories)."""
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object")
        self.check_model(body)
        if body.get("stream") not in (None, True, False):
            raise bad("stream must be true or false", "stream")
        max_field = next((name for name in ("max_completion_tokens", "max_tokens") if body.get(name) is not None), None)
        if kind == "chat":
            messages = chat_messages(body)
            params = sampling_params(body, None, "chat")
            beam = beam_search_params(body, params)
            return params, [lambda: self.backend.chat(messages, params, max_field, beam)]
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(
                isinstance(p, str) or (isinstance(p, list) and p and all(isinstance(t, int) for t in p))
                for p in prompt):
            prompts = prompt
        else:
            raise bad("prompt must be a string, a list of strings, or token ids", "prompt")
        params = sampling_params(body, 16)
        beam = beam_search_params(body, params)
        return params, [lambda p=p: self.backend.completion(p, params, max_field, beam) for p in prompts]


def _usage(prompt_tokens, completion_tokens) -> dict | None:
    if prompt_tokens is None and completion_tokens is None:
        return None
    p, c = prompt_tokens or 0, completion_tokens or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _device_errors(it):
    """The deltas of a run, with whatever the device raises turned into a 500 (so that
    an OSError met while streaming is the client's connection, not the device)."""
    while True:
        try:
            text = next(it)
        except StopIteration:
            return
        except APIError:
            raise
        except Exception as e:
            raise APIError(500, f"the device failed: {e}") from None
        yield text


ROUTES = {"/health": ("GET",), "/v1/models": ("GET",), "/v1/completions": ("POST",),
          "/v1/chat/completions": ("POST",)}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edgellama"

    def setup(self):
        self.timeout = self.server.request_timeout  # StreamRequestHandler puts it on the socket
        self.unread_body = False
        super().setup()

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)

    # --- plumbing

    def _send_json(self, status: int, body: dict, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, e: APIError):
        self._send_json(e.status, e.body(), e.headers)

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a bad request line, headers too long, an unknown
        method) as OpenAI error bodies rather than HTML. What follows the bad part is
        unread, and may still be coming: finish lingers, so the answer is read, not reset."""
        self.close_connection = True
        self.unread_body = True
        if self.request_version == "HTTP/0.9":  # the request line did not parse: answer in HTTP/1.1 all the same
            self.request_version = "HTTP/1.1"
        if code == 501 and self.command:  # a method no route takes
            return self._dispatch(self.command)
        reason = self.responses.get(code, ("error",))[0]
        try:
            self._send_error(APIError(code, f"{reason}: {message}" if message else reason))
        except OSError:
            pass

    def _has_body(self) -> bool:
        return bool(self.headers.get("Transfer-Encoding")) or self.headers.get("Content-Length", "0").strip() != "0"

    def _refuse_body(self, error: APIError):
        """The body will not be read: answer, then close (see finish)."""
        self.close_connection = True
        self.unread_body = True
        return error

    def _read_body(self):
        if self.headers.get_all("Transfer-Encoding"):
            raise self._refuse_body(APIError(411, "send the body with a Content-Length; Transfer-Encoding is "
                                                  "not supported"))
        lengths = {v.strip() for v in self.headers.get_all("Content-Length") or ()}
        if not lengths:
            return {}
        value = lengths.pop()
        if lengths or not value.isascii() or not value.isdigit():
            raise self._refuse_body(bad(f"Content-Length must be one non-negative decimal integer, got "
                                        f"{', '.join(self.headers.get_all('Content-Length'))[:100]!r}"))
        if len(value) > 12 or int(value) > MAX_BODY_BYTES:
            raise self._refuse_body(APIError(413, f"the request body ({value[:20]} bytes) is over the limit of "
                                                  f"{MAX_BODY_BYTES} bytes"))
        length = int(value)
        try:
            data = self.rfile.read(length) if length else b""
        except TimeoutError:
            self.close_connection = True
            raise APIError(408, f"the request body did not arrive: Content-Length is {length} bytes and none "
                                f"came for {self.server.request_timeout:g} s") from None
        if len(data) < length:
            self.close_connection = True
            raise bad(f"the request body is shorter than its Content-Length: {len(data)} of {length} bytes")
        if not data:
            return {}
        return parse_body(data)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_OPTIONS(self):
        self._dispatch("OPTIONS")

    def _dispatch(self, method):
        api = self.server.api
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            try:
                allowed = ("GET",) if path.startswith("/v1/models/") else ROUTES.get(path)
                if self._has_body() and not (allowed and "POST" in allowed and method == "POST"):
                    self._refuse_body(None)  # a body nobody reads: not to be taken for the next request
                if allowed is None:
                    raise APIError(404, f"no route {method} {path}", type="not_found_error")
                if method not in allowed:
                    e = APIError(405, f"{path} takes {', '.join(allowed)}, not {method}")
                    e.headers["Allow"] = ", ".join(allowed)
                    raise e
                if path.startswith("/v1/models/"):
                    if path[len("/v1/models/"):] not in (api.model_id,):
                        raise APIError(404, f"The model `{path[len('/v1/models/'):]}` does not exist.", "model",
                                       "model_not_found")
                    return self._send_json(200, api.model_card())
                if path == "/health":
                    return self._send_json(200, {"status": "ok", "model": api.model_id})
                if path == "/v1/models":
                    return self._send_json(200, {"object": "list", "data": [api.model_card()]})
                body = self._read_body()
                self._complete("chat" if path == "/v1/chat/completions" else "completion", body)
            except (APIError, OSError):
                raise
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                self.close_connection = True
                raise APIError(500, f"internal error: {type(e).__name__}") from None
        except APIError as e:
            try:
                self._send_error(e)
            except OSError:
                self.close_connection = True
        except OSError:  # the client went away (or timed out mid-send)
            self.close_connection = True

    def finish(self):
        """After refusing a body that is still coming: say so and half-close, then read a
        little of it (bounded) before closing, so that the client reads the answer
        rather than a reset."""
        try:
            super().finish()
        except OSError:
            pass
        if not self.unread_body:
            return
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline, got = time.monotonic() + LINGER_S, 0
            while got < LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
        except OSError:
            pass

    def _complete(self, kind, body):
        api = self.server.api
        params, factories = api.start(kind, body)
        echo = kind == "completion" and bool(body.get("echo"))
        stream = bool(body.get("stream"))
        include_usage = stream and isinstance(body.get("stream_options"), dict) and bool(
            body["stream_options"].get("include_usage"))
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        rid, created = f"{prefix}-{uuid.uuid4().hex}", int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"
        with api.lock:
            if not stream:
                return self._send_json(200, self._whole(kind, factories, rid, created, obj, params, echo))
            self._stream(kind, factories, rid, created, obj + (".chunk" if kind == "chat" else ""), include_usage,
                         params, echo)

    def _start_run(self, factory):
        """Create a run and take its first delta, so errors before any text still get a status."""
        try:
            run = factory()
            it = iter(run)
            first = next(it, None)
            return run, it, first
        except APIError:
            raise
        except ValueError as e:
            field = str(e).split(":", 1)[0].split(" ", 1)[0]
            raise bad(str(e), field if field in FIELD_NAMES else None) from None
        except Exception as e:
            raise APIError(500, f"the device failed: {e}") from None

    def _whole(self, kind, factories, rid, created, obj, params, echo):
        choices, n_prompt, n_out = [], None, None
        for index, factory in enumerate(factories):
            run, it, first = self._start_run(factory)
            texts = [""] * len(run.samples)
            entries = [[] for _ in run.samples]
            tokens = [[] for _ in run.samples]
            for delta in ([first] if first is not None else []) + list(_device_errors(it)):
                texts[delta.index] += delta.text
                if delta.logprobs is not None:
                    entries[delta.index] += delta.logprobs
                    tokens[delta.index] += delta.token_ids
            _raise_if_failed(run)
            if run.prompt_tokens is not None:
                n_prompt = (n_prompt or 0) + run.prompt_tokens
            if run.completion_tokens is not None:
                n_out = (n_out or 0) + run.completion_tokens
            for j, sample in enumerate(run.samples):
                choice = {"index": index * len(run.samples) + j, "logprobs": None,
                          "finish_reason": sample.finish_reason, "stop_reason": sample.stop_reason}
                if kind == "chat":
                    choice["message"] = {"role": "assistant", "content": texts[j]}
                    if params.logprobs is not None:
                        choice["logprobs"] = _chat_logprobs(entries[j], tokens[j], run.token_text, params.logprobs)
                else:
                    choice["text"] = (run.prompt_text if echo else "") + texts[j]
                    if params.logprobs is not None:
                        choice["logprobs"] = _completion_logprobs(run, entries[j], tokens[j], echo)
                choices.append(choice)
        body = {"id": rid, "object": obj, "created": created, "model": self.server.api.model_id, "choices": choices}
        usage = _usage(n_prompt, n_out)
        if usage:
            body["usage"] = usage
        return body

    def _write_chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, payload):
        self._write_chunk(b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
                          + b"\n\n")

    def _stream(self, kind, factories, rid, created, obj, include_usage, params, echo):
        model = self.server.api.model_id
        first_run = self._start_run(factories[0])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(index, delta=None, finish=None, sample=None, logprobs=None):
            if kind == "chat":
                choice = {"index": index, "delta": delta if delta is not None else {}, "logprobs": logprobs,
                          "finish_reason": finish}
            else:
                choice = {"index": index, "text": (delta or {}).get("content", ""), "logprobs": logprobs,
                          "finish_reason": finish}
            if finish is not None:
                choice["stop_reason"] = sample.stop_reason
            body = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
            if include_usage:
                body["usage"] = None
            return body

        def delta_logprobs(run, delta):
            if params.logprobs is None or delta.logprobs is None:
                return None
            if kind == "chat":
                return _chat_logprobs(delta.logprobs, delta.token_ids, run.token_text, params.logprobs)
            return _completion_logprobs(run, delta.logprobs, delta.token_ids, False)

        n_prompt = n_out = None
        run = None
        try:
            for index, factory in enumerate(factories):
                run, it, first = first_run if index == 0 else self._start_run(factory)
                base, ended = index * len(run.samples), set()
                for j in range(len(run.samples)):
                    if kind == "chat":
                        self._event(chunk(base + j, {"role": "assistant", "content": ""}))
                    elif echo:
                        lp = _completion_logprobs(run, [], [], True) if params.logprobs is not None else None
                        self._event(chunk(base + j, {"content": run.prompt_text}, logprobs=lp))
                for delta in _chain_first(first, _device_errors(it)):
                    if delta.text or delta.logprobs:
                        self._event(chunk(base + delta.index, {"content": delta.text},
                                          logprobs=delta_logprobs(run, delta)))
                    if delta.finished:
                        sample = run.samples[delta.index]
                        _raise_if_failed(run)
                        self._event(chunk(base + delta.index, None, sample.finish_reason, sample))
                        ended.add(delta.index)
                _raise_if_failed(run)
                for j, sample in enumerate(run.samples):
                    if j not in ended:  # a device says how it ended only after the text
                        self._event(chunk(base + j, None, sample.finish_reason, sample))
                if run.prompt_tokens is not None:
                    n_prompt = (n_prompt or 0) + run.prompt_tokens
                if run.completion_tokens is not None:
                    n_out = (n_out or 0) + run.completion_tokens
                run = None
            if include_usage:
                self._event({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                             "usage": _usage(n_prompt, n_out)})
            self._event(b"[DONE]")
            self._write_chunk(b"")
        except APIError as e:
            if run is not None:
                run.close()
            try:
                self._event(e.body())
                self._event(b"[DONE]")
                self._write_chunk(b"")
            except OSError:
                self.close_connection = True
        except OSError:  # the client went away: stop the device
            self.close_connection = True
            if run is not None:
                run.close()


def _refusal(e: EdgeLlamaError, field: str, shown: str) -> Exception:
    """A device's error: a 400 on `n` when the device refused the request for `field` (more
    samples or beams than its max_seqs holds: the client's to change), else e itself."""
    message = str(e).split(": ", 1)[-1]
    if message.startswith(field + ": "):
        return bad(shown + message[len(field):], "n")
    return e


def _chain_first(first, rest):
    if first is not None:
        yield first
    yield from rest


def _raise_if_failed(run):
    """A generation the model could not finish (finish_reason "error": NaN or Inf logits)
    is the server's failure, not an answer: a 500 error body, or an error event in a
    stream after the text that came before it (as vLLM reports an engine error)."""
    for sample in run.samples:
        if sample.finish_reason == "error":
            raise APIError(500, f"the generation failed: {sample.stop_reason or 'the model reported an error'}")


def _completion_logprobs(run, entries, token_ids, echo) -> dict:
    """OpenAI's completions logprobs: tokens, token_logprobs, top_logprobs (text ->
    logprob, the top ones and the chosen one) and text_offset. With echo the prompt's
    tokens come first, the very first without figures."""
    if echo:
        entries = list(run.prompt_logprobs or [None] * len(run.prompt_token_ids)) + list(entries)
        token_ids = list(run.prompt_token_ids) + list(token_ids)
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = 0
    for entry, token in zip(entries, token_ids):
        text = run.token_text(token)[0]
        out["tokens"].append(text)
        out["token_logprobs"].append(entry[token].logprob if entry else None)
        out["top_logprobs"].append({run.token_text(t)[0]: lp.logprob for t, lp in entry.items()} if entry else None)
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def _chat_logprobs(entries, token_ids, token_text, top_n) -> dict:
    """OpenAI's chat logprobs: per token its text, logprob and bytes, and the top_n most likely."""
    content = []
    for entry, token in zip(entries, token_ids):
        text, data = token_text(token)
        best = sorted(entry.items(), key=lambda item: item[1].rank)[:top_n]
        content.append({"token": text, "logprob": entry[token].logprob, "bytes": list(data),
                        "top_logprobs": [{"token": token_text(t)[0], "logprob": lp.logprob,
                                          "bytes": list(token_text(t)[1])} for t, lp in best]})
    return {"content": content}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, api: API, verbose: bool = False, request_timeout: float = REQUEST_TIMEOUT_S):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api, self.verbose, self.request_timeout = api, verbose, request_timeout
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):
        """A client that hung up or went silent is routine; anything else is a bug worth a traceback."""
        if isinstance(sys.exc_info()[1], OSError):
            if self.verbose:
                print(f"{client_address}: {sys.exc_info()[1]!r}", file=sys.stderr)
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def make_server(device: Device, host: str = "127.0.0.1", port: int = 8000, *, model_name: str | None = None,
                chat_template: str | None = None, verbose: bool = False,
                request_timeout: float = REQUEST_TIMEOUT_S) -> Server:
    """A server bound to host:port (port 0: any free port; see server.url), not yet serving:
    call serve_forever() (in a thread if you like), then shutdown() and server_close().
    request_timeout: seconds a connection may stay silent mid-request or between requests."""
    return Server((host, port), API(device, model_name, chat_template), verbose, request_timeout)


def run(device: Device, host: str = "127.0.0.1", port: int = 8000, **options):
    """Serve until Ctrl-C."""
    server = make_server(device, host, port, **options)
    print(f"serving {server.api.model_id} on {server.url}/v1 (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
