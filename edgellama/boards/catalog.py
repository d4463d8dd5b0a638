"""The board catalog: one TOML file per board in boards/, checked against a schema.

Adding a board is adding a file. Sizes may be written as integers (bytes) or as
strings with a unit ("512KiB", "4MiB", "16GB").
"""

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgellama.boards import uf2
from edgellama.errors import EdgeLlamaError
from edgellama.resources import share_dir

OS_KINDS = ("linux", "baremetal", "platformio")
REACH_KINDS = ("ssh", "serial", "emulator")
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
MCU_CONSTRAINT_BYTES = 8 << 10  # a microcontroller's structured-output buffer unless its file says


def protocol_constraint_bytes() -> int:
    """EL_SERVE_CONSTRAINT_BYTES's default, read from el_protocol.h (its one source): the
    structured-output buffer of the protocol server on this machine and Linux boards."""
    header = share_dir("firmware") / "apps" / "common" / "el_protocol.h"
    for line in header.read_text(encoding="utf-8").splitlines():
        if line.startswith("#define EL_SERVE_CONSTRAINT_BYTES "):
            return int(line.split()[2])
    raise EdgeLlamaError(f"{header}: no EL_SERVE_CONSTRAINT_BYTES")


@dataclass
class Reach:
    kind: str                        # ssh, serial or emulator
    emulator: str = ""               # emulator program: qemu-aarch64, qemu-system-arm, ...
    machine: str = ""                # qemu-system machine
    cpu: str = ""                    # emulated CPU
    apt: list = field(default_factory=list)   # Debian packages that provide the emulator
    baud: int = 115200
    usb: list = field(default_factory=list)   # "VID:PID" strings for auto-detection
    emulator_args: list = field(default_factory=list)  # flags the machine needs beyond -M and -cpu
    store_file: bool = False         # the emulated machine's RAM (a model store) kept in the build's model-store.bin


@dataclass
class Board:
    name: str
    description: str
    arch: str
    cpu: str
    cflags: list
    os: str
    toolchain: str
    ram: int
    reach: Reach
    storage: int = 0
    flash: int = 0
    psram: int = 0
    psram_base: int = 0              # where the port's PSRAM starts when not at its link.ld's default
    model_store: int = 0             # PlatformIO: flash kept for models sent over the serial line (not the image's)
    clock_mhz: int = 0
    threads: int = 1
    kv_block_size: int = 16
    arena: int = 0
    constraint_bytes: int = 0        # the largest structured-output automaton its server holds (0: default)
    platformio: dict = field(default_factory=dict)
    port: str = ""                   # bare metal: the folder in firmware/ports/ (default: the name)
    uf2: object = None               # a UF2 bootloader's target (boards/uf2.py Target), None when it has none
    path: Path | None = None

    @property
    def emulated(self) -> bool:
        return self.reach.kind == "emulator"

    @property
    def espressif32(self) -> bool:
        """A PlatformIO board on the espressif32 platform (an ESP32 and its partition table)."""
        return self.os == "platformio" and platform_name(self.platformio.get("platform", "")) == "espressif32"

    @property
    def image_flash(self) -> int:
        """The flash one image (program and weights) may fill: an ESP32's app partition,
        elsewhere the whole flash (0 when the board has none)."""
        return esp32_partition_table(self.flash)[1] if self.espressif32 and self.flash else self.flash


def platform_name(platform: str) -> str:
    """espressif32 for "espressif32", "platformio/espressif32@6.9.0" or a URL to a fork."""
    name = platform.strip().split("@")[0].rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"\.(git|zip|tar\.gz)$", "", name)
    return re.sub(r"^platform-", "", name).lower()


# The Arduino-ESP32 partition table an ESP32 build gets for its flash size, and the size
# of its app partition, which holds the image (tools/partitions/*.csv in arduino-esp32):
# two OTA apps and a 'spiffs' partition (the model store) on 16 and 8 MiB, one big app on 4 MiB.
ESP32_PARTITION_TABLES = ((16 << 20, "default_16MB.csv", 0x640000), (8 << 20, "default_8MB.csv", 0x330000),
                          (0, "huge_app.csv", 0x300000))


def esp32_partition_table(flash: int) -> tuple:
    """(table file, app partition bytes) for an ESP32 with `flash` bytes."""
    return next((name, app) for least, name, app in ESP32_PARTITION_TABLES if flash >= least)


def parse_size(value, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B|B)?\s*", value)
        if m:
            return int(m.group(1)) * UNITS[m.group(2) or ""]
    raise EdgeLlamaError(f"{where}: expected a size such as 4096, \"512KiB\" or \"4MiB\", got {value!r}")


def _get(table: dict, key: str, kind, where: str, default=None, required=True):
    if key not in table:
        if required:
            raise EdgeLlamaError(f"{where}: missing field {key!r}")
        return default
    value = table[key]
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise EdgeLlamaError(f"{where}: field {key!r} must be a list of strings")
    elif kind is int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise EdgeLlamaError(f"{where}: field {key!r} must be a non-negative integer")
    elif not isinstance(value, kind):
        raise EdgeLlamaError(f"{where}: field {key!r} must be a {kind.__name__}")
    return value


def _port(data: dict, os_kind: str, where: str) -> str:
    """The board's folder in firmware/ports/: bare-metal boards only, named after the board
    unless it shares another board's port (same chip, another name)."""
    if os_kind != "baremetal":
        if "port" in data:
            raise EdgeLlamaError(f"{where}: field 'port' is only for os = \"baremetal\"")
        return ""
    port = _get(data, "port", str, where, _get(data, "name", str, where), False)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", port):
        raise EdgeLlamaError(f"{where}: field 'port' must be a folder name in firmware/ports/, got {port!r}")
    return port


def load_board(path) -> Board:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeLlamaError(f"{path}: cannot read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgeLlamaError(f"{path}: not valid TOML ({e})") from None
    where = str(path)
    known = {"name", "description", "arch", "cpu", "cflags", "os", "toolchain", "ram", "storage", "flash", "psram",
             "clock_mhz", "reach", "runtime", "platformio", "port", "uf2", "psram_base", "model_store"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise EdgeLlamaError(f"{where}: unknown field {unknown[0]!r}")
    os_kind = _get(data, "os", str, where)
    if os_kind not in OS_KINDS:
        raise EdgeLlamaError(f"{where}: field 'os' must be one of {', '.join(OS_KINDS)}, got {os_kind!r}")
    reach_table = _get(data, "reach", dict, where)
    reach_where = f"{where} [reach]"
    kind = _get(reach_table, "kind", str, reach_where)
    if kind not in REACH_KINDS:
        raise EdgeLlamaError(f"{reach_where}: field 'kind' must be one of {', '.join(REACH_KINDS)}, got {kind!r}")
    reach = Reach(kind, _get(reach_table, "emulator", str, reach_where, "", kind == "emulator"),
                  _get(reach_table, "machine", str, reach_where, "", False),
                  _get(reach_table, "cpu", str, reach_where, "", False),
                  _get(reach_table, "apt", list, reach_where, [], False),
                  _get(reach_table, "baud", int, reach_where, 115200, False),
                  _get(reach_table, "usb", list, reach_where, [], False),
                  _get(reach_table, "emulator_args", list, reach_where, [], False),
                  _get(reach_table, "store_file", bool, reach_where, False, False))
    for vid_pid in reach.usb:
        if not re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}", vid_pid):
            raise EdgeLlamaError(f"{reach_where}: usb entry {vid_pid!r} is not VID:PID in hex")
    if reach.emulator_args and kind != "emulator":
        raise EdgeLlamaError(f"{reach_where}: field 'emulator_args' is only for kind = \"emulator\"")
    runtime = _get(data, "runtime", dict, where, {}, False)
    run_where = f"{where} [runtime]"
    board = Board(
        name=_get(data, "name", str, where), description=_get(data, "description", str, where),
        arch=_get(data, "arch", str, where), cpu=_get(data, "cpu", str, where),
        cflags=_get(data, "cflags", list, where), os=os_kind, toolchain=_get(data, "toolchain", str, where),
        ram=parse_size(_get(data, "ram", (int, str), where), f"{where}: field 'ram'"), reach=reach,
        storage=parse_size(data.get("storage", 0), f"{where}: field 'storage'"),
        flash=parse_size(data.get("flash", 0), f"{where}: field 'flash'"),
        psram=parse_size(data.get("psram", 0), f"{where}: field 'psram'"),
        psram_base=_get(data, "psram_base", int, where, 0, False),
        model_store=parse_size(data.get("model_store", 0), f"{where}: field 'model_store'"),
        clock_mhz=_get(data, "clock_mhz", int, where, 0, False),
        threads=_get(runtime, "threads", int, run_where, 1, False),
        kv_block_size=_get(runtime, "kv_block_size", int, run_where, 16, False),
        arena=parse_size(runtime.get("arena", 0), f"{run_where}: field 'arena'"),
        constraint_bytes=parse_size(runtime.get("constraint_bytes", 0), f"{run_where}: field 'constraint_bytes'"),
        platformio=_get(data, "platformio", dict, where, {}, os_kind == "platformio"),
        port=_port(data, os_kind, where),
        uf2=uf2.target(_get(data, "uf2", dict, where), where) if "uf2" in data else None, path=path)
    if board.name != path.stem:
        raise EdgeLlamaError(f"{where}: field 'name' is {board.name!r} but the file is named {path.stem}.toml")
    if reach.store_file and (kind != "emulator" or not (board.psram or not board.flash)):
        raise EdgeLlamaError(f"{reach_where}: field 'store_file' is for an emulated board whose machine RAM is its "
                             "PSRAM, or its only memory (that RAM kept in a file)")
    if board.model_store and (os_kind != "platformio" or board.model_store >= board.flash):
        raise EdgeLlamaError(f"{where}: field 'model_store' is flash a PlatformIO board keeps for models sent over "
                             "the line, less than its flash (a bare-metal port places its store in link.ld)")
    if board.kv_block_size < 1:
        raise EdgeLlamaError(f"{run_where}: field 'kv_block_size' must be at least 1")
    if not board.constraint_bytes:
        board.constraint_bytes = protocol_constraint_bytes() if os_kind == "linux" else MCU_CONSTRAINT_BYTES
    if not 264 < board.constraint_bytes <= 1 << 24:
        raise EdgeLlamaError(f"{run_where}: field 'constraint_bytes' must be above 264 bytes and at most 16 MiB")
    return board


def boards_dir() -> Path:
    return share_dir("boards")


def all_boards() -> list:
    return [load_board(p) for p in sorted(boards_dir().glob("*.toml"))]


def get_board(name: "str | Board") -> Board:
    """The board of that name (a Board passes through, so a caller that has one never
    looks it up again)."""
    if isinstance(name, Board):
        return name
    path = boards_dir() / f"{name}.toml"
    if not path.is_file():
        names = [p.stem for p in sorted(boards_dir().glob("*.toml"))]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known boards: {', '.join(names)}"
        raise EdgeLlamaError(f"--board: unknown board {name!r}; {hint}")
    return load_board(path)
