"""UF2 files for the RP2350's BOOTSEL drive (edgellama/boards/uf2.py): the writer's
output read back by a reader written here from the format's description (block layout,
magic numbers, the RP2350 Arm Secure family id), corruptions refused with the block
named, and the PlatformIO target writing firmware.uf2 beside firmware.bin."""

import random
import struct

import pytest

from edgellama.boards import uf2
from edgellama.boards.catalog import get_board, load_board
from edgellama.boards.targets import BuildContext
from edgellama.boards.targets import platformio as pio_target
from edgellama.boards.toolchains import get_toolchain
from edgellama.errors import EdgeLlamaError

RP2350_ARM_S = 0xE48BFF59  # the RP2350 datasheet's "rp2350_arm_s" family


def read_by_the_spec(blob: bytes) -> list:
    """(address, block number, count, family, payload) of each 512-byte block, read field by
    field as the UF2 description lays them out, little-endian."""
    assert len(blob) % 512 == 0
    out = []
    for i in range(0, len(blob), 512):
        block = blob[i:i + 512]
        assert block[0:4] == b"UF2\n"
        assert struct.unpack_from("<I", block, 4)[0] == 0x9E5D5157
        assert struct.unpack_from("<I", block, 508)[0] == 0x0AB16F30
        flags, address, size, number, count, family = struct.unpack_from("<6I", block, 8)
        assert flags & 0x2000 and size <= 476
        assert block[32 + size:508] == bytes(476 - size)
        out.append((address, number, count, family, block[32:32 + size]))
    return out


@pytest.mark.parametrize("size", [1, 255, 256, 257, 4096 + 17])
def test_the_writer_follows_the_format(size):
    image = random.Random(size).randbytes(size)
    blob = uf2.encode(image, 0x10000000, RP2350_ARM_S)
    blocks = read_by_the_spec(blob)
    assert len(blocks) == -(-size // 256)
    for i, (address, number, count, family, payload) in enumerate(blocks):
        assert (address, number, count, family) == (0x10000000 + 256 * i, i, len(blocks), RP2350_ARM_S)
        assert payload == image[256 * i:256 * (i + 1)].ljust(256, b"\0")
    assert uf2.image_of(uf2.decode(blob))[0] == 0x10000000
    assert uf2.image_of(uf2.decode(blob))[1][:size] == image


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:-1], "not a whole number of 512-byte blocks"),
    (lambda b: b[:512] + b"X" + b[513:], "block 1: bad magic numbers"),
    (lambda b: b[:512 + 20] + struct.pack("<I", 7) + b[512 + 24:], "block 1: numbered 7 of 3"),
    (lambda b: b[:8] + struct.pack("<I", 0) + b[12:], "block 0: no family id"),
    (lambda b: b[:16] + struct.pack("<I", 477) + b[20:], "payload size 477"),
])
def test_a_corrupt_file_names_the_block(corrupt, message):
    blob = uf2.encode(bytes(600), 0x10000000, RP2350_ARM_S)
    with pytest.raises(EdgeLlamaError, match=message):
        uf2.decode(corrupt(blob), "f.uf2")


def test_the_pico2_board_file_names_the_rp2350_target(tmp_path):
    target = get_board("rpi-pico2").uf2
    assert (target.family_id, target.base) == (RP2350_ARM_S, 0x10000000)
    text = get_board("rpi-pico2").path.read_text()
    for bad, message in (('family = "rp2350"', "field 'family' must be one of"), ("base = 0x10000001", "multiple of 256")):
        key = bad.split(" ")[0]
        lines = [bad if line.startswith(key + " ") else line for line in text.splitlines()]
        (tmp_path / "rpi-pico2.toml").write_text("\n".join(lines))
        with pytest.raises(EdgeLlamaError, match=message):
            load_board(tmp_path / "rpi-pico2.toml")


def test_the_platformio_build_writes_firmware_uf2(tmp_path):
    """What `build --board rpi-pico2` does after `pio run` left firmware.bin (PlatformIO's
    registry is out of reach here, so its output is stood in by bytes of that name)."""
    board = get_board("rpi-pico2")
    ctx = BuildContext(board, get_toolchain(board.toolchain), tmp_path / "model.gguf", "q8_0", tmp_path)
    image = random.Random(1).randbytes(10_000)
    (tmp_path / "firmware.bin").write_bytes(image)
    made = pio_target.uf2_artifacts(ctx, [tmp_path / "firmware.bin"])
    assert made == [tmp_path / "firmware.uf2"]
    blocks = read_by_the_spec(made[0].read_bytes())
    assert {b[3] for b in blocks} == {RP2350_ARM_S} and blocks[0][0] == 0x10000000
    assert b"".join(b[4] for b in blocks)[:len(image)] == image
    # a UF2 PlatformIO made for another chip is refused, naming both families
    (tmp_path / "firmware.uf2").write_bytes(uf2.encode(image, 0x10000000, uf2.FAMILIES["rp2040"]))
    with pytest.raises(EdgeLlamaError, match="family id 0xe48bff56, but board rpi-pico2 boots rp2350-arm-s"):
        pio_target.uf2_artifacts(ctx, [tmp_path / "firmware.bin", tmp_path / "firmware.uf2"])
    assert pio_target.uf2_artifacts(ctx, [tmp_path / "firmware.bin"]) == [tmp_path / "firmware.uf2"]
    esp = get_board("esp32-s3")
    assert pio_target.uf2_artifacts(BuildContext(esp, get_toolchain(esp.toolchain), tmp_path / "m.gguf", "q8_0",
                                                 tmp_path), [tmp_path / "firmware.bin"]) == []
