"""LLM: vLLM's offline API over the C runtime.

    from edgellama import LLM, SamplingParams
    llm = LLM()                                   # the embedded default model
    outputs = llm.generate(["once upon a time", "the cat"], SamplingParams(temperature=0.8, max_tokens=64))

All prompts of a call go through the C engine together: it admits them, prefills
them, and decodes every running sequence in one batched forward pass per step.
"""

import dataclasses
import itertools
import time
from collections import deque
from dataclasses import dataclass, field

from tqdm import tqdm

from edgellama.errors import EdgeLlamaError
from edgellama.model.loading import resolve
from edgellama.runtime import capi
from edgellama.runtime.outputs import CompletionOutput, RequestMetrics, RequestOutput
from edgellama.runtime.sampling_params import SamplingParams

STOP_REASONS = {capi.STOP_NONE: None, capi.STOP_EOS: None}


class Tokenizer:
    """Encoding and decoding with the model's own vocabulary, in the C runtime."""

    def __init__(self, runtime: capi.Runtime):
        self._rt = runtime

    def encode(self, text: str, add_bos: bool = True) -> list:
        return self._rt.tokenize(text, add_bos)

    def decode(self, token_ids, previous: int | None = None) -> str:
        out, prev = bytearray(), previous if previous is not None else -1
        for token in token_ids:
            out += self._rt.token_bytes(prev, token)
            prev = token
        return out.decode("utf-8", "replace")


@dataclass
class _Active:
    index: int
    request_id: str
    prompt: str | None
    prompt_token_ids: list
    params: SamplingParams
    metrics: RequestMetrics
    text: bytearray = field(default_factory=bytearray)


class LLM:
    def __init__(self, model=None, *, max_model_len: int | None = None, block_size: int = 16,
                 kv_cache_bytes: int | None = None, kv_dtype: str = "f32", max_num_seqs: int = 8,
                 max_num_batched_tokens: int | None = None, seed: int = 0, threads: int | None = None):
        self.model = str(resolve(model))
        self._rt = capi.Runtime(self.model, max_model_len or 0, block_size, kv_cache_bytes or 0, max_num_seqs,
                                max_num_batched_tokens or 0, kv_dtype, threads=threads)
        self.max_model_len = max_model_len or self._rt.config.context_length
        self.max_num_seqs = max_num_seqs
        self.seed = seed
        self._request_counter = itertools.count()
        self.tokenizer = Tokenizer(self._rt)

    def get_tokenizer(self) -> Tokenizer:
        return self.tokenizer

    def stats(self) -> dict:
        """The engine's counters: KV blocks, prefix hits, preemptions, arena bytes."""
        return self._rt.stats()

    # ------------------------------------------------------------------ requests

    def _prompt(self, prompt):
        """(text or None, token ids) from a string or a {"prompt_token_ids": [...]} dict."""
        if isinstance(prompt, str):
            return prompt, self._rt.tokenize(prompt, add_bos=True)
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return prompt.get("prompt"), list(prompt["prompt_token_ids"])
        if isinstance(prompt, dict) and "prompt" in prompt:
            return prompt["prompt"], self._rt.tokenize(prompt["prompt"], add_bos=True)
        raise TypeError(f"a prompt is a string or a dict with prompt_token_ids, got {type(prompt).__name__}")

    def _c_request(self, params: SamplingParams, request_number: int) -> capi.Request:
        # Without a seed, requests still repeat run to run: derived from the LLM's seed.
        seed = params.seed if params.seed is not None else (self.seed * 1_000_003 + request_number) % (1 << 64)
        sampling = dict(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, min_p=params.min_p,
                        repetition_penalty=params.repetition_penalty, frequency_penalty=params.frequency_penalty,
                        presence_penalty=params.presence_penalty, seed=seed)
        return capi.make_request(sampling, params.max_tokens or self.max_model_len, params.min_tokens,
                                 params.ignore_eos, params.stop, params.stop_token_ids)

    def _check_fits(self, index: int, prompt_token_ids: list):
        if len(prompt_token_ids) + 1 > self.max_model_len:
            raise ValueError(f"prompt {index}: {len(prompt_token_ids)} tokens leave no room for output in "
                             f"max_model_len {self.max_model_len}")

    def _start(self, index, prompt, params) -> tuple:
        text, ids = self._prompt(prompt)
        self._check_fits(index, ids)
        number = next(self._request_counter)
        seq = self._rt.add(ids, self._c_request(params, number))
        now = time.time()
        return seq, _Active(index, str(number), text, ids, params, RequestMetrics(now, now, first_scheduled_time=now))

    def _finish(self, seq: int, active: _Active, event) -> RequestOutput:
        tokens, n_prompt, n_cached = self._rt.tokens(seq)
        self._rt.release(seq)
        if event.finish == capi.FINISH_ERROR:
            stop_reason = capi.FINISH_ERROR_TEXT  # finish_reason "error": what went wrong, in words
        elif event.stop_kind == capi.STOP_TOKEN:
            stop_reason = event.stop_value
        elif event.stop_kind == capi.STOP_STRING:
            stop_reason = active.params.stop[event.stop_value]
        else:
            stop_reason = None
        m = active.metrics
        m.finished_time = m.last_token_time
        completion = CompletionOutput(0, active.text.decode("utf-8", "replace"), tokens[n_prompt:],
                                      finish_reason=capi.FINISH_REASONS[event.finish], stop_reason=stop_reason)
        return RequestOutput(active.request_id, active.prompt, active.prompt_token_ids, None, [completion], True,
                             m, n_cached)

    def _events(self, items, params_list):
        """Run every (prompt, params) through the engine; yield (active, event, output-or-None)."""
        pending = deque(enumerate(zip(items, params_list)))
        active = {}
        try:
            while pending or active:
                while pending and len(active) < self.max_num_seqs:
                    index, (prompt, params) = pending.popleft()
                    seq, state = self._start(index, prompt, params)
                    active[seq] = state
                events = self._rt.step()
                if not events and not self._rt.pending():
                    raise RuntimeError("the engine stopped with requests unfinished")
                for event in events:
                    state = active[event.seq_id]
                    now = time.time()
                    if state.metrics.first_token_time is None:
                        state.metrics.first_token_time = now
                        state.metrics.time_in_queue = 0.0
                    state.metrics.last_token_time = now
                    state.text += event.text_bytes()
                    output = None
                    if event.finished:
                        output = self._finish(event.seq_id, state, event)
                        del active[event.seq_id]
                    yield state, event, output
        finally:
            for seq in active:  # an error or an abandoned stream: give the blocks back
                self._rt.abort(seq)
                self._rt.release(seq)

    # ------------------------------------------------------------------ vLLM's API

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list:
        """Complete one prompt or many; returns one RequestOutput per prompt, in order."""
        single = isinstance(prompts, (str, dict))
        items = [prompts] if single else list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params_list = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(items)
        if len(params_list) != len(items):
            raise ValueError(f"got {len(items)} prompts but {len(params_list)} sampling params")
        results = [None] * len(items)
        started = time.time()
        n_in = n_out = 0
        bar = tqdm(total=len(items), desc="Processed prompts", disable=not use_tqdm, dynamic_ncols=True)
        for state, _event, output in self._events(items, params_list):
            if output is None:
                continue
            results[state.index] = output
            n_in += len(output.prompt_token_ids)
            n_out += len(output.outputs[0].token_ids)
            elapsed = max(time.time() - started, 1e-9)
            bar.postfix = f"est. speed input: {n_in / elapsed:.2f} toks/s, output: {n_out / elapsed:.2f} toks/s"
            bar.update(1)
        bar.close()
        return results

    def chat(self, messages, sampling_params=None, chat_template: str | None = None, use_tqdm: bool = True) -> list:
        """Reply to one conversation (a list of {"role", "content"} dicts) or to many.

        The template comes from the model's metadata (plain when it names none) or from
        chat_template: "plain", "llama2" or "chatml"."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        chat = capi.Chat(self._rt, chat_template)
        prompts = [{"prompt_token_ids": chat.prompt_tokens(c)} for c in conversations]
        params = sampling_params or SamplingParams()
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        return self.generate(prompts, [self._with_chat_stop(p, chat) for p in params_list], use_tqdm)

    def _with_chat_stop(self, params: SamplingParams, chat: capi.Chat) -> SamplingParams:
        stop = capi.make_request({}, 1)
        chat.add_stop(stop)
        extra_stop = [bytes(stop.stop[i])[:stop.stop_len[i]].decode() for i in range(stop.n_stop)]
        extra_ids = [stop.stop_token_ids[i] for i in range(stop.n_stop_token_ids)]
        return dataclasses.replace(params, stop=params.stop + [s for s in extra_stop if s not in params.stop],
                                   stop_token_ids=params.stop_token_ids + extra_ids)

    def chat_session(self, system: str = "", chat_template: str | None = None) -> "ChatSession":
        """A multi-turn chat that keeps its KV cache between turns."""
        return ChatSession(self, system, capi.Chat(self._rt, chat_template))

    def generate_stream(self, prompt, sampling_params: SamplingParams | None = None):
        """Yield RequestOutputs as tokens arrive; outputs[0].text is the new text only
        (vLLM's DELTA kind). The last one has finished=True and the finish reason.
        A generation that fails (NaN or Inf logits: finish_reason "error" in generate)
        raises EdgeLlamaError after the text so far: a stream has no other way to say it."""
        params = sampling_params or SamplingParams()
        for state, event, output in self._events([prompt], [params]):
            delta = event.text_bytes().decode("utf-8", "replace")
            if output is not None and output.outputs[0].finish_reason == "error":
                if delta:
                    yield RequestOutput(state.request_id, state.prompt, state.prompt_token_ids, None,
                                        [CompletionOutput(0, delta, [])], False, state.metrics)
                raise EdgeLlamaError(f"generation stopped: {capi.FINISH_ERROR_TEXT}")
            if output is not None:
                output.outputs[0].text = delta
                yield output
                return
            completion = CompletionOutput(0, delta, [event.token])
            yield RequestOutput(state.request_id, state.prompt, state.prompt_token_ids, None, [completion], False,
                                state.metrics)


class ChatSession:
    """One conversation kept as one sequence in the engine: each turn appends only its
    own tokens, so the history's keys and values are never computed twice."""

    def __init__(self, llm: LLM, system: str, chat: capi.Chat):
        self.llm, self.system, self.chat = llm, system, chat
        self.seq_id = -1
        self.turns = 0
        self.started_over = False  # whether the last turn started the conversation over (a full context)

    def send(self, user: str, sampling_params: SamplingParams | None = None):
        """Yield the reply's text as it arrives."""
        rt = self.llm._rt
        params = self.llm._with_chat_stop(sampling_params or SamplingParams(max_tokens=200), self.chat)
        request = self.llm._c_request(params, next(self.llm._request_counter))
        try:  # continued, or started over with this message when the context is full
            self.seq_id, self.started_over = self.chat.admit(self.seq_id, self.system, user, request)
        except ValueError as e:
            if e.started_over:
                self.seq_id = -1  # the runtime released the full conversation
            raise
        self.turns += 1
        while True:
            events = rt.step()
            for event in events:
                if event.seq_id == self.seq_id:
                    yield event.text_bytes().decode("utf-8", "replace")
                    if event.finished and event.finish == capi.FINISH_ERROR:
                        raise EdgeLlamaError(f"the reply stopped: {capi.FINISH_ERROR_TEXT}")
                    if event.finished:
                        return
            if not events and not rt.pending():
                return

    def cancel(self):
        """Stop the reply being generated; the chat goes on from what was said so far."""
        rt = self.llm._rt
        if self.seq_id >= 0:
            rt.abort(self.seq_id)

    def reset(self, system: str | None = None):
        if self.seq_id >= 0:
            self.llm._rt.release(self.seq_id)  # full blocks stay in the prefix cache
        self.seq_id = -1
        if system is not None:
            self.system = system
