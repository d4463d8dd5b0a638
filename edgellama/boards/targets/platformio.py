"""The PlatformIO target: a PlatformIO project for boards with an Arduino core
(esp32-s3, rpi-pico2), built by PlatformIO itself.

`emit` writes the project into OUT/src (the project directory):

    OUT/src/platformio.ini          one environment named after the board
    OUT/src/data/model.gguf         the weights, assembled into flash by ...
    OUT/src/src/el_model_flash.S    ... .incbin, 32-byte aligned, in a .rodata section
    OUT/src/src/el_*.c, el_*.h      the runtime core (firmware/core)
    OUT/src/src/el_app_main.inc     the bare-metal main loop (firmware/apps/baremetal/main.c)
    OUT/src/src/el_app_arduino.c    that loop as an Arduino app (firmware/ports/arduino)
    OUT/src/src/el_port_arduino.cpp el_port.h over Arduino's Serial, the arena, setup()/loop()
    OUT/src/src/el_port.h

Placement. The weights go into flash on both boards, read in place: an .incbin in a
.rodata section lands in flash under every Arduino core's own linker script (XIP flash
on the RP2350, flash-mapped DROM on the ESP32-S3), and `.balign 32` keeps GGUF's tensor
alignment, which the runtime needs (F32 tensors are read as float arrays). espressif32's
documented `board_build.embed_files` was not used: for the Arduino framework it runs
objcopy on the raw file (builder/frameworks/_embed_files.py), which gives the data no
alignment and names the symbols after the file's path rather than the ones the main
loop reads. The arena goes where the planner puts it: in SRAM (a static buffer) when it
fits there, else in PSRAM, allocated at boot with ps_malloc (BOARD_HAS_PSRAM; on the
ESP32-S3 N16R8 the octal PSRAM also needs board_build.arduino.memory_type = qio_opi).

Models over the serial line. After the first upload with PlatformIO, `edgellama flash
--port PORT --model M` replaces the model with no vendor tool (firmware/apps/common/
el_updater.h): the main loop keeps two slots and a boot record in flash, the ESP32-S3's
'spiffs' data partition (3.4 MB in default_16MB.csv) or, on the RP2350, the flash its
board file keeps with `model_store` (the Arduino-Pico core's filesystem region, sized by
board_build.filesystem_size, taken from the image's room by the planner, or left to the
image when its own model needs it; no filesystem is mounted on it). The port erases and programs that flash in 4 KiB units.

`compile` runs `pio run -d OUT/src`. PlatformIO fetches its platform, framework and
compiler from its own registry on first use; where it cannot (no network), the error
says so in PlatformIO's own words (pio's HTTPClientError often has none, so the error
adds whether the registry's name resolves) and how to build the same project elsewhere:
`edgellama export-c` writes it, `pio run -d DIR/src` builds it.

Options from the board's [platformio] table besides platform, board and framework are
written into the environment as they are (and override the defaults below), so a
board file can carry any PlatformIO option, e.g. "board_build.core" = "earlephilhower".
"""

import concurrent.futures
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from edgellama.boards import uf2
from edgellama.boards.catalog import esp32_partition_table
from edgellama.boards.planner import model_store_kept
from edgellama.boards.targets import BuildContext, compiler_message, copy_core, copy_sources
from edgellama.boards.targets.baremetal import model_crc32 as baremetal_model_crc32
from edgellama.errors import EdgeLlamaError
from edgellama.runtime import build as runtime_build

DATA_DIR = "data"
MODEL_FILE = "model.gguf"
APP_INCLUDE = "el_app_main.inc"
PORT_FILES = ("el_app_arduino.c", "el_port_arduino.cpp", "el_model_flash.S")
# flags for the project's own sources only (build_src_flags): the runtime's float
# rules (no FMA contraction: both boards' FPUs have fused multiply-add) and -O2
SRC_CFLAGS = ["-O2", "-ffp-contract=off", "-fno-fast-math"]
RAM_RESERVE = 96 * 1024        # SRAM for the stack, the core and its heap (as the planner counts)
MCU_MAX_SEQS = 1                # the planner's sequences at once on MCUs
MCU_MAX_BATCH_TOKENS = 8        # the planner's rows per forward step on MCUs
PIO_TIMEOUT = 3600              # a first build downloads a compiler and a framework
REGISTRY_HOST = "api.registry.platformio.org"


# ---------------------------------------------------------------- the project

def project_dir(ctx: BuildContext) -> Path:
    return ctx.src_dir


def env_name(ctx: BuildContext) -> str:
    return ctx.board.name


def arena_bytes(ctx: BuildContext) -> int:
    board = ctx.board
    arena = ctx.options.arena_bytes or board.arena
    if not arena:  # as the planner does without [runtime] arena: the larger of free SRAM and PSRAM
        arena = max(board.ram - RAM_RESERVE, board.psram)
    return int(arena)


def arena_in_psram(ctx: BuildContext) -> bool:
    """PSRAM when the arena does not fit SRAM beside the program (the planner's rule)."""
    board = ctx.board
    arena = arena_bytes(ctx)
    if arena <= board.ram - RAM_RESERVE:
        return False
    if arena <= board.psram:
        return True
    raise EdgeLlamaError(f"board {board.name}: an arena of {arena:,} bytes fits neither its SRAM "
                         f"({board.ram:,} bytes less {RAM_RESERVE // 1024} KiB) nor its PSRAM ({board.psram:,} bytes)")


def _define(name: str, value) -> str:
    if isinstance(value, str):
        return f'-D{name}=\\"{value}\\"'  # PlatformIO's documented form for a string macro
    return f"-D{name}={value}"


def src_flags(ctx: BuildContext) -> list:
    """build_src_flags: the runtime's float rules, the weights' directory, the main loop's settings."""
    return [
        *SRC_CFLAGS,
        f"-I$PROJECT_DIR/{DATA_DIR}",  # where .incbin finds the model
        _define("EL_BOARD_NAME", ctx.board.name),
        _define("EL_ARENA_BYTES", arena_bytes(ctx)),
        _define("EL_ARENA_PSRAM", int(arena_in_psram(ctx))),
        *engine_defines(ctx),
        _define("EL_BAUD", ctx.board.reach.baud),
        _define("EL_SERVE_CONSTRAINT_BYTES", ctx.board.constraint_bytes),
        f"-DEL_MODEL_CRC32=0x{baremetal_model_crc32(ctx.model_path):08x}u",  # checked at boot (main.c)
        *([_define("EL_PORT_MODEL_STORE", 1)] if has_model_store(ctx) else []),
    ]


def model_store_bytes(ctx: BuildContext) -> int:
    """The RP2350's store: its board file's model_store, unless the image's own model needs
    that flash (the planner's rule)."""
    return model_store_kept(ctx.board, ctx.model_path.stat().st_size)


def has_model_store(ctx: BuildContext) -> bool:
    """Models over the serial line, kept in flash (el_port_arduino.cpp): an ESP32's 'spiffs'
    partition, or the flash an RP2350 board file keeps (model_store, the core's filesystem region)."""
    return ctx.board.espressif32 or bool(model_store_bytes(ctx))


def engine_defines(ctx: BuildContext) -> list:
    """The engine options as the -D defines the bare-metal main loop reads (main.c).
    threads has none: the Arduino app runs the plain loop (the plan says 1)."""
    options = ctx.options
    return [
        _define("EL_BLOCK_SIZE", options.block_size or ctx.board.kv_block_size),
        _define("EL_MAX_MODEL_LEN", options.max_model_len),
        _define("EL_KV_DTYPE", options.kv_dtype_code),
        _define("EL_MAX_SEQS", options.max_seqs or MCU_MAX_SEQS),
        _define("EL_MAX_BATCH_TOKENS", options.max_batch_tokens or MCU_MAX_BATCH_TOKENS),
        _define("EL_KV_CACHE_BYTES", options.kv_cache_bytes),
        _define("EL_SPECULATIVE_TOKENS", options.speculative_tokens),
        _define("EL_PROMPT_LOOKUP_MAX", options.prompt_lookup_max),
        _define("EL_PROMPT_LOOKUP_MIN", options.prompt_lookup_min),
    ]


def board_flags(ctx: BuildContext) -> list:
    """build_flags (seen by the Arduino core too): PSRAM and the USB serial port."""
    flags = []
    if ctx.board.espressif32:
        if ctx.board.psram:
            flags.append("-DBOARD_HAS_PSRAM")  # the core initialises PSRAM and ps_malloc works
        if any(usb.lower().startswith("303a:") for usb in ctx.board.reach.usb):
            # reached through the chip's own USB (Espressif's VID): Serial is USB CDC
            flags += ["-DARDUINO_USB_MODE=1", "-DARDUINO_USB_CDC_ON_BOOT=1"]
    return flags


def _pio_size(n: int) -> str:
    """A size as PlatformIO's platform scripts read it: "2m", "512k" or bytes."""
    for suffix, unit in (("m", 1 << 20), ("k", 1 << 10)):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def _esp_flash_name(n: int) -> str:
    return f"{n >> 20}MB"


def board_options(ctx: BuildContext) -> list:
    """(option, value) pairs beyond platform/board/framework: the platform's defaults for
    the board's flash and PSRAM, then the board file's own options (which win)."""
    board = ctx.board
    options = {}
    if ctx.board.espressif32:
        if board.flash:
            options["board_upload.flash_size"] = _esp_flash_name(board.flash)
            # an app partition that holds the weights: 6.25 MiB on 16 MiB, 3.2 MiB on 8, 3 MiB on 4
            # (the platform takes the firmware's size limit from this table; the planner, too)
            options["board_build.partitions"] = esp32_partition_table(board.flash)[0]
        if board.psram:
            # the SDK build for the module's memories: quad flash with octal PSRAM (the
            # 8 MiB modules, N16R8/N8R8) or quad PSRAM (the 2 MiB ones)
            options["board_build.arduino.memory_type"] = "qio_opi" if board.psram >= 8 << 20 else "qio_qspi"
            options["board_build.flash_mode"] = "qio"
    elif model_store_bytes(ctx):
        # the Arduino-Pico core's filesystem region (_FS_start.._FS_end): the model store
        options["board_build.filesystem_size"] = _pio_size(model_store_bytes(ctx))
    for key, value in board.platformio.items():
        if key in ("platform", "board", "framework"):
            continue
        if isinstance(value, list):
            value = "\n".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        options[key] = str(value)
    return list(options.items())


def _ini_value(value: str) -> str:
    lines = str(value).splitlines() or [""]
    if len(lines) == 1:
        return lines[0]
    return "\n" + "\n".join(f"    {line}" for line in lines)


def platformio_ini_text(ctx: BuildContext) -> str:
    board = ctx.board
    pio = board.platformio
    for key in ("platform", "board", "framework"):
        if not isinstance(pio.get(key), str) or not pio.get(key):
            raise EdgeLlamaError(f"board {board.name}: [platformio] needs a {key!r} string")
    if pio["framework"] != "arduino":
        raise EdgeLlamaError(f"board {board.name}: the PlatformIO target builds the Arduino framework only, "
                             f"not {pio['framework']!r}")
    env = env_name(ctx)
    psram = arena_in_psram(ctx)
    lines = [
        f"; edgellama for {board.name}: {board.description}",
        "; Generated by edgellama; `edgellama build` runs `pio run` on this project.",
        ";",
        ";   pio run                  build (PlatformIO fetches the platform and compiler on first use)",
        ";   pio run -t upload        build and flash the board",
        ";   pio device monitor       talk to it: type a prompt line, get the completion and a [stats] line",
        ";",
        f"; Weights: {DATA_DIR}/{MODEL_FILE} in flash, assembled by src/el_model_flash.S (.incbin, 32-byte",
        "; aligned). The assembler does not track that file: after replacing it, run `pio run -t clean`.",
        f"; Arena: {arena_bytes(ctx):,} bytes in " + ("PSRAM (ps_malloc at boot)." if psram else "SRAM (a static buffer)."),
        "; Models over the serial line (`edgellama flash --port PORT --model M`) go to flash: "
        + ("the 'spiffs' partition." if ctx.board.espressif32 else
           "the filesystem region (board_build.filesystem_size)." if model_store_bytes(ctx) else "not in this image."),
        "",
        "[platformio]",
        f"default_envs = {env}",
        "",
        f"[env:{env}]",
        f"platform = {pio['platform']}",
        f"board = {pio['board']}",
        f"framework = {pio['framework']}",
        f"monitor_speed = {board.reach.baud}",
    ]
    lines += [f"{key} = {_ini_value(value)}" for key, value in board_options(ctx)]
    flags = board_flags(ctx)
    if flags:
        lines.append("build_flags =" + "".join(f"\n    {f}" for f in flags))
    lines.append("build_src_flags =" + "".join(f"\n    {f}" for f in src_flags(ctx)))
    return "\n".join(lines) + "\n"


def validate_ini(path) -> list:
    """Check platformio.ini with PlatformIO's own parser (offline); returns its warnings.
    Raises EdgeLlamaError on an error; returns None when PlatformIO is not installed."""
    if importlib.util.find_spec("platformio") is None:
        return None
    from platformio.exception import PlatformioException
    from platformio.project.config import ProjectConfig
    try:
        config = ProjectConfig(str(path), expand_interpolations=True)
        config.validate(silent=True)
        config.as_tuple()  # reads every option as its declared type
    except (PlatformioException, ValueError) as e:
        raise EdgeLlamaError(f"{path}: PlatformIO rejects it: {type(e).__name__}: {e}") from None
    return list(config.warnings)


def emit(ctx: BuildContext) -> list:
    project = project_dir(ctx)
    src = project / "src"
    firmware = runtime_build.firmware_dir()
    files = copy_core(src)
    app = firmware / "apps" / "baremetal"
    files += copy_sources([app / "el_port.h"], src)
    files += copy_sources(runtime_build.protocol_files(), src)
    shutil.copyfile(app / "main.c", src / APP_INCLUDE)
    files.append(src / APP_INCLUDE)
    files += copy_sources([firmware / "ports" / "arduino" / name for name in PORT_FILES], src)
    (project / DATA_DIR).mkdir(parents=True, exist_ok=True)
    model = project / DATA_DIR / MODEL_FILE
    shutil.copyfile(ctx.model_path, model)
    files.append(model)
    ini = project / "platformio.ini"
    ini.write_text(platformio_ini_text(ctx), encoding="utf-8")
    files.append(ini)
    warnings = validate_ini(ini)
    if warnings:
        raise EdgeLlamaError(f"{ini}: PlatformIO warns: {'; '.join(warnings)}")
    ctx.manifest["flags"] = {"cflags": src_flags(ctx), "ldflags": [], "build_flags": board_flags(ctx)}
    ctx.manifest["platformio"] = {
        "project": project.relative_to(ctx.out_dir).as_posix(), "env": env_name(ctx),
        "platform": ctx.board.platformio["platform"], "board": ctx.board.platformio["board"],
        "framework": ctx.board.platformio["framework"],
        "weights": f"flash (.incbin of {DATA_DIR}/{MODEL_FILE}, src/el_model_flash.S)",
        "arena": {"bytes": arena_bytes(ctx), "in": "PSRAM" if arena_in_psram(ctx) else "SRAM"},
        "model_store": ("the 'spiffs' data partition" if ctx.board.espressif32 else
                        f"{model_store_bytes(ctx):,} bytes of flash (the core's filesystem region)"
                        if model_store_bytes(ctx) else "none"),
    }
    return files


# ---------------------------------------------------------------- building

def pio_command() -> list | None:
    """How to run PlatformIO here: `pio` on PATH, else this Python's platformio module."""
    exe = shutil.which("pio") or shutil.which("platformio")
    if exe:
        return [exe]
    if importlib.util.find_spec("platformio") is not None:
        return [sys.executable, "-m", "platformio"]
    return None


def _resolve_error(host: str, timeout: float = 5.0) -> str | None:
    """Why `host` does not resolve here, or None when it does."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(socket.getaddrinfo, host, 443).result(timeout=timeout)
        return None
    except concurrent.futures.TimeoutError:
        return f"no DNS answer in {timeout:.0f} s"
    except OSError as e:
        return str(e)
    finally:
        pool.shutdown(wait=False)


FETCH_RE = re.compile(r"^(Platform|Tool|Library|Package) Manager: Installing (\S+)", re.MULTILINE)
ERROR_RE = re.compile(r"^(?:(\w+(?:Error|Exception)):\s*(.*)|(fatal: .*)|(Error: .*))$", re.MULTILINE)


def fetch_failure(output: str) -> str | None:
    """When pio failed while installing a package (rather than compiling): what it was
    fetching and the error it printed, in PlatformIO's own words; else None."""
    installing = FETCH_RE.findall(output)
    if not installing or re.search(r"^Compiling ", output, re.MULTILINE):
        return None
    what = installing[-1][1]
    errors = [m.group(0).strip() for m in ERROR_RE.finditer(output)]
    said = "; ".join(dict.fromkeys(errors[-2:])) or "no error message"
    reason = f"{what}: pio said `{said}`"
    if "HTTPClientError" in said or "InternetConnectionError" in said:
        # pio's HTTPClientError often carries no text; say what the network does
        why = _resolve_error(REGISTRY_HOST)
        reason += f"; {REGISTRY_HOST} does not resolve here ({why})" if why else f"; {REGISTRY_HOST} resolves here"
    return reason


def firmware_files(ctx: BuildContext) -> list:
    build = project_dir(ctx) / ".pio" / "build" / env_name(ctx)
    return [p for p in (build / f"firmware.{ext}" for ext in ("bin", "uf2", "elf")) if p.is_file()]


def build_command(ctx: BuildContext) -> str:
    """The shell command that builds an exported project (it has platformio.ini, no Makefile)."""
    return f"pio run -d {project_dir(ctx)}"


def how_to_build(ctx: BuildContext) -> str:
    """Where the project is and the command that builds it. `build` removes its directory
    when compiling fails, so the project to keep is the one `export-c` writes."""
    return (f"build the generated project where PlatformIO can reach its registry: `edgellama export-c --board "
            f"{ctx.board.name} -o DIR` writes it (this run's copy: {project_dir(ctx)}), then `pio run -d DIR/src` "
            f"builds it (`pio run -d DIR/src -t upload` flashes the board)")


def compile(ctx: BuildContext) -> list:
    project = project_dir(ctx)
    how = how_to_build(ctx)
    pio = pio_command()
    if pio is None:
        raise EdgeLlamaError(f"board {ctx.board.name}: PlatformIO is not installed (pip install platformio, or "
                             f"edgellama toolchains install platformio); {how}")
    cmd = [*pio, "run", "-d", str(project)]
    try:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=PIO_TIMEOUT,
                                env=dict(os.environ, PLATFORMIO_NO_ANSI="true"))
    except subprocess.TimeoutExpired:
        raise EdgeLlamaError(f"board {ctx.board.name}: `pio run -d {project}` did not finish in {PIO_TIMEOUT} s; "
                             f"{how}") from None
    output = result.stdout + result.stderr
    if result.returncode != 0:
        fetch = fetch_failure(output)
        if fetch:
            raise EdgeLlamaError(f"board {ctx.board.name}: PlatformIO could not fetch what it builds with ({fetch}), "
                                 f"so nothing was compiled; {how}")
        raise EdgeLlamaError(f"board {ctx.board.name}: `pio run -d {project}` failed: {compiler_message(output)}")
    built = firmware_files(ctx)
    if not built:
        raise EdgeLlamaError(f"board {ctx.board.name}: `pio run` succeeded but left no firmware in "
                             f"{project / '.pio' / 'build' / env_name(ctx)}")
    artifacts = []
    for path in built:
        dest = ctx.out_dir / path.name
        shutil.copyfile(path, dest)
        artifacts.append(dest)
    return artifacts + uf2_artifacts(ctx, artifacts)


def uf2_artifacts(ctx: BuildContext, artifacts: list) -> list:
    """For a board with a UF2 bootloader ([uf2] in its file): firmware.uf2 beside
    firmware.bin, written from it when PlatformIO made none, and checked either way (the
    family id the board's bootloader wants, blocks that write the image from its base)."""
    target = ctx.board.uf2
    by_name = {p.name: p for p in artifacts}
    if target is None or "firmware.bin" not in by_name:
        return []
    path = ctx.out_dir / "firmware.uf2"
    if "firmware.uf2" not in by_name:
        path.write_bytes(uf2.encode(by_name["firmware.bin"].read_bytes(), target.base, target.family_id))
    blocks = uf2.decode(path.read_bytes(), str(path))
    wrong = [b.family_id for b in blocks if b.family_id not in (target.family_id, uf2.FAMILIES["absolute"])]
    if wrong:
        raise EdgeLlamaError(f"{path}: family id {wrong[0]:#x}, but board {ctx.board.name} boots "
                             f"{target.family} ({target.family_id:#x})")
    return [] if "firmware.uf2" in by_name else [path]


def run_command(ctx: BuildContext, args: list) -> list:
    reach = ctx.board.reach
    raise EdgeLlamaError(f"board {ctx.board.name} is a PlatformIO board reached by {reach.kind} "
                         f"({reach.baud} baud), not an emulator: flash it with `pio run -d {project_dir(ctx)} "
                         f"-t upload`, then type prompts into its serial port (`pio device monitor`)")
