"""Benchmarks in llama-bench's spirit: prefill (ppN) and decode (tgN) tokens/s on any device.

    from edgellama.devices import bench
    from edgellama.devices.opener import open_device
    with open_device(local=True) as dev:
        result = bench.run(dev, prompt_tokens=64, gen_tokens=128, repetitions=5, warmup=1)
    print(bench.format_table(result))

Each repetition is one `device.bench_once(p, n)` call: a prompt of exactly p tokens, then
n greedy tokens with EOS ignored. The device reports times on its own clock (prefill,
time to first token, the arrival time of every token); the host also times the whole
call (end to end, over the link). From those, per repetition:

    pp  = p / prefill_s                             prefill tokens/s (device clock)
    tg  = (n - 1) / (t[n-1] - t[0])                 decode tokens/s (device clock; the first
                                                    token belongs to prefill)
    tpot = (t[n-1] - t[0]) / (n - 1)                time per output token
    itl  = t[i] - t[i-1]                            inter-token latencies, pooled over all
                                                    repetitions for P50 and P99
    e2e  = wall time of the call on the host; e2e tokens/s = (p + n) / e2e

Figures are mean and sample standard deviation (n - 1) over the R measured repetitions;
the warm-up calls are run and thrown away. Percentiles interpolate linearly between
order statistics (numpy's default, "linear").

Sizes: the model file's bytes; the program's bytes from the build manifest when the
device reports a built board's directory (info()["build_dir"] or "program_bytes"),
otherwise the host runtime library that LocalDevice runs.
"""

import csv
import datetime
import io
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgellama.errors import EdgeLlamaError
from edgellama.fileio import sha256_file

# The text every bench prompt is cut from: the same bytes as el_bench_text in
# firmware/apps/common/el_bench_prompt.c, which a board's BENCH and `edgellama-run MODEL
# bench` both build their prompts with, so host and boards prefill the same tokens.
BENCH_TEXT = ("once upon a time, there was a little girl named lily. she loved to play outside in the park with her "
              "friends. one day, she saw a big red ball under a tree. she ran to the ball and picked it up. ")


def bench_prompt(tokenizer, prompt_tokens: int, call: int) -> list:
    """The token ids of bench call number `call` (1, 2, ...): BOS, then BENCH_TEXT's tokens
    from an offset that moves by one each call, wrapping around, so no call shares a
    prefix with the one before (the KV cache's prefix reuse would flatter prefill).
    The mirror of el_bench_prompt (firmware/apps/common/el_bench_prompt.c): a board's
    BENCH and the POSIX `bench` (whose repetition i is call i + 1) build the same ids."""
    text = tokenizer.encode(BENCH_TEXT, add_bos=False)
    bos = tokenizer.encode("", add_bos=True)[:1]
    if not text or not bos:
        raise EdgeLlamaError("bench: the model's tokenizer cannot encode the bench text")
    return bos + [text[(i + call) % len(text)] for i in range(prompt_tokens - 1)]


# (key, label, unit, scale) of the summarised figures, in table order
FIGURES = [
    ("pp_tps", "pp{p}", "t/s", 1.0),
    ("tg_tps", "tg{n}", "t/s", 1.0),
    ("ttft_s", "time to first token", "ms", 1e3),
    ("tpot_s", "time per output token", "ms", 1e3),
    ("itl_p50_s", "inter-token latency P50", "ms", 1e3),
    ("itl_p99_s", "inter-token latency P99", "ms", 1e3),
    ("e2e_s", "end to end (host)", "ms", 1e3),
    ("e2e_tps", "end to end (p+n)/s (host)", "t/s", 1.0),
    ("link_overhead_s", "link overhead (host - device)", "ms", 1e3),
]


# ---------------------------------------------------------------------- statistics

def mean(values) -> float:
    values = list(values)
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def stdev(values) -> float:
    """Sample standard deviation (n - 1); 0.0 for a single value."""
    values = list(values)
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between order statistics."""
    values = sorted(values)
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    pos = (len(values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


@dataclass
class Summary:
    mean: float
    sd: float
    values: list = field(default_factory=list)

    @classmethod
    def of(cls, values):
        values = [float(v) for v in values]
        return cls(mean(values), stdev(values), values)


def summarize_run(p: int, n: int, measurements: list, walls: list) -> dict:
    """The figures of FIGURES (as Summary) from bench_once dicts and host wall times."""
    pp, tg, ttft, tpot, e2e, e2e_tps, overhead, itl, itl_p50, itl_p99 = ([] for _ in range(10))
    for m, wall in zip(measurements, walls):
        times = list(m.get("token_times_s") or [])
        if len(times) != n:
            raise EdgeLlamaError(f"bench: the device returned {len(times)} token times for {n} generated tokens")
        prefill = m.get("prefill_s") if m.get("prefill_s") is not None else times[0]
        first = m.get("ttft_s") if m.get("ttft_s") is not None else times[0]
        pp.append(p / prefill if prefill > 0 else math.inf)
        ttft.append(first)
        if n > 1:
            decode = times[-1] - times[0]
            tg.append((n - 1) / decode if decode > 0 else math.inf)
            tpot.append(decode / (n - 1))
            gaps = [b - a for a, b in itertools.pairwise(times)]
            itl.extend(gaps)
            itl_p50.append(percentile(gaps, 50))
            itl_p99.append(percentile(gaps, 99))
        e2e.append(wall)
        e2e_tps.append((p + n) / wall if wall > 0 else math.inf)
        overhead.append(max(wall - times[-1], 0.0))
    out = {"pp_tps": Summary.of(pp), "ttft_s": Summary.of(ttft), "e2e_s": Summary.of(e2e),
           "e2e_tps": Summary.of(e2e_tps), "link_overhead_s": Summary.of(overhead)}
    if n > 1:
        out["tg_tps"] = Summary.of(tg)
        out["tpot_s"] = Summary.of(tpot)
        # P50/P99 over every inter-token gap of every repetition; sd across repetitions
        out["itl_p50_s"] = Summary(percentile(itl, 50), stdev(itl_p50), itl_p50)
        out["itl_p99_s"] = Summary(percentile(itl, 99), stdev(itl_p99), itl_p99)
    return out


# ---------------------------------------------------------------------- the run

@dataclass
class BenchResult:
    timestamp: str
    board: str
    transport: str
    model_name: str
    model_path: str | None
    model_sha256: str | None
    quant: str | None
    runtime_version: str | None
    prompt_tokens: int
    gen_tokens: int
    repetitions: int
    warmup: int
    figures: dict                  # key -> Summary
    arena_high_water: int | None
    rss_bytes: int | None
    program_bytes: int | None
    model_bytes: int | None
    kv_blocks_used: int | None
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["figures"] = {k: {"mean": s.mean, "sd": s.sd, "values": s.values} for k, s in self.figures.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BenchResult":
        d = dict(d)
        d["figures"] = {k: Summary(v["mean"], v["sd"], list(v.get("values") or [])) for k, v in d["figures"].items()}
        return cls(**d)

    def flat(self) -> dict:
        """One flat row (for CSV): scalars, then <figure>_mean and <figure>_sd."""
        row = {k: v for k, v in asdict(self).items() if k not in ("figures", "info")}
        for key, *_ in FIGURES:
            s = self.figures.get(key)
            row[f"{key}_mean"] = s.mean if s else None
            row[f"{key}_sd"] = s.sd if s else None
        return row


def gguf_quant(path) -> str | None:
    """The quant type a GGUF file declares, as edgellama names it (None when unknown)."""
    from edgellama.model.gguf_file import read_identity
    return read_identity(path)[1]


def _gguf_name(path) -> str | None:
    from edgellama.model.gguf_file import read_identity
    return read_identity(path)[0]


def program_bytes(info: dict) -> int | None:
    """The program's size: the device's own figure, a build manifest's artifacts (the
    model file excluded), or the host runtime library for the local device."""
    if info.get("program_bytes") is not None:
        return int(info["program_bytes"])
    build_dir = info.get("build_dir")
    if build_dir:
        manifest = Path(build_dir) / "manifest.json"
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            model_file = (data.get("model") or {}).get("file")
            sizes = [a["bytes"] for a in data.get("artifacts", []) if a.get("path") != model_file]
            return sum(sizes) if sizes else None
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if info.get("transport") == "local":
        from edgellama.runtime.capi import library
        return Path(library()._name).stat().st_size
    return None


def run(device, prompt_tokens: int = 64, gen_tokens: int = 128, repetitions: int = 5, warmup: int = 1,
        model=None, progress=None) -> BenchResult:
    """Bench `device`: `warmup` discarded calls, then `repetitions` measured ones."""
    for name, value, least in (("-p/prompt_tokens", prompt_tokens, 1), ("-n/gen_tokens", gen_tokens, 1),
                               ("-r/repetitions", repetitions, 1), ("--warmup", warmup, 0)):
        if not isinstance(value, int) or value < least:
            raise EdgeLlamaError(f"bench: {name} must be an integer of at least {least}, got {value!r}")
    bench_once = getattr(device, "bench_once", None)
    if bench_once is None:
        raise EdgeLlamaError(f"bench: the {getattr(device, 'name', 'device')} device cannot run benchmarks")
    info = dict(device.info() or {})
    context = info.get("context_length")
    if context and prompt_tokens + gen_tokens > context:
        raise EdgeLlamaError(f"bench: {prompt_tokens} prompt + {gen_tokens} generated tokens exceed the model's "
                             f"context of {context}")
    measurements, walls = [], []
    for i in range(warmup + repetitions):
        start = time.perf_counter()
        m = bench_once(prompt_tokens, gen_tokens)
        wall = time.perf_counter() - start
        if i >= warmup:
            measurements.append(m)
            walls.append(wall)
        if progress:
            progress(i + 1, warmup + repetitions)
    figures = summarize_run(prompt_tokens, gen_tokens, measurements, walls)
    counters = device.stats() if hasattr(device, "stats") else {}
    if counters.get("draft_tokens"):  # speculative decoding: how many drafts the runs took
        info.update(draft_tokens=int(counters["draft_tokens"]), draft_accepted=int(counters["draft_accepted"]))

    def peak(key):
        values = [m.get(key) for m in measurements if m.get(key) is not None]
        return int(max(values)) if values else None

    path = model or info.get("model_path") or info.get("model")
    path = Path(path) if path and Path(path).is_file() else None
    if path is None and model is None and info.get("transport") == "local":
        from edgellama.model.loading import resolve
        path = resolve(None)
    name = info.get("model_name") or (_gguf_name(path) if path else None) or (path.stem if path else
                                                                                str(info.get("model") or "unknown"))
    return BenchResult(
        timestamp=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        board=str(info.get("board") or getattr(device, "name", None) or "local"),
        transport=str(info.get("transport") or getattr(device, "name", "unknown")),
        model_name=name, model_path=str(path) if path else None,
        model_sha256=info.get("model_sha256") or (sha256_file(path) if path else None),
        quant=info.get("quant") or (gguf_quant(path) if path else None),
        runtime_version=info.get("runtime_version"),
        prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repetitions=repetitions, warmup=warmup,
        figures=figures, arena_high_water=peak("arena_high_water"), rss_bytes=peak("rss_bytes"),
        program_bytes=program_bytes(info),
        model_bytes=info.get("model_bytes") or (path.stat().st_size if path else None),
        kv_blocks_used=peak("kv_blocks_used"),
        info={k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))},
    )


# ---------------------------------------------------------------------- output

def _bytes(n) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit} ({n:,} B)"
    return f"{n:,} B"


def _number(x: float, like: float | None = None) -> str:
    """x with 3 decimals below 100 and 1 above (decided by `like`, so sd matches its mean)."""
    if math.isinf(x) or math.isnan(x):
        return str(x)
    return f"{x:.3f}" if abs(x if like is None else like) < 100 else f"{x:.1f}"


def format_table(result: BenchResult) -> str:
    """A markdown table: one row per figure, mean ± sd, then sizes and memory."""
    r = result
    head = (f"model: {r.model_name} ({r.quant or '?'}, {_bytes(r.model_bytes)})  board: {r.board} "
            f"(transport {r.transport})  runtime {r.runtime_version or '?'}  "
            f"p={r.prompt_tokens} n={r.gen_tokens} r={r.repetitions} warmup={r.warmup}")
    rows = [("test", "clock", "value")]
    for key, label, unit, scale in FIGURES:
        s = r.figures.get(key)
        if s is None:
            continue
        clock = "host" if key.startswith(("e2e", "link")) else "device"
        rows.append((label.format(p=r.prompt_tokens, n=r.gen_tokens), clock,
                     f"{_number(s.mean * scale)} ± {_number(s.sd * scale, s.mean * scale)} {unit}"))
    rows += [("arena high-water", "", _bytes(r.arena_high_water)),
             ("RSS (max)", "", _bytes(r.rss_bytes)),
             ("program size", "", _bytes(r.program_bytes)),
             ("model size", "", _bytes(r.model_bytes)),
             ("KV blocks used", "", "n/a" if r.kv_blocks_used is None else str(r.kv_blocks_used))]
    if r.info.get("draft_tokens"):
        drafts, accepted = r.info["draft_tokens"], r.info["draft_accepted"]
        rows.append(("speculative drafts accepted", "", f"{accepted:,} of {drafts:,} ({100 * accepted / drafts:.0f}%)"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [head, ""]
    for j, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                                        enumerate(zip(row, widths))) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths[:2]) + "|" + "-" * (widths[2] + 1) + ":|")
    return "\n".join(lines)


def format_json(result: BenchResult) -> str:
    return json.dumps(result.to_dict(), indent=2)


def format_csv(results) -> str:
    results = [results] if isinstance(results, BenchResult) else list(results)
    rows = [r.flat() for r in results]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def format_result(result: BenchResult, output: str) -> str:
    formats = {"table": format_table, "json": format_json, "csv": format_csv}
    if output not in formats:
        raise EdgeLlamaError(f"--output: unknown format {output!r}; use one of {', '.join(formats)}")
    return formats[output](result)
