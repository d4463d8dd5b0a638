"""A device is where a model runs and answers: this machine's runtime, a Linux board
over SSH, a microcontroller on a serial line, or an emulated board. chat, bench and
serve talk to every one of them through this interface.

    with open_device(local=True) as dev:
        for text in dev.generate("once upon a time", SamplingParams(max_tokens=50)):
            print(text, end="")
        print(dev.last_stats)
"""

import time
from dataclasses import dataclass, field

from edgellama.errors import EdgeLlamaError
from edgellama.runtime.sampling_params import SamplingParams


@dataclass
class Stats:
    """What a device reports after a reply (device clock where it has one). With
    logprobs asked, extra["logprobs"] holds (token, {token_id: Logprob}) per token."""
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    ttft_s: float | None = None            # time to first token
    total_s: float | None = None
    token_times_s: list = field(default_factory=list)  # arrival time of each output token, from the start
    arena_high_water: int | None = None
    kv_blocks_used: int | None = None
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line for people: tokens, time to first token, decode speed, why it ended."""
        parts = [f"{self.output_tokens} tokens"]
        if self.prompt_tokens:
            parts.insert(0, f"{self.prompt_tokens} prompt tokens")
        if self.ttft_s is not None:
            parts.append(f"first token {self.ttft_s * 1000:.1f} ms")
        if self.total_s and self.output_tokens > 1 and self.ttft_s is not None and self.total_s > self.ttft_s:
            parts.append(f"{(self.output_tokens - 1) / (self.total_s - self.ttft_s):.1f} tokens/s")
        if self.finish_reason:
            parts.append(f"finish {self.finish_reason}")
        return ", ".join(parts)


class Device:
    """The operations every device offers. Implementations: LocalDevice here; the serial
    protocol's ProtocolDevice (serial, emulated boards, SSH) in protocol_device.py."""

    name = "device"

    def info(self) -> dict:
        """runtime version, model name, context length, arena bytes, ..."""
        raise NotImplementedError

    def generate(self, prompt: str, params: SamplingParams, chat: bool = False):
        """Yield text chunks as they arrive; afterwards self.last_stats holds the Stats.
        With chat=True the prompt is the next user turn of the device's conversation
        (kept between calls; see reset and set_system)."""
        raise NotImplementedError

    def beam_search(self, prompt: str, params):
        """A beam search (BeamSearchParams): BeamSearchOutput, best first; each sequence's
        text is the continuation only (the prompt is the caller's), tokens where known."""
        raise NotImplementedError

    def generate_samples(self, prompt: str, params: SamplingParams):
        """The whole RequestOutput of one prompt once it ends: params.n samples (forks of
        one prefill on the device), each with its logprobs when params.logprobs asks.
        Token ids are known only where logprobs carried them."""
        raise NotImplementedError

    def count_prompt_tokens(self, prompt: str):
        """How many tokens a completion of `prompt` starts from (BOS included), as the
        device will count them; None where this side cannot know."""
        return None

    def cancel(self):
        """Stop the reply being generated (safe to call from a signal handler's caller)."""
        raise NotImplementedError

    def reset(self, system: str | None = None):
        """Start a new conversation (with a new system prompt when given)."""
        raise NotImplementedError

    def stats(self) -> dict:
        """The runtime's counters: KV blocks, prefix hits, arena high-water, ..."""
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalDevice(Device):
    """The runtime on this machine, in-process through the Python API."""

    name = "local"

    def __init__(self, model=None, **llm_options):
        from edgellama.runtime.llm import LLM
        self.llm = LLM(model, **llm_options)
        self.session = self.llm.chat_session()
        self.last_stats = Stats()
        self._cancelled = False

    def info(self) -> dict:
        from edgellama.runtime.capi import library
        cfg = self.llm._rt.config
        return {"runtime_version": library().el_runtime_version().decode(), "model": self.llm.model,
                "context_length": cfg.context_length, "vocab_size": cfg.vocab_size,
                "arena_bytes": self.llm.stats()["arena_size"], "transport": "local"}

    def generate(self, prompt: str, params: SamplingParams, chat: bool = False):
        self._cancelled = False
        start = time.perf_counter()
        stats = Stats()
        last = []  # the last RequestOutput of a completion: how it finished

        def texts():
            for out in self.llm.generate_stream(prompt, params):
                last[:] = [out]
                yield out.outputs[0].text

        if chat:
            before = self.llm.stats()
            chunks = self.session.send(prompt, params)
        else:
            chunks = texts()
        for text in chunks:
            now = time.perf_counter() - start
            stats.token_times_s.append(now)
            if stats.ttft_s is None:
                stats.ttft_s = now
            if text:
                yield text
            if self._cancelled:
                if chat:
                    self.session.cancel()
                break
        stats.total_s = time.perf_counter() - start
        stats.output_tokens = len(stats.token_times_s)
        after = self.llm.stats()
        stats.arena_high_water, stats.kv_blocks_used = after["arena_high_water"], after["blocks_high_water"]
        if chat:
            stats.prompt_tokens = after["prompt_tokens_computed"] - before["prompt_tokens_computed"]
            if self.session.last_logprobs is not None:
                stats.extra["logprobs"] = self.session.last_logprobs
        if self._cancelled:
            stats.finish_reason = "abort"
        elif chat:
            stats.finish_reason = self.session.last_finish_reason
        elif last:
            stats.finish_reason = last[0].outputs[0].finish_reason
        self.last_stats = stats

    def beam_search(self, prompt: str, params):
        from edgellama.runtime.outputs import BeamSearchOutput, BeamSearchSequence
        ids = self.llm.tokenizer.encode(prompt)
        out = self.llm.beam_search({"prompt": prompt, "prompt_token_ids": ids}, params)[0]
        return BeamSearchOutput([BeamSearchSequence(s.tokens, self.llm.tokenizer.decode(s.tokens[len(ids):],
                                                                                        previous=ids[-1]),
                                                    s.cum_logprob, finish_reason=s.finish_reason)
                                 for s in out.sequences])

    def generate_samples(self, prompt: str, params: SamplingParams):
        out = self.llm.generate(prompt, params, use_tqdm=False)[0]
        self.last_stats = Stats(prompt_tokens=len(out.prompt_token_ids),
                                output_tokens=sum(len(c.token_ids) for c in out.outputs),
                                finish_reason=out.outputs[0].finish_reason)
        return out

    def cancel(self):
        self._cancelled = True

    def reset(self, system: str | None = None):
        self.session.reset(system)

    def stats(self) -> dict:
        return self.llm.stats()

    def bench_once(self, prompt_tokens: int, gen_tokens: int) -> dict:
        """One benchmark request: a prompt of exactly `prompt_tokens` tokens (bench.bench_prompt:
        a new one every call so no prefix is ever reused from the KV
        cache), then `gen_tokens` greedy tokens with EOS ignored. Times are from this
        process's monotonic clock, relative to the request start."""
        import resource
        if prompt_tokens < 1 or gen_tokens < 1:
            raise EdgeLlamaError(f"bench needs at least 1 prompt and 1 generated token, got {prompt_tokens} and "
                                 f"{gen_tokens}")
        from edgellama.devices.bench import bench_prompt
        ctx = self.llm.max_model_len
        if prompt_tokens + gen_tokens > ctx:
            raise EdgeLlamaError(f"bench: {prompt_tokens} prompt + {gen_tokens} generated tokens exceed the "
                                 f"model's context of {ctx}")
        self._bench_calls = getattr(self, "_bench_calls", 0) + 1
        ids = bench_prompt(self.llm.tokenizer, prompt_tokens, self._bench_calls)
        params = SamplingParams(temperature=0.0, max_tokens=gen_tokens, ignore_eos=True)
        times, blocks = [], 0
        start = time.perf_counter()
        for out in self.llm.generate_stream({"prompt_token_ids": ids}, params):
            times.append(time.perf_counter() - start)
            if not out.finished:
                blocks = max(blocks, self.llm.stats()["blocks_used"])
        stats = self.llm.stats()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"prefill_s": times[0] if times else None, "ttft_s": times[0] if times else None,
                "token_times_s": times, "arena_high_water": stats["arena_high_water"],
                "kv_blocks_used": blocks or -(-(prompt_tokens + gen_tokens) // self.llm._rt.block_size),
                "rss_bytes": rss}
