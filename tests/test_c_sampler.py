"""The C sampler (firmware/core/el_sampler.c) against a plain Python version of the same rules.

The Python reference below follows the rules written at the top of el_sampler.c with the
same float32 operations in the same order (numpy float32 arithmetic is IEEE, like the C
built with -ffp-contract=off) and the same integer weights, and borrows only el_expf from
C, so weights, the cut of top_k/top_p and the draw agree exactly and whole 100-step
generations must match. The C finds the cut by a radix select and draws in index order;
the reference sorts the whole ranking, so the two reach the answer by different roads.
"""

import ctypes
import itertools
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgellama.runtime import build
from edgellama.runtime.build import C_FLAGS, build_shared_library, firmware_dir

F32 = np.float32
CORE = firmware_dir() / "core"
PROBE = Path(__file__).resolve().parent / "c" / "sampler_probe.c"
EL_OK, EL_ERR_ARGUMENT, EL_ERR_NO_MEMORY = 0, 1, 4


class Sampling(ctypes.Structure):
    _fields_ = [("temperature", ctypes.c_float), ("top_p", ctypes.c_float), ("top_k", ctypes.c_int),
                ("min_p", ctypes.c_float), ("repetition_penalty", ctypes.c_float),
                ("frequency_penalty", ctypes.c_float), ("presence_penalty", ctypes.c_float),
                ("seed", ctypes.c_uint64)]


class Rng(ctypes.Structure):
    _fields_ = [("state", ctypes.c_uint64), ("increment", ctypes.c_uint64)]


class Error(ctypes.Structure):
    _fields_ = [("status", ctypes.c_int), ("message", ctypes.c_char * 200)]


DEFAULTS = dict(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
                frequency_penalty=0.0, presence_penalty=0.0, seed=0)


@pytest.fixture(scope="module")
def lib():
    kernels = sorted(CORE.glob("el_kernels_*.c"))  # the vector exp the weights use
    path = build_shared_library([CORE / "el_base.c", CORE / "el_math.c", CORE / "el_sampler.c",
                                 CORE / "el_speculate.c", *kernels, PROBE], "sampler_probe")
    lib = ctypes.CDLL(str(path))
    P = ctypes.POINTER
    f32p, i32p = P(ctypes.c_float), P(ctypes.c_int32)
    lib.probe_init.argtypes = [ctypes.c_int, P(Error)]
    lib.probe_sample.argtypes = [P(Sampling), f32p, i32p, ctypes.c_int, i32p, ctypes.c_int, P(Rng)]
    lib.probe_distribution.argtypes = [P(Sampling), f32p, i32p, ctypes.c_int, i32p, ctypes.c_int, f32p]
    lib.probe_generate.argtypes = [P(Sampling), f32p, ctypes.c_int, i32p, ctypes.c_int, i32p, ctypes.c_int, f32p]
    lib.probe_generate.restype = None
    u32p, u64 = P(ctypes.c_uint32), ctypes.c_uint64
    lib.probe_speculate.argtypes = [u32p, u64, u32p, u64, ctypes.c_int, ctypes.c_int, u64, i32p, u32p]
    lib.probe_expf.argtypes = [f32p, f32p, ctypes.c_int]
    lib.probe_expf.restype = None
    lib.el_sampling_defaults.argtypes = [P(Sampling)]
    lib.el_sampling_defaults.restype = None
    lib.el_sampling_check.argtypes = [P(Sampling), P(Error)]
    lib.el_rng_seed.argtypes = [P(Rng), ctypes.c_uint64]
    lib.el_rng_seed.restype = None
    lib.el_rng_next.argtypes = [P(Rng)]
    lib.el_rng_next.restype = ctypes.c_uint32
    lib.el_rng_uniform.argtypes = [P(Rng)]
    lib.el_rng_uniform.restype = ctypes.c_float
    return lib


def ptr(array, ctype):
    return array.ctypes.data_as(ctypes.POINTER(ctype))


def ints(tokens):
    return np.ascontiguousarray(tokens, dtype=np.int32)


def params(**kw):
    return Sampling(**{**DEFAULTS, **kw})


# ---------------------------------------------------------------- the Python reference

class PCG32:
    """pcg32_srandom_r(seed, 54) and pcg32_random_r, in Python integers."""
    MULT, MASK = 6364136223846793005, (1 << 64) - 1

    def __init__(self, seed, stream=54):
        self.state, self.inc = 0, ((stream << 1) | 1) & self.MASK
        self.next()
        self.state = (self.state + seed) & self.MASK
        self.next()

    def next(self):
        old = self.state
        self.state = (old * self.MULT + self.inc) & self.MASK
        xorshifted = (((old >> 18) ^ old) >> 27) & 0xFFFFFFFF
        rot = old >> 59
        return ((xorshifted >> rot) | (xorshifted << ((-rot) & 31))) & 0xFFFFFFFF

    def uniform(self):
        return F32(self.next() >> 8) * F32(2.0 ** -24)


def seq_sum(x):
    """Left-to-right float32 sum (np.sum is pairwise; the C sums in index order)."""
    return np.cumsum(x, dtype=F32)[-1] if len(x) else F32(0)


class Reference:
    def __init__(self, lib):
        self.lib = lib

    def exp(self, x):
        x = np.ascontiguousarray(x, dtype=F32)
        y = np.empty_like(x)
        self.lib.probe_expf(ptr(x, ctypes.c_float), ptr(y, ctypes.c_float), len(x))
        return y

    @staticmethod
    def penalize(p, logits, prompt, output):
        x = np.array(logits, dtype=F32)
        n = len(x)
        r, f, pres = F32(p["repetition_penalty"]), F32(p["frequency_penalty"]), F32(p["presence_penalty"])
        valid = lambda tokens: [t for t in tokens if 0 <= t < n]
        seen = np.zeros(n, bool)
        seen[valid(list(prompt) + list(output))] = True
        counts = np.bincount(np.array(valid(output), dtype=np.int64), minlength=n)
        if r != 1:
            x[seen] = np.where(x[seen] > 0, x[seen] / r, x[seen] * r)
        hit = counts > 0
        x[hit] = x[hit] - f * counts[hit].astype(F32)
        x[hit] = x[hit] - pres
        return x

    @staticmethod
    def greedy(p):
        return not F32(p["temperature"]) >= F32(1e-5)

    @staticmethod
    def min_p_top_k(p, weights_f32):
        """Integer weights after min_p and top_k; the kept tokens in rank order."""
        w = weights_f32
        keep = w > 0
        if F32(p["min_p"]) > 0:
            keep &= w >= F32(p["min_p"])
        weights = np.where(keep, w * F32(2.0 ** 30), F32(0)).astype(np.uint64)  # exact product, truncated
        cand = np.nonzero(weights > 0)[0]
        order = cand[np.lexsort((cand, -weights[cand].astype(np.int64)))]  # weight descending, index ascending
        if 0 < p["top_k"] < len(order):
            weights[order[p["top_k"]:]] = 0
            order = order[:p["top_k"]]
        return weights, order

    @staticmethod
    def top_p_applies(p, order):
        return F32(p["top_p"]) < 1 and len(order) > 1

    @staticmethod
    def top_p_need(p, weights):
        return float(F32(p["top_p"])) * float(int(weights.sum()))  # a double product, as in C

    def top_p_cut(self, p, weights, order):
        before = np.cumsum(weights[order])[:-1]  # exact integer sums of the ranks before
        keep_n = 1 + int(np.sum(before.astype(np.float64) < self.top_p_need(p, weights)))
        if keep_n < len(order):
            weights[order[keep_n:]] = 0
            order = order[:keep_n]
        return weights, order

    def filtered(self, p, x):
        """Integer weights after min_p, top_k, top_p; the kept tokens in rank order; the total."""
        x = x / F32(p["temperature"])
        weights, order = self.min_p_top_k(p, self.exp(x - x.max()))
        if self.top_p_applies(p, order):
            weights, order = self.top_p_cut(p, weights, order)
        return x, weights, order, int(weights.sum())

    def distribution(self, p, logits, prompt=(), output=()):
        x = self.penalize(p, logits, prompt, output)
        if self.greedy(p):
            probs = np.zeros_like(x)
            probs[np.argmax(x)] = 1
            return x, probs, 1
        x, weights, order, total = self.filtered(p, x)
        probs = (weights / total).astype(F32) if total else np.zeros_like(x)
        return x, probs, len(order)

    @staticmethod
    def draw(weights, rng):
        target = (int(weights.sum()) * rng.next()) >> 32
        return int(np.nonzero(np.cumsum(weights) > target)[0][0])  # index order

    def sample(self, p, logits, prompt, output, rng):
        x = self.penalize(p, logits, prompt, output)
        if self.greedy(p):
            return int(np.argmax(x))
        x = x / F32(p["temperature"])
        weights, order = self.min_p_top_k(p, self.exp(x - x.max()))
        if int(weights.sum()) == 0:
            return 0
        if self.top_p_applies(p, order):
            need = self.top_p_need(p, weights)
            for _ in range(4):  # draws from everything, kept when inside the nucleus
                token = self.draw(weights, rng)
                w = weights[token]
                before = int(weights[weights > w].sum()) + int(w) * int(np.sum(weights[:token] == w))
                if float(before) < need:
                    return token
            weights, order = self.top_p_cut(p, weights, order)
        return self.draw(weights, rng)

    def generate(self, p, table, prompt, steps):
        rng, output = PCG32(p["seed"]), []
        for s in range(steps):
            last = output[-1] if output else (prompt[-1] if len(prompt) else 0)
            output.append(self.sample(p, table[(s + last) % len(table)], prompt, output, rng))
        return output


@pytest.fixture(scope="module")
def ref(lib):
    return Reference(lib)


# ---------------------------------------------------------------- C calls

def c_init(lib, n_vocab):
    err = Error()
    status = lib.probe_init(n_vocab, ctypes.byref(err))
    return status, err.message.decode()


def c_distribution(lib, p, logits, prompt=(), output=()):
    x = np.array(logits, dtype=F32)
    assert c_init(lib, len(x))[0] == EL_OK
    probs = np.empty_like(x)
    prompt, output = ints(prompt), ints(output)
    kept = lib.probe_distribution(ctypes.byref(params(**p)), ptr(x, ctypes.c_float), ptr(prompt, ctypes.c_int32),
                                  len(prompt), ptr(output, ctypes.c_int32), len(output), ptr(probs, ctypes.c_float))
    return x, probs, kept


def c_generate(lib, p, table, prompt, steps):
    table = np.ascontiguousarray(table, dtype=F32)
    assert c_init(lib, table.shape[1])[0] == EL_OK
    prompt, output, work = ints(prompt), np.zeros(steps, np.int32), np.zeros(table.shape[1], F32)
    lib.probe_generate(ctypes.byref(params(**p)), ptr(table, ctypes.c_float), len(table), ptr(prompt, ctypes.c_int32),
                       len(prompt), ptr(output, ctypes.c_int32), steps, ptr(work, ctypes.c_float))
    return output.tolist()


def logit_table(n_vocab, rows=7, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal((rows, n_vocab)) * scale).astype(F32)


def tie_table(n_vocab, rows=5, seed=0):
    """Few distinct values, so every row has ties, also at the top."""
    levels = np.array([2.0, 2.0, 1.5, 1.0, 0.0, -0.5, -3.0], F32)
    return np.random.default_rng(seed).choice(levels, (rows, n_vocab)).astype(F32)


# ---------------------------------------------------------------- PCG32

def test_pcg32_matches_the_published_reference(lib):
    rng = Rng()
    lib.el_rng_seed(ctypes.byref(rng), 42)  # pcg32-demo: pcg32_srandom_r(&rng, 42u, 54u)
    assert [lib.el_rng_next(ctypes.byref(rng)) for _ in range(6)] == \
        [0xA15C02B7, 0x7B47F409, 0xBA1D3330, 0x83D2F293, 0xBFA4784B, 0xCBED606E]


@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 + 7, 2**64 - 1])
def test_pcg32_c_equals_python(lib, seed):
    rng, py = Rng(), PCG32(seed)
    lib.el_rng_seed(ctypes.byref(rng), seed)
    assert [lib.el_rng_next(ctypes.byref(rng)) for _ in range(500)] == [py.next() for _ in range(500)]
    uniforms = [lib.el_rng_uniform(ctypes.byref(rng)) for _ in range(500)]
    assert uniforms == [float(py.uniform()) for _ in range(500)]
    assert all(0.0 <= u < 1.0 for u in uniforms)


def test_reference_primitives_are_sound(ref):
    # el_expf is close to exp (the reference borrows it), and seq_sum is a left-to-right sum.
    x = np.linspace(-87, 0, 20001, dtype=F32)  # normal floats (subnormals lose relative precision)
    assert np.allclose(ref.exp(x), np.exp(x.astype(np.float64)), rtol=3e-7, atol=0)
    values = np.random.default_rng(1).random(300).astype(F32)
    total = F32(0)
    for v in values:
        total = F32(total + v)
    assert seq_sum(values) == total


# ---------------------------------------------------------------- parameters

def test_defaults_are_vllms(lib):
    p = Sampling(temperature=5, top_p=0.1, top_k=3, min_p=0.5, repetition_penalty=2, frequency_penalty=1,
                 presence_penalty=1, seed=9)
    lib.el_sampling_defaults(ctypes.byref(p))
    assert {name: getattr(p, name) for name, _ in Sampling._fields_} == DEFAULTS
    err = Error()
    assert lib.el_sampling_check(ctypes.byref(p), ctypes.byref(err)) == EL_OK


@pytest.mark.parametrize("field,value,message", [
    ("temperature", -0.5, "temperature must be non-negative, got -0.5"),
    ("temperature", float("nan"), "temperature must be non-negative, got nan"),
    ("top_p", 1.5, "top_p must be in (0, 1], got 1.5"),
    ("top_p", 0.0, "top_p must be in (0, 1], got 0.0"),
    ("top_k", -2, "top_k must be 0 or -1 (disable), or at least 1, got -2"),
    ("min_p", 1.25, "min_p must be in [0, 1], got 1.25"),
    ("min_p", -0.1, "min_p must be in [0, 1], got -0.1"),
    ("repetition_penalty", 0.0, "repetition_penalty must be greater than zero, got 0.0"),
    ("frequency_penalty", 2.5, "frequency_penalty must be in [-2, 2], got 2.5"),
    ("presence_penalty", -3.0, "presence_penalty must be in [-2, 2], got -3.0"),
    ("presence_penalty", 1e9, "presence_penalty must be in [-2, 2], got 1e+09"),
])
def test_check_names_the_bad_field(lib, field, value, message):
    err = Error()
    assert lib.el_sampling_check(ctypes.byref(params(**{field: value})), ctypes.byref(err)) == EL_ERR_ARGUMENT
    assert err.status == EL_ERR_ARGUMENT
    assert err.message.decode() == message + "."


@pytest.mark.parametrize("value,text", [(-0.1, "-0.1"), (-3.0, "-3.0"), (-1234.5, "-1234.5"), (-1e-7, "-1e-07"),
                                        (-2.5e10, "-2.5e+10"), (-9.9999999e-5, "-1e-04"), (float("-inf"), "-inf")])
def test_check_formats_numbers_like_python(lib, value, text):
    err = Error()
    lib.el_sampling_check(ctypes.byref(params(temperature=value)), ctypes.byref(err))
    assert err.message.decode() == f"temperature must be non-negative, got {text}."


@pytest.mark.parametrize("field,value", [("temperature", 0.0), ("top_p", 1.0), ("top_p", 1e-3), ("top_k", -1),
                                         ("top_k", 1), ("min_p", 0.0), ("min_p", 1.0), ("repetition_penalty", 1e-3),
                                         ("frequency_penalty", -2.0), ("presence_penalty", 2.0)])
def test_check_accepts_the_edges(lib, field, value):
    err = Error()
    assert lib.el_sampling_check(ctypes.byref(params(**{field: value})), ctypes.byref(err)) == EL_OK


def test_scratch_needs_a_vocabulary_and_room(lib):
    assert c_init(lib, 0) == (EL_ERR_ARGUMENT, "sampler: the vocabulary size must be positive, got 0")
    status, message = c_init(lib, 1 << 20)  # 12 MiB of scratch; the probe's arena holds 1 MiB
    assert status == EL_ERR_NO_MEMORY and "1048576 tokens" in message


# ---------------------------------------------------------------- each stage against the reference

PROMPT = [3, 3, 7, 11, 500, -1, 9999]  # out-of-range ids are ignored
OUTPUT = [7, 7, 7, 11, 20, 21, 21, 511]

STAGES = [
    dict(repetition_penalty=1.3),
    dict(repetition_penalty=0.7),
    dict(frequency_penalty=0.5),
    dict(presence_penalty=-1.5),
    dict(repetition_penalty=1.2, frequency_penalty=-0.3, presence_penalty=0.8, temperature=0.7),
    dict(temperature=0.5),
    dict(temperature=2.0),
    dict(min_p=0.05),
    dict(min_p=1.0),
    dict(top_k=1),
    dict(top_k=40),
    dict(top_p=0.9),
    dict(top_p=0.01),
    dict(min_p=0.02, top_k=50, top_p=0.8, temperature=0.8),
    dict(temperature=0.0, repetition_penalty=1.5, presence_penalty=1.0),
]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_each_stage_matches_the_reference(lib, ref, stage):
    p = {**DEFAULTS, **stage}
    for row in logit_table(512, rows=3, seed=5):
        c_logits, c_probs, c_kept = c_distribution(lib, stage, row, PROMPT, OUTPUT)
        r_logits, r_probs, r_kept = ref.distribution(p, row, PROMPT, OUTPUT)
        assert np.array_equal(c_logits, r_logits)  # penalties and temperature: exact
        assert c_kept == r_kept == np.count_nonzero(c_probs)
        assert np.array_equal(c_probs > 0, r_probs > 0)
        assert np.allclose(c_probs, r_probs, rtol=0, atol=1e-6)
        assert abs(float(np.sum(c_probs, dtype=np.float64)) - 1) < 1e-5


MASKED_LOGIT = F32(-3.0e38)  # EL_MASKED_LOGIT (el_engine.c): what a structured output's mask writes


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_masked_logits_match_the_reference(lib, ref, stage):
    """The sampler after a structured-output mask: the masked tokens never drawn, the rest
    as the reference has them, with penalties and temperatures that push the mask to -inf
    (in numpy as in C: an overflow to -inf, not an error)."""
    p = {**DEFAULTS, **stage}
    rng = np.random.default_rng(3)
    with np.errstate(over="ignore"):
        for row in logit_table(512, rows=3, seed=7):
            masked = row.copy()
            allowed = rng.random(len(row)) < 0.1
            masked[~allowed] = MASKED_LOGIT
            c_logits, c_probs, c_kept = c_distribution(lib, stage, masked, PROMPT, OUTPUT)
            r_logits, r_probs, r_kept = ref.distribution(p, masked, PROMPT, OUTPUT)
            assert np.array_equal(c_logits, r_logits) and c_kept == r_kept
            assert np.array_equal(c_probs > 0, r_probs > 0) and not np.any(c_probs[~allowed])
            assert np.allclose(c_probs, r_probs, rtol=0, atol=1e-6)
        table = logit_table(512, seed=11)
        table[:, rng.random(512) < 0.95] = MASKED_LOGIT
        seeded = {**p, "seed": 4}
        assert c_generate(lib, seeded, table, PROMPT, 60) == ref.generate(seeded, table, PROMPT, 60)


def test_penalty_rules_by_hand(lib):
    logits = np.array([2.0, -2.0, 0.0, 1.0, 4.0], F32)
    got, _, _ = c_distribution(lib, dict(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25),
                               logits, prompt=[0, 1], output=[2, 2, 3])
    # prompt tokens: only repetition; output tokens: repetition, then 0.5*count, then 0.25.
    assert got.tolist() == [1.0, -4.0, 0.0 - 1.0 - 0.25, 0.5 - 0.5 - 0.25, 4.0]


def test_filter_rules_by_hand(lib):
    logits = np.log(np.array([0.1, 0.3, 0.05, 0.3, 0.25], np.float64)).astype(F32)
    kept = lambda **p: (c_distribution(lib, p, logits)[1] > 0).nonzero()[0].tolist()
    assert kept(min_p=0.5) == [1, 3, 4]      # >= half of the top probability
    assert kept(top_k=2) == [1, 3]           # the tie at the top: lower indices first
    assert kept(top_k=1) == [1]
    assert kept(top_p=0.5) == [1, 3]         # 0.3 < 0.5, 0.6 reaches it
    assert kept(top_p=0.3) == [1, 3]         # float 0.3 sits just above the rank-1 mass
    assert kept(top_p=0.29) == [1]
    assert kept(top_p=0.86) == [0, 1, 3, 4]  # 0.85 < 0.86
    # top_p over the mass top_k left: 0.6 / 0.85 reaches 0.7 (0.6 alone would not).
    assert kept(top_k=3, top_p=0.7) == [1, 3]


def test_top_p_boundary_is_reached_not_passed(lib):
    kept = lambda top_p: (c_distribution(lib, dict(top_p=top_p), np.zeros(4, F32))[1] > 0).nonzero()[0].tolist()
    assert kept(0.5) == [0, 1]  # equal weights: two ranks sum to exactly half, which reaches 0.5
    assert kept(0.25) == [0]
    assert kept(0.5000001) == [0, 1, 2]


def rng_giving(u24):
    """An el_rng whose next el_rng_uniform is exactly u24 * 2**-24 (inverting PCG's output step)."""
    y = (u24 << 8) << 27  # rotation 0 (top five bits clear), xorshifted = u24 << 8
    state = y ^ (y >> 18) ^ (y >> 36) ^ (y >> 54)  # undo old ^ (old >> 18)
    py = PCG32(0)
    py.state, py.inc = state, 1
    assert py.next() == u24 << 8
    return Rng(state=state, increment=1)


@pytest.mark.parametrize("u24,token", [(0, 0), (1 << 22, 1), (1 << 23, 2), ((1 << 23) + 1, 2), ((1 << 24) - 1, 3)])
def test_draw_picks_the_first_running_sum_above_u_times_total(lib, u24, token):
    # Four equal weights (total 4): u = 0.5 gives target 2; the running sums are 1, 2, 3, 4,
    # and 2 is not above 2, so the third token is drawn.
    assert c_init(lib, 4)[0] == EL_OK
    logits = np.zeros(4, F32)
    assert lib.probe_sample(ctypes.byref(params()), ptr(logits, ctypes.c_float), None, 0, None, 0,
                            ctypes.byref(rng_giving(u24))) == token


def test_disabled_filters_are_no_ops(lib):
    row = logit_table(64, rows=1, seed=2)[0]
    _, plain, kept = c_distribution(lib, {}, row)
    assert kept == 64
    for p in [dict(top_k=-1), dict(top_k=64), dict(top_k=65), dict(top_k=10**6), dict(top_p=1.0), dict(min_p=0.0)]:
        assert np.array_equal(c_distribution(lib, p, row)[1], plain)


# ---------------------------------------------------------------- whole generations

GENERATIONS = [
    dict(),
    dict(temperature=0.6),
    dict(temperature=1.7, top_p=0.95),
    dict(top_k=20),
    dict(top_k=5, top_p=0.7),
    dict(top_p=0.5),
    dict(top_p=0.05, temperature=1.5),  # a small nucleus in a flat distribution: most draws miss it
    dict(min_p=0.1),
    dict(min_p=0.05, top_k=30, top_p=0.9, temperature=0.9),
    dict(repetition_penalty=1.3, temperature=0.8),
    dict(repetition_penalty=0.8),
    dict(frequency_penalty=1.0, top_k=50),
    dict(presence_penalty=2.0, top_p=0.8),
    dict(repetition_penalty=1.1, frequency_penalty=0.4, presence_penalty=-0.6, min_p=0.02, top_p=0.9),
    dict(temperature=0.0, repetition_penalty=1.2, frequency_penalty=0.5),
    dict(temperature=0.0),
]


@pytest.mark.parametrize("case", range(len(GENERATIONS)))
def test_generations_match_the_reference(lib, ref, case):
    prompt = [5, 17, 17, 300, 42]
    for seed in (0, 1, 12345):
        p = {**DEFAULTS, **GENERATIONS[case], "seed": seed}
        table = logit_table(512, seed=seed)
        assert c_generate(lib, p, table, prompt, 100) == ref.generate(p, table, prompt, 100), (p, seed)


@pytest.mark.parametrize("n_vocab", [1, 2, 3, 8, 17])
def test_small_vocabularies_with_ties_match_the_reference(lib, ref, n_vocab):
    cases = [dict(), dict(top_k=1), dict(top_k=2), dict(top_k=3, top_p=0.6), dict(min_p=0.5), dict(top_p=0.4),
             dict(temperature=0.0), dict(repetition_penalty=1.5, presence_penalty=0.5)]
    for seed, case in itertools.product((3, 4), cases):
        p = {**DEFAULTS, **case, "seed": seed}
        table = tie_table(n_vocab, seed=seed)
        assert c_generate(lib, p, table, [0], 100) == ref.generate(p, table, [0], 100), (p, n_vocab)


@pytest.mark.parametrize("n_vocab", [1500, 4099])
def test_vocabularies_of_several_runs_match_the_reference(lib, ref, n_vocab):
    # Past 512 tokens the C sums the weights in runs: a draw skips whole runs, the nucleus
    # check may stop after a few, and the cuts keep each run's total (ties spread over runs).
    cases = [dict(top_p=0.9), dict(temperature=0.7, top_p=0.5), dict(top_k=40, top_p=0.8), dict(top_p=0.05),
             dict(min_p=0.1, top_p=0.95)]
    for seed, case in itertools.product((0, 1), cases):
        p = {**DEFAULTS, **case, "seed": seed}
        for table in (logit_table(n_vocab, rows=3, seed=seed), tie_table(n_vocab, rows=3, seed=seed)):
            assert c_generate(lib, p, table, [0], 60) == ref.generate(p, table, [0], 60), (p, n_vocab)


def test_stepwise_calls_match_the_reference(lib, ref):
    # The engine's way: one el_sample per step, the RNG kept by the caller.
    p = {**DEFAULTS, "temperature": 0.9, "top_p": 0.9, "frequency_penalty": 0.3, "seed": 77}
    table, prompt = logit_table(512, seed=9), [1, 2, 3]
    assert c_init(lib, 512)[0] == EL_OK
    rng, output = Rng(), []
    lib.el_rng_seed(ctypes.byref(rng), 77)
    for s in range(100):
        logits = table[(s + (output[-1] if output else prompt[-1])) % len(table)].copy()
        out, pr = ints(output), ints(prompt)
        output.append(lib.probe_sample(ctypes.byref(params(**p)), ptr(logits, ctypes.c_float),
                                       ptr(pr, ctypes.c_int32), len(pr), ptr(out, ctypes.c_int32), len(out),
                                       ctypes.byref(rng)))
    assert output == ref.generate(p, table, prompt, 100)


def test_seeded_runs_repeat_and_seeds_differ(lib):
    table = logit_table(512, seed=3, scale=1.0)
    runs = {seed: c_generate(lib, {"seed": seed}, table, [1], 100) for seed in (7, 7, 8)}
    assert c_generate(lib, {"seed": 7}, table, [1], 100) == runs[7]
    assert runs[7] != runs[8]


def test_greedy_ignores_the_rng(lib):
    row = logit_table(512, rows=1, seed=4)[0]
    row[[10, 20]] = row.max() + 1  # a tie at the top: the lower index wins
    assert c_init(lib, 512)[0] == EL_OK
    for seed in range(5):
        rng = Rng()
        lib.el_rng_seed(ctypes.byref(rng), seed)
        before = (rng.state, rng.increment)
        logits = row.copy()
        token = lib.probe_sample(ctypes.byref(params(temperature=0.0)), ptr(logits, ctypes.c_float), None, 0, None, 0,
                                 ctypes.byref(rng))
        assert token == 10 and (rng.state, rng.increment) == before
    assert c_generate(lib, {"temperature": 1e-6, "seed": 1}, row[None, :], [], 5) == [10] * 5
    assert c_generate(lib, {"top_k": 1, "seed": 1}, row[None, :], [], 5) == [10] * 5  # top_k=1 is greedy


def test_non_finite_logits(lib):
    inf, nan = float("inf"), float("nan")
    pick = lambda logits, **p: c_generate(lib, p, np.array([logits], F32), [], 64)
    assert set(pick([0.0, inf, 5.0, inf])) == {1, 3}  # +inf tokens share the mass
    assert set(pick([-inf] * 4)) == {0, 1, 2, 3}       # nothing to prefer: uniform
    assert 1 not in pick([0.0, nan, 0.5, 0.1])         # NaN is never drawn
    assert pick([0.0, nan, 0.5, 0.1], temperature=0.0) == [2] * 64
    assert pick([nan] * 3) == [0] * 64


# ---------------------------------------------------------------- speculative sampling's rule

def chi_square_bound(df: int, z: float = 3.09) -> float:
    """The chi-square statistic a fit passes below at about the 0.1% level (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def speculate(lib, p, q, trials, seed):
    p, q = np.asarray(p, np.uint32), np.asarray(q, np.uint32)
    counts, residual = np.zeros(len(p), np.int32), np.zeros(len(p), np.uint32)
    kept = lib.probe_speculate(ptr(p, ctypes.c_uint32), int(p.sum()), ptr(q, ctypes.c_uint32), int(q.sum()), len(p),
                               trials, seed, ptr(counts, ctypes.c_int32), ptr(residual, ctypes.c_uint32))
    return counts, kept


def _weights(rnd, n, zeros):
    w = [rnd.randint(1, 1 << 24) for _ in range(n)]
    for i in rnd.sample(range(n), zeros):
        w[i] = 0
    return w


PAIRS = {  # (p, q) as the sampler's integer weights
    "different": lambda rnd: (_weights(rnd, 12, 0), _weights(rnd, 12, 0)),
    "q misses tokens p has": lambda rnd: (_weights(rnd, 12, 0), _weights(rnd, 12, 5)),
    "p drops tokens q has (top-k)": lambda rnd: (_weights(rnd, 12, 7), _weights(rnd, 12, 0)),
    "the same": lambda rnd: (lambda w: (w, w))(_weights(rnd, 12, 2)),
    "a one-token proposal (n-grams)": lambda rnd: (_weights(rnd, 12, 0), [0] * 7 + [1] + [0] * 4),
    "greedy target": lambda rnd: ([0] * 3 + [1] + [0] * 8, _weights(rnd, 12, 0)),
}


@pytest.mark.parametrize("case", PAIRS)
def test_the_rejection_rule_keeps_the_target_distribution(lib, case):
    """Drafts drawn from q, kept or replaced by el_speculate_accept: what comes out is
    distributed as p (a chi-square fit), and drafts are kept at the rate sum(min(p, q))."""
    p, q = PAIRS[case](random.Random(case))
    trials = 200_000
    counts, kept = speculate(lib, p, q, trials, seed=7)
    target = np.asarray(p, float) / sum(p)
    support = target > 0
    assert counts[~support].sum() == 0  # never a token the target cannot draw
    expected = trials * target[support]
    statistic = float(((counts[support] - expected) ** 2 / expected).sum())
    assert statistic < chi_square_bound(max(1, support.sum() - 1)), (statistic, counts, expected)
    rate = np.minimum(target, np.asarray(q, float) / sum(q)).sum()
    assert abs(kept / trials - rate) < 4 * (rate * (1 - rate) / trials) ** 0.5 + 1e-9, (kept / trials, rate)


# ---------------------------------------------------------------- the core's rules

@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_builds_clean_and_calls_no_libc(cc, tmp_path):
    cc = build.clang_compiler() if cc == "clang" else shutil.which(cc)
    assert cc is not None and shutil.which("nm") is not None  # scripts/setup.sh test installs clang-19
    obj = tmp_path / "el_sampler.o"
    subprocess.run([cc, *C_FLAGS, "-c", str(CORE / "el_sampler.c"), "-o", str(obj)], check=True)
    undefined = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split()
    assert [name for name in undefined if name != "U" and not name.startswith("el_")] == []
