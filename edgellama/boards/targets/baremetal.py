"""The bare-metal target: one firmware image (runtime, main loop, board port, model)
for a microcontroller or an emulated machine, talking over the board's UART.

The output directory:

    OUT/firmware.elf  OUT/firmware.bin  OUT/model.gguf  OUT/manifest.json
    OUT/src/Makefile  OUT/src/config.mk
    OUT/src/core/     the runtime (firmware/core)
    OUT/src/app/      the main loop, the framed protocol, the port interface, memcpy & co,
                      the model's .incbin
    OUT/src/port/     the board's startup code, UART driver, linker script, port.mk

`compile` runs the emitted Makefile (what a user runs with `make` in OUT/src). The model
is linked in byte for byte with `.incbin` (app/el_model_blob.S), 32-byte aligned, in
flash where the board has it (else PSRAM, or RAM on boards without flash); the arena is
a static buffer in its own section, placed in RAM when it fits there beside the stack
and data, else in PSRAM. Where they go is decided by the planner's arithmetic
(edgellama/boards/planner.py) and written into config.mk; the linker checks it.

The program speaks a line protocol over the UART (firmware/apps/baremetal/main.c): a
hello line at boot, then one prompt per line, optionally prefixed "key=value ... |",
answered with the streamed completion and a "[stats] ..." line; "/exit" ends it. Input
that starts with the byte 0xFE is the framed protocol instead (firmware/PROTOCOL.md),
which edgellama.devices.protocol_device speaks.

Running under QEMU: `run_command(ctx, ["generate", PROMPT, flags...])` gives a command
that runs one request and exits by itself: the request line and "/exit" are written to
a file under OUT/run/, and the UART is a QEMU `pipe` chardev whose input is that file
and whose output (a symlink to /dev/stdout) is the emulator's standard output. With no
arguments (or "chat") the UART is on stdio, for a person or a program driving it
(`serial_command`). Everything the device prints comes back: the hello line, the
completion, the stats line and "[bye]"; `parse_reply` splits it.
"""

import hashlib
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from edgellama.boards.targets import BuildContext, copy_core, copy_sources, kernels_for, run_checked
from edgellama.errors import EdgeLlamaError
from edgellama.runtime import build as runtime_build

IMAGE = "firmware"
APP_FILES = ("main.c", "el_port.h", "el_freestanding.c", "el_model_blob.S", "el_memory_store.c")
COMMON_FILES = runtime_build.PROTOCOL_FILES  # the framed protocol (firmware/PROTOCOL.md) and its bench prompt
FREESTANDING_FLAGS = ["-ffreestanding", "-fno-tree-loop-distribute-patterns", "-ffunction-sections",
                      "-fdata-sections"]
LDFLAGS = ["-nostdlib", "-nostartfiles", "-Wl,--gc-sections"]
LDLIBS = ["-lgcc"]
DEFAULT_MAX_TOKENS = 128
LINE_MAX = 511              # bytes of one request line (EL_LINE_MAX - 1 in main.c)
MCU_MAX_SEQS = 1
MCU_MAX_BATCH_TOKENS = 8    # the planner's default for MCUs (rows per forward pass)
# "generate" flags of edgellama-run and the line protocol's keys they become
FLAG_KEYS = {
    "--temperature": "temperature", "--top-p": "top_p", "--top-k": "top_k", "--min-p": "min_p",
    "--repetition-penalty": "repetition_penalty", "--frequency-penalty": "frequency_penalty",
    "--presence-penalty": "presence_penalty", "--seed": "seed", "--max-tokens": "max_tokens",
    "--min-tokens": "min_tokens",
}


def port_dir(board) -> Path:
    """firmware/ports/<the board's port>: startup, UART, link.ld, port.mk."""
    path = runtime_build.firmware_dir() / "ports" / (board.port or board.name)
    if not path.is_dir():
        ports = sorted(p.name for p in (runtime_build.firmware_dir() / "ports").iterdir() if p.is_dir())
        raise EdgeLlamaError(f"board {board.name}: no bare-metal port {path.name!r} yet "
                             f"(firmware/ports/ has {', '.join(ports)})")
    return path


def linker_regions(port: Path) -> list:
    """The region names of the MEMORY block in the port's link.ld."""
    script = port / "link.ld"
    try:
        text = script.read_text(encoding="utf-8")
    except OSError as e:
        raise EdgeLlamaError(f"{script}: cannot read the port's linker script ({e})") from None
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    block = re.search(r"\bMEMORY\s*\{(.*?)\}", text, re.DOTALL)
    names = re.findall(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*ORIGIN\b", block.group(1) if block else "", re.MULTILINE)
    if "RAM" not in names:
        raise EdgeLlamaError(f"{script}: its MEMORY block needs a region named RAM (it has "
                             f"{', '.join(names) or 'none'})")
    return names


def region_names(port: Path) -> dict:
    """The planner's places (flash, ram, psram) as the port's link.ld regions: FLASH, RAM and
    PSRAM where the script has them; a place it lacks is RAM (a board without flash keeps
    code and weights in RAM), so link.ld stays the one list of a port's regions."""
    regions = linker_regions(port)
    return {place: place.upper() if place.upper() in regions else "RAM" for place in ("flash", "ram", "psram")}


def cflags(ctx: BuildContext) -> list:
    """The runtime's flags (C99, -O2, no FMA contraction), freestanding, and the board's CPU flags."""
    flags = list(runtime_build.C_FLAGS)
    if "-O2" not in flags:
        flags.append("-O2")
    return [*flags, *FREESTANDING_FLAGS, *ctx.board.cflags]


def _placement(ctx: BuildContext, arena_bytes: int) -> tuple:
    """(weights region, arena region, arena bytes) in the port's linker-script names,
    from the planner's placement when the planner is there."""
    regions = region_names(port_dir(ctx.board))
    try:
        from edgellama.boards import planner
        place = planner._placement(ctx.board, Path(ctx.model_path).stat().st_size)
    except (ImportError, AttributeError):
        place = None
    if place is None:
        weights = "flash" if ctx.board.flash else "ram"
        arena_region = "ram" if arena_bytes <= ctx.board.ram - 512 * 1024 else "psram"
    else:
        weights = place["weights_location"] or ("flash" if ctx.board.flash else "ram")
        arena_region = (place["arena_location"] or "RAM").lower()
        if not arena_bytes:
            arena_bytes = place["arena_budget"]
    return regions[weights], regions.get(arena_region, "RAM"), arena_bytes


def engine_config(ctx: BuildContext) -> list:
    """The engine options as config.mk's (key, value) pairs; the Makefile passes each to
    main.c as -DEL_<key>. threads has none: bare metal runs the plain loop (the plan says 1)."""
    options, board = ctx.options, ctx.board
    return [
        ("BLOCK_SIZE", str(options.block_size or board.kv_block_size or 16)),
        ("MAX_MODEL_LEN", str(options.max_model_len)),
        ("MAX_SEQS", str(options.max_seqs or MCU_MAX_SEQS)),
        ("MAX_BATCH_TOKENS", str(options.max_batch_tokens or MCU_MAX_BATCH_TOKENS)),
        ("KV_DTYPE", str(options.kv_dtype_code)),
        ("KV_CACHE_BYTES", str(options.kv_cache_bytes)),
        ("SPECULATIVE_TOKENS", str(options.speculative_tokens)),
        ("PROMPT_LOOKUP_MAX", str(options.prompt_lookup_max)),
        ("PROMPT_LOOKUP_MIN", str(options.prompt_lookup_min)),
    ]


def model_crc32(path) -> int:
    """zlib's CRC-32 of the model file, which main.c recomputes over the image at boot
    (EL_MODEL_CRC32) and refuses to run on a mismatch."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def link_defs(board) -> list:
    """Linker symbols a board sets for its port's link.ld: EL_PSRAM_BASE when its PSRAM is
    not where the port's script puts it by default (one chip family, another memory map)."""
    return [f"-Wl,--defsym=EL_PSRAM_BASE=0x{board.psram_base:x}"] if board.psram_base else []


def config_text(ctx: BuildContext) -> str:
    board = ctx.board
    arena = ctx.options.arena_bytes or board.arena or 0
    weights_region, arena_region, arena = _placement(ctx, arena)
    if arena <= 0:
        raise EdgeLlamaError(f"board {board.name}: no arena size (set [runtime] arena in its TOML file)")
    model = os.path.relpath(ctx.model_path, ctx.src_dir)
    pairs = [
        ("BOARD", board.name),
        ("CC", ctx.toolchain.cc),
        ("BOARD_CFLAGS", " ".join(board.cflags)),
        ("LINK_DEFS", " ".join(link_defs(board))),
        ("MODEL", model),
        ("MODEL_CRC32", f"0x{model_crc32(ctx.model_path):08x}"),
        ("OUT", ".."),
        ("WEIGHTS_REGION", weights_region),
        ("ARENA_REGION", arena_region),
        ("ARENA_BYTES", str(arena)),
        *engine_config(ctx),
        ("MAX_TOKENS", str(DEFAULT_MAX_TOKENS)),
        ("CONSTRAINT_BYTES", str(board.constraint_bytes)),
    ]
    lines = [f"# {board.name}: {board.description}",
             "# Written by edgellama (build / export-c); the Makefile reads it. Any of these can be",
             "# overridden on make's command line, e.g. `make ARENA_BYTES=2097152`.",
             "# The engine options (manifest.json's \"engine\"): MAX_MODEL_LEN 0 = the model's context;",
             "# KV_DTYPE 0 = f32, 1 = int8; KV_CACHE_BYTES 0 = MAX_SEQS full sequences;",
             "# SPECULATIVE_TOKENS 0 = no n-gram speculation (PROMPT_LOOKUP_MAX/MIN 0 = 5 and the max).",
             "# MAX_TOKENS = a request's default max_tokens; OUT = where firmware.elf/.bin go.",
             "# CONSTRAINT_BYTES = the largest structured-output automaton a request may upload.",
             "# MODEL_CRC32 = the model file's CRC-32: the firmware checks its image against it at boot",
             "# (a different MODEL needs its own; empty skips the check)."]
    lines += [f"{key} = {value}" for key, value in pairs]
    return "\n".join(lines) + "\n"


def emit(ctx: BuildContext) -> list:
    src = ctx.src_dir
    port = port_dir(ctx.board)
    apps = runtime_build.firmware_dir() / "apps" / "baremetal"
    files = copy_core(src / "core")
    files += copy_sources([apps / name for name in APP_FILES], src / "app")
    common = runtime_build.firmware_dir() / "apps" / "common"
    files += copy_sources([common / name for name in COMMON_FILES], src / "app")
    files += copy_sources(sorted(p for p in port.iterdir() if p.is_file()), src / "port")
    files += copy_sources([apps / "Makefile"], src)
    config = src / "config.mk"
    config.write_text(config_text(ctx), encoding="utf-8")
    files.append(config)
    ctx.manifest["flags"] = {"cflags": cflags(ctx),
                             "ldflags": [*LDFLAGS, *link_defs(ctx.board), f"-T{port.name}/link.ld"],
                             "ldlibs": LDLIBS}
    ctx.manifest["program"] = f"{IMAGE}.elf"
    ctx.manifest["kernels"] = kernels_for(ctx.toolchain.cc, cflags(ctx))
    ctx.manifest["memory"] = dict(re.findall(r"^(WEIGHTS_REGION|ARENA_REGION|ARENA_BYTES) = (\S+)$",
                                             config.read_text(encoding="utf-8"), re.MULTILINE))
    return files


def build_command(ctx: BuildContext) -> str:
    """The shell command that builds an exported source tree."""
    return f"make -C {ctx.src_dir}"


def compile(ctx: BuildContext) -> list:
    jobs = str(max(1, os.cpu_count() or 1))
    run_checked(["make", "-C", ctx.src_dir, f"-j{jobs}"],
                f"compiling the {ctx.board.name} firmware with {ctx.toolchain.cc}")
    artifacts = [ctx.out_dir / f"{IMAGE}.elf", ctx.out_dir / f"{IMAGE}.bin"]
    for artifact in artifacts:
        if not artifact.is_file():
            raise EdgeLlamaError(f"compiling for {ctx.board.name}: make succeeded but {artifact} is missing")
    return artifacts


# ---------------------------------------------------------------- running under QEMU

def emulator_command(ctx: BuildContext) -> list:
    """QEMU with the image, no display, no monitor; the caller adds the UART's -serial."""
    board, reach = ctx.board, ctx.board.reach
    if reach.kind != "emulator":
        raise EdgeLlamaError(f"board {board.name} is reached by {reach.kind}, not an emulator: write "
                             f"{ctx.out_dir / (IMAGE + '.bin')} to its flash with the board's own programmer "
                             "(`edgellama flash` handles Linux and PlatformIO boards)")
    command = [reach.emulator]
    if reach.machine:
        command += ["-M", reach.machine]
    if reach.cpu:
        command += ["-cpu", reach.cpu]
    command += [*reach.emulator_args, *store_args(ctx), "-display", "none", "-monitor", "none", "-no-reboot",
                "-kernel", str((ctx.out_dir / f"{IMAGE}.elf").resolve())]
    return command


STORE_FILE = "model-store.bin"


def store_args(ctx: BuildContext) -> list:
    """A board whose model store is in the machine's RAM ([reach] store_file: its PSRAM on
    the mps2 boards, all of its memory on the virt boards): that RAM kept in
    OUT/model-store.bin, so models uploaded over the serial line survive a restart of the
    emulator, as they would survive a power cycle in flash."""
    if not ctx.board.reach.store_file:
        return []
    size = ctx.board.psram or ctx.board.ram
    path = (ctx.out_dir / STORE_FILE).resolve()
    if not path.exists() or path.stat().st_size != size:
        with open(path, "wb") as f:
            f.truncate(size)
    return ["-object", f"memory-backend-file,id=store,size={size},mem-path={path},share=on",
            "-machine", "memory-backend=store"]


def serial_command(ctx: BuildContext) -> list:
    """QEMU with the UART on its standard input and output: write request lines to its
    stdin, read the device's output from its stdout; "/exit" ends it with status 0."""
    return [*emulator_command(ctx), "-serial", "stdio"]


def request_line(args: list) -> str:
    """`generate PROMPT [flags]` as one request line: "key=value ... | PROMPT"."""
    args = [str(a) for a in args]
    if not args or args[0] != "generate":
        raise EdgeLlamaError("bare-metal boards run `generate PROMPT [flags]` (or, with no arguments, "
                             "the serial console)")
    prompt, options = None, {"temperature": "0", "max_tokens": str(DEFAULT_MAX_TOKENS)}
    i = 1
    while i < len(args):
        arg = args[i]
        flag, eq, value = arg.partition("=")
        if arg == "--ignore-eos":
            options["ignore_eos"] = "1"
        elif arg == "--":
            prompt = " ".join(args[i + 1:]) if prompt is None else prompt
            break
        elif flag in FLAG_KEYS:
            if not eq:
                if i + 1 >= len(args):
                    raise EdgeLlamaError(f"{flag} needs a value")
                value = args[i + 1]
                i += 1
            if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value):
                raise EdgeLlamaError(f"{flag} needs a number, got {value!r}")
            options[FLAG_KEYS[flag]] = value
        elif arg.startswith("--") and len(arg) > 2:
            raise EdgeLlamaError(f"{flag}: not available on bare-metal boards (their line protocol takes "
                                 f"{', '.join(sorted(FLAG_KEYS))} and --ignore-eos)")
        elif prompt is None:
            prompt = arg
        else:
            raise EdgeLlamaError(f"unexpected argument {arg!r}")
        i += 1
    if not prompt:
        raise EdgeLlamaError("generate needs a prompt")
    if "\n" in prompt or "\r" in prompt:
        raise EdgeLlamaError("a prompt for a bare-metal board is one line (no newlines)")
    line = " ".join(f"{k}={v}" for k, v in options.items()) + " | " + prompt
    if len(line.encode("utf-8")) > LINE_MAX:
        raise EdgeLlamaError(f"the request line is {len(line.encode('utf-8'))} bytes; the device takes at most "
                             f"{LINE_MAX}")
    return line


def _request_files(ctx: BuildContext, text: str) -> Path:
    """OUT/run/<hash>.in holding `text`, and OUT/run/<hash>.out linked to /dev/stdout:
    the two ends of QEMU's `pipe` chardev. Named by content, so runs never clash."""
    folder = ctx.out_dir / "run"
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    source = base.with_suffix(".in")
    if not source.is_file() or source.read_bytes() != text.encode("utf-8"):
        tmp = folder / f".{base.name}.{os.getpid()}.tmp"
        tmp.write_bytes(text.encode("utf-8"))
        os.replace(tmp, source)
    out = base.with_suffix(".out")
    if not out.is_symlink():
        try:
            out.symlink_to("/dev/stdout")
        except FileExistsError:
            pass
    return base


def run_command(ctx: BuildContext, args: list) -> list:
    """The emulator command: with `generate PROMPT [flags]`, one that sends that request
    and "/exit" and ends by itself (status 0); with no arguments or "chat", the UART on
    stdio (serial_command)."""
    args = [str(a) for a in args]
    if not args or args == ["chat"]:
        return serial_command(ctx)
    line = request_line(args)
    base = _request_files(ctx, line + "\n/exit\n")
    return [*emulator_command(ctx), "-chardev", f"pipe,id=uart0,path={base}", "-serial", "chardev:uart0"]


@dataclass
class Reply:
    hello: str          # the boot line ("" when the output has none)
    text: str           # the completion
    stats: dict         # the [stats] line's key=value pairs
    errors: list        # "[error] ..." lines


def parse_stats(line: str) -> dict:
    return dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)


def parse_reply(output: str) -> Reply:
    """Split what the device printed for one request (after its hello line, when present):
    the completion is everything up to the newline before "[stats]"."""
    hello = ""
    if output.startswith("edgellama "):
        hello, _, output = output.partition("\n")
    errors = [line for line in output.splitlines() if line.startswith("[error] ")]
    at = output.find("\n[stats] ")
    if at < 0:
        if output.startswith("[stats] "):
            at = -1
        else:
            return Reply(hello, "", {}, errors)
    text = output[:at] if at >= 0 else ""
    stats_line = output[at + 1:].split("\n", 1)[0]
    return Reply(hello, text, parse_stats(stats_line), errors)
