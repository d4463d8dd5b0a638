"""The framed serial protocol (firmware/PROTOCOL.md is the spec; the C side is
firmware/apps/common/el_protocol.c).

    frame = magic FE 4C | type (1 byte) | length (2 bytes, little-endian) | payload | CRC (2 bytes, LE)

The CRC is CRC-16/CCITT-FALSE over type, length and payload. Payloads are at most
MAX_PAYLOAD bytes; most are UTF-8 "key=value" lines, GENERATE's are those lines, an
empty line and the prompt; TOKEN's is a 4-byte device time (microseconds since the
request began, little-endian) and a piece of text.
"""

import struct
from dataclasses import dataclass

from edgellama.errors import EdgeLlamaError

MAGIC = b"\xfe\x4c"
MAX_PAYLOAD = 512
OVERHEAD = 7
VERSION = 1

HELLO, GENERATE, CANCEL, BENCH, PING, STATS, RESET = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
INFO, TOKEN, DONE, ERROR, BENCH_RESULT, PONG, STATS_RESULT, OK = 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88
NAMES = {HELLO: "HELLO", GENERATE: "GENERATE", CANCEL: "CANCEL", BENCH: "BENCH", PING: "PING", STATS: "STATS",
         RESET: "RESET", INFO: "INFO", TOKEN: "TOKEN", DONE: "DONE", ERROR: "ERROR", BENCH_RESULT: "BENCH_RESULT",
         PONG: "PONG", STATS_RESULT: "STATS_RESULT", OK: "OK"}

# the start of the ERROR a device sends for a header announcing too long a payload: an
# answer to line noise (the host never sends one), not to the request in flight
FRAMING_ERROR = b"frame too long"

# sampling keys GENERATE takes (SamplingParams field -> key)
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "frequency_penalty",
                 "presence_penalty", "seed", "max_tokens", "min_tokens")


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


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
        t, = struct.unpack_from("<I", self.payload)
        return t / 1e6, self.payload[4:]


class Decoder:
    """Bytes in (any split), frames out. Bytes outside frames (noise, plain text) are kept
    in `noise`; a frame with a wrong CRC is dropped and scanning goes on from the byte
    after its magic; an announced length over MAX_PAYLOAD is dropped at its header."""

    def __init__(self):
        self.buf = bytearray()
        self.noise = bytearray()
        self.bad_frames = 0

    def feed(self, data: bytes) -> list:
        self.buf += data
        frames = []
        while True:
            at = self.buf.find(MAGIC)
            if at < 0:
                keep = 1 if self.buf.endswith(MAGIC[:1]) else 0
                self.noise += self.buf[:len(self.buf) - keep]
                del self.buf[:len(self.buf) - keep]
                return frames
            self.noise += self.buf[:at]
            del self.buf[:at]
            if len(self.buf) < 5:
                return frames
            type_, length = struct.unpack_from("<BH", self.buf, 2)
            if length > MAX_PAYLOAD:
                self.bad_frames += 1
                del self.buf[:2]
                continue
            if len(self.buf) < length + OVERHEAD:
                return frames
            body = bytes(self.buf[2:5 + length])
            crc, = struct.unpack_from("<H", self.buf, 5 + length)
            if crc != crc16(body):
                self.bad_frames += 1
                del self.buf[:2]
                continue
            frames.append(Frame(type_, body[3:]))
            del self.buf[:length + OVERHEAD]

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
        stops = getattr(params, "stop", None) or []
        for stop in [stops] if isinstance(stops, str) else stops:
            pairs.append(("stop", stop))
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


def bench_payload(prompt_tokens: int, gen_tokens: int) -> bytes:
    return kv_lines([("prompt_tokens", int(prompt_tokens)), ("gen_tokens", int(gen_tokens))])
