"""The framed serial protocol (firmware/PROTOCOL.md): Python framing and CRC, the C framing
(firmware/apps/common/el_protocol.c) agreeing with it, the POSIX program's `serve` mode
over pipes, an emulated bare-metal board behind pyserial socket://, and ProtocolDevice
through open_device for qemu-aarch64 and mps2-an386."""

import ctypes
import os
import random
import re
import socket
import struct
import threading
import time

import pytest
from conftest import require_board

from edgellama.devices import protocol as P
from edgellama.devices.protocol_device import ProtocolDevice
from edgellama.devices.streams import ProcessStream, SerialStream, find_usb_port
from edgellama.errors import EdgeLlamaError
from edgellama.runtime import build as runtime_build
from edgellama.runtime.sampling_params import SamplingParams

PROMPT = "once upon a time"


def greedy(n):
    return SamplingParams(temperature=0.0, max_tokens=n)


# ---------------------------------------------------------------- Python framing

def test_crc_vectors():
    assert P.crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value
    assert P.crc16(b"") == 0xFFFF
    assert P.crc16(b"\x00") == 0xE1F0


def test_round_trip_any_split_with_noise():
    rng = random.Random(1)
    frames = [(rng.choice(list(P.NAMES)), bytes(rng.randrange(256) for _ in range(rng.randrange(0, 513))))
              for _ in range(40)]
    stream = bytearray()
    for type_, payload in frames:
        stream += bytes(rng.choice(b"abc\n\x00\xfe") for _ in range(rng.randrange(4)))  # noise, stray magic bytes
        stream += P.encode(type_, payload)
    decoder, got, at = P.Decoder(), [], 0
    while at < len(stream):
        step = rng.randrange(1, 50)
        got += decoder.feed(bytes(stream[at:at + step]))
        at += step
    assert [(f.type, f.payload) for f in got] == frames


def test_bad_crc_oversized_and_half_frames_are_dropped():
    good = P.encode(P.INFO, b"model=x\n")
    bad = bytearray(P.encode(P.TOKEN, b"\0\0\0\0hello"))
    bad[-1] ^= 0xFF
    oversized = P.MAGIC + struct.pack("<BH", P.TOKEN, 600) + b"z" * 20
    half = P.encode(P.DONE, b"finish=stop\n")[:6]
    decoder = P.Decoder()
    frames = decoder.feed(bytes(bad) + oversized + half + good)
    assert [(f.type, f.kv()) for f in frames] == [(P.INFO, {"model": "x"})]
    assert decoder.bad_frames >= 2
    with pytest.raises(EdgeLlamaError, match="512"):
        P.encode(P.GENERATE, b"x" * 513)


def test_generate_payload():
    params = SamplingParams(temperature=0.5, top_k=3, max_tokens=9, seed=4, stop=["\n\n", "the end"])
    payload = P.generate_payload("a\nb", params, chat=True, system="be brief")
    head, _, body = payload.partition(b"\n\n")
    assert body == b"a\nb"
    kv = P.parse_kv(head)
    assert kv["temperature"] == "0.5" and kv["top_k"] == "3" and kv["max_tokens"] == "9" and kv["chat"] == "1"
    assert kv["system"] == "be brief"
    assert b"stop=\\n\\n\n" in head and b"stop=the end\n" in head
    with pytest.raises(EdgeLlamaError, match="at most 512"):
        P.generate_payload("x" * 600, params)


# ---------------------------------------------------------------- the C side agrees

PROBE = r"""
#include "el_protocol.h"
static el_proto_parser parser;
void probe_reset(void) { el_proto_parser_init(&parser); }
int probe_feed(int byte) { return el_proto_feed(&parser, byte); }
int probe_next(void) { return el_proto_next(&parser); }
int probe_drop(void) { return el_proto_drop(&parser); }
int probe_busy(void) { return el_proto_busy(&parser); }
int probe_type(void) { return parser.type; }
int probe_len(void) { return parser.len; }
const uint8_t *probe_payload(void) { return parser.payload; }
"""


@pytest.fixture(scope="module")
def clib(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    (folder / "probe.c").write_text(PROBE)
    lib = ctypes.CDLL(str(runtime_build.build_shared_library(
        [*runtime_build.core_sources(), *runtime_build.protocol_sources(), folder / "probe.c"], "el-protocol-probe")))
    lib.el_proto_crc16.restype = ctypes.c_uint16
    lib.el_proto_crc16.argtypes = [ctypes.c_uint16, ctypes.c_char_p, ctypes.c_int]
    lib.el_proto_encode.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.probe_payload.restype = ctypes.POINTER(ctypes.c_uint8)
    return lib


def test_c_crc_and_encode_match_python(clib):
    rng = random.Random(2)
    assert clib.el_proto_crc16(0xFFFF, b"123456789", 9) == 0x29B1
    for n in (0, 1, 2, 100, 511, 512):
        payload = bytes(rng.randrange(256) for _ in range(n))
        out = ctypes.create_string_buffer(600)
        size = clib.el_proto_encode(out, 600, 0x82, payload, n)
        assert out.raw[:size] == P.encode(0x82, payload)
        assert clib.el_proto_crc16(0xFFFF, payload, n) == P.crc16(payload)
    assert clib.el_proto_encode(ctypes.create_string_buffer(600), 600, 1, b"x" * 513, 513) == -1


def test_c_parser_decodes_python_frames(clib):
    rng = random.Random(3)
    frames = [(rng.randrange(256), bytes(rng.randrange(256) for _ in range(rng.randrange(0, 513)))) for _ in range(30)]
    stream = bytearray()
    for type_, payload in frames:
        stream += b"\x00noise\xfe"
        stream += P.encode(type_, payload)
    bad = bytearray(P.encode(1, b"abc"))
    bad[5] ^= 1
    stream += bad + P.MAGIC + struct.pack("<BH", 2, 513) + P.encode(7, b"last")
    got, results = c_decode(clib, stream)
    assert got == frames + [(7, b"last")]
    assert -2 in results and -3 in results  # the bad CRC and the oversized header


def c_decode(clib, stream, reset=True):
    """The frames the C parser finds in `stream` (fed a byte at a time, every result
    drained with el_proto_next), and its results."""
    if reset:
        clib.probe_reset()
    got, results = [], []
    for byte in stream:
        r = clib.probe_feed(byte)
        while r != 0:
            results.append(r)
            if r == 1:
                n = clib.probe_len()
                got.append((clib.probe_type(), bytes(clib.probe_payload()[:n])))
                assert clib.probe_payload()[n] == 0  # NUL after the payload
            r = clib.probe_next()
    return got, results


# ---------------------------------------------------------------- the POSIX program's serve mode

@pytest.fixture(scope="module")
def model_path():
    from edgellama.model.loading import resolve
    return str(resolve(None))


@pytest.fixture(scope="module")
def host_llm(model_path):
    from edgellama.runtime.llm import LLM
    return LLM(model_path)


def reference(llm, prompt, n):
    return llm.generate([prompt], greedy(n), use_tqdm=False)[0].outputs[0].text


@pytest.fixture
def posix(model_path):
    dev = ProtocolDevice(ProcessStream([runtime_build.host_program(), model_path, "serve"], "edgellama-run serve"),
                         timeout=20)
    yield dev
    dev.close()


def test_posix_hello_and_generate_equal_host(posix, host_llm):
    info = posix.info()
    assert info["model"] == "tinystories-850k" and info["context_length"] == 512 and info["max_payload"] == 512
    text = "".join(posix.generate(PROMPT, greedy(40)))
    assert text == reference(host_llm, PROMPT, 40)
    stats = posix.last_stats
    assert stats.output_tokens == 40 and stats.finish_reason == "length"
    assert len(stats.token_times_s) == 40 and stats.token_times_s == sorted(stats.token_times_s)
    assert 0 < stats.ttft_s <= stats.total_s and stats.arena_high_water > 0 and stats.kv_blocks_used > 0
    assert posix.ping(b"hi") == b"hi"


def test_posix_n_samples_and_logprobs_equal_host(model_path, host_llm):
    """GENERATE's n= and logprobs=: the device forks the samples from one prefill and
    sends SAMPLE_TOKEN and LOGPROB frames; texts, token ids and logprobs are the host's."""
    dev = ProtocolDevice(ProcessStream([runtime_build.host_program(), model_path, "serve", "--max-seqs", "4"],
                                       "edgellama-run serve"), timeout=20)
    try:
        params = SamplingParams(n=3, temperature=1.0, seed=8, max_tokens=16, logprobs=2)
        out = dev.generate_samples(PROMPT, params)
        expected = host_llm.generate(PROMPT, params, use_tqdm=False)[0]
        for got, want in zip(out.outputs, expected.outputs):
            assert (got.index, got.text, got.token_ids, got.finish_reason) == \
                (want.index, want.text, want.token_ids, want.finish_reason)
            assert [{t: (lp.logprob, lp.rank) for t, lp in e.items()} for e in got.logprobs] == \
                [{t: (lp.logprob, lp.rank) for t, lp in e.items()} for e in want.logprobs]
        assert dev.last_stats.output_tokens == sum(len(c.token_ids) for c in out.outputs)
        one = dev.generate_samples(PROMPT, SamplingParams(temperature=0, max_tokens=8, logprobs=0))
        assert one.outputs[0].text == reference(host_llm, PROMPT, 8)
        with pytest.raises(EdgeLlamaError, match="n: 5 samples need as many sequences"):
            dev.generate_samples(PROMPT, SamplingParams(n=5, max_tokens=4))
        assert "".join(dev.generate(PROMPT, greedy(12))) == reference(host_llm, PROMPT, 12)
        with pytest.raises(EdgeLlamaError, match="n: a chat turn takes one sample"):
            list(dev.generate("hi", SamplingParams(n=2, max_tokens=4), chat=True))
        list(dev.generate("hi there", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=1),
                          chat=True))
        chat_logprobs = dev.last_stats.extra["logprobs"]  # a chat turn carries them too
        assert len(chat_logprobs) == 6 and all(entry[token].rank == 1 for token, entry in chat_logprobs)
        from edgellama import BeamSearchParams
        from edgellama.devices.device import LocalDevice
        beams = BeamSearchParams(beam_width=2, max_tokens=10)
        got = dev.beam_search(PROMPT, beams).sequences
        want = LocalDevice(model_path).beam_search(PROMPT, beams).sequences
        assert [(s.text, s.cum_logprob, s.finish_reason) for s in got] == \
            [(s.text, s.cum_logprob, s.finish_reason) for s in want]  # the cumulative logprobs bit for bit
        assert dev.last_stats.output_tokens == 20
        assert dev.ping() == b"ping"
    finally:
        dev.close()


def test_posix_chat_keeps_kv(posix):
    list(posix.generate("tell me a story about a cat", greedy(12), chat=True))
    first = posix.last_stats
    list(posix.generate("and then?", greedy(12), chat=True))
    second = posix.last_stats
    # the second turn runs only its own tokens: the conversation so far stays in the KV cache
    assert second.extra["prompt"] > first.extra["prompt"] + first.output_tokens
    assert second.prompt_tokens < second.extra["prompt"] - first.extra["prompt"] + 8
    posix.reset("you are a storyteller")
    list(posix.generate("hello", greedy(4), chat=True))
    assert posix.last_stats.extra["prompt"] < second.extra["prompt"]  # a new conversation


def raw_reply(dev, *messages):
    """Write frames back to back; the frames up to the DONE (or ERROR)."""
    dev.stream.write(b"".join(P.encode(t, p) for t, p in messages))
    frames = [dev.next_frame(20, "raw")]
    while frames[-1].type not in (P.DONE, P.ERROR):
        frames.append(dev.next_frame(20, "raw"))
    return frames


def test_posix_cancel_then_next_request(posix, host_llm):
    # GENERATE and CANCEL back to back: the device reads CANCEL after its first step
    frames = raw_reply(posix, (P.GENERATE, P.generate_payload(PROMPT, greedy(200))), (P.CANCEL, b""))
    done = frames[-1].kv()
    assert done["finish"] == "abort" and int(done["tokens"]) <= 2 and len(frames) - 1 == int(done["tokens"])
    assert "".join(posix.generate(PROMPT, greedy(20))) == reference(host_llm, PROMPT, 20)
    # through the Device API (how far the reply got depends on timing; the next request is answered).
    # EOS ignored: greedy text from PROMPT ends at 63 tokens, which a fast device reaches before
    # the CANCEL arrives, and the reply would then end "stop" by itself
    chunks = posix.generate(PROMPT, SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
    next(chunks)
    posix.cancel()
    list(chunks)
    assert posix.last_stats.finish_reason in ("abort", "length")
    assert "".join(posix.generate(PROMPT, greedy(20))) == reference(host_llm, PROMPT, 20)
    # a cancelled chat turn stays in the conversation, which goes on
    frames = raw_reply(posix, (P.GENERATE, P.generate_payload("a story please", greedy(100), chat=True)),
                       (P.CANCEL, b""))
    assert frames[-1].kv()["finish"] == "abort"
    list(posix.generate("more", greedy(5), chat=True))
    assert posix.last_stats.finish_reason in ("length", "stop")
    assert posix.last_stats.extra["prompt"] > posix.last_stats.prompt_tokens  # the cut turn was kept


def test_posix_noise_and_oversized_frames(posix, host_llm):
    rng = random.Random(4)
    for _ in range(5):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
        posix.stream.write(noise)
        posix.stream.write(P.MAGIC + struct.pack("<BH", P.GENERATE, 60000) + b"x" * 100)  # oversized
        posix.stream.write(P.encode(P.GENERATE, b"\n" + b"y" * 50)[:20])  # a half frame
        time.sleep(0.4)  # past the device's 300 ms gap: the half frame is dropped
        assert posix.ping(b"after noise") == b"after noise"
    assert "".join(posix.generate(PROMPT, greedy(20))) == reference(host_llm, PROMPT, 20)
    assert posix.stream.proc.poll() is None
    with pytest.raises(EdgeLlamaError, match="bad option"):
        posix._request(P.GENERATE, b"temperature=hot\n\nx", P.DONE)
    with pytest.raises(EdgeLlamaError, match="unknown message type"):
        posix._request(0x42, b"", P.OK)


def test_posix_bench_once(posix):
    result = posix.bench_once(32, 16)
    assert result["prompt_tokens"] == 32 and len(result["token_times_s"]) == 16
    assert 0 < result["prefill_s"] == result["ttft_s"] == result["token_times_s"][0]
    assert result["arena_high_water"] > 0 and result["kv_blocks_used"] == 3 and result["rss_bytes"] > 1 << 20
    with pytest.raises(EdgeLlamaError, match="context"):
        posix.bench_once(450, 100)


def test_posix_end_of_input_ends_serve(model_path):
    stream = ProcessStream([runtime_build.host_program(), model_path, "serve"])
    dev = ProtocolDevice(stream, timeout=20)
    stream.proc.stdin.close()
    assert stream.proc.wait(10) == 0
    with pytest.raises(EdgeLlamaError, match="link"):
        list(dev.generate(PROMPT, greedy(5)))
    dev.close()


# ---------------------------------------------------------------- host-side deadlines

def fake_device(sock, silent_after):
    """Answers HELLO, then goes silent (or closes) after a GENERATE's first tokens."""
    decoder = P.Decoder()
    while True:
        data = sock.recv(4096)
        if not data:
            return
        for frame in decoder.feed(data):
            if frame.type == P.HELLO:
                sock.sendall(P.encode(P.INFO, b"model=fake\nctx=8\n"))
            elif frame.type == P.GENERATE:
                sock.sendall(P.encode(P.TOKEN, b"\0\0\0\0hel") + b"junk" + P.encode(P.TOKEN, b"\0\0\0\0lo")[:4])
                if silent_after == "close":
                    sock.close()
                    return
                time.sleep(5)
                return


@pytest.mark.parametrize("how", ["silent", "close"])
def test_dropped_link_is_an_error_not_a_hang(how):
    import serial
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"
    thread = threading.Thread(target=lambda: fake_device(server.accept()[0], how), daemon=True)
    thread.start()
    dev = ProtocolDevice(SerialStream(serial.serial_for_url(url, timeout=1), url), timeout=1.5)
    assert dev.info()["model"] == "fake"
    start = time.monotonic()
    got = []
    with pytest.raises(EdgeLlamaError) as e:
        for text in dev.generate("x", greedy(5)):
            got.append(text)
    assert got == ["hel"] and time.monotonic() - start < 10
    assert ("no answer to GENERATE within 1.5 s" in str(e.value)) if how == "silent" else ("closed" in str(e.value))
    assert "'junk'" in str(e.value) and "half frame" in str(e.value)
    dev.close()
    server.close()


def test_generate_on_a_port_that_goes_quiet_is_one_line():
    """`edgellama generate --port URL --timeout S`: the text that came, then one error line."""
    from click.testing import CliRunner

    from edgellama.cli import main
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"
    threading.Thread(target=lambda: fake_device(server.accept()[0], "silent"), daemon=True).start()
    result = CliRunner().invoke(main, ["generate", "--port", url, "--timeout", "1.5", "--temperature", "0", "x"])
    assert result.exit_code == 1
    assert result.stdout == "xhel\n"
    assert result.stderr.count("\n") == 1 and "no answer to GENERATE within 1.5 s" in result.stderr
    server.close()


def test_port_auto(monkeypatch):
    from serial.tools import list_ports

    from edgellama.boards.catalog import get_board

    class Port:
        def __init__(self, device, vid, pid):
            self.device, self.vid, self.pid = device, vid, pid

    pico = get_board("rpi-pico2")
    monkeypatch.setattr(list_ports, "comports", lambda: [Port("/dev/ttyS0", None, None)])
    with pytest.raises(EdgeLlamaError, match="no serial port with USB id"):
        find_usb_port(pico)
    monkeypatch.setattr(list_ports, "comports", lambda: [Port("/dev/ttyACM0", 0x2E8A, 0x0009),
                                                         Port("/dev/ttyACM1", 0x2E8A, 0x000F)])
    with pytest.raises(EdgeLlamaError, match="2 ports match rpi-pico2: /dev/ttyACM0, /dev/ttyACM1"):
        find_usb_port(pico)
    monkeypatch.setattr(list_ports, "comports", lambda: [Port("/dev/ttyACM0", 0x2E8A, 0x0009)])
    assert find_usb_port(pico) == "/dev/ttyACM0"
    with pytest.raises(EdgeLlamaError, match="names no USB"):
        find_usb_port(get_board("mps2-an386"))
    from edgellama.devices.opener import open_device
    with pytest.raises(EdgeLlamaError, match="needs --board"):
        open_device(port="auto")


# ---------------------------------------------------------------- emulated boards

@pytest.fixture(scope="module")
def builds(board_builds):
    """board -> the directory of its Q8_0 build of the default model (the session's)."""
    return lambda board: board_builds(board, "q8_0").out_dir


@pytest.fixture(scope="module")
def q8_llm(builds):
    from edgellama.runtime.llm import LLM
    require_board("mps2-an386")
    return LLM(str(builds("mps2-an386") / "model.gguf"))


@pytest.mark.emulated
@pytest.mark.parametrize("board", ["qemu-aarch64", "mps2-an386", "qemu-virt-rv64"])
def test_protocol_device_on_emulated_board(board, builds, q8_llm):
    from edgellama.devices.opener import open_device
    out_dir = builds(board)
    with open_device(board=board, output=out_dir, timeout=60) as dev:
        info = dev.info()
        assert info["model"] == "tinystories-850k" and info["transport"] == "emulator"
        assert "".join(dev.generate(PROMPT, greedy(30))) == reference(q8_llm, PROMPT, 30)
        assert dev.last_stats.output_tokens == 30 and dev.last_stats.ttft_s > 0
        chunks = dev.generate("the dog", greedy(200))
        next(chunks)
        dev.cancel()
        list(chunks)
        assert dev.last_stats.finish_reason == "abort" and dev.last_stats.output_tokens < 200
        list(dev.generate("hi there", greedy(8), chat=True))
        dev.reset("a system prompt")
        result = dev.bench_once(24, 8)
        assert len(result["token_times_s"]) == 8 and result["prefill_s"] > 0 and result["kv_blocks_used"] == 2
        assert (result["rss_bytes"] is None) == (board != "qemu-aarch64")  # VmHWM: the POSIX program only
        assert dev.stats()["tokens_generated"] > 30


@pytest.mark.emulated
@pytest.mark.parametrize("board", ["qemu-aarch64", "mps2-an386"])
def test_samples_and_logprobs_on_emulated_boards(board, builds, q8_llm):
    """A Linux board runs the build's max_seqs (8) and forks n samples; a microcontroller
    holds one sequence, so it refuses n > 1 in a line naming n, and still reports logprobs."""
    from edgellama.devices.opener import open_device
    with open_device(board=board, output=builds(board), timeout=60) as dev:
        params = SamplingParams(temperature=0, max_tokens=10, logprobs=1)
        got = dev.generate_samples(PROMPT, params).outputs[0]
        want = q8_llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]
        assert (got.text, got.token_ids) == (want.text, want.token_ids)
        assert [e[t].logprob for e, t in zip(got.logprobs, got.token_ids)] == \
            [e[t].logprob for e, t in zip(want.logprobs, want.token_ids)]
        assert got.logprobs[0][got.token_ids[0]].decoded_token == want.logprobs[0][want.token_ids[0]].decoded_token
        sampled = SamplingParams(n=2, temperature=1.0, seed=4, max_tokens=10)
        from edgellama import BeamSearchParams
        beams = BeamSearchParams(beam_width=2, max_tokens=8)
        if board == "mps2-an386":
            with pytest.raises(EdgeLlamaError, match="n: 2 samples need as many sequences.*max_seqs 1"):
                dev.generate_samples(PROMPT, sampled)
            with pytest.raises(EdgeLlamaError, match="beam_width: a beam search of width 2 holds twice"):
                dev.beam_search(PROMPT, beams)
        else:
            texts = [c.text for c in dev.generate_samples(PROMPT, sampled).outputs]
            assert texts == [c.text for c in q8_llm.generate(PROMPT, sampled, use_tqdm=False)[0].outputs]
            ids = q8_llm.get_tokenizer().encode(PROMPT)
            want = q8_llm.beam_search({"prompt_token_ids": ids}, beams)[0].sequences
            assert [(s.text, s.cum_logprob) for s in dev.beam_search(PROMPT, beams).sequences] == \
                [(q8_llm.get_tokenizer().decode(s.tokens[len(ids):], previous=ids[-1]), s.cum_logprob) for s in want]
        assert "".join(dev.generate(PROMPT, greedy(6))) == reference(q8_llm, PROMPT, 6)


def read_until(sock, pattern: bytes, timeout=30.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while not re.search(pattern, data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.emulated
def test_baremetal_text_mode_link_drop_and_reconnect(builds, q8_llm):
    """mps2-an386 under qemu-system behind pyserial socket://: plain-text mode, a link cut
    mid-reply (the host reports it), then a new connection to the same QEMU (which listens
    again after its client closes) finds the device waiting."""
    import serial

    from edgellama.devices.opener import open_device
    out_dir = builds("mps2-an386")
    dev = open_device(board="mps2-an386", output=out_dir, timeout=30)
    try:
        url = dev.url
        # the link dropped mid-reply: the host side reports an error, never hangs
        chunks = dev.generate(PROMPT, greedy(120))
        next(chunks)
        dev.stream.port.close()
        start = time.monotonic()
        with pytest.raises(EdgeLlamaError, match="closed|link"):
            list(chunks)
        assert time.monotonic() - start < 10
        # reconnect: QEMU accepted the new client; the device answers
        for _ in range(50):
            try:
                port = serial.serial_for_url(url, timeout=1)
                break
            except serial.SerialException:
                time.sleep(0.1)
        again = ProtocolDevice(SerialStream(port, url), timeout=30)
        assert again.info()["board"] == "mps2-an386"
        assert "".join(again.generate(PROMPT, greedy(30))) == reference(q8_llm, PROMPT, 30)
        again.stream.close()
        # plain text for a person: a line in, the story and a [stats] line out
        for _ in range(50):
            try:
                sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        sock.sendall(b"max_tokens=20 | " + PROMPT.encode() + b"\r\n")
        output = read_until(sock, rb"kv_hw=\d+\n").decode("utf-8", "replace")
        story, _, stats_line = output.partition("\n[stats] ")
        assert story == reference(q8_llm, PROMPT, 20)
        assert "tokens=20" in stats_line and "finish=length" in stats_line
        # line noise (control bytes) is dropped silently; a frame right after it is answered
        sock.sendall(b"\x01\x02 garbage \x07\n" + P.encode(P.PING, b"still here"))
        decoder = P.Decoder()
        frames = []
        sock.settimeout(10)
        while not frames:
            frames = decoder.feed(sock.recv(4096))
        assert (frames[0].type, frames[0].payload) == (P.PONG, b"still here") and not decoder.noise
        # random noise, an oversized header and a half frame: the device resyncs and answers
        rng = random.Random(5)
        for i in range(3):
            sock.sendall(bytes(rng.randrange(256) for _ in range(2000)) + b"\x00\n")
            sock.sendall(P.MAGIC + struct.pack("<BH", P.GENERATE, 40000) + b"\x00" * 50 + b"\n")
            sock.sendall(P.encode(P.GENERATE, b"\n" + b"y" * 60)[:30])
            time.sleep(0.5)
            sock.sendall(P.encode(P.PING, b"ping %d" % i))
            decoder, frames = P.Decoder(), []
            while not any(f.type == P.PONG for f in frames):
                frames += decoder.feed(sock.recv(4096))
            assert [f.payload for f in frames if f.type == P.PONG] == [b"ping %d" % i]
        sock.close()
    finally:
        dev.close()
    assert dev.emulator.poll() is not None  # the emulator is stopped with the device


class PtyStream:
    """The host end (master) of a pty pair whose other end the program opens with --serial."""

    description = "pty"

    def __init__(self, fd):
        self.fd = fd

    def write(self, data):
        os.write(self.fd, data)

    def read(self, timeout):
        import select
        if not select.select([self.fd], [], [], timeout)[0]:
            return b""
        try:
            return os.read(self.fd, 4096)
        except OSError as e:
            raise EOFError(str(e)) from None

    def close(self):
        os.close(self.fd)


def test_posix_serve_on_a_serial_device(model_path, host_llm):
    """--serial DEV: raw mode on a tty (here the slave of a pty pair, as /dev/ttyGS0 on a Pi)."""
    import subprocess
    master, slave = os.openpty()
    path = os.ttyname(slave)
    proc = subprocess.Popen([str(runtime_build.host_program()), model_path, "serve", "--serial", path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:  # the slave stays open here too: a pty whose slave nobody holds reads EIO on the master
        dev = ProtocolDevice(PtyStream(master), timeout=20)
        # \r, \n and bytes like 0x03 (Ctrl-C) and 0x11 (XON) pass untouched in raw mode
        assert dev.ping(bytes(range(256))) == bytes(range(256))
        assert "".join(dev.generate(PROMPT, greedy(20))) == reference(host_llm, PROMPT, 20)
        dev.close()  # the master closed: the program reads the end and exits
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        os.close(slave)


@pytest.mark.emulated
def test_protocol_device_over_ssh(sshd_server, builds, q8_llm, tmp_path):
    """--host: the flashed release's `edgellama-run MODEL serve` over SSH (a real sshd on
    127.0.0.1 from tests/sshd.py; the program runs there under qemu-user)."""
    from edgellama.devices import flash
    from edgellama.devices.opener import open_device
    remote = str(tmp_path / "remote" / "edgellama")
    ssh = {"identity": sshd_server.client_key, "known_hosts": sshd_server.known_hosts, "remote_dir": remote}
    with pytest.raises(EdgeLlamaError, match="edgellama flash --host"):
        open_device(host=sshd_server.target, board="qemu-aarch64", **ssh)
    flash.flash("qemu-aarch64", sshd_server.target, builds("qemu-aarch64"), progress=lambda *a: None, **ssh)
    with open_device(host=sshd_server.target, board="qemu-aarch64", timeout=60, **ssh) as dev:
        assert dev.info()["transport"] == "ssh"
        assert "".join(dev.generate(PROMPT, greedy(30))) == reference(q8_llm, PROMPT, 30)
        assert dev.bench_once(16, 4)["rss_bytes"] > 0
