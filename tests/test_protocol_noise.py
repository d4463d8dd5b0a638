"""Resynchronization of the serial protocol (firmware/PROTOCOL.md, "Resynchronization"):
valid frames interleaved with seeded garbage (noise, fake magics, oversized headers, bad
CRCs, half frames) are each decoded exactly once by the Python Decoder, by the C parser
(el_protocol.c through the ctypes probe of tests/test_protocol.py) and, for a few seeds,
by the emulated bare-metal board (mps2-an386 under QEMU), which answers every PING."""

import random
import socket
import struct
import time

import pytest
from test_protocol import c_decode, clib  # noqa: F401  (clib: the probe library fixture)

from edgellama.devices import protocol as P

SEEDS = range(20)
GAP = None  # in a stream: the link goes quiet here (a receiver drops its half frame)


KINDS = ("noise", "fake magic", "oversized", "bad crc", "half frame", "half frame, gap")


def garbage(rng, kind):
    """One piece of garbage of a kind."""
    if kind == "noise":  # random bytes hold 0xFE and, now and then, the whole magic
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind == "fake magic":  # a magic, then a random header (a length under 513 now and then) and bytes
        return P.MAGIC + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
    if kind == "oversized":
        header = struct.pack("<BH", rng.randrange(256), rng.randrange(P.MAX_PAYLOAD + 1, 1 << 16))
        return P.MAGIC + header + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
    frame = bytearray(P.encode(rng.choice(list(P.NAMES)), bytes(rng.randrange(256) for _ in range(rng.randrange(80)))))
    if kind == "bad crc":  # one byte after the magic changed: a CRC-16 catches every such error
        frame[rng.randrange(2, len(frame))] ^= rng.randrange(1, 256)
        return bytes(frame)
    return bytes(frame[:rng.randrange(1, len(frame))])  # a half frame: the next bytes run into it


def noisy_stream(seed, frames=16, types=None, kinds=None):
    """(pieces, expected, kinds): byte strings and GAP marks (the link goes quiet), the
    (type, payload) of the valid frames among them in order, and the garbage's kinds."""
    rng = random.Random(seed)
    pieces, expected, used = [], [], []
    for i in range(frames):
        for _ in range(rng.randrange(1, 4)):
            kind = rng.choice(kinds or KINDS)
            used.append(kind)
            pieces.append(garbage(rng, kind))
            if kind.endswith("gap"):
                pieces.append(GAP)
        type_ = rng.choice(types or list(P.NAMES))
        payload = b"seed %d frame %d " % (seed, i) + bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
        pieces.append(P.encode(type_, payload))
        expected.append((type_, payload))
    return pieces, expected, used


def test_every_seed_mixes_the_kinds_of_garbage():
    for seed in SEEDS:
        used = noisy_stream(seed)[2]
        assert len(set(used)) >= 4, (seed, used)
    assert {kind for seed in SEEDS for kind in noisy_stream(seed)[2]} == set(KINDS)


@pytest.mark.parametrize("seed", SEEDS)
def test_python_decoder_resyncs(seed):
    pieces, expected, _ = noisy_stream(seed)
    rng = random.Random(1000 + seed)
    decoder, got = P.Decoder(), []
    for piece in pieces:
        if piece is GAP:
            got += decoder.drop()
            continue
        at = 0
        while at < len(piece):  # any split, a byte at a time included
            step = rng.choice([1, 1, 3, 17, 200])
            got += decoder.feed(piece[at:at + step])
            at += step
            assert len(decoder.buf) < P.MAX_FRAME and len(decoder.noise) <= P.NOISE_KEPT
    got += decoder.drop()  # the end: whatever is unfinished is a half frame
    assert [(f.type, f.payload) for f in got] == expected
    assert decoder.bad_frames > 0 and not decoder.partial()


@pytest.mark.parametrize("seed", SEEDS)
def test_c_parser_resyncs(clib, seed):  # noqa: F811
    pieces, expected, _ = noisy_stream(seed)
    got = []
    clib.probe_reset()
    for piece in pieces:
        if piece is GAP:
            got += c_drop(clib)
        else:
            got += c_decode(clib, piece, reset=False)[0]
    got += c_drop(clib)
    assert got == expected
    assert not clib.probe_busy()


def c_drop(lib):
    """el_proto_drop until nothing is in progress, as the device's serve loop does after a gap."""
    got = []
    while lib.probe_busy():
        r = lib.probe_drop()
        while r != 0:
            if r == 1:
                got.append((lib.probe_type(), bytes(lib.probe_payload()[:lib.probe_len()])))
            r = lib.probe_next()
    return got


def test_c_parser_finds_a_frame_inside_a_rejected_one(clib):  # noqa: F811
    ping = P.encode(P.PING, b"inside")
    half = P.encode(P.GENERATE, b"\n" + b"y" * 60)[:30]   # announces 61 bytes: swallows the PING
    oversized = P.MAGIC + struct.pack("<BH", P.GENERATE, 40000)
    fake = P.MAGIC + struct.pack("<BH", P.STATS, 20)      # a header, then the PING inside its "payload"
    for garbage_ in (half, oversized, fake, b"\xfe", b"\xfe\xfe"):
        got, results = c_decode(clib, garbage_ + ping + b"z" * 40)
        assert got == [(P.PING, b"inside")], garbage_
    # a half frame with nothing after the PING: found when the link goes quiet (el_proto_drop)
    got, results = c_decode(clib, half + ping)
    assert got == [] and clib.probe_busy()
    assert c_drop(clib) == [(P.PING, b"inside")]
    # the bytes of a rejected frame are not reported as noise (they never start a text line)
    got, results = c_decode(clib, b"ab" + oversized + b"cd")
    assert results == [-1, -1, -3, -1, -1]


def test_c_parser_holds_at_most_one_frame(clib):  # noqa: F811
    # frames in the payload of a 512-byte candidate whose CRC is wrong: all found by the rescan
    inner = b"".join(P.encode(P.PING, b"%d" % i) for i in range(40))
    candidate = P.MAGIC + struct.pack("<BH", P.GENERATE, P.MAX_PAYLOAD) + inner
    candidate += b"\0" * (P.MAX_PAYLOAD + 5 - len(candidate)) + b"\0\0"
    got, results = c_decode(clib, candidate * 3)
    assert got == [(P.PING, b"%d" % i) for i in range(40)] * 3 and results.count(-2) == 3
    got, _ = c_decode(clib, P.MAGIC + struct.pack("<BH", 0, P.MAX_PAYLOAD) + P.encode(P.PING, b"x") + b"\0" * 600)
    assert got == [(P.PING, b"x")]


def test_python_and_c_agree_on_fake_headers(clib):  # noqa: F811
    stream = b"\xfe\x4c\x00\x00\x02" * 300 + P.encode(P.PING, b"after") + b"\0" * P.MAX_FRAME
    assert c_decode(clib, stream)[0] == [(P.PING, b"after")]
    assert [(f.type, f.payload) for f in P.Decoder().feed(stream)] == [(P.PING, b"after")]


def test_decoder_memory_and_time_are_bounded():
    chunk = bytes(random.Random(7).randrange(256) for _ in range(1 << 16)) + P.MAGIC + b"\x00\x00\x02"
    decoder = P.Decoder()
    for _ in range(1024):  # 64 MiB of noise: only a candidate and the noise's last bytes are kept
        decoder.feed(chunk)
        assert len(decoder.buf) < P.MAX_FRAME and len(decoder.noise) <= P.NOISE_KEPT
    assert decoder.noise_bytes > 60 << 20
    fake = b"\xfe\x4c\x00\x00\x02" * 1640  # 8 KB of headers that each announce 512 bytes
    start = time.perf_counter()
    assert P.Decoder().feed(fake + P.encode(P.PING, b"x") + b"\0" * P.MAX_FRAME)[-1].payload == b"x"
    decoder = P.Decoder()
    for i in range(len(fake)):
        decoder.feed(fake[i:i + 1])
    assert time.perf_counter() - start < 1.0  # 2.6 s before the decoder searched with find and a C CRC


def test_short_token_is_a_protocol_error():
    with pytest.raises(P.ProtocolError, match=r"TOKEN frame of 2 payload bytes"):
        P.Frame(P.TOKEN, b"\x01\x02").token()
    assert P.Frame(P.TOKEN, b"\x40\x42\x0f\x00hi").token() == (1.0, b"hi")


def test_sample_token_and_logprob_frames_are_checked():
    """A device's SAMPLE_TOKEN and LOGPROB payloads: read exactly, anything shorter or
    longer than its own counts say is a protocol error, not a struct.error."""
    assert P.Frame(P.SAMPLE_TOKEN, b"\x40\x42\x0f\x00\x02hi").sample_token() == (1.0, 2, b"hi")
    with pytest.raises(P.ProtocolError, match="no time and sample"):
        P.Frame(P.SAMPLE_TOKEN, b"\x01\x02\x03\x04").sample_token()
    one = struct.pack("<BifiB", 1, 42, -0.5, 3, 1) + struct.pack("<if", 7, -0.25)
    assert P.Frame(P.LOGPROB, one).logprob() == (1, 42, -0.5, 3, [(7, -0.25)])
    for bad in (one[:13], one[:-1], one + b"\x00", one[:13] + b"\x05" + one[14:]):
        with pytest.raises(P.ProtocolError, match="does not hold its figures"):
            P.Frame(P.LOGPROB, bad).logprob()


# ---------------------------------------------------------------- the emulated board

@pytest.mark.emulated
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_baremetal_board_resyncs(board_builds, seed):
    """The board's serve loop in plain-text mode: garbage (whose text lines it drops as line
    noise) and PINGs; every PING is answered once, in order."""
    from edgellama.devices.opener import open_device
    pieces, expected, _ = noisy_stream(seed, frames=8, types=[P.PING])
    dev = open_device(board="mps2-an386", output=board_builds("mps2-an386", "q8_0").out_dir, timeout=60)
    try:
        port = int(dev.url.rsplit(":", 1)[1])
        dev.stream.port.close()  # QEMU listens again: a raw socket takes the link
        sock = connect(port)
        for piece in pieces:
            if piece is GAP:
                time.sleep(0.4)  # past the device's 300 ms: it drops the half frame and rescans
            else:
                sock.sendall(piece)
        decoder, pongs, deadline = P.Decoder(), [], time.monotonic() + 90
        while len(pongs) < len(expected) and time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                data = sock.recv(4096)
            except TimeoutError:
                break
            if not data:
                break
            pongs += [f.payload for f in decoder.feed(data) if f.type == P.PONG]
        sock.close()
        assert pongs == [payload for _, payload in expected]
    finally:
        dev.close()


def connect(port):
    for _ in range(50):
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"QEMU does not accept a connection on port {port}")

