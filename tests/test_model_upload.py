"""Models over the serial line (firmware/apps/common/el_updater.h, devices/model_upload.py)
against the emulated mps2-an386 kept up behind socket:// (edgellama emulate's
StandingBoard), its model store in a file that outlives the emulator: a model swapped in
and answering with its own text, a link cut at a random chunk and the upload resumed,
QEMU killed mid-upload and restarted from its store with the old model booting, a
corrupted chunk sent again, a model too big refused before a byte is sent, rollback. The
models are tiny synthetic ones (57 KB): the UART moves about 6 KB/s under QEMU."""

import ctypes
import hashlib
import random
import re
import subprocess

import pytest
from click.testing import CliRunner
from conftest import PROMPT, require_board

from edgellama.boards import builder
from edgellama.boards.standing import StandingBoard
from edgellama.boards.targets import baremetal
from edgellama.cli import main
from edgellama.devices import model_upload
from edgellama.devices import protocol as P
from edgellama.devices.opener import open_device
from edgellama.errors import EdgeLlamaError
from edgellama.model.synthetic import write_synthetic
from edgellama.runtime import build as runtime_build
from edgellama.runtime.llm import LLM
from edgellama.runtime.sampling_params import SamplingParams

BOARD = "mps2-an386"
SAMPLED = SamplingParams(temperature=1.0, seed=7, max_tokens=24)  # random weights: greedy text repeats one piece


def test_sha256_is_fips_180_4():
    """The device's SHA-256 (el_sha256.c) against hashlib, around the padding's edges."""
    common = runtime_build.firmware_dir() / "apps" / "common"
    core = runtime_build.firmware_dir() / "core"
    lib = ctypes.CDLL(str(runtime_build.build_shared_library([core / "el_base.c", common / "el_sha256.c"],
                                                             "sha256-probe")))

    class Sha(ctypes.Structure):
        _fields_ = [("state", ctypes.c_uint32 * 8), ("bytes", ctypes.c_uint64), ("block", ctypes.c_uint8 * 64),
                    ("filled", ctypes.c_int)]
    rnd = random.Random(3)
    for size in (0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 65_537):
        data = rnd.randbytes(size)
        h, digest = Sha(), (ctypes.c_uint8 * 32)()
        lib.el_sha256_init(ctypes.byref(h))
        cut = size // 3
        lib.el_sha256_update(ctypes.byref(h), data[:cut], ctypes.c_size_t(cut))
        lib.el_sha256_update(ctypes.byref(h), data[cut:], ctypes.c_size_t(size - cut))
        lib.el_sha256_final(ctypes.byref(h), digest)
        assert bytes(digest) == hashlib.sha256(data).digest(), size


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upload-models")
    return {name: write_synthetic(folder / f"{name}.gguf", "tiny", "q8_0", vocab_size=512, seed=seed,
                                  max_seq_len=512) for name, seed in (("a", 1), ("b", 2), ("c", 3))}


def host_text(model) -> str:
    return LLM(str(model)).generate(PROMPT, SAMPLED, use_tqdm=False)[0].outputs[0].text


def device_text(url) -> str:
    with open_device(port=url, board=BOARD) as dev:
        return "".join(dev.generate(PROMPT, SAMPLED))


def info(url, board=BOARD) -> dict:
    with open_device(port=url, board=board) as dev:
        return dev.info()


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    require_board(BOARD)
    return builder.build(BOARD, None, quant="q8_0", out_dir=tmp_path_factory.mktemp("an386") / "b").out_dir


@pytest.fixture(scope="module")
def flash_build_dir(tmp_path_factory):
    """The same board with its store behaving as flash (el_memory_store.c's
    EL_STORE_SIMULATE_FLASH: 4 KiB erase units, a write that would set a bit stops the
    board), erased at first: what the PlatformIO boards' updater meets."""
    require_board(BOARD)
    out = builder.build(BOARD, None, quant="q8_0", out_dir=tmp_path_factory.mktemp("an386-flash") / "b").out_dir
    subprocess.run(["make", "-C", str(out / "src"), "-B", "PORT_CFLAGS=-DEL_PORT_MODEL_STORE=1 "
                    "-DEL_STORE_SIMULATE_FLASH=4096"], check=True, capture_output=True)
    (out / baremetal.STORE_FILE).write_bytes(b"\xff" * (16 << 20))
    return out


@pytest.mark.parametrize("store", ["memory", "flash"])
def test_upload_resume_power_loss_and_rollback(request, store, models):
    build_dir = request.getfixturevalue("build_dir" if store == "memory" else "flash_build_dir")
    built_in = host_text(build_dir / "model.gguf")
    texts = {name: host_text(path) for name, path in models.items()}
    assert len({built_in, *texts.values()}) == 4  # four models that tell apart

    board = StandingBoard(BOARD, out_dir=build_dir).start()
    try:
        url = board.url
        assert device_text(url) == built_in and info(url)["model_slot"] == 0
        # the CLI: checked, sent, switched; the new model answers with its own text
        result = CliRunner().invoke(main, ["flash", "--board", BOARD, "--port", url, "--model", str(models["a"])])
        assert result.exit_code == 0, result.output
        assert "answers now" in result.stdout and info(url)["model_slot"] == 1
        assert device_text(url) == texts["a"]

        # the link cut at a random chunk: the old model still answers, the same upload resumes
        cut_at = random.Random(5).randrange(10, 90) * model_upload.CHUNK_BYTES
        with open_device(port=url, board=BOARD) as dev:
            def cut(sent, total):
                if sent >= cut_at:
                    dev.stream.close()
            with pytest.raises(EdgeLlamaError):
                model_upload.upload_model(dev, models["b"], BOARD, progress=cut)
        assert device_text(url) == texts["a"]
        resumed = []
        with open_device(port=url, board=BOARD) as dev:
            model_upload.upload_model(dev, models["b"], BOARD, progress=lambda sent, total: resumed.append(sent))
        assert resumed[0] > cut_at  # it went on from what the device had, not from 0
        assert device_text(url) == texts["b"] and info(url)["model_slot"] == 2

        # QEMU killed mid-upload: it boots the model in force from its store, and the upload resumes
        with open_device(port=url, board=BOARD) as dev:
            def power_off(sent, total):
                if sent >= total // 2:
                    board.close()
            with pytest.raises(EdgeLlamaError):
                model_upload.upload_model(dev, models["c"], BOARD, progress=power_off)
    finally:
        board.close()
    board = StandingBoard(BOARD, out_dir=build_dir).start()
    try:
        url = board.url
        assert device_text(url) == texts["b"]
        resumed.clear()
        with open_device(port=url, board=BOARD) as dev:
            model_upload.upload_model(dev, models["c"], BOARD, progress=lambda sent, total: resumed.append(sent))
        assert resumed[0] > models["c"].stat().st_size // 2  # what reached the store before the power went
        assert device_text(url) == texts["c"]
        # rollback: the one before answers again
        result = CliRunner().invoke(main, ["flash", "--board", BOARD, "--port", url, "--rollback"])
        assert result.exit_code == 0, result.output
        assert device_text(url) == texts["b"]
    finally:
        board.close()
    board = StandingBoard(BOARD, out_dir=build_dir).start()  # the rolled-back record holds after a restart
    try:
        assert device_text(board.url) == texts["b"]
    finally:
        board.close()


def test_a_corrupted_chunk_is_sent_again(build_dir, models, monkeypatch):
    monkeypatch.setattr(model_upload, "CHUNK_TIMEOUT", 2.0)
    with StandingBoard(BOARD, out_dir=build_dir) as board:
        with open_device(port=board.url, board=BOARD) as dev:
            send, spoiled = dev.send, []

            def noisy_send(type_, payload=b""):
                if type_ == P.MODEL_CHUNK and not spoiled and int.from_bytes(payload[:4], "little") >= 20_000:
                    frame = bytearray(P.encode(type_, payload))
                    frame[100] ^= 0x5A  # line noise: the frame's CRC fails and the device drops it
                    spoiled.append(payload[:4])
                    dev.stream.write(bytes(frame))
                    return
                send(type_, payload)
            dev.send = noisy_send
            model_upload.upload_model(dev, models["a"], BOARD)
        assert spoiled and device_text(board.url) == host_text(models["a"])


def test_a_model_that_does_not_fit_is_refused_before_upload(build_dir, tmp_path):
    big = write_synthetic(tmp_path / "big.gguf", "15m", "q8_0")  # 16.9 MB: more than a slot
    short_context = write_synthetic(tmp_path / "short.gguf", "tiny", "q8_0", vocab_size=512, max_seq_len=64)
    with StandingBoard(BOARD, out_dir=build_dir) as board:
        before = info(board.url)
        for model, message in ((big, r"16,873,216 bytes do not fit the device's model slot of [\d,]+ bytes"),
                               (short_context, "context of 64 tokens is shorter than the device's max_model_len")):
            result = CliRunner().invoke(main, ["flash", "--board", BOARD, "--port", board.url, "--model", str(model)])
            assert result.exit_code == 1
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
            assert re.search(message, lines[0]), lines[0]
        assert info(board.url)["model_slot"] == before["model_slot"]


def test_a_model_that_does_not_open_switches_back(build_dir, models):
    """Past the host's checks (frames sent by hand): the bytes arrive whole, the SHA-256
    holds, the switch happens, the runtime cannot open them: the record and the model go
    back, the ERROR says so, and the model before answers."""
    blob = b"not a model " * 100
    with StandingBoard(BOARD, out_dir=build_dir) as board:
        before = device_text(board.url), info(board.url)["model_slot"]
        with open_device(port=board.url, board=BOARD) as dev:
            begin = f"size={len(blob)}\nsha256={hashlib.sha256(blob).hexdigest()}\n".encode()
            assert P.parse_kv(dev.request(P.MODEL_BEGIN, begin, P.OK).payload[1:])["offset"] == "0"
            for at in range(0, len(blob), 500):
                dev.request(P.MODEL_CHUNK, at.to_bytes(4, "little") + blob[at:at + 500], P.OK)
            with pytest.raises(EdgeLlamaError, match="does not open here, so the one before is back: "):
                dev.request(P.MODEL_COMMIT, b"", P.OK)
        assert (device_text(board.url), info(board.url)["model_slot"]) == before


@pytest.mark.parametrize("name", ["mps2-an500", "mps2-an505", "qemu-virt-rv32"])
def test_the_other_cores_take_a_model_too(tmp_path, models, name):
    """mps2-an500 runs the AN386 port with PSRAM at 0x60000000, mps2-an505 (the Cortex-M33)
    its own port with PSRAM at 0x80000000: each keeps its store at the end of its PSRAM;
    the 32-bit RISC-V virt board at the end of its RAM. The machine's RAM is the build's
    model-store.bin, so the model outlives a restart of the emulator."""
    require_board(name)
    out = builder.build(name, None, quant="q8_0", out_dir=tmp_path / name).out_dir
    with StandingBoard(name, out_dir=out) as board:
        with open_device(port=board.url, board=name) as dev:
            after = model_upload.upload_model(dev, models["a"], name)
            assert after["model_slot"] == 1
            assert "".join(dev.generate(PROMPT, SAMPLED)) == host_text(models["a"])
    with StandingBoard(name, out_dir=out) as board:  # a new QEMU, booting from the store
        assert info(board.url, name)["model_slot"] == 1
