"""The memory planner: its arithmetic against the runtime's measured arena, the C
compilers' struct sizes and real exported files; verdicts for the boards; the CLI."""

import dataclasses
import itertools
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgellama.boards import planner
from edgellama.boards.catalog import get_board
from edgellama.errors import EdgeLlamaError
from edgellama.model.gguf_file import write_gguf
from edgellama.model.llama import LlamaConfig, LlamaModel, Vocab
from edgellama.model.loading import load_model
from edgellama.resources import DEFAULT_MODEL
from edgellama.runtime.build import firmware_dir, host_compiler
from edgellama.runtime.capi import Runtime, make_request

HOST_BOARD = "rpi4"  # a 64-bit Linux board: the host's pointer width, and room to spare
PROMPT = "once upon a time, there was a little dog named max. he liked to run — “fast”, said tom."


@pytest.fixture(scope="module")
def stories260k(stories260k_f32):
    return stories260k_f32


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """Random weights, vocabulary of 4096 and dim 256: an 8.9 MB F32 file."""
    cfg = LlamaConfig(dim=256, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=4096, hidden_dim=512,
                      max_seq_len=512)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{i}" for i in range(cfg.vocab_size - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (cfg.vocab_size - 259)
    vocab = Vocab(tokens, [-float(i) for i in range(cfg.vocab_size)], types)
    rng = np.random.default_rng(0)
    tensors = {name: (rng.standard_normal(shape) * 0.02).astype(np.float32)
               for name, shape in cfg.tensor_shapes().items()}
    path = tmp_path_factory.mktemp("plan") / "big.gguf"
    write_gguf(LlamaModel(cfg, vocab, tensors, "big"), path, "f32")
    return path


# ---------------------------------------------------------------- arithmetic vs the runtime

THREADS = 2  # planned and run with the same count: each worker has its own attention scratch


def measured_high_water(path, ctx, block_size, kv_dtype, max_seqs, max_batch_tokens=0, prompt=PROMPT):
    rt = Runtime(path, max_model_len=ctx, block_size=block_size, max_seqs=max_seqs, kv_dtype=kv_dtype,
                 max_batch_tokens=max_batch_tokens, threads=THREADS)
    tokens = rt.tokenize(prompt)[:ctx - 9]
    for _ in range(min(max_seqs, 2)):  # two sequences at once where there is room: a batched step
        rt.add(tokens, make_request({"temperature": 0.0}, max_tokens=8))
    while rt.pending():
        rt.step()
    return rt.stats()["arena_high_water"]


CONFIGS = list(itertools.product((1, 16, 64), (64, 256), ("f32", "int8"), (1, 8)))


@pytest.mark.parametrize("which", ["default", "stories260K"])
def test_host_plan_bounds_the_measured_arena(which, stories260k):
    """Planned for the host's pointer width, the arena is never less than the runtime's
    high-water mark after opening the model and a short generation, and at most 5% more."""
    path = DEFAULT_MODEL if which == "default" else stories260k
    info = planner.model_info(path)
    worst = 0.0
    for block_size, ctx, kv_dtype, max_seqs in CONFIGS:
        measured = measured_high_water(path, ctx, block_size, kv_dtype, max_seqs)
        p = planner.plan(HOST_BOARD, path, ctx=ctx, max_seqs=max_seqs, kv_dtype=kv_dtype, block_size=block_size,
                         prompt_bytes=len(PROMPT.encode()), threads=THREADS, info=info)
        assert p.pointer_bytes == 8 and p.max_batch_tokens == max(max_seqs, 32)  # the runtime's own defaults
        assert measured <= p.arena_total <= measured * 1.05, (block_size, ctx, kv_dtype, max_seqs)
        worst = max(worst, p.arena_total / measured - 1)
    assert worst < 0.01  # in fact a few hundred bytes: alignment slack and the logits path's scratch


def test_mcu_options_and_a_long_prompt_are_bounded_too():
    """The MCU defaults (one sequence, 8 rows) and a prompt that fills the planned scratch."""
    prompt = (PROMPT + " ") * 3
    measured = measured_high_water(DEFAULT_MODEL, 256, 16, "int8", 1, max_batch_tokens=8, prompt=prompt)
    p = planner.plan(HOST_BOARD, None, ctx=256, max_seqs=1, kv_dtype="int8", max_batch_tokens=8,
                     prompt_bytes=len(prompt.encode()), threads=THREADS)
    assert measured <= p.arena_total <= measured * 1.01  # symbols are counted one per byte: UTF-8 costs a little


def test_speculative_drafts_are_planned_too():
    """Speculation adds a logits row and an event per draft: the plan still bounds the arena."""
    for max_seqs in (1, 8):
        rt = Runtime(DEFAULT_MODEL, max_model_len=256, max_seqs=max_seqs, threads=THREADS, speculative_tokens=4)
        tokens = rt.tokenize(PROMPT)[:200]
        rt.add(tokens, make_request({"temperature": 0.0}, max_tokens=8))
        while rt.pending():
            rt.step()
        measured = rt.stats()["arena_high_water"]
        p = planner.plan(HOST_BOARD, None, ctx=256, max_seqs=max_seqs, prompt_bytes=len(PROMPT.encode()),
                         threads=THREADS, speculative_tokens=4)
        plain = planner.plan(HOST_BOARD, None, ctx=256, max_seqs=max_seqs, prompt_bytes=len(PROMPT.encode()),
                             threads=THREADS)
        assert measured <= p.arena_total <= measured * 1.01
        vocab = planner.model_info(None).n_tokens
        assert p.parts["activations"] - plain.parts["activations"] == 4 * max_seqs * vocab * 4  # 4 float rows each
        assert "drafts   n-gram speculation: 4 drafts" in planner.format_plan(p)


def test_c_size_functions_and_their_formulas_agree():
    info = planner.model_info(DEFAULT_MODEL)
    for block_size, kv_dtype in itertools.product((1, 7, 16, 64), ("f32", "int8")):
        assert planner.kv_block_bytes(info.config, block_size, kv_dtype) == \
            planner.kv_block_bytes_formula(info.config, block_size, kv_dtype)
    for rows, logits, ctx in ((1, 1, 1), (8, 1, 256), (32, 8, 100)):
        for threads in (1, 4):
            assert planner.forward_bytes(info.config, rows, logits, ctx, threads) == \
                planner.forward_bytes_formula(info.config, rows, logits, ctx, threads)


def _sizes_hold(cc, flags, pointer_bytes, relation, tmp_path):
    sizes = planner.struct_sizes(pointer_bytes)
    names = [n for n in sizes if n.startswith("el_")]
    checks = "".join(f"typedef char check_{n}[sizeof({n}) {relation} {sizes[n]} ? 1 : -1];\n" for n in names)
    probe = tmp_path / f"probe_{pointer_bytes}.c"
    probe.write_text('#include "el_runtime.h"\n' + checks)
    r = subprocess.run([cc, *flags, "-std=c99", "-fsyntax-only", f"-I{firmware_dir() / 'core'}", str(probe)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_struct_layout_matches_the_host_compiler(tmp_path):
    _sizes_hold(host_compiler(), [], 8, "==", tmp_path)


@pytest.mark.parametrize("cc,flags,relation", [
    ("arm-linux-gnueabihf-gcc", [], "=="),
    # arm-none-eabi packs enums into the smallest type: the planner's 4-byte enums only overestimate
    ("arm-none-eabi-gcc", ["-mcpu=cortex-m4", "-mthumb"], "<="),
])
def test_struct_layout_bounds_32_bit_targets(cc, flags, relation, tmp_path):
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    _sizes_hold(cc, flags, 4, relation, tmp_path)


def test_exported_sizes_are_exact(stories260k, tmp_path):
    """quant= plans the file `export --quant` writes, byte for byte, without writing it."""
    for quant in ("f32", "f16", "q8_0", "q4_0"):
        predicted = planner.model_info(stories260k, quant)
        out = tmp_path / f"{quant}.gguf"
        write_gguf(load_model(stories260k), out, quant)
        written = planner.model_info(out)
        assert predicted.file_bytes == out.stat().st_size == written.file_bytes, quant
        assert (predicted.n_kv, predicted.n_tensors, predicted.types) == (written.n_kv, written.n_tensors,
                                                                          written.types)
    assert planner.model_info(None, "q8_0").file_bytes == 923_648  # the README's Q8_0 default model
    assert planner.model_info(None, "q4_0").file_bytes == 530_432


# ---------------------------------------------------------------- verdicts

def test_default_model_fits_mps2_in_q8_0_and_rpi4():
    p = planner.require_fits(planner.plan("mps2-an386", quant="q8_0"))
    assert (p.weights_location, p.weights_bytes) == ("flash", 923_648)
    assert p.pointer_bytes == 4 and p.max_seqs == 1 and p.ctx == 512 and p.largest_ctx == 512
    assert p.arena_total <= p.arena_budget == 3 << 20
    p = planner.require_fits(planner.plan("rpi4"))
    assert p.weights_location == "file (mmap)" and p.max_seqs == 8 and p.pointer_bytes == 8


def test_f32_default_model_fits_mps2_flash():
    """3,426,752 bytes of F32 file against 4 MiB of flash less 256 KiB kept for the program
    (3,932,160 bytes): it fits, with 505,408 bytes to spare."""
    p = planner.require_fits(planner.plan("mps2-an386"))
    assert p.weights_location == "flash" and p.weights_bytes == 3_426_752
    assert p.weights_room == (4 << 20) - planner.FLASH_PROGRAM_RESERVE["baremetal"] == 3_932_160


def test_full_context_does_not_fit_rpi_pico2_with_f32_kv():
    """Its 400 KiB arena holds 32 f32 KV blocks of 32,861 bytes (1,052 KB) no more than it
    holds anything else that big: the verdict names the numbers and the way out."""
    p = planner.plan("rpi-pico2", quant="q8_0")
    assert not p.fits and p.weights_location == "flash"
    assert 0 < p.largest_ctx < 512
    message = str(pytest.raises(EdgeLlamaError, planner.require_fits, p).value)
    assert f"{p.arena_total:,} bytes at ctx 512" in message and "409,600" in message
    assert f"--ctx {p.largest_ctx}" in message and "--kv-dtype int8" in message
    int8_ctx = int(re.search(r"or (\d+) with --kv-dtype int8", message).group(1))
    assert planner.plan("rpi-pico2", quant="q8_0", kv_dtype="int8", ctx=int8_ctx).fits
    assert not planner.plan("rpi-pico2", quant="q8_0", kv_dtype="int8", ctx=int8_ctx + 16).fits


def test_largest_context_is_the_edge(big_model):
    cases = (("rpi-pico2", None, "q8_0", "f32"), ("rpi-pico2", big_model, "q8_0", "int8"),
             ("mps2-an386", big_model, None, "f32"))
    for board, model, quant, kv_dtype in cases:
        info = planner.model_info(model, quant)
        p = planner.plan(board, quant=quant, kv_dtype=kv_dtype, info=info)
        n = p.largest_ctx
        assert 0 < n <= p.context_length and (n < p.context_length) == (board == "rpi-pico2")
        at = planner.plan(board, ctx=n, quant=quant, kv_dtype=kv_dtype, info=info)
        assert at.fits and at.arena_total <= at.arena_budget
        if n < p.context_length:
            for over in (n + 1, n + p.block_size):
                beyond = planner.plan(board, ctx=over, quant=quant, kv_dtype=kv_dtype, info=info)
                assert not beyond.fits and beyond.arena_total > beyond.arena_budget


def test_arena_and_largest_context_are_monotonic():
    info = planner.model_info(None, "q8_0")
    totals = [sum(planner.arena_parts(info, ctx, 16, 1, 8, "f32", 256, 4)[0].values()) for ctx in range(1, 257)]
    assert all(a < b for a, b in itertools.pairwise(totals))
    pico = get_board("rpi-pico2")
    largest = [planner.plan(dataclasses.replace(pico, arena=kib << 10), info=info).largest_ctx
               for kib in (64, 128, 200, 300, 400, 500, 700, 1400)]
    assert largest == sorted(largest) and largest[0] < largest[-1] == 512


def test_a_model_too_big_for_any_memory(big_model):
    """8.9 MB of F32: no room in the Pico 2's flash (4 MiB less 512 KiB), and no PSRAM."""
    p = planner.plan("rpi-pico2", big_model)
    assert not p.fits and p.weights_location == ""
    message = str(pytest.raises(EdgeLlamaError, planner.require_fits, p).value)
    assert f"model file of {p.weights_bytes:,} bytes fits neither flash" in message
    assert "3,670,016" in message and "PSRAM (none)" in message
    # the same model goes to PSRAM on the MPS2 (16 MiB); the ESP32-S3's 16 MiB of flash hold
    # it, but its image is one app partition of 6.25 MiB (default_16MB.csv), which does not
    assert planner.plan("mps2-an386", big_model).weights_location == "psram"
    esp = planner.plan("esp32-s3", big_model)
    assert not esp.fits and "flash (the app partition of 6,553,600 bytes less 512 KiB for the program = " \
        "6,029,312)" in esp.verdict
    assert planner.plan("esp32-s3", big_model, quant="q8_0").weights_location == "flash"  # 2.4 MB
    # and a context beyond the model's is refused by name
    long = planner.plan("rpi4", big_model, ctx=1024)
    assert not long.fits and "longer than the model's context of 512" in long.verdict


def test_board_defaults_and_json():
    p = planner.plan("esp32-s3")
    assert (p.max_seqs, p.max_batch_tokens, p.block_size, p.arena_location) == (1, 8, 16, "PSRAM")
    d = p.to_dict()
    assert d["engine_options"]["max_seqs"] == 1 and d["verdict"].startswith("fits")
    assert sum(d["parts"].values()) == d["arena_total"]


# ---------------------------------------------------------------- the command line

def run(*args):
    return subprocess.run([sys.executable, "-m", "edgellama", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_cli_plan_prints_the_plan_and_exits_0_either_way():
    r = run("plan", "--board", "rpi-pico2")
    assert r.returncode == 0, r.stderr
    for word in ("weights  flash", "KV pool", "activations", "largest  context that fits", "verdict  does not fit"):
        assert word in r.stdout
    r = run("plan", "--board", "rpi-pico2", "--quant", "q4_0", "--kv-dtype", "int8", "--ctx", "256", "--json")
    assert r.returncode == 0, r.stderr
    assert '"fits": true' in r.stdout


def test_cli_unknown_board_is_one_line():
    r = run("plan", "--board", "rpi-pico")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == "error: --board: unknown board 'rpi-pico'; did you mean rpi-pico2, rpi-zero2w, rpi5?"
    r = run("plan", "--board", "nosuch")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown board 'nosuch'" in r.stderr and "rpi-pico2" in r.stderr


def test_the_plan_says_how_many_samples_and_beams_fit():
    """Samples are sequences of the planned pool; a beam search of width W holds 2W."""
    rpi4 = planner.plan("rpi4", DEFAULT_MODEL)
    assert (rpi4.max_samples, rpi4.max_beam_width) == (rpi4.max_seqs, min(8, rpi4.max_seqs // 2))
    mcu = planner.plan("mps2-an386", DEFAULT_MODEL)
    assert (mcu.max_samples, mcu.max_beam_width) == (1, 0)
    assert "no beam search" in planner.format_plan(mcu)
    two = planner.plan("mps2-an386", DEFAULT_MODEL, max_seqs=2)
    assert two.max_beam_width == 1 and two.parts["sequences"] > mcu.parts["sequences"]
