"""Model files from strangers: corrupt weights, layouts and vocabularies end in one clear line.

Each bad file is the embedded model (or its Q8_0 conversion) with a few bytes changed:
a NaN block scale, an Inf weight, a flipped tensor type byte, overlapping, misaligned
and out-of-range data offsets, a vocabulary piece that is not UTF-8. The CLI
(`generate`, `inspect`), the POSIX program and the C loader must each refuse it with
one line naming the tensor (or token) and the problem, never run it or print a
traceback. Bare-metal images carry the model's CRC-32 and check it at boot.
"""

import struct
import subprocess
import sys
import zlib

import pytest
from gguf import GGUFReader

from edgellama.model.gguf_file import read_gguf, write_gguf
from edgellama.resources import DEFAULT_MODEL
from edgellama.runtime import build as runtime_build

NUMPY_WORDS = ("reshape", "dtype", "array of size", "out of bounds", "ValueError", "IndexError", "Traceback",
               "UnicodeDecodeError", "struct.error")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgellama", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def one_line(result) -> str:
    """The single error line a refused command printed (exit status non-zero)."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for words in NUMPY_WORDS:
        assert words not in lines[0], lines[0]
    return lines[0]


def run_posix(model, *args):
    program = runtime_build.host_program()
    return subprocess.run([str(program), str(model), "generate", "once", "--temperature", "0", "--max-tokens", "4",
                           *args], capture_output=True, text=True, timeout=60)


def refused_everywhere(path, *needles):
    """generate, the POSIX program and inspect all refuse `path` in one line with every needle."""
    for result in (run_cli("generate", "once", "--model", path, "--max-tokens", "4"), run_posix(path),
                   run_cli("inspect", path)):
        line = one_line(result)
        for needle in needles:
            assert needle in line, line


def tensor_offsets(path) -> dict:
    """name -> (absolute data offset, type name, bytes)."""
    reader = GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        out[t.name] = (int(t.data_offset), t.tensor_type.name, int(t.n_bytes))
    return out


def info_field(path, name):
    """Byte positions of a tensor info's type and offset fields (found by walking its name)."""
    data = path.read_bytes()
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.index(key) + len(key)
    n_dims = struct.unpack_from("<I", data, at)[0]
    type_at = at + 4 + 8 * n_dims
    return type_at, type_at + 4


def patched(src, dst, *edits):
    """Copy src to dst with (position, bytes) edits."""
    data = bytearray(src.read_bytes())
    for at, new in edits:
        data[at:at + len(new)] = new
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def q8_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("q8") / "good-q8.gguf"
    write_gguf(read_gguf(DEFAULT_MODEL).model, path, "q8_0")
    return path


# ---------------------------------------------------------------- non-finite weights

def test_sound_models_still_run(q8_model):
    assert run_posix(DEFAULT_MODEL).returncode == 0
    assert run_posix(q8_model).returncode == 0


def test_nan_block_scale_is_refused(q8_model, tmp_path):
    offsets = tensor_offsets(q8_model)
    start, qtype, _ = offsets["blk.1.ffn_down.weight"]
    assert qtype == "Q8_0"
    bad = patched(q8_model, tmp_path / "nan-scale.gguf", (start + 34 * 5, struct.pack("<H", 0x7e00)))
    refused_everywhere(bad, "blk.1.ffn_down.weight", "NaN or Inf scale in block 5")


def test_inf_f32_weight_is_refused(tmp_path):
    start, qtype, _ = tensor_offsets(DEFAULT_MODEL)["blk.0.attn_q.weight"]
    assert qtype == "F32"
    bad = patched(DEFAULT_MODEL, tmp_path / "inf.gguf", (start + 4 * 7, struct.pack("<f", float("inf"))))
    refused_everywhere(bad, "blk.0.attn_q.weight", "NaN or Inf value at element 7")


# ---------------------------------------------------------------- the data section's layout

def test_flipped_type_byte_is_refused(tmp_path):
    type_at, _ = info_field(DEFAULT_MODEL, "blk.0.attn_k.weight")
    bad = patched(DEFAULT_MODEL, tmp_path / "flipped.gguf", (type_at, bytes([2])))  # F32 -> Q4_0
    refused_everywhere(bad, "blk.0.attn_k.weight", "Q4_0", "its type or shape is corrupt")


def test_overlapping_offsets_are_refused(tmp_path):
    _, offset_q = info_field(DEFAULT_MODEL, "blk.0.attn_q.weight")
    _, offset_k = info_field(DEFAULT_MODEL, "blk.0.attn_k.weight")
    data = DEFAULT_MODEL.read_bytes()
    q_offset = data[offset_q:offset_q + 8]
    bad = patched(DEFAULT_MODEL, tmp_path / "overlap.gguf", (offset_k, q_offset))  # k's data = q's data
    refused_everywhere(bad, "overlaps", "blk.0.attn_")


def test_misaligned_offset_is_refused(tmp_path):
    _, offset_at = info_field(DEFAULT_MODEL, "blk.0.attn_v.weight")
    value = struct.unpack_from("<Q", DEFAULT_MODEL.read_bytes(), offset_at)[0]
    bad = patched(DEFAULT_MODEL, tmp_path / "misaligned.gguf", (offset_at, struct.pack("<Q", value + 4)))
    refused_everywhere(bad, "blk.0.attn_v.weight", "not a multiple of the alignment")


def test_out_of_range_offset_is_refused(tmp_path):
    _, offset_at = info_field(DEFAULT_MODEL, "blk.0.attn_v.weight")
    bad = patched(DEFAULT_MODEL, tmp_path / "far.gguf", (offset_at, struct.pack("<Q", 1 << 40)))
    line = one_line(run_posix(bad))
    assert "blk.0.attn_v.weight" in line and "past the end of the file" in line
    line = one_line(run_cli("inspect", bad))
    assert "truncated" in line or "corrupt" in line


def test_truncated_file_is_refused_by_inspect(tmp_path):
    data = DEFAULT_MODEL.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:len(data) // 2])
    line = one_line(run_cli("inspect", cut))
    assert "cut.gguf" in line and "truncated" in line


# ---------------------------------------------------------------- the vocabulary

def test_piece_that_is_not_utf8_is_refused(tmp_path):
    data = DEFAULT_MODEL.read_bytes()
    tokens = read_gguf(DEFAULT_MODEL).model.vocab.tokens
    index = next(i for i, t in enumerate(tokens) if len(t.encode()) >= 3 and t.isascii() and t.isalpha())
    piece = tokens[index].encode()
    at = data.index(struct.pack("<Q", len(piece)) + piece) + 8
    bad = patched(DEFAULT_MODEL, tmp_path / "utf8.gguf", (at + 1, b"\xff"))
    refused_everywhere(bad, f"token {index}", "not valid UTF-8")


# ---------------------------------------------------------------- bare metal: the model's CRC-32

def test_baremetal_config_carries_the_model_crc(tmp_path):
    from edgellama.boards import builder
    result = builder.export_c("mps2-an386", quant="q8_0", out_dir=tmp_path / "src-only")
    config = (result.out_dir / "src" / "config.mk").read_text()
    model = result.context.model_path
    assert f"MODEL_CRC32 = 0x{zlib.crc32(model.read_bytes()):08x}" in config
    assert "-DEL_MODEL_CRC32=$(MODEL_CRC32)u" in (result.out_dir / "src" / "Makefile").read_text()


@pytest.mark.emulated
def test_baremetal_refuses_a_corrupt_model_image(tmp_path):
    """A model image that is not the one the build recorded (one byte flipped after the
    build, then relinked) says so on the UART and exits 1 without opening the runtime."""
    from conftest import require_board

    from edgellama.boards import builder, emulator
    require_board("mps2-an386")
    result = builder.build("mps2-an386", None, quant="q8_0", out_dir=tmp_path / "out")
    model = result.context.model_path
    data = bytearray(model.read_bytes())
    recorded = zlib.crc32(data)
    data[-1000] ^= 0x01
    model.write_bytes(bytes(data))
    subprocess.run(["make", "-C", str(result.out_dir / "src"), "-j2"], check=True, capture_output=True, timeout=300)
    returncode, out, _ = emulator.run("mps2-an386", result.out_dir, ["generate", "once", "--max-tokens", "2"],
                                      timeout=120)
    assert returncode != 0
    line = next(line for line in out.splitlines() if line.startswith("[error]"))
    assert line.startswith("[error] the model image is corrupt: CRC-32 0x"), out
    assert f"CRC-32 0x{zlib.crc32(data):08x}, the build recorded 0x{recorded:08x}" in line
    assert "edgellama " not in out  # no hello line: the runtime never opened
