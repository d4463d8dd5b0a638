"""Engine options, typed, from plan to build to device: EngineOptions checks its values
once, the planner fills it in, the build records it in manifest.json under "engine",
and each target hands every field to its program (config.mk, -D defines, flags)."""

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from conftest import require_board

from edgellama.boards import builder, emulator, planner
from edgellama.boards.catalog import get_board
from edgellama.boards.targets import BuildContext, baremetal, linux
from edgellama.boards.toolchains import get_toolchain
from edgellama.errors import EdgeLlamaError
from edgellama.runtime.engine_options import KV_DTYPES, EngineOptions

INT8_MULTI = EngineOptions(kv_dtype="int8", max_seqs=2, block_size=8)


def run(*args):
    return subprocess.run([sys.executable, "-m", "edgellama", *args], capture_output=True, text=True, timeout=120,
                          check=False)


# ---------------------------------------------------------------- the object

def test_round_trips_through_manifest_json():
    options = EngineOptions(max_model_len=144, block_size=16, kv_dtype="int8", max_seqs=1, max_batch_tokens=8,
                            kv_cache_bytes=1 << 40, arena_bytes=409_600, threads=1)
    assert EngineOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    assert EngineOptions.from_dict({}) == EngineOptions() == EngineOptions.from_dict({"threads": None})
    assert list(options.to_dict()) == ["max_model_len", "block_size", "kv_dtype", "max_seqs", "max_batch_tokens",
                                       "kv_cache_bytes", "arena_bytes", "threads", "speculative_tokens",
                                       "prompt_lookup_max", "prompt_lookup_min"]
    assert options.kv_dtype_code == 1 and planner.KV_DTYPES is KV_DTYPES
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_seqs = 2


@pytest.mark.parametrize("fields, message", [
    ({"kv_dtype": "int4"}, "engine option kv_dtype: must be one of f32, int8, got 'int4'"),
    ({"block_size": -1}, "engine option block_size: must be 0 (the default) to 2,147,483,647, got -1"),
    ({"block_size": (1 << 20) + 1}, "engine option block_size: must be at most 1,048,576 tokens, got 1048577"),
    ({"max_model_len": 1 << 31}, "engine option max_model_len: must be 0 (the default) to 2,147,483,647"),
    ({"max_seqs": True}, "engine option max_seqs: must be a whole number, got True"),
    ({"arena_bytes": "3M"}, "engine option arena_bytes: must be a whole number, got '3M'"),
    ({"max_seqs": 4, "max_batch_tokens": 2}, "engine option max_batch_tokens: must be at least max_seqs (4), got 2"),
])
def test_a_bad_value_is_one_line_naming_the_field(fields, message):
    with pytest.raises(EdgeLlamaError) as e:
        EngineOptions.from_dict(fields)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_unknown_manifest_field_is_refused_by_name():
    with pytest.raises(EdgeLlamaError, match="engine options: unknown field 'kv_type'"):
        EngineOptions.from_dict({"kv_type": "int8"})


def test_older_manifests_load():
    """Builds written before "engine" kept the options under "runtime_options"."""
    old = {"block_size": 16, "arena_bytes": 3 << 20, "max_model_len": 0, "kv_dtype": "f32"}
    assert builder.manifest_engine({"runtime_options": old}) == EngineOptions(block_size=16, arena_bytes=3 << 20)


# ---------------------------------------------------------------- the plan

def test_the_plan_gives_engine_options():
    p = planner.plan("rpi-pico2", ctx=256, quant="q8_0", kv_dtype="int8")
    options = p.engine_options()
    assert options == EngineOptions(max_model_len=256, block_size=16, kv_dtype="int8", max_seqs=1,
                                    max_batch_tokens=8, kv_cache_bytes=0, arena_bytes=409_600, threads=1)
    assert p.to_dict()["engine_options"] == options.to_dict()
    with pytest.raises(EdgeLlamaError, match="engine option max_batch_tokens: must be at least max_seqs"):
        planner.plan("rpi4", max_seqs=4, max_batch_tokens=2)


def test_a_build_cannot_ask_for_what_the_plan_sizes():
    with pytest.raises(EdgeLlamaError, match="engine option arena_bytes: decided by the plan"):
        planner.plan_engine("rpi-pico2", None, "q8_0", EngineOptions(arena_bytes=1 << 20))


# ---------------------------------------------------------------- the build and the device

def engine_of(result) -> EngineOptions:
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["plan"]["engine_options"] == manifest["engine"]  # the plan and the build agree
    return EngineOptions.from_dict(manifest["engine"])


def test_export_c_for_bare_metal_writes_every_field_to_config_mk(tmp_path):
    result = builder.export_c("mps2-an386", quant="q8_0", out_dir=tmp_path / "mps2", options=INT8_MULTI)
    engine = engine_of(result)
    assert engine == dataclasses.replace(INT8_MULTI, max_model_len=512, max_batch_tokens=8, arena_bytes=3 << 20,
                                         threads=1)
    config = dict(re.findall(r"^(\w+) = (.*)$", (result.out_dir / "src" / "config.mk").read_text(), re.MULTILINE))
    assert {k: config[k] for k in ("BLOCK_SIZE", "MAX_MODEL_LEN", "MAX_SEQS", "MAX_BATCH_TOKENS", "KV_DTYPE",
                                   "KV_CACHE_BYTES", "ARENA_BYTES")} == {
        "BLOCK_SIZE": "8", "MAX_MODEL_LEN": "512", "MAX_SEQS": "2", "MAX_BATCH_TOKENS": "8", "KV_DTYPE": "1",
        "KV_CACHE_BYTES": "0", "ARENA_BYTES": str(3 << 20)}
    # the Makefile hands each to main.c (a dry run: no cross compiler needed)
    made = subprocess.run(["make", "-n", "-C", str(result.out_dir / "src"), "build/app/main.o"], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    for define in ("-DEL_BLOCK_SIZE=8", "-DEL_MAX_MODEL_LEN=512", "-DEL_MAX_SEQS=2", "-DEL_MAX_BATCH_TOKENS=8",
                   "-DEL_KV_DTYPE=1", "-DEL_KV_CACHE_BYTES=0"):
        assert define in made


def test_cli_export_c_takes_the_kv_dtype_the_plan_suggests(tmp_path):
    """`plan --board rpi-pico2` says how long a context fits with --kv-dtype int8;
    `export-c` takes that option, and the PlatformIO project carries it."""
    suggestion = run("plan", "--board", "rpi-pico2", "--quant", "q8_0")
    assert int(re.search(r"or (\d+) with --kv-dtype int8", suggestion.stdout).group(1)) >= 256
    out = tmp_path / "pico"
    r = run("export-c", "--board", "rpi-pico2", "--kv-dtype", "int8", "--ctx", "256", "-o", str(out))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"]["kv_dtype"] == "int8" and manifest["engine"]["max_model_len"] == 256
    ini = (out / "src" / "platformio.ini").read_text()
    for define in ("-DEL_KV_DTYPE=1", "-DEL_MAX_MODEL_LEN=256", "-DEL_MAX_SEQS=1", "-DEL_MAX_BATCH_TOKENS=8",
                   "-DEL_KV_CACHE_BYTES=0", "-DEL_BLOCK_SIZE=16", "-DEL_ARENA_BYTES=409600"):
        assert define in ini
    # without it the plan refuses, as before
    r = run("export-c", "--board", "rpi-pico2", "-o", str(tmp_path / "f32"))
    assert r.returncode == 1 and "does not fit rpi-pico2" in r.stderr and "--kv-dtype int8" in r.stderr
    assert not (tmp_path / "f32").exists()


@pytest.mark.parametrize("args, words", [
    (["--kv-dtype", "int4"], ("--kv-dtype", "'int4'")),
    (["--max-seqs", "0"], ("--max-seqs", "0")),
    (["--block-size", "2000000"], ("engine option block_size", "2000000")),
])
def test_cli_bad_value_is_one_error_line(tmp_path, args, words):
    r = run("build", "--board", "mps2-an386", *args, "-o", str(tmp_path / "out"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and all(word in errors[0] for word in words), r.stderr
    assert not (tmp_path / "out").exists()


def test_linux_flags_come_from_the_options(tmp_path):
    board = get_board("rpi4")
    options = EngineOptions(max_model_len=128, block_size=8, kv_dtype="int8", max_batch_tokens=16,
                            arena_bytes=(3 << 20) + 1)
    ctx = BuildContext(board, get_toolchain(board.toolchain), tmp_path / "model.gguf", "q8_0", tmp_path, options)
    assert linux.option_flags(ctx, ["--kv-dtype", "f32"]) == [
        "--block-size", "8", "--arena-mb", "4", "--max-model-len", "128", "--max-batch-tokens", "16"]


@pytest.mark.emulated
def test_the_device_opens_the_runtime_with_the_build_options(tmp_path):
    """mps2-an386 under QEMU: its hello line reports the KV pool the options make
    (2 sequences x 512 tokens / 8-token blocks = 128 blocks) and the block size."""
    require_board("mps2-an386")
    result = builder.build("mps2-an386", quant="q8_0", out_dir=tmp_path / "mps2", options=INT8_MULTI)
    assert builder.load_build(result.out_dir).options == engine_of(result)
    returncode, out, err = emulator.run("mps2-an386", result.out_dir, ["generate", "once upon a time",
                                                                      "--max-tokens", "4"], timeout=120)
    assert returncode == 0, err
    hello = baremetal.parse_stats("x " + baremetal.parse_reply(out).hello)
    assert (hello["ctx"], hello["block"], hello["kv_blocks"]) == ("512", "8", "128")


# ---------------------------------------------------------------- from the command line to the device

def test_a_build_with_other_engine_options_is_stale(tmp_path):
    built = EngineOptions(max_model_len=256, block_size=16, kv_dtype="f32", max_seqs=1, max_batch_tokens=8)
    (tmp_path / builder.MANIFEST).write_text(json.dumps({"kind": "build", "board": "mps2-an386", "quant": "q8_0",
                                                         "engine": built.to_dict(),
                                                         "runtime_digest": builder.runtime_digest()}))
    assert builder.stale_reason(tmp_path, "mps2-an386") is None  # no options asked for: the build serves
    assert builder.stale_reason(tmp_path, "mps2-an386", options=EngineOptions(block_size=16)) is None
    assert builder.stale_reason(tmp_path, "mps2-an386", options=EngineOptions()) is None  # f32 is what it has
    for asked in (EngineOptions(kv_dtype="int8"), EngineOptions(block_size=8), EngineOptions(max_model_len=128)):
        assert builder.stale_reason(tmp_path, "mps2-an386", options=asked) == "it was built with other engine options"


def test_a_build_from_other_runtime_sources_is_stale(tmp_path):
    """A build an older edgellama made (its manifest has no digest, or another one) is rebuilt
    rather than run against today's protocol, which it may not speak."""
    manifest = {"kind": "build", "board": "mps2-an386", "quant": "q8_0", "engine": EngineOptions().to_dict()}
    (tmp_path / builder.MANIFEST).write_text(json.dumps(manifest))
    assert builder.stale_reason(tmp_path, "mps2-an386") == "it was built from other runtime sources"
    (tmp_path / builder.MANIFEST).write_text(json.dumps(manifest | {"runtime_digest": "0" * 64}))
    assert builder.stale_reason(tmp_path, "mps2-an386") == "it was built from other runtime sources"
    (tmp_path / builder.MANIFEST).write_text(json.dumps(manifest | {"runtime_digest": builder.runtime_digest()}))
    assert builder.stale_reason(tmp_path, "mps2-an386") is None


def test_generate_opens_the_runtime_here_with_the_engine_options():
    """--ctx reaches the runtime on this machine: the reply stops where the context ends."""
    from click.testing import CliRunner

    from edgellama.cli import main
    flags = ["generate", "--temperature", "0", "--max-tokens", "100", "once upon a time"]
    short = CliRunner().invoke(main, [*flags[:1], "--ctx", "16", *flags[1:]])
    full = CliRunner().invoke(main, flags)
    assert short.exit_code == 0 and full.exit_code == 0, short.output
    assert full.stdout.startswith(short.stdout.rstrip("\n")) and len(short.stdout) < len(full.stdout)


def test_engine_options_are_refused_for_a_flashed_board():
    from click.testing import CliRunner

    from edgellama.cli import main
    result = CliRunner().invoke(main, ["generate", "--port", "/dev/null", "--kv-dtype", "int8", "x"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "flashed there" in result.output
