"""Properties, checked by hypothesis over generated inputs: the protocol's frames survive
any chunking and noise, Q8_0/Q4_0 stay within their rounding bound, and the planner's
arena bounds what the runtime really uses for any engine options."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgellama.devices import protocol as P
from edgellama.model.quant import T, roundtrip

MESSAGE_TYPES = [P.HELLO, P.GENERATE, P.CANCEL, P.BENCH, P.PING, P.STATS, P.RESET]
frames = st.lists(st.tuples(st.sampled_from(MESSAGE_TYPES), st.binary(max_size=P.MAX_PAYLOAD)), max_size=6)
quiet_noise = st.binary(max_size=64).map(lambda b: b.replace(P.MAGIC[:1], b""))  # noise without the magic


def decode_in_chunks(data: bytes, cuts: list) -> list:
    decoder, got, at = P.Decoder(), [], 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        got += decoder.feed(data[at:cut])
        at = cut
    return [(f.type, f.payload) for f in got]


@given(frames, st.lists(quiet_noise, min_size=7, max_size=7), st.lists(st.integers(0, 10_000), max_size=8))
def test_frames_between_noise_come_out_once_in_order_however_the_bytes_are_cut(sent, noise, cuts):
    data = noise[0] + b"".join(P.encode(t, p) + noise[i + 1] for i, (t, p) in enumerate(sent))
    assert decode_in_chunks(data, cuts) == sent


@given(st.binary(max_size=4096), st.lists(st.integers(0, 10_000), max_size=8))
def test_any_bytes_then_a_frame_the_frame_is_found(garbage, cuts):
    """Whatever came first (fake magics, oversized headers, half frames), a frame that
    follows is decoded; enough copies follow to complete any frame the garbage began."""
    ping = P.encode(P.PING, b"still there?")
    data = garbage + ping * (P.MAX_FRAME // len(ping) + 2)
    assert (P.PING, b"still there?") in decode_in_chunks(data, cuts)


def fp16_rounding(scale):
    """How far a scale can move when stored as fp16: half an ulp, 2^-11 relative while it
    is normal, 2^-25 absolute below 2^-14 (subnormal fp16 has a fixed step); plus float32's
    own rounding of the products."""
    return np.maximum(scale * 2.0**-11, 2.0**-25) + scale * 2.0**-20


blocks = st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=32, max_size=32)


@given(st.lists(blocks, min_size=1, max_size=4))
def test_q8_0_rounds_each_value_to_within_half_a_step(rows):
    x = np.array(rows, dtype=np.float32)
    y = roundtrip(x, T.Q8_0)
    step = np.abs(x).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(y - x) <= step * 0.5 + 127 * fp16_rounding(step))


@given(st.lists(blocks, min_size=1, max_size=4))
def test_q4_0_rounds_each_value_to_within_one_step(rows):
    x = np.array(rows, dtype=np.float32)
    y = roundtrip(x, T.Q4_0)
    step = np.abs(x).max(axis=1, keepdims=True) / 8
    assert np.all(np.abs(y - x) <= step + 16 * fp16_rounding(step))


@pytest.fixture(scope="module")
def plan_inputs():
    from edgellama.boards import planner
    from edgellama.resources import DEFAULT_MODEL
    return planner, DEFAULT_MODEL, planner.model_info(DEFAULT_MODEL)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ctx=st.integers(16, 256), block_size=st.integers(1, 64), kv_dtype=st.sampled_from(["f32", "int8"]),
       max_seqs=st.integers(1, 8))
def test_the_plan_bounds_what_the_runtime_uses(plan_inputs, ctx, block_size, kv_dtype, max_seqs):
    from test_planner import HOST_BOARD, PROMPT, THREADS, measured_high_water
    planner, model, info = plan_inputs
    measured = measured_high_water(model, ctx, block_size, kv_dtype, max_seqs)
    p = planner.plan(HOST_BOARD, model, ctx=ctx, max_seqs=max_seqs, kv_dtype=kv_dtype, block_size=block_size,
                     prompt_bytes=len(PROMPT.encode()), threads=THREADS, info=info)
    assert measured <= p.arena_total <= measured * 1.05
