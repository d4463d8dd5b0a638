"""edgellama bench: statistics, the local device's bench_once, outputs, history, report."""

import csv
import io
import json
import math
import sqlite3
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgellama.cli import main
from edgellama.devices import bench, history
from edgellama.devices.device import LocalDevice
from edgellama.errors import EdgeLlamaError
from edgellama.resources import DEFAULT_MODEL

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELLAMA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def device():
    with LocalDevice() as dev:
        yield dev


# ---------------------------------------------------------------------- statistics

def test_mean_sd_percentiles_on_fixed_numbers():
    values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
    assert bench.mean(values) == 5.0
    assert bench.stdev(values) == pytest.approx(math.sqrt(32 / 7))  # sample sd, n - 1
    assert bench.stdev([3.0]) == 0.0
    assert bench.percentile([1, 2, 3, 4, 5], 50) == 3
    assert bench.percentile([1, 2, 3, 4], 50) == 2.5
    assert bench.percentile(list(range(1, 101)), 99) == pytest.approx(99.01)  # numpy's "linear"
    assert bench.percentile([7.0], 99) == 7.0
    assert bench.percentile([5, 1, 3], 0) == 1 and bench.percentile([5, 1, 3], 100) == 5
    with pytest.raises(ValueError):
        bench.mean([])
    with pytest.raises(ValueError):
        bench.percentile([1], 101)


def test_summary_of_fixed_measurements():
    # p=10, n=4; token arrival times on the device clock, and the host's wall times
    m1 = {"prefill_s": 0.1, "ttft_s": 0.1, "token_times_s": [0.1, 0.2, 0.3, 0.4]}
    m2 = {"prefill_s": 0.2, "ttft_s": 0.2, "token_times_s": [0.2, 0.3, 0.5, 0.8]}
    f = bench.summarize_run(10, 4, [m1, m2], [0.5, 1.0])
    assert f["pp_tps"].values == pytest.approx([100.0, 50.0])
    assert f["pp_tps"].mean == pytest.approx(75.0)
    assert f["pp_tps"].sd == pytest.approx(math.sqrt(2 * 25.0 ** 2))
    assert f["tg_tps"].values == pytest.approx([3 / 0.3, 3 / 0.6])
    assert f["tpot_s"].values == pytest.approx([0.1, 0.2])
    assert f["ttft_s"].mean == pytest.approx(0.15)
    gaps = [0.1, 0.1, 0.1, 0.1, 0.2, 0.3]
    assert f["itl_p50_s"].mean == pytest.approx(bench.percentile(gaps, 50)) == pytest.approx(0.1)
    assert f["itl_p99_s"].mean == pytest.approx(bench.percentile(gaps, 99))
    assert f["e2e_s"].values == [0.5, 1.0]
    assert f["e2e_tps"].values == pytest.approx([28.0, 14.0])
    assert f["link_overhead_s"].values == pytest.approx([0.1, 0.2])
    with pytest.raises(EdgeLlamaError, match="token times"):
        bench.summarize_run(10, 5, [m1], [0.5])


# ---------------------------------------------------------------------- the local device

def test_bench_once_local(device):
    m = device.bench_once(16, 8)
    assert set(m) >= {"prefill_s", "ttft_s", "token_times_s", "arena_high_water", "kv_blocks_used", "rss_bytes"}
    times = m["token_times_s"]
    assert len(times) == 8 and times == sorted(times) and times[0] > 0
    assert m["ttft_s"] == times[0] and m["prefill_s"] > 0
    assert m["kv_blocks_used"] == 2  # 24 tokens in blocks of 16
    assert m["arena_high_water"] > 0 and m["rss_bytes"] > 1 << 20
    # every call's prompt is new: nothing comes from the prefix cache
    hits = device.stats()["prefix_hits"]
    device.bench_once(16, 2)
    assert device.stats()["prefix_hits"] == hits


def test_run_structure(device):
    result = bench.run(device, prompt_tokens=16, gen_tokens=8, repetitions=3, warmup=1)
    assert result.board == "local" and result.transport == "local"
    assert result.model_name == "tinystories-850k" and result.quant == "f32"
    assert len(result.model_sha256) == 64 and result.model_bytes == DEFAULT_MODEL.stat().st_size
    assert result.program_bytes > 0 and result.kv_blocks_used == 2 and result.runtime_version
    for key, *_ in bench.FIGURES:
        s = result.figures[key]
        assert len(s.values) == 3 and s.mean > 0 and s.sd >= 0
        assert s.mean == pytest.approx(bench.mean(s.values)) or key.startswith("itl")
    # the host's wall time covers the device's own
    assert result.figures["e2e_s"].mean >= result.figures["ttft_s"].mean
    d = json.loads(bench.format_json(result))
    assert bench.BenchResult.from_dict(d) == result
    table = bench.format_table(result)
    assert "pp16" in table and "tg8" in table and "KV blocks used" in table
    for bad in ({"repetitions": 0}, {"prompt_tokens": 0}, {"warmup": -1}, {"prompt_tokens": 505, "gen_tokens": 10}):
        with pytest.raises(EdgeLlamaError):
            bench.run(device, **{"prompt_tokens": 4, "gen_tokens": 4, "repetitions": 1, "warmup": 0, **bad})


# ---------------------------------------------------------------------- command line, history, report

def test_cli_outputs_history_and_report(home, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["bench", "-p", "8", "-n", "4", "-r", "2", "--output", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["prompt_tokens"] == 8 and d["figures"]["tg_tps"]["mean"] > 0
    r = runner.invoke(main, ["bench", "--local", "-p", "8", "-n", "4", "-r", "2", "--warmup", "0",
                             "--output", "csv"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 1 and float(rows[0]["pp_tps_mean"]) > 0 and rows[0]["quant"] == "f32"
    r = runner.invoke(main, ["bench", "-p", "8", "-n", "4", "-r", "2"])
    assert r.exit_code == 0 and "| pp8 " in r.stdout and "tg4" in r.stdout
    r = runner.invoke(main, ["bench", "-p", "8", "-n", "4", "-r", "1", "--no-history"])
    assert r.exit_code == 0

    db = home / "bench.sqlite"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT board, transport, model_name, quant, prompt_tokens, tg_tps, result_json "
                            "FROM runs").fetchall()
    assert len(rows) == 3  # --no-history left no row
    assert all(row[:5] == ("local", "local", "tinystories-850k", "f32", 8) and row[5] > 0 for row in rows)
    assert json.loads(rows[0][6])["gen_tokens"] == 4
    assert len(history.query(board="local", model="tinystories-850k", quant="f32")) == 3
    assert history.query(board="rpi4") == []
    sha = json.loads(rows[0][6])["model_sha256"]
    assert len(history.query(model=sha[:12])) == 3

    png = tmp_path / "report.png"
    r = runner.invoke(main, ["bench", "report", "--board", "local", "--png", str(png)])
    assert r.exit_code == 0, r.output
    assert "tinystories-850k" in r.stdout and "pp8/tg4" in r.stdout and "| runs |" in r.stdout.replace("  ", "")
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    r = runner.invoke(main, ["bench", "report", "--model", "no-such-model"])
    assert r.exit_code == 0 and "no bench runs" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["-r", "0"], "-r must be at least 1"),
    (["-p", "0"], "-p must be at least 1"),
    (["--warmup", "-1"], "--warmup must be at least 0"),
    (["--board", "no-such-board"], "unknown board 'no-such-board'"),
    (["--board", "rpi4", "--local"], "--local runs the model on this machine; it takes no --board"),
    (["--model", "/no/such/model.gguf"], "no such model file"),
    (["-p", "450", "-n", "100"], "exceed the model's context"),
    (["report", "--png", "/proc/no/such/dir/x.png"], "cannot"),
])
def test_bad_input_one_line(home, args, message):
    if args[0] == "report":  # the plot needs one recorded run
        with LocalDevice() as dev:
            history.record(bench.run(dev, 4, 2, 1, 0))
    r = CliRunner().invoke(main, ["bench", *args])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


def test_report_with_no_history(home):
    r = CliRunner().invoke(main, ["bench", "report"])
    assert r.exit_code == 0 and "no bench runs recorded" in r.stdout
    assert Path(home, "bench.sqlite").is_file()
