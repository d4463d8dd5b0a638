"""Rough edges a new user hit: messages that point at the next command, one-line errors,
readable chat stats, the bench prompt and report, and names spelled in one place."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgellama.cli import main
from edgellama.devices import bench
from edgellama.model import gguf_file

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgellama"
DEFAULT_MODEL = PACKAGE / "models" / "tinystories-850k.gguf"
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def one_error_line(result) -> str:
    """The single `error: ...` line a refused command printed (and that it exited 1)."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ---------------------------------------------------------------- README

def test_readme_intro_and_required_packages_are_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    intro = readme.split("\n## ", 1)[0]
    assert "come next" not in intro and "boards" in intro
    required = re.search(r"Only (.+?) are required", readme, re.S).group(1)
    assert "paramiko" in required and "pyserial" in required
    assert not re.search(r"\bI (chose|trained|picked)\b", readme)  # the model card is impersonal


# ---------------------------------------------------------------- messages that say what to do next

def test_no_message_says_flash_comes_later():
    offenders = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                 if p.name != "run.py" and "comes later" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_a_real_board_points_at_edgellama_flash():
    from edgellama.boards import emulator
    from edgellama.errors import EdgeLlamaError
    with pytest.raises(EdgeLlamaError, match=r"edgellama flash --board rpi4 --host USER@ADDR"):
        emulator._require_emulator(emulator.get_board("rpi4"))
    with pytest.raises(EdgeLlamaError, match=r"edgellama flash --board rpi-pico2 --port PORT"):
        emulator._require_emulator(emulator.get_board("rpi-pico2"))


def test_export_c_for_platformio_prints_pio_run(tmp_path):
    out = tmp_path / "pico2"
    r = CliRunner().invoke(main, ["export-c", "--board", "rpi-pico2", "--ctx", "128", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert f"build it with: pio run -d {out / 'src'}" in r.stdout
    assert "make -C" not in r.stdout
    assert (out / "src" / "platformio.ini").is_file() and not (out / "src" / "Makefile").exists()


def test_plan_that_does_not_fit_says_so_in_a_sentence():
    r = CliRunner().invoke(main, ["plan", "--board", "rpi-pico2"])
    assert r.exit_code == 0, r.output
    verdict = next(line for line in r.stdout.splitlines() if line.startswith("verdict"))
    assert re.search(r"the arena needs [\d,]+ bytes at ctx 512 but the board's arena holds only [\d,]+ bytes",
                     verdict), verdict


# ---------------------------------------------------------------- train, inspect: one clear line

def test_train_refuses_max_iters_below_warmup(tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "corpus.txt"), "--max-iters", "10",
                                  "--warmup-iters", "100", "-o", str(tmp_path / "ckpt.pt")])
    line = one_error_line(r)
    assert "--max-iters 10" in line and "--warmup-iters 100" in line
    assert not (tmp_path / "ckpt.pt").exists()


def damaged_copies(tmp_path) -> dict:
    """{what: path} of the default model cut short at several points, and one with an impossible count."""
    data = DEFAULT_MODEL.read_bytes()
    files = {}
    for cut in (10, 1000, 200_000, len(data) - 100):
        files[f"cut at {cut}"] = tmp_path / f"cut{cut}.gguf"
        files[f"cut at {cut}"].write_bytes(data[:cut])
    files["huge key count"] = tmp_path / "huge-count.gguf"
    files["huge key count"].write_bytes(data[:16] + (2 ** 63 - 1).to_bytes(8, "little") + data[24:])
    return files


def test_inspect_damaged_gguf_is_one_line_without_numpy(tmp_path):
    for what, path in damaged_copies(tmp_path).items():
        r = CliRunner().invoke(main, ["inspect", str(path)])
        line = one_error_line(r)
        assert str(path) in line, (what, line)
        assert "truncated" in line or "corrupt" in line, (what, line)
        for numpy_words in ("reshape", "dtype", "array of size", "out of bounds", "ValueError", "IndexError"):
            assert numpy_words not in line, (what, line)


def test_layout_check_passes_a_sound_file():
    assert gguf_file.layout_problem(DEFAULT_MODEL) is None


# ---------------------------------------------------------------- chat

def test_chat_stats_lines_are_aligned_and_readable():
    from edgellama.cli.chat import stats_lines
    from edgellama.devices.device import Stats
    counters = {"prompt_tokens_computed": 21, "tokens_generated": 16, "blocks_total": 128, "blocks_used": 3,
                "blocks_cached": 0, "blocks_high_water": 3, "prefix_queries": 1, "prefix_hits": 0,
                "arena_used": 4 << 20, "arena_high_water": 5 << 20, "arena_size": 90 << 20}
    last = Stats(prompt_tokens=21, output_tokens=16, ttft_s=0.01, total_s=0.16)
    lines = stats_lines(counters, {"context_length": 256, "block": 16}, last)
    labels = {line.split("  ")[0] for line in lines}
    assert {"tokens/s", "context used", "KV blocks", "memory"} <= labels
    assert len({len(re.match(r"\S+( \S+)* +", line).group(0)) for line in lines}) == 1  # values in one column
    text = "\n".join(lines)
    assert "100.0 (last reply)" in text            # 15 tokens in 0.15 s after the first
    assert "up to 48 of 256 tokens" in text and "3 used, 0 cached, 3 peak, of 128" in text
    assert "arena 4.0 MiB used, 5.0 MiB peak, of 90.0 MiB" in text and "{" not in text


def test_chat_reset_confirms_and_stats_is_not_json():
    r = subprocess.run([sys.executable, "-m", "edgellama", "chat", "--local", "--temperature", "0", "--max-tokens",
                        "8"], input="once there was a dog.\n/reset\n/stats\n/quit\n", capture_output=True, text=True,
                       timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "conversation reset" in r.stderr
    assert re.search(r"^tokens/s +\S", r.stderr, re.M) and re.search(r"^memory +arena ", r.stderr, re.M)
    assert "{" not in r.stdout + r.stderr


# ---------------------------------------------------------------- bench: one prompt, a log-scale report

def c_string(source: str, name: str) -> str:
    """The value of `static const char NAME[] = "..." "...";` in C source."""
    body = re.search(rf"{name}\[\]\s*=\s*((?:\s*\"(?:[^\"\\]|\\.)*\")+)\s*;", source).group(1)
    return "".join(re.findall(r"\"((?:[^\"\\]|\\.)*)\"", body))


def test_bench_text_is_the_firmwares():
    """One copy of the text in C (el_bench_prompt.c), the same bytes as Python's; the
    protocol and the POSIX program keep none of their own."""
    common = ROOT / "firmware" / "apps" / "common"
    assert c_string((common / "el_bench_prompt.c").read_text(encoding="utf-8"), "el_bench_text") == bench.BENCH_TEXT
    for c_file in ("firmware/apps/common/el_protocol.c", "firmware/apps/posix/main.c"):
        source = (ROOT / c_file).read_text(encoding="utf-8")
        assert "BENCH_TEXT" not in source and "el_bench_prompt(" in source, c_file


@pytest.fixture(scope="module")
def c_bench_prompt():
    """el_bench_prompt through tests/c/bench_prompt_probe.c, on the default model."""
    import ctypes

    import numpy as np

    from edgellama.model.loading import resolve
    from edgellama.runtime import build as runtime_build
    c = ctypes
    lib = c.CDLL(str(runtime_build.build_shared_library(
        [*runtime_build.core_sources(), *runtime_build.protocol_sources(), ROOT / "tests" / "c" / "bench_prompt_probe.c"],
        "bench-prompt-probe")))
    lib.bench_probe_open.argtypes = [c.c_void_p, c.c_size_t, c.c_void_p, c.c_size_t]
    lib.bench_probe_prompt.argtypes = [c.c_int, c.c_uint32, c.POINTER(c.c_int32), c.c_int]
    lib.bench_probe_text.restype = lib.bench_probe_error.restype = c.c_char_p
    model = np.fromfile(resolve(None), dtype=np.uint8)
    memory = np.zeros(64 << 20, dtype=np.uint8)
    assert lib.bench_probe_open(memory.ctypes.data, memory.size, model.ctypes.data, model.size) == 0, \
        lib.bench_probe_error()

    def prompt(n, call):
        capacity = lib.bench_probe_room(n)
        out = (c.c_int32 * capacity)()
        got = lib.bench_probe_prompt(n, call, out, capacity)
        assert got == n, lib.bench_probe_error()
        return out[:n]

    prompt.lib, prompt.keep = lib, (model, memory)
    return prompt


def test_c_bench_prompt_is_pythons_token_for_token(c_bench_prompt):
    """The C function the protocol's BENCH and the POSIX `bench` both call gives the same
    token ids as Python's mirror, short and longer than the text, at any call number."""
    from edgellama.model.loading import resolve
    from edgellama.runtime.capi import Runtime
    from edgellama.runtime.llm import Tokenizer
    assert c_bench_prompt.lib.bench_probe_text().decode() == bench.BENCH_TEXT
    tokenizer = Tokenizer(Runtime(resolve(None), max_seqs=1, threads=1))
    n_text = len(tokenizer.encode(bench.BENCH_TEXT, add_bos=False))
    for n in (1, 2, 12, 64, n_text, n_text + 1, 2 * n_text + 7, 300):
        for call in (0, 1, 2, 3, n_text - 1, n_text, n_text + 5, 1000):
            assert c_bench_prompt(n, call) == bench.bench_prompt(tokenizer, n, call), (n, call)


def test_c_bench_prompt_refuses_what_it_cannot_hold(c_bench_prompt):
    import ctypes
    lib = c_bench_prompt.lib
    out = (ctypes.c_int32 * 600)()
    assert lib.bench_probe_prompt(0, 1, out, 600) == -1
    assert lib.bench_probe_prompt(64, 1, out, lib.bench_probe_room(64) - 1) == -1
    assert lib.bench_probe_room(1000) == 1000


def test_local_bench_uses_the_one_prompt(monkeypatch):
    from edgellama.devices.device import LocalDevice
    built = []
    real = bench.bench_prompt

    def spy(tokenizer, prompt_tokens, call):
        built.append(real(tokenizer, prompt_tokens, call))
        return built[-1]

    monkeypatch.setattr(bench, "bench_prompt", spy)
    with LocalDevice() as device:
        device.bench_once(12, 2)
        device.bench_once(12, 2)
        text = device.llm.tokenizer.encode(bench.BENCH_TEXT, add_bos=False)
    first, second = built
    assert len(first) == len(second) == 12 and first[0] == second[0] == 1     # BOS, then the text
    assert first[1:] == text[1:12] and second[1:] == text[2:13]               # a new offset each call


def history_rows():
    """Two boards three orders of magnitude apart, two runs each."""
    rows = []
    for board, tps in (("local", 5000.0), ("rpi-pico2", 75.0)):
        for day in (1, 2):
            rows.append({"timestamp": f"2025-01-0{day}T12:00:00", "board": board, "model_name": "tinystories-850k",
                         "quant": "q8_0", "prompt_tokens": 64, "gen_tokens": 128, "pp_tps": tps * 2,
                         "pp_tps_sd": tps, "tg_tps": tps * day, "tg_tps_sd": tps * 0.1})
    return rows


def test_bench_report_figure_is_log_scale_with_labelled_axes():
    pytest.importorskip("matplotlib")
    from edgellama.devices import history
    fig = history.figure(history_rows())
    try:
        prefill, decode = fig.axes
        for ax in (prefill, decode):
            assert ax.get_yscale() == "log" and "tokens/s" in ax.get_ylabel()
            assert len(ax.get_legend_handles_labels()[1]) == 2          # one series per board/model/quant
            low, high = ax.get_ylim()
            assert 0 < low < 75 and high > 5000                          # both boards on the axis, none at zero
        assert "date" in decode.get_xlabel()
        labels = prefill.get_legend_handles_labels()[1]
        assert any(label.startswith("rpi-pico2 / tinystories-850k / q8_0") for label in labels)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_bench_report_png_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    from edgellama.devices import history
    png = history.plot(history_rows(), tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_setup_installs_the_report_extra():
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("matplotlib") for req in extras["report"])
    demo = (ROOT / "scripts/demo.sh").read_text()
    mode = re.search(r"^scripts/setup\.sh(?: (\w+))?", demo, re.M).group(1)
    setup = (ROOT / "scripts/setup.sh").read_text()
    assert mode and re.search(rf'"\$\{{1:-}}" = "{mode}" \] && extras="[^"]*\breport\b', setup)


# ---------------------------------------------------------------- GGUF names spelled in one place

GGUF_KEY_LITERAL = re.compile(r"""["'](general|tokenizer\.ggml|llama)\.[a-z_.]+["']""")


def test_gguf_keys_and_file_types_are_spelled_only_in_gguf_file():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "gguf_file.py":
            continue
        text = path.read_text(encoding="utf-8")
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        if GGUF_KEY_LITERAL.search(code):
            offenders.append(f"{path.relative_to(ROOT)}: {GGUF_KEY_LITERAL.search(code).group(0)}")
    for name in ("devices/bench.py", "model/modelinfo.py"):
        text = (PACKAGE / name).read_text(encoding="utf-8")
        if "FILE_TYPES" in text or "GGUFReader" in text:
            offenders.append(f"{name}: reads file types itself")
    assert offenders == []


def test_file_type_names_round_trip():
    from edgellama.model import quant
    for name, value in quant.FILE_TYPES.items():
        assert gguf_file.file_type_name(int(value)) == name
    assert gguf_file.file_type_name(999) == "file_type_999" and gguf_file.file_type_name(None) is None
    assert gguf_file.read_identity(DEFAULT_MODEL) == ("tinystories-850k", "f32")
    assert gguf_file.read_identity(ROOT / "README.md") == (None, None)


# ---------------------------------------------------------------- tokenizer capacity

def test_spaces_in_a_vocabulary_without_the_space_piece_tokenize_everywhere(tmp_path):
    """A vocabulary with byte fallback but no "▁" spends three byte tokens on each space:
    the capacity the POSIX program and the host library give el_tokenize (el_tokenize_bound)
    must hold that, where len + 8 did not."""
    from edgellama import LLM
    from edgellama.model.synthetic import write_synthetic
    from edgellama.runtime import build as runtime_build
    model = write_synthetic(tmp_path / "bytes.gguf", "tiny", "f32", vocab_size=260)
    prompt = " " * 12
    llm = LLM(str(model))
    tokens = llm.get_tokenizer().encode(prompt)
    assert len(tokens) == 1 + 3 * 13  # BOS, then the dummy prefix and 12 spaces as three bytes each
    program = runtime_build.host_program()
    out = subprocess.run([str(program), str(model), "generate", prompt, "--max-tokens", "2", "--temperature", "0"],
                         capture_output=True, timeout=60)  # random weights: the bytes need not be UTF-8
    assert out.returncode == 0, out.stderr.decode(errors="replace")
