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
from edgellama.runtime.outputs import (
    BeamSearchOutput,
    BeamSearchSequence,
    CompletionOutput,
    Logprob,
    RequestMetrics,
    RequestOutput,
)
from edgellama.runtime.sampling_params import BeamSearchParams, SamplingParams

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
class _Sample:
    """One of a request's n samples as its events arrive."""
    text: bytearray = field(default_factory=bytearray)
    logprobs: list | None = None
    cumulative_logprob: float | None = None
    output: CompletionOutput | None = None  # once it finished


@dataclass
class _Active:
    """One request: its prompt, its samples, and its prompt's logprobs."""
    index: int
    request_id: str
    prompt: str | None
    prompt_token_ids: list
    params: SamplingParams
    metrics: RequestMetrics
    samples: list = field(default_factory=list)
    prompt_logprobs: list | None = None
    num_cached_tokens: int = 0

    def __post_init__(self):
        self.samples = [_Sample() for _ in range(self.params.n)]
        for s in self.samples:
            if self.params.logprobs is not None:
                s.logprobs, s.cumulative_logprob = [], 0.0
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = [None]  # the first prompt token has none

    @property
    def text(self) -> bytearray:  # the first sample's (what n = 1 callers read)
        return self.samples[0].text

    def done(self) -> bool:
        return all(s.output is not None for s in self.samples)

    def output(self) -> RequestOutput:
        m = self.metrics
        m.finished_time = m.last_token_time
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids, self.prompt_logprobs,
                             [s.output for s in self.samples], self.done(), m, self.num_cached_tokens)


class LLM:
    def __init__(self, model=None, *, max_model_len: int | None = None, block_size: int = 16,
                 kv_cache_bytes: int | None = None, kv_dtype: str = "f32", max_num_seqs: int = 8,
                 max_num_batched_tokens: int | None = None, seed: int = 0, threads: int | None = None,
                 speculative_config: dict | None = None):
        from edgellama.runtime.speculative import engine_options
        self.model = str(resolve(model))
        self._rt = capi.Runtime(self.model, max_model_len or 0, block_size, kv_cache_bytes or 0, max_num_seqs,
                                max_num_batched_tokens or 0, kv_dtype, threads=threads,
                                **engine_options(speculative_config))
        self.max_model_len = max_model_len or self._rt.config.context_length
        self.max_num_seqs = max_num_seqs
        self.seed = seed
        self._request_counter = itertools.count()
        self.tokenizer = Tokenizer(self._rt)
        self._token_bytes = {}  # token id -> its bytes on their own, for Logprob.decoded_token and serve

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
        # Sample i of n draws with seed + i (the C engine's forks), as vLLM seeds its children.
        seed = params.seed if params.seed is not None else (self.seed * 1_000_003 + request_number) % (1 << 64)
        sampling = dict(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, min_p=params.min_p,
                        repetition_penalty=params.repetition_penalty, frequency_penalty=params.frequency_penalty,
                        presence_penalty=params.presence_penalty, seed=seed)
        return capi.make_request(sampling, params.max_tokens or self.max_model_len, params.min_tokens,
                                 params.ignore_eos, params.stop, params.stop_token_ids, params.n, params.logprobs,
                                 params.prompt_logprobs, constraint=params.constraint)

    def _check_fits(self, index: int, prompt_token_ids: list, params: SamplingParams):
        if len(prompt_token_ids) + 1 > self.max_model_len:
            raise ValueError(f"prompt {index}: {len(prompt_token_ids)} tokens leave no room for output in "
                             f"max_model_len {self.max_model_len}")
        self._check_n(params)

    def _check_n(self, params: SamplingParams):
        if params.n > self.max_num_seqs:
            raise ValueError(f"n: {params.n} samples need as many sequences, and this LLM holds "
                             f"max_num_seqs={self.max_num_seqs}")

    def _start(self, index, prompt, params) -> tuple:
        text, ids = self._prompt(prompt)
        self._check_fits(index, ids, params)
        number = next(self._request_counter)
        seq = self._rt.add(ids, self._c_request(params, number))
        now = time.time()
        return seq, _Active(index, str(number), text, ids, params, RequestMetrics(now, now, first_scheduled_time=now))

    def token_bytes(self, token: int) -> bytes:
        """A token's bytes on their own (a leading space kept), cached."""
        if token not in self._token_bytes:
            self._token_bytes[token] = self._rt.token_bytes(-1, token)
        return self._token_bytes[token]

    def _token_text(self, token: int) -> str:
        return self.token_bytes(token).decode("utf-8", "replace")

    def _logprobs(self, figures) -> dict:
        """{token_id: Logprob} of one position: the top tokens, and the chosen one too."""
        token, logprob, rank, top = figures
        entry = {t: Logprob(lp, i + 1, self._token_text(t)) for i, (t, lp) in enumerate(top)}
        if token not in entry:
            entry[token] = Logprob(logprob, rank, self._token_text(token))
        return entry

    def _finish_sample(self, seq: int, active: _Active, event):
        tokens, n_prompt, n_cached = self._rt.tokens(seq)
        self._rt.release(seq)
        if event.finish == capi.FINISH_ERROR:
            stop_reason = capi.FINISH_ERROR_TEXT  # finish_reason "error": what went wrong, in words
        elif event.stop_kind == capi.STOP_TOKEN:
            stop_reason = event.stop_value
        elif event.stop_kind == capi.STOP_STRING:
            stop_reason = active.params.stop[event.stop_value]
        elif event.stop_kind == capi.STOP_CONSTRAINT:
            stop_reason = "no token of the vocabulary continues the structured output"
        else:
            stop_reason = None
        sample = active.samples[event.sample_index]
        if event.sample_index == 0:
            active.num_cached_tokens = n_cached
        sample.output = CompletionOutput(event.sample_index, sample.text.decode("utf-8", "replace"), tokens[n_prompt:],
                                         sample.cumulative_logprob, sample.logprobs,
                                         finish_reason=capi.FINISH_REASONS[event.finish], stop_reason=stop_reason)

    def _record(self, state: _Active, event) -> int:
        """An event's text and logprobs into its request; returns its sample index."""
        figures = event.logprob_figures()
        if event.prompt_pos > 0:
            state.prompt_logprobs.append(self._logprobs(figures))
            return 0
        sample = state.samples[event.sample_index]
        sample.text += event.text_bytes()
        if figures is not None:
            sample.logprobs.append(self._logprobs(figures))
            sample.cumulative_logprob += figures[1]
        return event.sample_index

    def _events(self, items, params_list):
        """Run every (prompt, params) through the engine; yield (request, event, sample index,
        the RequestOutput once the request's every sample finished, else None). Requests
        are added while the engine has a sequence for each of their n samples."""
        for params in params_list:
            self._check_n(params)  # before anything starts: such a request would wait forever
        pending = deque(enumerate(zip(items, params_list)))
        active = {}       # seq id -> its request
        started = {}      # the seq id each request started with -> the request (forks name it)
        slots = 0         # sequences the started requests still hold
        try:
            while pending or active:
                while pending and slots + pending[0][1][1].n <= self.max_num_seqs:
                    index, (prompt, params) = pending.popleft()
                    seq, state = self._start(index, prompt, params)
                    active[seq] = started[seq] = state
                    slots += params.n
                events = self._rt.step()
                if not events and not self._rt.pending():
                    raise RuntimeError("the engine stopped with requests unfinished")
                # The whole step is taken in before anything is yielded: a caller that stops
                # early leaves every sequence it started known here, forks included.
                step = []
                for event in events:
                    state = active.setdefault(event.seq_id, started[event.parent_id])
                    now = time.time()
                    if state.metrics.first_token_time is None and event.prompt_pos == 0:
                        state.metrics.first_token_time = now
                        state.metrics.time_in_queue = 0.0
                    state.metrics.last_token_time = now
                    sample = self._record(state, event)
                    output = None
                    if event.finished:
                        self._finish_sample(event.seq_id, state, event)
                        del active[event.seq_id]
                        slots -= 1
                        if state.done():
                            output = state.output()
                    step.append((state, event, sample, output))
                for seq in [seq for seq, state in started.items() if state.done()]:
                    del started[seq]
                yield from step
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
        for state, _event, _sample, output in self._events(items, params_list):
            if output is None:
                continue
            results[state.index] = output
            n_in += len(output.prompt_token_ids)
            n_out += sum(len(c.token_ids) for c in output.outputs)
            elapsed = max(time.time() - started, 1e-9)
            bar.postfix = f"est. speed input: {n_in / elapsed:.2f} toks/s, output: {n_out / elapsed:.2f} toks/s"
            bar.update(1)
        bar.close()
        return results

    def beam_search(self, prompts, params: BeamSearchParams, use_tqdm: bool = False) -> list:
        """vLLM's beam search (el_beam.h): one BeamSearchOutput per prompt, its sequences
        best first; each sequence's tokens hold the prompt too, as its text does (as vLLM
        decodes them). A prompt is a string or a dict with "prompt" or "prompt_token_ids"."""
        items = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        slots = 2 * params.beam_width
        if slots > self.max_num_seqs:
            raise ValueError(f"beam_width: a search of width {params.beam_width} holds {slots} sequences, and this "
                             f"LLM holds max_num_seqs={self.max_num_seqs}")
        request = capi.make_request({"temperature": params.temperature}, params.max_tokens,
                                    ignore_eos=params.ignore_eos, beam_width=params.beam_width,
                                    length_penalty=params.length_penalty)
        pending, searching, results = deque(enumerate(items)), {}, [None] * len(items)
        bar = tqdm(total=len(items), desc="Beam search", disable=not use_tqdm, dynamic_ncols=True)
        try:
            while pending or searching:
                while pending and (len(searching) + 1) * slots <= self.max_num_seqs:
                    index, prompt = pending.popleft()
                    _, ids = self._prompt(prompt)
                    self._check_fits(index, ids, SamplingParams())
                    searching[self._rt.add(ids, request)] = index
                found = {}
                for event in self._rt.step():  # a search reports once, at its end
                    found.setdefault(event.parent_id, []).append(event)
                for leader, events in found.items():
                    results[searching.pop(leader)] = BeamSearchOutput(self._hypotheses(events))
                    bar.update(1)
        finally:
            for leader in searching:
                self._rt.abort(leader)
                self._rt.release(leader)
            bar.close()
        return results

    def _hypotheses(self, events) -> list:
        out = []
        for event in sorted(events, key=lambda e: e.sample_index):
            tokens, _, _ = self._rt.tokens(event.seq_id)
            self._rt.release(event.seq_id)
            if event.finish == capi.FINISH_ERROR:
                raise EdgeLlamaError(f"beam search stopped: {capi.FINISH_ERROR_TEXT}")
            out.append(BeamSearchSequence(tokens, self.tokenizer.decode(tokens), float(event.cumulative_logprob),
                                          finish_reason=capi.FINISH_REASONS[event.finish]))
        return out

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
        """Yield RequestOutputs as tokens arrive (vLLM's DELTA kind): each holds one
        CompletionOutput, of the sample (`index`) that moved, with the new text, token and
        logprobs only, and its finish_reason once that sample ends. The last one has
        finished=True and, when asked for, the prompt's logprobs.
        A generation that fails (NaN or Inf logits: finish_reason "error" in generate)
        raises EdgeLlamaError after the text so far: a stream has no other way to say it."""
        params = sampling_params or SamplingParams()
        for state, event, sample, output in self._events([prompt], [params]):
            if event.prompt_pos > 0:
                continue  # prompt logprobs come with the last output
            delta = event.text_bytes().decode("utf-8", "replace")
            moved = state.samples[sample]
            if event.finished and event.finish == capi.FINISH_ERROR:
                if delta:
                    yield RequestOutput(state.request_id, state.prompt, state.prompt_token_ids, None,
                                        [CompletionOutput(sample, delta, [])], False, state.metrics)
                raise EdgeLlamaError(f"generation stopped: {capi.FINISH_ERROR_TEXT}")
            completion = CompletionOutput(sample, delta, [event.token] if event.token >= 0 else [],
                                          moved.cumulative_logprob,
                                          moved.logprobs[-1:] if moved.logprobs is not None else None)
            if event.finished:
                completion.finish_reason, completion.stop_reason = moved.output.finish_reason, moved.output.stop_reason
            yield RequestOutput(state.request_id, state.prompt, state.prompt_token_ids,
                                state.prompt_logprobs if output is not None else None, [completion], output is not None,
                                state.metrics)


class ChatSession:
    """One conversation kept as one sequence in the engine: each turn appends only its
    own tokens, so the history's keys and values are never computed twice."""

    def __init__(self, llm: LLM, system: str, chat: capi.Chat):
        self.llm, self.system, self.chat = llm, system, chat
        self.seq_id = -1
        self.turns = 0
        self.started_over = False  # whether the last turn started the conversation over (a full context)
        self.last_logprobs = None  # the last reply's (token, {token_id: Logprob}) when logprobs were asked
        self.last_finish_reason = None  # how the last reply ended: "stop", "length", "abort"

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
        self.last_logprobs = [] if params.logprobs is not None else None  # (token, {token_id: Logprob}) each
        while True:
            events = rt.step()
            for event in events:
                if event.seq_id == self.seq_id:
                    figures = event.logprob_figures()
                    if figures is not None and event.prompt_pos == 0:
                        self.last_logprobs.append((figures[0], self.llm._logprobs(figures)))
                    yield event.text_bytes().decode("utf-8", "replace")
                    if event.finished and event.finish == capi.FINISH_ERROR:
                        raise EdgeLlamaError(f"the reply stopped: {capi.FINISH_ERROR_TEXT}")
                    if event.finished:
                        self.last_finish_reason = capi.FINISH_REASONS[event.finish]
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
