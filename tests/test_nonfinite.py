"""NaN and Inf that arise while generating end the sequence with an error, never garbage.

The model here has finite weights (the load-time scan of check_values passes it), but
layer 0's attention norm is scaled by 1e30: queries and keys reach 1e30, their dot
products overflow to Inf, softmax makes NaN, and every logit is NaN. The engine checks
each logits row before sampling (el_logits_finite) and finishes the sequence with
EL_FINISH_ERROR: LLM.generate reports finish_reason "error", a stream raises, and the
CLI and the POSIX program print one "error: ..." line and exit 1.
"""

import ctypes as C
import subprocess
import sys

import numpy as np
import pytest

from edgellama import LLM, SamplingParams
from edgellama.errors import EdgeLlamaError
from edgellama.model.gguf_file import read_gguf, write_gguf
from edgellama.resources import DEFAULT_MODEL
from edgellama.runtime import build, capi

GREEDY = SamplingParams(temperature=0.0, max_tokens=16)


def write_overflowing(path, quant: str, name: str = "blk.0.attn_norm.weight"):
    """The default model with one tensor * 1e30: finite, but its activations overflow."""
    model = read_gguf(DEFAULT_MODEL).model
    model.tensors[name] = (model.tensors[name] * np.float32(1e30)).astype(np.float32)
    assert all(np.isfinite(t).all() for t in model.tensors.values())
    write_gguf(model, path, quant)
    return path


@pytest.fixture(scope="module", params=["f32", "q8_0"])
def overflowing(request, tmp_path_factory):
    return write_overflowing(tmp_path_factory.mktemp("nonfinite") / f"overflow-{request.param}.gguf", request.param)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and capi.FINISH_ERROR_TEXT in lines[0], stderr
    return lines[0]


def test_the_model_loads_and_its_logits_are_nan(overflowing):
    """Finite weights: check_values lets it in, so only the runtime check can catch it."""
    rt = capi.Runtime(overflowing, max_seqs=1)
    logits = rt.logits(rt.tokenize("Once upon a time", True))
    assert not np.isfinite(logits).any()


def test_llm_generate_reports_an_error_finish(overflowing):
    llm = LLM(overflowing)
    outputs = llm.generate(["Once upon a time", "The cat"], [GREEDY, SamplingParams(temperature=0.8, seed=3)],
                           use_tqdm=False)
    for out in outputs:
        c = out.outputs[0]
        assert c.finish_reason == "error"
        assert c.stop_reason == capi.FINISH_ERROR_TEXT
        assert c.token_ids == [] and c.text == ""  # no token drawn from NaN
    assert llm.stats()["blocks_used"] == 0  # the sequences were released


def test_a_stream_and_a_chat_raise(overflowing):
    llm = LLM(overflowing)
    with pytest.raises(EdgeLlamaError, match="NaN or infinite"):
        list(llm.generate_stream("Once upon a time", GREEDY))
    with pytest.raises(EdgeLlamaError, match="NaN or infinite"):
        list(llm.chat_session().send("hello", GREEDY))
    # the engine goes on: a finite model's request on a fresh LLM is unaffected
    ok = LLM().generate("Once upon a time", GREEDY, use_tqdm=False)[0].outputs[0]
    assert ok.finish_reason == "length" and len(ok.token_ids) == 16


def test_cli_generate_prints_one_error_line(overflowing):
    run = subprocess.run([sys.executable, "-m", "edgellama", "generate", "--model", str(overflowing),
                          "Once upon a time", "--temperature", "0"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    one_error_line(run.stderr)
    assert run.stdout.strip() == "Once upon a time"


def test_posix_program_prints_one_error_line(overflowing):
    program = str(build.host_program())
    run = subprocess.run([program, str(overflowing), "generate", "Once upon a time", "--temperature", "0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    one_error_line(run.stderr)
    assert run.stdout == "Once upon a time"
    bench = subprocess.run([program, str(overflowing), "bench", "--prompt-tokens", "8", "--gen-tokens", "4"],
                           capture_output=True, text=True, timeout=60)
    assert bench.returncode == 1
    one_error_line(bench.stderr)


def test_el_logits_finite_on_every_kind_of_value():
    """Any NaN or +-Inf at any position of any length is found; everything finite passes
    (FLT_MAX, subnormals, -0, the engine's masked logit -3e38)."""
    lib = capi.library()
    lib.el_logits_finite.restype = C.c_int
    lib.el_logits_finite.argtypes = [C.c_void_p, C.c_int]
    finite = np.array([0.0, -0.0, 1.5, -3.0e38, np.finfo(np.float32).max, -np.finfo(np.float32).max,
                       np.finfo(np.float32).smallest_subnormal, 1e-40], np.float32)
    rng = np.random.default_rng(0)
    for n in range(1, 41):
        x = rng.choice(finite, n).astype(np.float32)
        assert lib.el_logits_finite(x.ctypes.data, n) == 1
        for bad in (np.nan, np.inf, -np.inf, np.float32(np.nan) * -1):
            for at in {0, n // 2, n - 1}:
                y = x.copy()
                y[at] = bad
                assert lib.el_logits_finite(y.ctypes.data, n) == 0, (n, at, bad)
    assert lib.el_logits_finite(finite.ctypes.data, 0) == 1


def test_the_serial_protocol_answers_with_an_error(overflowing):
    """A device serving the model over the framed protocol ends such a reply in ERROR."""
    from edgellama.devices.protocol_device import ProtocolDevice
    from edgellama.devices.streams import ProcessStream
    dev = ProtocolDevice(ProcessStream([build.host_program(), overflowing, "serve"], "edgellama-run serve"),
                         timeout=30)
    try:
        with pytest.raises(EdgeLlamaError, match="NaN or infinite"):
            list(dev.generate("once upon a time", SamplingParams(temperature=0.0, max_tokens=8)))
        assert dev.ping() == b"ping"  # and it goes on serving
    finally:
        dev.close()


def test_serve_answers_a_failed_generation_with_a_server_error(overflowing):
    """Over HTTP the failure is the server's: the openai client gets a 500 error naming
    it (not a 200 with an unknown finish_reason), a stream ends in an error event, and
    the server goes on answering."""
    import threading
    openai = pytest.importorskip("openai")
    from edgellama.devices import serve
    from edgellama.devices.opener import open_device
    device = open_device(local=True, model=overflowing)
    server = serve.make_server(device, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    model = client.models.list().data[0].id
    try:
        with pytest.raises(openai.InternalServerError, match="NaN or infinite"):
            client.completions.create(model=model, prompt="Once upon a time", max_tokens=5)
        with pytest.raises(openai.InternalServerError, match="NaN or infinite"):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        with pytest.raises(openai.APIError, match="NaN or infinite"):
            list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=5, stream=True))
        assert client.models.list().data[0].id == model
    finally:
        server.shutdown()
        server.server_close()
        device.close()


def test_an_overflow_inside_rmsnorm_is_not_hidden_as_zeros(tmp_path):
    """ffn_down * 1e30 overflows the next RMSNorm's sum of squares while every value is
    still finite: the norm passes NaN on (not a row of zeros), so the run ends in error."""
    path = write_overflowing(tmp_path / "down.gguf", "f32", "blk.0.ffn_down.weight")
    out = LLM(str(path)).generate(["once upon a time"], GREEDY)[0].outputs[0]
    assert out.finish_reason == "error"
