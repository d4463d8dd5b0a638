"""The framed serial protocol (firmware/PROTOCOL.md is the spec; the C side is
firmware/apps/common/el_protocol.c).

    frame = magic FE 4C | type (1 byte) | length (2 bytes, little-endian) | payload | CRC (2 bytes, LE)

The CRC is CRC-16/CCITT-FALSE over type, length and payload. Payloads are at most
MAX_PAYLOAD bytes; most are UTF-8 "key=value" lines, GENERATE's are those lines, an
empty line and the prompt; TOKEN's is a 4-byte device time (microseconds since the
request began, little-endian) and a piece of text.
"""

import binascii
import struct
from dataclasses import dataclass

from edgellama.errors import EdgeLlamaError

MAGIC = b"\xfe\x4c"
MAX_PAYLOAD = 512
OVERHEAD = 7
MAX_FRAME = MAX_PAYLOAD + OVERHEAD
# a half frame silent this long is dropped by a host (a device that reset mid-frame); the
# device's own gap is 300 ms, the host's is longer: a device never pauses inside a frame,
# an emulator on a loaded machine may
HOST_GAP_S = 2.0
NOISE_KEPT = 256  # the last bytes outside frames a Decoder keeps, for error messages
VERSION = 1

HELLO, GENERATE, CANCEL, BENCH, PING, STATS, RESET, CONSTRAINT = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08
MODEL_BEGIN, MODEL_CHUNK, MODEL_COMMIT, MODEL_ROLLBACK = 0x09, 0x0A, 0x0B, 0x0C  # models over the line
INFO, TOKEN, DONE, ERROR, BENCH_RESULT, PONG, STATS_RESULT, OK = 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88
SAMPLE_TOKEN, LOGPROB = 0x89, 0x8A
NAMES = {HELLO: "HELLO", GENERATE: "GENERATE", CANCEL: "CANCEL", BENCH: "BENCH", PING: "PING", STATS: "STATS",
         RESET: "RESET", CONSTRAINT: "CONSTRAINT", INFO: "INFO", TOKEN: "TOKEN", DONE: "DONE", ERROR: "ERROR",
         BENCH_RESULT: "BENCH_RESULT", PONG: "PONG", STATS_RESULT: "STATS_RESULT", OK: "OK",
         SAMPLE_TOKEN: "SAMPLE_TOKEN", LOGPROB: "LOGPROB", MODEL_BEGIN: "MODEL_BEGIN", MODEL_CHUNK: "MODEL_CHUNK",
         MODEL_COMMIT: "MODEL_COMMIT", MODEL_ROLLBACK: "MODEL_ROLLBACK"}
MAX_SAMPLES = 8  # EL_SERVE_MAX_SAMPLES: the most samples (n) one GENERATE asks for

# the start of the ERROR a device sends for a header announcing too long a payload: an
# answer to line noise (the host never sends one), not to the request in flight
FRAMING_ERROR = b"frame too long"

# sampling keys GENERATE takes (SamplingParams field -> key)
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "frequency_penalty",
                 "presence_penalty", "seed", "max_tokens", "min_tokens")


class ProtocolError(EdgeLlamaError):
    """A frame whose payload does not fit its type."""


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor.
    binascii's CRC-CCITT is that CRC given 0xFFFF to start (and runs in C: a decoder
    checks a CRC for every candidate frame in noise)."""
    return binascii.crc_hqx(data, crc)


def encode(type_: int, payload: bytes = b"") -> bytes:
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise EdgeLlamaError(f"a {NAMES.get(type_, hex(type_))} payload of {len(payload)} bytes is over the "
                             f"protocol's {MAX_PAYLOAD}")
    body = struct.pack("<BH", type_, len(payload)) + payload
    return MAGIC + body + struct.pack("<H", crc16(body))


@dataclass
class Frame:
    type: int
    payload: bytes

    @property
    def name(self) -> str:
        return NAMES.get(self.type, hex(self.type))

    def kv(self) -> dict:
        return parse_kv(self.payload)

    def token(self) -> tuple:
        """(device time in seconds since the request began, text bytes) of a TOKEN."""
        if len(self.payload) < 4:
            raise ProtocolError(f"a {self.name} frame of {len(self.payload)} payload bytes has no 4-byte device "
                                "time")
        t, = struct.unpack_from("<I", self.payload)
        return t / 1e6, self.payload[4:]

    def sample_token(self) -> tuple:
        """(device time in seconds, sample index, text bytes) of a SAMPLE_TOKEN."""
        if len(self.payload) < 5:
            raise ProtocolError(f"a {self.name} frame of {len(self.payload)} payload bytes has no time and sample")
        t, sample = struct.unpack_from("<IB", self.payload)
        return t / 1e6, sample, self.payload[5:]

    def logprob(self) -> tuple:
        """(sample index, token, logprob, rank, [(top id, top logprob), ...]) of a LOGPROB."""
        if len(self.payload) < 14 or len(self.payload) != 14 + 8 * self.payload[13]:
            raise ProtocolError(f"a {self.name} frame of {len(self.payload)} payload bytes does not hold its "
                                "figures")
        sample, token, logprob, rank, n_top = struct.unpack_from("<BifiB", self.payload)
        top = [struct.unpack_from("<if", self.payload, 14 + 8 * i) for i in range(n_top)]
        return sample, token, logprob, rank, top


class Decoder:
    """Bytes in (any split), frames out.

    Resynchronization (firmware/PROTOCOL.md): a candidate frame starts at each magic; one
    with a length over MAX_PAYLOAD is rejected at its header, one with a wrong CRC when
    its last byte arrives, and either way the search for the magic resumes at the byte
    after the rejected magic, so a frame inside a rejected one is still found. Between
    feeds the decoder holds at most one unfinished candidate (under MAX_FRAME bytes);
    bytes outside frames are counted in `noise_bytes` and only the last NOISE_KEPT of
    them kept in `noise`. Each candidate costs O(1) Python steps and one CRC in C, so a
    feed is linear in its data (times MAX_FRAME at worst, for a run of fake headers)."""

    def __init__(self):
        self.buf = bytearray()     # the unfinished candidate: starts with the magic (or is a lone FE)
        self.noise = bytearray()   # the last NOISE_KEPT bytes outside frames
        self.noise_bytes = 0
        self.bad_frames = 0

    def _skip(self, buf, start: int, end: int):
        if end <= start:
            return
        self.noise_bytes += end - start
        self.noise += buf[max(start, end - NOISE_KEPT):end]
        del self.noise[:-NOISE_KEPT]

    def feed(self, data: bytes) -> list:
        buf = self.buf + data
        view = memoryview(buf)
        frames, at, n = [], 0, len(buf)
        try:
            while True:
                start = buf.find(MAGIC, at)
                if start < 0:  # a last FE may be the first half of a magic
                    start = n - 1 if n > at and buf[-1] == MAGIC[0] else n
                    self._skip(buf, at, start)
                    at = start
                    break
                self._skip(buf, at, start)
                at = start
                if n - at < 5:
                    break
                type_, length = struct.unpack_from("<BH", buf, at + 2)
                if length > MAX_PAYLOAD:
                    self._reject(buf, at)
                    at += len(MAGIC)
                    continue
                if n - at < length + OVERHEAD:
                    break
                crc, = struct.unpack_from("<H", buf, at + 5 + length)
                if crc != crc16(view[at + 2:at + 5 + length]):
                    self._reject(buf, at)
                    at += len(MAGIC)
                    continue
                frames.append(Frame(type_, bytes(view[at + 5:at + 5 + length])))
                at += length + OVERHEAD
        finally:
            view.release()
        self.buf = buf[at:]
        return frames

    def _reject(self, buf, at: int):
        """A candidate at `at` is not a frame: its magic is noise, the bytes after it are rescanned."""
        self.bad_frames += 1
        self._skip(buf, at, at + len(MAGIC))

    def drop(self) -> list:
        """Rejects what is unfinished (a half frame: the link went quiet inside it) and
        rescans the bytes after its magic; returns the frames found. Every byte held
        arrived before the gap, so a half frame found by the rescan is dropped too."""
        frames = []
        while self.buf:
            held, self.buf = self.buf, bytearray()
            if len(held) >= len(MAGIC):
                self._reject(held, 0)
            else:
                self._skip(held, 0, len(held))
            frames += self.feed(held[len(MAGIC):])
        return frames

    def partial(self) -> bool:
        return bool(self.buf)


def parse_kv(payload: bytes) -> dict:
    out = {}
    for line in payload.decode("utf-8", "replace").split("\n"):
        if not line:
            continue
        key, _, value = line.partition("=")
        out[key] = value
    return out


def _value(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def escape(text: str) -> str:
    """A text value on one line: backslash, newline, carriage return and tab escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def kv_lines(pairs) -> bytes:
    lines = []
    for key, value in pairs:
        text = escape(value) if isinstance(value, str) else _value(value)
        lines.append(f"{key}={text}\n")
    return "".join(lines).encode("utf-8")


def generate_payload(prompt: str, params=None, chat: bool = False, reset: bool = False,
                     system: str | None = None) -> bytes:
    """GENERATE's payload: key=value lines, an empty line, the prompt."""
    pairs = []
    if params is not None:
        for key in SAMPLING_KEYS:
            value = getattr(params, key, None)
            if value is None:
                continue
            pairs.append((key, value))
        if getattr(params, "ignore_eos", False):
            pairs.append(("ignore_eos", 1))
        if getattr(params, "n", 1) != 1:
            pairs.append(("n", params.n))
        if getattr(params, "logprobs", None) is not None:
            pairs.append(("logprobs", params.logprobs))
        stops = getattr(params, "stop", None) or []
        for stop in [stops] if isinstance(stops, str) else stops:
            pairs.append(("stop", stop))
        constraint = getattr(params, "constraint", None)
        if constraint is not None:  # uploaded before, in CONSTRAINT frames (constraint_chunks)
            pairs += [("constraint", len(constraint)), ("constraint_crc", crc16(constraint))]
    if chat:
        pairs.append(("chat", 1))
    if reset:
        pairs.append(("reset", 1))
    if system is not None:
        pairs.append(("system", system))
    payload = kv_lines(pairs) + b"\n" + prompt.encode("utf-8")
    if len(payload) > MAX_PAYLOAD:
        raise EdgeLlamaError(f"the request is {len(payload)} bytes; the device takes at most {MAX_PAYLOAD} "
                             "(shorten the prompt)")
    return payload


def constraint_chunks(constraint: bytes) -> list:
    """CONSTRAINT payloads that upload a structured-output automaton: each a 4-byte offset
    (LE), then up to MAX_PAYLOAD - 4 of its bytes, in order."""
    step = MAX_PAYLOAD - 4
    return [struct.pack("<I", at) + constraint[at:at + step] for at in range(0, len(constraint), step)]


def beam_payload(prompt: str, params) -> bytes:
    """GENERATE's payload for a beam search (BeamSearchParams): beam_width= and its keys."""
    pairs = [("beam_width", params.beam_width), ("max_tokens", params.max_tokens),
             ("temperature", float(params.temperature)), ("length_penalty", float(params.length_penalty))]
    if params.ignore_eos:
        pairs.append(("ignore_eos", 1))
    payload = kv_lines(pairs) + b"\n" + prompt.encode("utf-8")
    if len(payload) > MAX_PAYLOAD:
        raise EdgeLlamaError(f"the request is {len(payload)} bytes; the device takes at most {MAX_PAYLOAD} "
                             "(shorten the prompt)")
    return payload


def float_from_bits(text: str) -> float:
    """A float sent as its IEEE-754 bits in 8 hex digits (DONE's cum_logprobs)."""
    try:
        return struct.unpack("<f", struct.pack("<I", int(text, 16)))[0]
    except (ValueError, struct.error):
        raise ProtocolError(f"{text!r} is not a float's 8 hex digits") from None


def bench_payload(prompt_tokens: int, gen_tokens: int) -> bytes:
    return kv_lines([("prompt_tokens", int(prompt_tokens)), ("gen_tokens", int(gen_tokens))])
