"""The libFuzzer harnesses (tests/fuzz/fuzz_*.c): building them, their seed inputs (real
files and frames), running them, and replaying the inputs kept under regressions/.

    python tests/fuzz/harnesses.py NAME SECONDS [WORKDIR]   (scripts/fuzz.sh wraps this)

With FUZZ_RUNS=N in the environment a run also stops after N executions (whichever
comes first), so a long run can be sized in executions rather than seconds.

A run prints libFuzzer's own figures (executions, coverage, executions per second); an
input that crashes, hangs or trips a sanitizer is written to WORKDIR and the run fails:
copy it into regressions/NAME/ so every later test run replays it.
"""

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from edgellama.devices import protocol as P  # noqa: E402
from edgellama.runtime import build  # noqa: E402
from edgellama.runtime.sampling_params import SamplingParams  # noqa: E402

MODEL = REPO / "edgellama" / "models" / "tinystories-850k.gguf"
HARNESSES = ("model", "tokenizer", "frames", "serve")
# serve: 1 KiB holds a session of a dozen frames; longer inputs only add requests that
# generate to the context's end, and slowed the harness from 2,800 to 350 inputs/s.
MAX_LEN = {"model": 160 * 1024, "tokenizer": 4096, "frames": 4096, "serve": 1024}


# The serve loop's harness runs a model small enough that an input costs the loop's own
# work, not forward passes (about 60 inputs a second on the real model under the
# sanitizers): the real model's vocabulary, so prompts tokenize as on a device, in a
# one-layer shape of random weights. Grouped-query heads, as in the real model.
SERVE_SHAPE = dict(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=64)


@functools.lru_cache(maxsize=None)
def serve_model() -> Path:
    """The serve harness's model, made once a process and written once into the cache
    (named by its bytes)."""
    from edgellama.fileio import atomic_path
    from edgellama.model.data import cache_root
    from edgellama.model.gguf_file import write_gguf
    from edgellama.model.llama import LlamaConfig, LlamaModel
    from edgellama.model.loading import load_model
    from edgellama.model.synthetic import synthetic_model
    real = load_model(MODEL)
    shape = LlamaConfig(**{**real.config.to_dict(), **SERVE_SHAPE})
    tensors = synthetic_model("tiny", **shape.to_dict()).tensors
    model = LlamaModel(shape, real.vocab, tensors, name="fuzz-serve").validate()
    with tempfile.TemporaryDirectory() as tmp:
        write_gguf(model, Path(tmp) / "m.gguf")
        data = (Path(tmp) / "m.gguf").read_bytes()
    path = cache_root() / "fuzz" / f"serve-model-{hashlib.sha256(data).hexdigest()[:16]}.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
    return path


def binary(name: str) -> Path:
    """The harness built with clang, libFuzzer and the sanitizers (cached like the runtime)."""
    model = serve_model() if name == "serve" else MODEL
    return build.build_fuzzer(HERE / f"fuzz_{name}.c", f"fuzz-{name}", defines=[f'-DEL_FUZZ_MODEL="{model}"'],
                              include_dirs=[HERE], coverage_ignore=HERE / "coverage_ignore.txt")


def _frames() -> list:
    from edgellama.runtime.structured import StructuredOutputsParams
    greedy = SamplingParams(temperature=0.0, max_tokens=4)
    forked = SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=4, logprobs=3)
    constrained = SamplingParams(temperature=1.0, seed=1, max_tokens=4,
                                 structured_outputs=StructuredOutputsParams(regex=r"(yes|no) [a-z]{1,3}"))
    upload = b"".join(P.encode(P.CONSTRAINT, chunk) for chunk in P.constraint_chunks(constrained.constraint))
    blob = bytes(range(40))  # a model upload that goes through (the SHA-256 holds) and does not open
    model = (P.encode(P.MODEL_BEGIN, f"size={len(blob)}\nsha256={hashlib.sha256(blob).hexdigest()}\n".encode())
             + P.encode(P.MODEL_CHUNK, (0).to_bytes(4, "little") + blob[:25])
             + P.encode(P.MODEL_CHUNK, (25).to_bytes(4, "little") + blob[25:]) + P.encode(P.MODEL_COMMIT)
             + P.encode(P.MODEL_ROLLBACK))
    return [P.encode(P.HELLO), P.encode(P.PING, b"ping"), P.encode(P.STATS), P.encode(P.RESET),
            P.encode(P.GENERATE, P.generate_payload("once upon a time", greedy)),
            P.encode(P.GENERATE, P.generate_payload("the dog", forked)),
            P.encode(P.GENERATE, P.generate_payload("hi", greedy, chat=True)),
            upload + P.encode(P.GENERATE, P.generate_payload("is it", constrained)),
            P.encode(P.BENCH, P.bench_payload(8, 4)), P.encode(P.CANCEL), model]


def write_seeds(name: str, folder: Path) -> Path:
    """Real inputs for the harness: a small model file, story text, protocol frames."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "model":
        from edgellama.model.synthetic import write_synthetic
        for quant in ("f32", "q8_0", "q4_0"):
            write_synthetic(folder / f"tiny-{quant}.gguf", "tiny", quant, vocab_size=260)
    elif name == "tokenizer":
        for i, text in enumerate(["once upon a time, there was a little girl named lily.", "hello  world\n\t!",
                                  "caf\u00e9 \u2581 <s> </s> \u00ff\u00fe", "a" * 300]):
            (folder / f"text{i}").write_text(text, encoding="utf-8")
    elif name == "frames":
        for i, frame in enumerate(_frames()):
            (folder / f"frame{i}").write_bytes(b"noise" + frame)
    else:
        frames = _frames()
        for i, frame in enumerate(frames):
            (folder / f"session{i}").write_bytes(frames[0] + frame + frames[1])
        (folder / "all").write_bytes(b"".join(frames))
    return folder


def run(name: str, seconds: int, workdir: Path, runs: int = 0) -> dict:
    """Fuzz for `seconds` (and at most `runs` executions when that is not 0); returns
    libFuzzer's figures. A finding raises RuntimeError."""
    program = binary(name)
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = write_seeds(name, workdir / "seeds")
    argv = [str(program), f"-max_total_time={seconds}", f"-max_len={MAX_LEN[name]}", "-timeout=20",
            "-rss_limit_mb=4096", "-print_final_stats=1", f"-artifact_prefix={workdir}/", str(corpus), str(seeds)]
    if runs:
        argv.insert(1, f"-runs={runs}")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 300)
    figures = figures_of(result.stderr)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-40:])
        raise RuntimeError(f"fuzz_{name}: finding after {figures.get('runs')} runs (inputs in {workdir}):\n{tail}")
    return figures


def figures_of(log: str) -> dict:
    """runs, exec/s, coverage and corpus size from libFuzzer's final lines."""
    found = {}
    for key, pattern in (("runs", r"stat::number_of_executed_units:\s*(\d+)"),
                         ("exec_per_s", r"stat::average_exec_per_sec:\s*(\d+)"),
                         ("peak_rss_mb", r"stat::peak_rss_mb:\s*(\d+)"),
                         ("coverage", r"cov: (\d+)"), ("corpus", r"corp: (\d+)")):
        values = re.findall(pattern, log)
        if values:
            found[key] = int(values[-1])
    return found


def replay(name: str) -> int:
    """Run every kept input of regressions/NAME once; returns how many there were."""
    inputs = sorted(p for p in (HERE / "regressions" / name).glob("*") if p.is_file() and p.name != "README.md")
    if inputs:
        result = subprocess.run([str(binary(name)), *map(str, inputs)], capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"fuzz_{name}: a kept input fails again:\n{result.stderr[-3000:]}")
    return len(inputs)


def main(argv):
    if len(argv) < 3 or argv[1] not in HARNESSES:
        sys.exit(f"usage: {argv[0]} {{{'|'.join(HARNESSES)}}} SECONDS [WORKDIR]")
    workdir = Path(argv[3]) if len(argv) > 3 else Path(tempfile.mkdtemp(prefix=f"fuzz-{argv[1]}-"))
    try:
        figures = run(argv[1], int(argv[2]), workdir, int(os.environ.get("FUZZ_RUNS", "0")))
    except RuntimeError as e:
        sys.exit(str(e))
    print(f"fuzz_{argv[1]}: {figures} (work: {workdir})")
    if len(argv) <= 3:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv)
