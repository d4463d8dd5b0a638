"""UF2, the file a board's USB bootloader takes by drag and drop (Microsoft's format, used
by the RP2040/RP2350 BOOTSEL drive): the image cut into 512-byte blocks, each carrying
256 bytes of payload and the flash address they go to.

    block = magic "UF2\\n" 0x9E5D5157 | flags | target address | payload size | block number
            | number of blocks | family id (flag 0x2000) | 476 bytes of data | magic 0x0AB16F30

all little-endian 32-bit words. The family id tells the bootloader which chip (and, on
the RP2350, which CPU and security state) the image is for; a board file names it in its
[uf2] table with the flash address the image starts at.
"""

import struct
from dataclasses import dataclass

from edgellama.errors import EdgeLlamaError

MAGIC_START0 = 0x0A324655  # "UF2\n"
MAGIC_START1 = 0x9E5D5157
MAGIC_END = 0x0AB16F30
FLAG_FAMILY_ID = 0x00002000
BLOCK_BYTES = 512
PAYLOAD_BYTES = 256          # what every writer uses: a flash page
DATA_BYTES = 476
HEADER = struct.Struct("<8I")

# the family ids the RP2350 bootrom knows (its datasheet, "UF2 targeting rules"), and the RP2040's
FAMILIES = {
    "rp2040": 0xE48BFF56,
    "absolute": 0xE48BFF57,
    "data": 0xE48BFF58,
    "rp2350-arm-s": 0xE48BFF59,
    "rp2350-riscv": 0xE48BFF5A,
    "rp2350-arm-ns": 0xE48BFF5B,
}


@dataclass(frozen=True)
class Target:
    family: str
    family_id: int
    base: int  # the flash address of the image's first byte


def target(table: dict, where: str) -> Target:
    """A board file's [uf2] table: family (a name of FAMILIES) and base (an address)."""
    unknown = sorted(set(table) - {"family", "base"})
    if unknown:
        raise EdgeLlamaError(f"{where} [uf2]: unknown field {unknown[0]!r}")
    family, base = table.get("family"), table.get("base")
    if family not in FAMILIES:
        raise EdgeLlamaError(f"{where} [uf2]: field 'family' must be one of {', '.join(FAMILIES)}, got {family!r}")
    if isinstance(base, bool) or not isinstance(base, int) or not 0 <= base < 1 << 32 or base % PAYLOAD_BYTES:
        raise EdgeLlamaError(f"{where} [uf2]: field 'base' must be a flash address, a multiple of 256, got {base!r}")
    return Target(family, FAMILIES[family], base)


def encode(image: bytes, base: int, family_id: int) -> bytes:
    """The UF2 file that writes `image` to flash from `base`."""
    chunks = [image[i:i + PAYLOAD_BYTES] for i in range(0, len(image), PAYLOAD_BYTES)] or [b""]
    if base + len(chunks) * PAYLOAD_BYTES > 1 << 32:
        raise EdgeLlamaError(f"uf2: an image of {len(image):,} bytes does not fit below 4 GiB from {base:#x}")
    blocks = []
    for number, chunk in enumerate(chunks):
        header = HEADER.pack(MAGIC_START0, MAGIC_START1, FLAG_FAMILY_ID, base + number * PAYLOAD_BYTES,
                             PAYLOAD_BYTES, number, len(chunks), family_id)
        data = chunk.ljust(DATA_BYTES, b"\0")  # a short last page is padded: flash takes whole pages
        blocks.append(header + data + struct.pack("<I", MAGIC_END))
    return b"".join(blocks)


@dataclass(frozen=True)
class Block:
    address: int
    number: int
    count: int
    family_id: int
    payload: bytes


def decode(blob: bytes, where: str = "uf2") -> list:
    """The blocks of a UF2 file, checked: magic numbers, block numbers in order, one block
    count, payloads inside the data area. EdgeLlamaError names the block and the field."""
    if not blob or len(blob) % BLOCK_BYTES:
        raise EdgeLlamaError(f"{where}: {len(blob)} bytes is not a whole number of 512-byte blocks")
    blocks = []
    for i in range(len(blob) // BLOCK_BYTES):
        raw = blob[i * BLOCK_BYTES:(i + 1) * BLOCK_BYTES]
        m0, m1, flags, address, size, number, count, family = HEADER.unpack_from(raw)
        end, = struct.unpack_from("<I", raw, BLOCK_BYTES - 4)
        if (m0, m1, end) != (MAGIC_START0, MAGIC_START1, MAGIC_END):
            raise EdgeLlamaError(f"{where}: block {i}: bad magic numbers")
        if not flags & FLAG_FAMILY_ID:
            raise EdgeLlamaError(f"{where}: block {i}: no family id (flag 0x2000 unset)")
        if size > DATA_BYTES:
            raise EdgeLlamaError(f"{where}: block {i}: payload size {size} is above {DATA_BYTES}")
        if number != i or (blocks and count != blocks[0].count) or count != len(blob) // BLOCK_BYTES:
            raise EdgeLlamaError(f"{where}: block {i}: numbered {number} of {count}")
        blocks.append(Block(address, number, count, family, raw[32:32 + size]))
    return blocks


def image_of(blocks: list) -> tuple:
    """(base address, bytes) of blocks that write one contiguous run of flash."""
    base = blocks[0].address
    for i, b in enumerate(blocks):
        if b.address != base + i * PAYLOAD_BYTES:
            raise EdgeLlamaError(f"uf2: block {i} writes {b.address:#x}, not {base + i * PAYLOAD_BYTES:#x}")
    return base, b"".join(b.payload for b in blocks)
