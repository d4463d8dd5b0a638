"""The same logits, bit for bit, whatever the kernels, the threads or the batch.

edgellama-run's `logits` mode prints an FNV-1a digest of the logits at every position
of a prompt (computed through the paged cache, up to max_batch_tokens rows per forward
pass, as many as there are sequences). Here it runs built with the portable kernels and with this machine's own vector
unit, with 1, 2 and 3 threads, one row or many per pass, on models whose shapes exercise
every path: each weight type, rows that are not a multiple of the vector width, grouped
heads, a ffn of 172 (stories260K's), int8 KV. Every digest must be the same.
(tests/test_kernels.py checks each kernel alone, on every target's vector unit.)
"""

import json
import subprocess

import pytest

from edgellama.model.synthetic import write_synthetic
from edgellama.runtime import build as runtime_build
from edgellama.runtime.capi import Runtime

PROMPT_TOKENS = 40


@pytest.fixture(scope="module")
def programs():
    native = runtime_build.host_program()
    portable = runtime_build.build_program(runtime_build.posix_program_sources(), "edgellama-run-portable",
                                           extra_flags=runtime_build.PORTABLE_FLAGS)
    return {"native": native, "portable": portable}


# (preset, overrides): odd sizes on purpose; vocab 300 rows is not a multiple of 8 or 16
SHAPES = {
    "tiny-odd": ("tiny", dict(vocab_size=300, hidden_dim=172, n_heads=4, n_kv_heads=2)),
    "260k": ("260k", dict(vocab_size=512)),
}


@pytest.fixture(scope="module", params=[(shape, quant) for shape in SHAPES for quant in ("f32", "f16", "q8_0", "q4_0")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def model(request, tmp_path_factory):
    shape, quant = request.param
    preset_name, overrides = SHAPES[shape]
    path = tmp_path_factory.mktemp("bitexact") / f"{shape}-{quant}.gguf"
    return write_synthetic(path, preset_name, quant, seed=3, **overrides)


def logits(program, model, *flags):
    out = subprocess.run([str(program), str(model), "logits", "--prompt-tokens", str(PROMPT_TOKENS), *flags],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_kernel_thread_count_and_batch_gives_the_same_bits(programs, model):
    reference = logits(programs["portable"], model, "--threads", "1", "--max-batch-tokens", "1")
    assert reference["kernels"] == "portable" and reference["positions"] == PROMPT_TOKENS
    runs = {}
    for name, program in programs.items():
        for threads in (1, 2, 3):
            for rows in (1, 7, 32):
                runs[name, threads, rows] = logits(program, model, "--threads", str(threads), "--max-batch-tokens",
                                                   str(rows), "--sequences", str(rows))
    differing = {k: v["logits_fnv1a64"] for k, v in runs.items() if v["logits_fnv1a64"] != reference["logits_fnv1a64"]}
    assert differing == {}, reference["logits_fnv1a64"]


def test_int8_kv_is_the_same_everywhere_too(programs, model):
    digests = {logits(program, model, "--kv-dtype", "int8", "--threads", str(threads), "--max-batch-tokens",
                      str(rows), "--sequences", str(rows))["logits_fnv1a64"]
               for program in programs.values() for threads in (1, 2) for rows in (1, 32)}
    assert len(digests) == 1


def test_the_python_runtime_with_threads_equals_one_thread(model):
    tokens = list(range(5, 5 + PROMPT_TOKENS))
    one = Runtime(model, max_seqs=8, threads=1).logits(tokens)
    for threads in (2, 3):
        assert one.tobytes() == Runtime(model, max_seqs=8, threads=threads).logits(tokens).tobytes()
