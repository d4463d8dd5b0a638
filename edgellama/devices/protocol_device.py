"""A device that speaks the framed protocol (firmware/PROTOCOL.md) over a
byte stream (devices/streams.py): a serial port, an emulated board, or a Linux board's
`edgellama-run MODEL serve` over SSH. devices/opener.py decides which stream to open.

    with open_device(board="qemu-aarch64") as dev:
        print(dev.info())
        for text in dev.generate("once upon a time", SamplingParams(temperature=0, max_tokens=40)):
            print(text, end="")
        print(dev.last_stats)

Every wait has a deadline: a link that goes quiet or closes is an EdgeLlamaError that
says what was received, never a hang.
"""

import codecs
import time
from pathlib import Path

from edgellama.devices import protocol as P
from edgellama.devices.device import Device, Stats
from edgellama.devices.streams import Stream
from edgellama.errors import EdgeLlamaError
from edgellama.runtime.sampling_params import SamplingParams

DEFAULT_TIMEOUT = 60.0      # seconds without a frame before a request fails
HELLO_TIMEOUT = 5.0         # seconds per HELLO attempt
HELLO_TRIES = 3
BOOT_TIMEOUT = 120.0        # an emulator that loads a model before it answers


# ---------------------------------------------------------------- the device

def _int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class ProtocolDevice(Device):
    """The Device interface over a Stream that carries the framed protocol."""

    name = "protocol"

    def __init__(self, stream: Stream, timeout: float = DEFAULT_TIMEOUT, hello_timeout: float = HELLO_TIMEOUT,
                 hello_tries: int = HELLO_TRIES, on_close=None, transport: str = "serial"):
        self.stream = stream
        self.timeout = timeout
        self.transport = transport
        self.decoder = P.Decoder()
        self._last_data = time.monotonic()  # when bytes last came: a half frame silent HOST_GAP_S is dropped
        self.frames = []
        self.link_errors = []   # the device's answers to noise that looked like a frame header
        self.last_stats = Stats()
        self._on_close = on_close
        self._in_flight = False
        self._cancel_sent = False
        self._cancelled = False
        self._info = None
        self._closed = False
        try:
            self._info = self._hello(hello_timeout, hello_tries)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------ frames

    def send(self, type_: int, payload: bytes = b""):
        try:
            self.stream.write(P.encode(type_, payload))
        except EOFError as e:
            raise EdgeLlamaError(f"{self.stream.description}: the link is closed ({e})") from None

    def _received(self) -> str:
        noise = bytes(self.decoder.noise[-200:]).decode("utf-8", "replace")
        return (f"{self.decoder.noise_bytes} bytes outside frames" + (f" (last: {noise!r})" if noise else "") +
                (", a half frame" if self.decoder.partial() else ""))

    def next_frame(self, timeout: float, what: str) -> P.Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EdgeLlamaError(f"{self.stream.description}: no answer to {what} within {timeout:g} s; "
                                     f"received {self._received()}")
            try:
                data = self.stream.read(min(left, 1.0))
            except EOFError as e:
                raise EdgeLlamaError(f"{self.stream.description}: the link closed during {what} ({e}); "
                                     f"received {self._received()}") from None
            if data:
                self._last_data = time.monotonic()
                self._take(self.decoder.feed(data))
            elif self.decoder.partial() and time.monotonic() - self._last_data >= P.HOST_GAP_S:
                self._take(self.decoder.drop())  # a half frame: what came after its magic is rescanned
        return self.frames.pop(0)

    def _take(self, frames):
        for frame in frames:
            if frame.type == P.ERROR and frame.payload.startswith(P.FRAMING_ERROR):
                self.link_errors.append(frame.payload.decode("utf-8", "replace"))  # about line noise
            else:
                self.frames.append(frame)

    def _request(self, type_: int, payload: bytes, answer: int, timeout: float | None = None) -> P.Frame:
        """Send one message and wait for its answer, skipping what an earlier reply left."""
        name = P.NAMES.get(type_, hex(type_))
        self.send(type_, payload)
        while True:
            frame = self.next_frame(self.timeout if timeout is None else timeout, name)
            if frame.type == answer:
                return frame
            if frame.type == P.ERROR:
                raise EdgeLlamaError(f"{self.stream.description}: {frame.payload.decode('utf-8', 'replace')}")

    def request(self, type_: int, payload: bytes, answer: int, timeout: float | None = None) -> P.Frame:
        """One request and its answer frame (EdgeLlamaError on the device's ERROR)."""
        return self._request(type_, payload, answer, timeout)

    def refresh_info(self) -> dict:
        """INFO again (after the device switched models), as info() gives it."""
        self._info = self._request(P.HELLO, b"", P.INFO).kv()
        self._constraint_held = None
        return self.info()

    def _hello(self, timeout: float, tries: int) -> dict:
        last = None
        for _ in range(max(1, tries)):
            try:
                self.send(P.CANCEL)  # a reply left running by an earlier host stops
                return self._request(P.HELLO, b"", P.INFO, timeout).kv()
            except EdgeLlamaError as e:
                last = e
                if "link closed" in str(e) or "link is closed" in str(e):
                    raise
        raise EdgeLlamaError(f"no HELLO answer after {tries} tries: {last}")

    # ------------------------------------------------ Device

    def info(self) -> dict:
        kv = dict(self._info)
        out = {"runtime_version": kv.pop("version", None), "model": kv.pop("model", None),
               "context_length": _int(kv.pop("ctx", None)), "vocab_size": _int(kv.pop("vocab", None)),
               "arena_bytes": _int(kv.pop("arena", None)), "board": kv.pop("board", None),
               "transport": self.transport}
        for key, value in kv.items():
            out[key] = _int(value, value)
        if getattr(self, "board_name", None):
            out["board"] = self.board_name
        if getattr(self, "build_dir", None) is not None:
            out["build_dir"] = str(self.build_dir)
            model_file = Path(self.build_dir) / "model.gguf"
            if model_file.is_file():
                out["model_path"] = str(model_file)
        return out

    def upload_constraint(self, constraint: bytes | None):
        """Put a structured-output automaton on the device (CONSTRAINT frames) unless it
        holds it already from this link; GENERATE names it by length and CRC, and the
        device refuses one that does not match what it holds."""
        if constraint is None or constraint == getattr(self, "_constraint_held", None):
            return
        room = _int(self._info.get("constraint_bytes"))
        if not room:
            raise EdgeLlamaError(f"{self.stream.description}: this device's firmware takes no structured outputs "
                                 "(build it again with this edgellama)")
        if len(constraint) > room:
            raise EdgeLlamaError(f"structured_outputs: the constraint's automaton is {len(constraint):,} bytes and "
                                 f"this device holds {room:,}; simplify it (fewer states)")
        self._constraint_held = None
        for chunk in P.constraint_chunks(constraint):
            self._request(P.CONSTRAINT, chunk, P.OK)
        self._constraint_held = constraint

    def generate(self, prompt: str, params: SamplingParams | None = None, chat: bool = False, reset: bool = False,
                 system: str | None = None):
        params = params if params is not None else SamplingParams()
        payload = P.generate_payload(prompt, params, chat=chat, reset=reset, system=system)
        self.upload_constraint(params.constraint)
        self._cancelled = self._cancel_sent = False
        stats = Stats()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        logprobs = []
        self.frames.clear()
        self.send(P.GENERATE, payload)
        self._in_flight = True
        start = time.perf_counter()
        done, received = None, 0
        try:
            while done is None:
                if self._cancelled and not self._cancel_sent:
                    self._send_cancel()
                frame = self.next_frame(self.timeout, "GENERATE")
                if frame.type == P.TOKEN:
                    t, data = frame.token()
                    received += len(data)
                    stats.token_times_s.append(t)
                    stats.extra.setdefault("host_token_times_s", []).append(time.perf_counter() - start)
                    text = decoder.decode(data)
                    if text:
                        yield text
                elif frame.type == P.LOGPROB:
                    figures = frame.logprob()[1:]
                    logprobs.append((figures[0], self._logprob_entry(figures)))
                elif frame.type == P.DONE:
                    done = frame.kv()
                elif frame.type == P.ERROR:
                    done = {}  # the reply ended with it: nothing to drain
                    raise self._reply_error(frame)
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            if done is None:
                self._drain_after_abort()
            self._in_flight = False
        sent = _int(done.get("text_bytes"))
        if sent is not None and sent != received:  # a TOKEN frame failed its CRC on the way
            raise EdgeLlamaError(f"{self.stream.description}: {sent - received} of the reply's {sent} bytes were "
                                 "lost to line noise; the text above is incomplete")
        stats.output_tokens = _int(done.get("tokens"), len(stats.token_times_s))
        stats.prompt_tokens = _int(done.get("computed") if chat else done.get("prompt"), 0)
        stats.cached_tokens = _int(done.get("cached"), 0)
        stats.finish_reason = done.get("finish")
        if "ttft_us" in done:
            stats.ttft_s = int(done["ttft_us"]) / 1e6
            stats.total_s = int(done["total_us"]) / 1e6
        stats.arena_high_water = _int(done.get("arena_hw"))
        stats.kv_blocks_used = _int(done.get("kv_blocks"))
        stats.extra.update({k: _int(v, v) for k, v in done.items()})
        stats.extra["host_total_s"] = time.perf_counter() - start
        if params.logprobs is not None:
            stats.extra["logprobs"] = logprobs
        self.last_stats = stats

    def generate_samples(self, prompt: str, params: SamplingParams):
        """n samples and logprobs over the protocol (GENERATE's n= and logprobs= keys):
        SAMPLE_TOKEN frames carry each sample's text (TOKEN when n = 1), a LOGPROB frame
        comes before the token it describes, DONE says how each sample ended."""
        from edgellama.runtime.outputs import CompletionOutput, RequestOutput
        if params.n > P.MAX_SAMPLES:
            raise EdgeLlamaError(f"n: a device takes at most {P.MAX_SAMPLES} samples a request, got {params.n}")
        payload = P.generate_payload(prompt, params)
        self.upload_constraint(params.constraint)
        texts, figures, done = self._samples_reply(payload, params.n)
        finishes = done["finishes"].split(",") if params.n > 1 and "finishes" in done else [done.get("finish")]
        outputs = []
        for i in range(params.n):
            logprobs = [self._logprob_entry(f) for f in figures[i]] if params.logprobs is not None else None
            outputs.append(CompletionOutput(i, texts[i].decode("utf-8", "replace"), [f[0] for f in figures[i]],
                                            sum(f[1] for f in figures[i]) if logprobs is not None else None,
                                            logprobs, finish_reason=finishes[i] if i < len(finishes) else None))
        return RequestOutput("0", prompt, [], None, outputs, True)

    def beam_search(self, prompt: str, params):
        """A beam search on the device (GENERATE's beam_width=): each beam's generated text
        whole at the end, best first, with its cum_logprob (DONE's exact float bits).
        Token ids do not cross the link: `tokens` is empty."""
        from edgellama.runtime.outputs import BeamSearchOutput, BeamSearchSequence
        texts, _, done = self._samples_reply(P.beam_payload(prompt, params), params.beam_width)
        finishes = done.get("finishes", "").split(",")
        cums = [P.float_from_bits(bits) for bits in done.get("cum_logprobs", "").split(",") if bits]
        if len(finishes) != params.beam_width or len(cums) != params.beam_width:
            raise P.ProtocolError(f"DONE of a beam search of width {params.beam_width}: {done}")
        # a beam the search did not fill (fewer candidates than beams) ends without a reason
        return BeamSearchOutput([BeamSearchSequence([], texts[i].decode("utf-8", "replace"), cums[i],
                                                    finish_reason=finishes[i])
                                 for i in range(params.beam_width) if finishes[i] in ("stop", "length")])

    def _samples_reply(self, payload: bytes, n: int) -> tuple:
        """Send a GENERATE for n samples and read its reply: (each sample's text bytes, each
        sample's LOGPROB figures, DONE's keys). last_stats gets DONE's figures."""
        texts = [bytearray() for _ in range(n)]
        figures = [[] for _ in range(n)]
        self._cancelled = self._cancel_sent = False
        self.frames.clear()
        self.send(P.GENERATE, payload)
        self._in_flight = True
        done, received = None, 0
        try:
            while done is None:
                frame = self.next_frame(self.timeout, "GENERATE")
                if frame.type in (P.TOKEN, P.SAMPLE_TOKEN):
                    if frame.type == P.SAMPLE_TOKEN:
                        _, sample, data = frame.sample_token()
                    else:
                        (_, data), sample = frame.token(), 0
                    if sample >= n:
                        raise P.ProtocolError(f"a token of sample {sample} in a reply of {n}")
                    texts[sample] += data
                    received += len(data)
                elif frame.type == P.LOGPROB:
                    sample, *rest = frame.logprob()
                    if sample >= n:
                        raise P.ProtocolError(f"logprobs of sample {sample} in a reply of {n}")
                    figures[sample].append(tuple(rest))
                elif frame.type == P.DONE:
                    done = frame.kv()
                elif frame.type == P.ERROR:
                    done = {}  # the reply ended with it: nothing to drain
                    raise self._reply_error(frame)
        finally:
            if done is None:
                self._drain_after_abort()
            self._in_flight = False
        sent = _int(done.get("text_bytes"))
        if sent is not None and sent != received:
            raise EdgeLlamaError(f"{self.stream.description}: {sent - received} of the reply's {sent} bytes were "
                                 "lost to line noise; the text is incomplete")
        stats = Stats()
        stats.prompt_tokens, stats.cached_tokens = _int(done.get("prompt"), 0), _int(done.get("cached"), 0)
        stats.output_tokens, stats.finish_reason = _int(done.get("tokens"), 0), done.get("finish")
        stats.extra.update({k: _int(v, v) for k, v in done.items()})
        self.last_stats = stats
        return texts, figures, done

    def _logprob_entry(self, figures) -> dict:
        """{token_id: Logprob} of one LOGPROB frame: the top tokens and the chosen one."""
        from edgellama.runtime.outputs import Logprob
        token, logprob, rank, top = figures
        entry = {t: Logprob(lp, i + 1, self._token_text(t)) for i, (t, lp) in enumerate(top)}
        entry.setdefault(token, Logprob(logprob, rank, self._token_text(token)))
        return entry

    def _model_runtime(self):
        """The board's model file (its build) opened here, for its vocabulary; None without one."""
        if not hasattr(self, "_vocab_runtime"):
            model = self.info().get("model_path")
            self._vocab_runtime = None
            if model:
                from edgellama.runtime import capi
                self._vocab_runtime = capi.Runtime(model, max_seqs=1)
        return self._vocab_runtime

    def _token_text(self, token: int):
        """A token's text from the board's model file, or None without one."""
        runtime = self._model_runtime()
        return None if runtime is None else runtime.token_bytes(-1, token).decode("utf-8", "replace")

    def count_prompt_tokens(self, prompt: str):
        runtime = self._model_runtime()
        return None if runtime is None else len(runtime.tokenize(prompt))

    def _send_cancel(self):
        self._cancel_sent = True
        try:
            self.send(P.CANCEL)
        except EdgeLlamaError:
            pass

    def _reply_error(self, frame) -> EdgeLlamaError:
        """An ERROR that ended a reply; the device's constraint is then uploaded again next
        time (the error may be that it holds another one, after a restart)."""
        self._constraint_held = None
        return EdgeLlamaError(f"{self.stream.description}: {frame.payload.decode('utf-8', 'replace')}")

    def _drain_after_abort(self):
        """The caller stopped reading mid-reply: cancel it and read up to its DONE."""
        try:
            if not self._cancel_sent:
                self._send_cancel()
            while True:
                frame = self.next_frame(min(self.timeout, 30.0), "CANCEL")
                if frame.type in (P.DONE, P.ERROR):
                    return
        except EdgeLlamaError:
            pass

    def cancel(self):
        self._cancelled = True
        if self._in_flight and not self._cancel_sent:
            self._send_cancel()

    def reset(self, system: str | None = None):
        self._request(P.RESET, (system or "").encode("utf-8"), P.OK)

    def stats(self) -> dict:
        return {k: _int(v, v) for k, v in self._request(P.STATS, b"", P.STATS_RESULT).kv().items()}

    def ping(self, payload: bytes = b"ping") -> bytes:
        return self._request(P.PING, payload, P.PONG).payload

    def bench_once(self, prompt_tokens: int, gen_tokens: int) -> dict:
        """One device-side run of N prompt tokens and M generated ones (greedy, EOS
        ignored), timed with the device's clock."""
        self.frames.clear()
        self.send(P.BENCH, P.bench_payload(prompt_tokens, gen_tokens))
        times, result = [], None
        while result is None:
            frame = self.next_frame(self.timeout, "BENCH")
            if frame.type == P.TOKEN:
                times.append(frame.token()[0])
            elif frame.type == P.BENCH_RESULT:
                result = frame.kv()
            elif frame.type == P.ERROR:
                raise EdgeLlamaError(f"{self.stream.description}: {frame.payload.decode('utf-8', 'replace')}")

        def seconds(key):
            return int(result[key]) / 1e6 if key in result else None

        return {"prefill_s": seconds("prefill_us"), "ttft_s": seconds("ttft_us"), "token_times_s": times,
                "total_s": seconds("total_us"), "prompt_tokens": _int(result.get("prompt_tokens")),
                "gen_tokens": _int(result.get("gen_tokens")), "arena_high_water": _int(result.get("arena_hw")),
                "kv_blocks_used": _int(result.get("kv_blocks")), "rss_bytes": _int(result.get("rss_bytes"))}

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            self.stream.close()
        finally:
            if self._on_close is not None:
                self._on_close()
