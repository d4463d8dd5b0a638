"""edgellama serve against hostile clients: broken framing, hostile JSON, numbers that
would wrap on their way to C, oversized prompts, odd methods and clients that vanish.

Every request gets its answer or an OpenAI error body with a 4xx status naming the
field; the server keeps serving, with bounded memory, and prints no tracebacks."""

import http.client
import json
import socket
import threading
import time
import weakref

import pytest

openai = pytest.importorskip("openai")

from edgellama.devices import serve
from edgellama.devices.opener import open_device
from edgellama.runtime.sampling_params import SamplingParams

TIMEOUT_S = 2  # the server's request timeout here (30 s by default)
MIB = 1 << 20


@pytest.fixture(scope="module")
def server():
    device = open_device(local=True)
    server = serve.make_server(device, "127.0.0.1", 0, request_timeout=TIMEOUT_S)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    device.close()


@pytest.fixture
def quiet(capsys):
    """The server (threads of this process) writes no traceback while the test runs."""
    yield
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err


def connect(server):
    return socket.create_connection(server.server_address[:2], timeout=30)


class _SharedReader:
    """One buffered reader for all the responses on a socket: http.client reads ahead, so
    a reader per response would swallow the start of the next one (two answers sent back
    to back). Closing a response leaves it open."""

    def __init__(self, sock):
        self.fp = sock.makefile("rb")

    def makefile(self, *args, **kwargs):
        return self

    def close(self):
        pass

    def __getattr__(self, name):
        return getattr(self.fp, name)


READERS = weakref.WeakKeyDictionary()


def read_response(sock) -> tuple:
    """(status, headers, JSON body) of the next response on a raw socket."""
    if sock not in READERS:
        READERS[sock] = _SharedReader(sock)
    reader = READERS[sock]
    response = http.client.HTTPResponse(reader)
    response.begin()
    data = response.read()
    return response.status, response.headers, json.loads(data) if data else None


def raw(server, data: bytes, shut_write=False) -> tuple:
    with connect(server) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        return read_response(sock)


def post(server, body, path="/v1/completions") -> tuple:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    try:
        conn.request("POST", path, data, {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.headers, json.loads(r.read())
    finally:
        conn.close()


def assert_error(status, body, expected_status, param=None, *words):
    assert status == expected_status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == expected_status and isinstance(error["message"], str) and error["type"]
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error


def still_serves(client, model):
    r = client.completions.create(model=model, prompt="the cat", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def flood(server, headers: bytes, total: int) -> tuple:
    """Send headers, then (from a thread) up to `total` bytes of body; read the answer.
    Returns (status, headers, body, seconds, bytes the server let through)."""
    sock = connect(server)
    sent = [0]
    chunk = memoryview(b"x" * MIB)

    def send():
        try:
            while sent[0] < total:
                sent[0] += sock.send(chunk[:min(MIB, total - sent[0])])
        except OSError:  # the server refused the rest and closed: what we want
            pass

    start = time.monotonic()
    sock.sendall(headers)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        status, response_headers, body = read_response(sock)
        elapsed = time.monotonic() - start
        sender.join(20)
    finally:
        sock.close()
    return status, response_headers, body, elapsed, sent[0]


# ---------------------------------------------------------------------- framing and memory

@pytest.mark.parametrize("length", ["-1", "+5", "1e3", "0x10", "5, 6", "  "])
def test_a_content_length_that_is_not_a_plain_number_is_refused(server, client, model, quiet, length):
    status, headers, body = raw(server, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                + length.encode() + b"\r\n\r\n{}")
    assert_error(status, body, 400, None, "Content-Length")
    assert headers["Connection"] == "close"
    still_serves(client, model)


def test_content_length_minus_one_with_150_mib_is_refused_without_reading_it(server, client, model, quiet):
    before = rss_bytes()
    status, _, body, elapsed, sent = flood(
        server, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 150 * MIB)
    assert_error(status, body, 400, None, "Content-Length")
    assert elapsed < 10
    assert sent < 100 * MIB  # the server closed long before the end
    assert rss_bytes() - before < 64 * MIB
    still_serves(client, model)


def test_a_declared_150_mib_body_is_413_without_reading_it(server, client, model, quiet):
    before = rss_bytes()
    status, _, body, elapsed, sent = flood(
        server, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (150 * MIB), 150 * MIB)
    assert_error(status, body, 413, None, str(serve.MAX_BODY_BYTES))
    assert elapsed < 10 and sent < 100 * MIB
    assert rss_bytes() - before < 64 * MIB
    still_serves(client, model)


def test_a_small_length_followed_by_150_mib_is_not_taken_for_requests(server, client, model, quiet):
    """Content-Length says 2 ({}), then 150 MiB more: the rest is no request line."""
    before = rss_bytes()
    sock = connect(server)
    try:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        stop = threading.Event()

        def send():
            try:
                chunk = b"x" * MIB
                for _ in range(150):
                    if stop.is_set():
                        return
                    sock.sendall(chunk)
            except OSError:
                pass

        start = time.monotonic()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        status, _, body = read_response(sock)  # the {} itself: no prompt
        assert_error(status, body, 400, "prompt")
        status, _, body = read_response(sock)  # then the garbage: refused, connection closed
        assert 400 <= status < 500 and set(body["error"]) == {"message", "type", "param", "code"}
        assert time.monotonic() - start < 10
        stop.set()
        sender.join(20)
    finally:
        sock.close()
    assert rss_bytes() - before < 64 * MIB
    still_serves(client, model)


def test_a_body_shorter_than_its_length_gets_408_not_a_hang(server, client, model, quiet):
    start = time.monotonic()
    with connect(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ")
        status, headers, body = read_response(sock)
    assert time.monotonic() - start < TIMEOUT_S + 8
    assert_error(status, body, 408, None, "Content-Length")
    assert headers["Connection"] == "close"
    # The client half-closes instead: 400 at once.
    status, _, body = raw(server, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{}",
                          shut_write=True)
    assert_error(status, body, 400, None, "shorter")
    still_serves(client, model)


def test_chunked_bodies_are_refused(server, client, model, quiet):
    status, _, body = raw(server, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"2\r\n{}\r\n0\r\n\r\n")
    assert_error(status, body, 411, None, "Content-Length")
    still_serves(client, model)


def test_malformed_requests_get_json_not_html(server, client, model, quiet):
    status, _, body = raw(server, b"GARBAGE\r\n\r\n")
    assert_error(status, body, 400)
    status, _, body = raw(server, b"GET /health HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n")
    assert_error(status, body, 431)
    status, _, body = raw(server, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert_error(status, body, 414)
    still_serves(client, model)


def test_a_get_with_a_body_does_not_smuggle_a_second_request(server, quiet):
    smuggled = b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
        status, headers, body = read_response(sock)
        assert status == 200 and body["status"] == "ok" and headers["Connection"] == "close"
        assert sock.recv(100) == b""  # closed: the body was not read as a request
    with connect(server) as sock:  # the same for a POST to no route
        sock.sendall(b"POST /v1/nothing HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
                     + smuggled)
        status, headers, body = read_response(sock)
        assert_error(status, body, 404)
        assert headers["Connection"] == "close" and sock.recv(100) == b""


# ---------------------------------------------------------------------- JSON

@pytest.mark.parametrize("data", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"prompt": "hi", "stop": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                  b'{"prompt": "hi", "x": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001])
def test_deeply_nested_json_is_a_400(server, client, model, quiet, data):
    status, _, body = post(server, data)
    assert_error(status, body, 400, None, "nests too deeply")
    still_serves(client, model)


def test_nesting_just_under_the_limit_walks_without_recursion(server, client, model, quiet):
    status, _, body = post(server, b'{"prompt": "hi", "x": ' + b"[" * 900 + b"]" * 900 + b', "max_tokens": 2}')
    assert status == 200 and body["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("field", ["temperature", "repetition_penalty", "top_p", "presence_penalty"])
@pytest.mark.parametrize("literal", [b"Infinity", b"-Infinity", b"NaN", b"1e309", b"-1e309", b"1e39"])
def test_non_finite_floats_are_refused_naming_the_field(server, client, model, quiet, field, literal):
    status, _, body = post(server, b'{"prompt": "hi", "max_tokens": 2, "%s": %s}' % (field.encode(), literal))
    assert_error(status, body, 400, field, field)
    still_serves(client, model)


def test_non_finite_literals_anywhere_are_refused(server, quiet):
    status, _, body = post(server, b'{"prompt": "hi", "stream_options": {"include_usage": NaN}}')
    assert_error(status, body, 400, "stream_options", "NaN")


def test_an_integer_past_float_range_is_refused_for_a_float_field(server, quiet):
    status, _, body = post(server, b'{"prompt": "hi", "temperature": 1' + b"0" * 400 + b"}")
    assert_error(status, body, 400, "temperature", "temperature")


# ---------------------------------------------------------------------- numbers headed for C

@pytest.mark.parametrize("field, value", [("max_tokens", 4294967299), ("max_tokens", 2 ** 31),
                                          ("top_k", 4294967296), ("top_k", 2 ** 31), ("min_tokens", 2 ** 31),
                                          ("stop_token_ids", [2 ** 32 + 2]), ("stop_token_ids", [-1]),
                                          ("seed", 2 ** 64), ("max_tokens", 10 ** 30)])
def test_integers_past_the_c_types_are_400_naming_the_field(server, client, model, quiet, field, value):
    status, _, body = post(server, {"model": model, "prompt": "hi", field: value})
    assert_error(status, body, 400, field, field)
    status, _, body = post(server, {"model": model, "messages": [{"role": "user", "content": "hi"}], field: value},
                           "/v1/chat/completions")
    assert_error(status, body, 400, field, field)
    still_serves(client, model)


def test_wrapping_integers_through_the_openai_client(client, model, quiet):
    with pytest.raises(openai.BadRequestError, match="max_tokens") as e:
        client.completions.create(model=model, prompt="hi", max_tokens=4294967299)
    assert e.value.status_code == 400
    with pytest.raises(openai.BadRequestError, match="top_k"):
        client.completions.create(model=model, prompt="hi", max_tokens=3, extra_body={"top_k": 4294967296})
    with pytest.raises(openai.BadRequestError, match="stop_token_ids"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                       extra_body={"stop_token_ids": [4294967298]})
    still_serves(client, model)


@pytest.mark.parametrize("kw, field", [({"max_tokens": 4294967299}, "max_tokens"), ({"top_k": 2 ** 32}, "top_k"),
                                       ({"min_tokens": 2 ** 31}, "min_tokens"),
                                       ({"stop_token_ids": [2 ** 32]}, "stop_token_ids"),
                                       ({"temperature": float("inf")}, "temperature"),
                                       ({"repetition_penalty": 1e39}, "repetition_penalty"),
                                       ({"temperature": float("nan")}, "temperature"),
                                       ({"top_k": 2.5}, "top_k")])
def test_sampling_params_refuse_what_c_cannot_hold(kw, field):
    """The same checks for LLM(...) users: one ValueError that starts with the field."""
    with pytest.raises(ValueError) as e:
        SamplingParams(**kw)
    assert str(e.value).startswith(field + " ")
    assert SamplingParams(top_k=2 ** 31 - 1, max_tokens=2 ** 31 - 1, stop_token_ids=[2 ** 31 - 1]).top_k == 2 ** 31 - 1


# ---------------------------------------------------------------------- prompts and the context

def test_a_4_mb_prompt_is_a_400_not_a_500(server, client, model, quiet):
    big = "a " * 2_000_000
    status, _, body = post(server, {"model": model, "prompt": big, "max_tokens": 4})
    assert_error(status, body, 400, "prompt", "too long")
    status, _, body = post(server, {"model": model, "messages": [{"role": "user", "content": big}]},
                           "/v1/chat/completions")
    assert_error(status, body, 400, "messages", "too long")
    status, _, body = post(server, {"model": model, "prompt": big, "stream": True})
    assert_error(status, body, 400, "prompt", "too long")
    # the 100 kB one, as before
    status, _, body = post(server, {"model": model, "prompt": "a " * 50_000, "max_tokens": 4})
    assert_error(status, body, 400, "prompt")
    still_serves(client, model)


def test_max_tokens_past_the_context_is_400_naming_it(server, client, model, quiet):
    context = client.models.list().data[0].model_extra["max_model_len"]
    status, _, body = post(server, {"model": model, "prompt": "once upon a time", "max_tokens": context + 1})
    assert_error(status, body, 400, "max_tokens", "maximum context length")
    status, _, body = post(server, {"model": model, "messages": [{"role": "user", "content": "hi"}],
                                    "max_completion_tokens": context}, "/v1/chat/completions")
    assert_error(status, body, 400, "max_completion_tokens", "maximum context length")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        list(client.completions.create(model=model, prompt="once upon a time", max_tokens=context, stream=True))
    # prompt + max_tokens just inside the context: fine
    prompt_tokens = client.completions.create(model=model, prompt="once upon a time", max_tokens=1).usage.prompt_tokens
    r = client.completions.create(model=model, prompt="once upon a time", max_tokens=context - prompt_tokens,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.total_tokens == context
    # unasked, the default 16 shrinks to the room there is
    r = client.completions.create(model=model, prompt="a " * (context - 10), temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.total_tokens == context and r.choices[0].finish_reason == "length"


# ---------------------------------------------------------------------- methods and disconnects

@pytest.mark.parametrize("method, path, allow", [("DELETE", "/v1/completions", "POST"),
                                                 ("PUT", "/v1/chat/completions", "POST"),
                                                 ("PATCH", "/v1/completions", "POST"),
                                                 ("DELETE", "/v1/models", "GET"),
                                                 ("PUT", "/v1/models/tinystories-850k", "GET"),
                                                 ("BREW", "/health", "GET"),
                                                 ("POST", "/health", "GET")])
def test_other_methods_get_a_json_405_with_allow(server, client, model, quiet, method, path, allow):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    try:
        conn.request(method, path, b'{"prompt": "hi"}', {"Content-Type": "application/json"})
        r = conn.getresponse()
        status, headers, body = r.status, r.headers, json.loads(r.read())
    finally:
        conn.close()
    assert_error(status, body, 405, None, method)
    assert headers["Allow"] == allow and headers["Content-Type"] == "application/json"
    assert_error(*raw(server, b"%s /v1/nowhere HTTP/1.1\r\nHost: x\r\n\r\n" % method.encode())[::2], 404)
    still_serves(client, model)


def test_head_gets_headers_only(server, quiet):
    with connect(server) as sock:
        sock.sendall(b"HEAD /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n")
        response = http.client.HTTPResponse(sock, method="HEAD")
        response.begin()
        assert response.status == 405 and response.headers["Allow"] == "POST" and response.read() == b""


def test_clients_that_vanish_print_nothing(server, client, model, quiet):
    # before the body
    with connect(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    # before reading the answer, with a reset
    sock = connect(server)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n"
                 b'{"prompt": "once", "max_tokens": 50}    ')
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    # mid-stream, with a reset
    sock = connect(server)
    body = json.dumps({"prompt": "once upon a time", "max_tokens": 200, "stream": True, "ignore_eos": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    # mid-request line, and idle past the timeout
    with connect(server) as sock:
        sock.sendall(b"GET /hea")
    idle = connect(server)
    time.sleep(TIMEOUT_S + 1)
    assert idle.recv(100) == b""  # dropped, quietly
    idle.close()
    still_serves(client, model)
