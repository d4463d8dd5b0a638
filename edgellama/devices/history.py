"""The local bench history: every `edgellama bench` run, in one SQLite file, so boards,
models and quant types can be compared over time (`edgellama bench report`).

The file is $EDGELLAMA_HOME/bench.sqlite (default ~/.local/share/edgellama/bench.sqlite),
written with the standard library's sqlite3. One table, one row per run:

    CREATE TABLE runs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        timestamp        TEXT NOT NULL,     -- ISO 8601, UTC, seconds
        board            TEXT NOT NULL,     -- board name, or "local"
        transport        TEXT NOT NULL,     -- local, serial, emulated, ssh, ...
        model_name       TEXT NOT NULL,     -- general.name of the GGUF file (else its stem)
        model_sha256     TEXT,              -- of the model file
        quant            TEXT,              -- f32, f16, q8_0, q4_0 (general.file_type)
        runtime_version  TEXT,
        prompt_tokens    INTEGER NOT NULL,  -- p
        gen_tokens       INTEGER NOT NULL,  -- n
        repetitions      INTEGER NOT NULL,  -- r
        warmup           INTEGER NOT NULL,
        pp_tps REAL, pp_tps_sd REAL,        -- prefill tokens/s, device clock: mean, sd
        tg_tps REAL, tg_tps_sd REAL,        -- decode tokens/s, device clock
        ttft_s REAL, tpot_s REAL,           -- means, seconds
        itl_p50_s REAL, itl_p99_s REAL,     -- inter-token latency percentiles, seconds
        e2e_s REAL, e2e_tps REAL,           -- host wall time per call; (p + n) / e2e_s
        arena_high_water INTEGER, rss_bytes INTEGER, program_bytes INTEGER,
        model_bytes INTEGER, kv_blocks_used INTEGER,
        result_json      TEXT NOT NULL      -- the whole BenchResult.to_dict(), every value
    );

The columns are what reports filter and sort on; result_json keeps everything else (each
repetition's values, the device's info), so nothing measured is lost when reports change.
`schema_version` in PRAGMA user_version is 1.
"""

import json
import os
import sqlite3
from pathlib import Path

from edgellama.devices.bench import BenchResult
from edgellama.errors import EdgeLlamaError

SCHEMA_VERSION = 1
SUMMARY_COLUMNS = ["pp_tps", "tg_tps", "ttft_s", "tpot_s", "itl_p50_s", "itl_p99_s", "e2e_s", "e2e_tps"]
SCALAR_COLUMNS = ["timestamp", "board", "transport", "model_name", "model_sha256", "quant", "runtime_version",
                  "prompt_tokens", "gen_tokens", "repetitions", "warmup", "arena_high_water", "rss_bytes",
                  "program_bytes", "model_bytes", "kv_blocks_used"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL, board TEXT NOT NULL, transport TEXT NOT NULL, model_name TEXT NOT NULL,
    model_sha256 TEXT, quant TEXT, runtime_version TEXT,
    prompt_tokens INTEGER NOT NULL, gen_tokens INTEGER NOT NULL, repetitions INTEGER NOT NULL,
    warmup INTEGER NOT NULL,
    pp_tps REAL, pp_tps_sd REAL, tg_tps REAL, tg_tps_sd REAL, ttft_s REAL, tpot_s REAL,
    itl_p50_s REAL, itl_p99_s REAL, e2e_s REAL, e2e_tps REAL,
    arena_high_water INTEGER, rss_bytes INTEGER, program_bytes INTEGER, model_bytes INTEGER,
    kv_blocks_used INTEGER,
    result_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_board_model ON runs (board, model_name, quant, timestamp);
"""


def home() -> Path:
    return Path(os.environ.get("EDGELLAMA_HOME") or Path.home() / ".local" / "share" / "edgellama")


def db_path() -> Path:
    return home() / "bench.sqlite"


def connect(path=None) -> sqlite3.Connection:
    path = Path(path) if path else db_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path)
        conn.row_factory = sqlite3.Row
        conn.executescript(SCHEMA)
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return conn
    except (OSError, sqlite3.Error) as e:
        raise EdgeLlamaError(f"{path}: cannot open the bench history ({e})") from None


def record(result: BenchResult, path=None) -> int:
    """Append one run; returns its id."""
    values = {c: getattr(result, c) for c in SCALAR_COLUMNS}
    for key in SUMMARY_COLUMNS:
        s = result.figures.get(key)
        values[key] = s.mean if s else None
    for key in ("pp_tps", "tg_tps"):
        s = result.figures.get(key)
        values[f"{key}_sd"] = s.sd if s else None
    values["result_json"] = json.dumps(result.to_dict())
    columns = list(values)
    conn = connect(path)
    try:
        with conn:
            cur = conn.execute(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                               [values[c] for c in columns])
        return cur.lastrowid
    finally:
        conn.close()


def query(board: str | None = None, model: str | None = None, quant: str | None = None, path=None) -> list:
    """Runs as dicts (oldest first). `model` matches the model name, a prefix of its sha256
    (at least 8 hex digits), or a model file (by its sha256)."""
    where, args = [], []
    if board:
        where.append("board = ?")
        args.append(board)
    if model:
        clauses, margs = ["model_name = ?"], [model]
        if len(model) >= 8 and all(c in "0123456789abcdef" for c in model.lower()):
            clauses.append("model_sha256 LIKE ?")
            margs.append(model.lower() + "%")
        if Path(model).is_file():
            from edgellama.fileio import sha256_file
            clauses.append("model_sha256 = ?")
            margs.append(sha256_file(model))
        where.append("(" + " OR ".join(clauses) + ")")
        args += margs
    if quant:
        where.append("quant = ?")
        args.append(quant)
    sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY timestamp, id"
    conn = connect(path)
    try:
        return [dict(row) for row in conn.execute(sql, args)]
    finally:
        conn.close()


# ---------------------------------------------------------------------- reports

def _key(row) -> tuple:
    return (row["board"], row["model_name"], row["quant"] or "?", f"pp{row['prompt_tokens']}/tg{row['gen_tokens']}")


def report_table(rows: list) -> str:
    """Boards x models x quant types x test sizes: runs, latest and best tokens/s, first/last date."""
    if not rows:
        return "no bench runs recorded (run `edgellama bench` first)"
    groups = {}
    for row in rows:
        groups.setdefault(_key(row), []).append(row)

    def num(x, fmt="{:.1f}"):
        return "n/a" if x is None else fmt.format(x)

    header = ("board", "model", "quant", "test", "runs", "pp t/s (latest)", "tg t/s (latest)", "tg t/s (best)",
              "ttft ms", "arena high-water", "first", "last")
    table = [header]
    for key in sorted(groups):
        g = groups[key]
        last = g[-1]
        tg_values = [r["tg_tps"] for r in g if r["tg_tps"] is not None]
        pp = num(last["pp_tps"]) + ("" if last["pp_tps_sd"] is None else f" ± {last['pp_tps_sd']:.1f}")
        tg = num(last["tg_tps"]) + ("" if last["tg_tps_sd"] is None else f" ± {last['tg_tps_sd']:.1f}")
        table.append((*key, str(len(g)), pp, tg, num(max(tg_values) if tg_values else None),
                      num(None if last["ttft_s"] is None else last["ttft_s"] * 1e3, "{:.2f}"),
                      num(last["arena_high_water"], "{:,}"), g[0]["timestamp"][:16], last["timestamp"][:16]))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    numeric = set(range(4, 10))
    lines = []
    for j, row in enumerate(table):
        lines.append("| " + " | ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                                        for i, (c, w) in enumerate(zip(row, widths))) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 1) + ":" if i in numeric else "-" * (w + 2)
                                        for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def _series(rows: list) -> dict:
    """{label: [(time, row), ...]}: one series per board / model / quant / test size."""
    import datetime
    groups = {}
    for row in rows:
        groups.setdefault(" / ".join(_key(row)), []).append((datetime.datetime.fromisoformat(row["timestamp"]), row))
    return dict(sorted(groups.items()))


def _draw(ax, when_rows: list, column: str, label: str):
    """One series of tokens/s with its sd as error bars, kept above zero for the log axis."""
    points = [(t, r[column], r[f"{column}_sd"] or 0.0) for t, r in when_rows if r[column] and r[column] > 0]
    if not points:
        return
    values = [v for _, v, _ in points]
    below = [min(sd, v * 0.9) for _, v, sd in points]  # a log axis cannot go to or below zero
    above = [sd for _, _, sd in points]
    ax.errorbar([t for t, _, _ in points], values, yerr=[below, above], marker="o", capsize=3, label=label)


def figure(rows: list):
    """The report's matplotlib figure: prefill and decode tokens/s per run, on log axes
    (a 75 tokens/s board and a 5,000 tokens/s host both stay readable), x = run date."""
    if not rows:
        raise EdgeLlamaError("no bench runs recorded to plot (run `edgellama bench` first)")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeLlamaError("--png needs matplotlib (pip install 'edgellama[report]')") from None
    series = _series(rows)
    fig, axes = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    for label, when_rows in series.items():
        for ax, column in zip(axes, ("pp_tps", "tg_tps")):
            _draw(ax, when_rows, column, label)
    for ax, what in zip(axes, ("prefill", "decode")):
        ax.set_yscale("log")
        ax.set_ylabel(f"{what} tokens/s (log scale)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("edgellama bench history (one line per board / model / quant / test)")
    axes[1].set_xlabel("run date (UTC)")
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="board / model / quant / test",
                   title_fontsize=8)
    locator = mdates.AutoDateLocator()
    axes[1].xaxis.set_major_locator(locator)
    axes[1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    fig.tight_layout()
    return fig


def plot(rows: list, out_png) -> Path:
    """Write the report's figure (see `figure`) as a PNG."""
    from edgellama.fileio import atomic_path

    fig = figure(rows)  # first: it says so in one line when matplotlib is missing
    import matplotlib.pyplot as plt
    out_png = Path(out_png)
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    except OSError as e:
        raise EdgeLlamaError(f"{out_png}: cannot write ({e.strerror})") from None
    finally:
        plt.close(fig)
    return out_png
