"""Build a board's program: model, plan check, source tree, compile, manifest.

    build("qemu-aarch64")                       -> build/qemu-aarch64/
        edgellama-run  model.gguf  manifest.json  src/ (Makefile, main.c, core/)
    export_c("rpi4", out_dir="rpi4-src")        -> the same without compiling

`export_c` and `build` share every step up to the emitted source tree, so what a user
builds from `export-c` is exactly what `build` compiles. The output is atomic: it is
made in a temporary directory beside out_dir and renamed into place, so a failed build
leaves an older build directory as it was.

The engine options are planned, not guessed: the planner turns what the user asked for
(an EngineOptions, 0 where the planner decides) into the options the program opens the
runtime with, and manifest.json records them under "engine" (EngineOptions.to_dict()).
"""

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgellama.boards import planner, targets
from edgellama.boards.catalog import Board, get_board
from edgellama.boards.targets import BuildContext
from edgellama.boards.toolchains import get_toolchain
from edgellama.errors import EdgeLlamaError
from edgellama.fileio import sha256_file
from edgellama.model.gguf_file import GGUF_MAGIC, file_magic, write_gguf
from edgellama.model.loading import load_model, resolve
from edgellama.model.quant import QUANT_NAMES
from edgellama.runtime.build import firmware_dir
from edgellama.runtime.engine_options import EngineOptions

MODEL_FILE = "model.gguf"
MANIFEST = "manifest.json"
DEFAULT_QUANT = "q8_0"


@dataclass
class BuildResult:
    context: BuildContext            # out_dir and model_path point at the final directory
    artifacts: list                  # the program or image, then the model (absolute paths)
    manifest: dict = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return self.context.out_dir

    @property
    def manifest_path(self) -> Path:
        return self.context.out_dir / MANIFEST


def runtime_version() -> str:
    header = (firmware_dir() / "core" / "el_runtime.h").read_text(encoding="utf-8")
    m = re.search(r'#define\s+EL_RUNTIME_VERSION\s+"([^"]*)"', header)
    return m.group(1) if m else "unknown"


def runtime_digest() -> str:
    """sha256 over every file of firmware/ (path and bytes): a build from other runtime
    sources (an older edgellama's) is rebuilt rather than run against today's protocol."""
    digest = hashlib.sha256()
    root = firmware_dir()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def default_out_dir(board_name: str) -> Path:
    return Path("build") / board_name


def stale_reason(out_dir: Path, board_name: str, model=None, quant: str | None = None,
                 options: EngineOptions | None = None) -> str | None:
    """Why out_dir must be (re)built for this board, model, quant and engine options (None:
    any); None when its build serves. A directory that holds another board's build or
    exported sources is refused."""
    try:
        manifest = json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no build there"
    if manifest.get("kind") != "build" or manifest.get("board") != board_name:
        what = "a build" if manifest.get("kind") == "build" else "exported sources"
        raise EdgeLlamaError(f"{out_dir}: holds {what} for {manifest.get('board')}, not {board_name}; "
                             "choose another -o")
    if manifest.get("runtime_digest") != runtime_digest():
        return "it was built from other runtime sources"
    if model and str(resolve(model)) != manifest.get("model", {}).get("source"):
        return "it carries another model"
    if quant and manifest.get("quant") != quant:
        return f"it carries the model in {manifest.get('quant')}"
    if options is not None and _differs(options, manifest_engine(manifest)):
        return "it was built with other engine options"
    return None


def _differs(requested: EngineOptions, built: EngineOptions) -> bool:
    """Whether a build misses what was asked for: a field asked for (not 0) that the
    build has otherwise; a kv_dtype always counts."""
    asked = {k: v for k, v in requested.to_dict().items() if v}
    return any(built.to_dict().get(k) != v for k, v in asked.items())


def ensure_build(board: Board | str, model=None, quant: str | None = None, out_dir=None,
                 options: EngineOptions | None = None, say=None) -> Path:
    """The build directory for the board (default build/BOARD), built first when it has no
    build, or one of another model, quant or engine options; `say` hears why."""
    board = get_board(board)
    out_dir = Path(out_dir) if out_dir else default_out_dir(board.name)
    reason = stale_reason(out_dir, board.name, model, quant, options)
    if reason:
        if say is not None:
            say(f"building {out_dir} for {board.name} ({reason})")
        build(board, model, quant or DEFAULT_QUANT, out_dir, options=options)
    return out_dir


def runtime_options(board: Board, requested: EngineOptions) -> EngineOptions:
    """The engine options without a planner (the planner's Plan.engine_options() otherwise):
    the requested ones, with the board's block size and arena where none is asked for."""
    return EngineOptions(**{**requested.to_dict(), "block_size": requested.block_size or board.kv_block_size,
                            "arena_bytes": requested.arena_bytes or board.arena})


def requested_options(ctx: int | None, options: EngineOptions | None) -> EngineOptions:
    """What a build asks for: `options` (0: the planner decides), with `ctx` as its max_model_len."""
    options = options or EngineOptions()
    return dataclasses.replace(options, max_model_len=ctx) if ctx else options


def check_plan(board: Board, model_path: Path, quant: str | None, requested: EngineOptions):
    """The plan (edgellama/boards/planner.py) for the model as it will be exported, with the
    requested engine options; a model that does not fit is refused here, with the plan's
    numbers, before anything is written."""
    plan = planner.plan_engine(board, model_path, quant, requested)
    planner.require_fits(plan)
    return plan


def write_model(source: Path, dest: Path, quant: str | None):
    """The model in the output directory: quantized to `quant`, or copied as it is when None."""
    if quant is None:
        if file_magic(source) == GGUF_MAGIC:
            shutil.copyfile(source, dest)
            return
        quant = "f32"  # a training checkpoint becomes an F32 GGUF
    write_gguf(load_model(source), dest, quant)


@contextlib.contextmanager
def atomic_dir(out_dir: Path):
    """Yield a temporary directory beside out_dir; on success it replaces out_dir."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / MANIFEST).is_file())):
        raise EdgeLlamaError(f"{out_dir}: exists and is not an edgellama build directory (no {MANIFEST}); "
                             "choose another -o or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should be an ordinary directory
    try:
        yield tmp
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old / "d")
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old is not None:
                os.replace(old / "d", out_dir)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _make(board_name: str, model, quant: str | None, out_dir, requested: EngineOptions, compile_it: bool
          ) -> BuildResult:
    board = get_board(board_name)
    target = targets.for_board(board)
    toolchain = get_toolchain(board.toolchain)
    if compile_it and toolchain.kind != "platformio":  # the PlatformIO target finds and reports pio itself
        toolchain.require()
    if quant is not None and quant not in QUANT_NAMES:
        raise EdgeLlamaError(f"--quant: unknown type {quant!r}; use one of {', '.join(QUANT_NAMES)}")
    source = resolve(model)
    if not source.is_file():
        raise EdgeLlamaError(f"{source}: no such model file")
    plan = check_plan(board, source, quant, requested)
    out_dir = Path(out_dir) if out_dir else default_out_dir(board.name)
    with atomic_dir(out_dir) as tmp:
        options = plan.engine_options() if plan is not None else runtime_options(board, requested)
        context = BuildContext(board, toolchain, tmp / MODEL_FILE, quant, tmp, options)
        write_model(source, context.model_path, quant)
        sources = target.emit(context)
        artifacts = target.compile(context) if compile_it else []
        artifacts = [*artifacts, context.model_path]
        manifest = {
            "kind": "build" if compile_it else "source",
            "board": board.name,
            "description": board.description,
            "arch": board.arch,
            "cpu": board.cpu,
            "os": board.os,
            "toolchain": {"name": toolchain.name, "cc": toolchain.cc,
                          "version": toolchain.version() if toolchain.installed() else ""},
            **context.manifest,
            "runtime_version": runtime_version(),
            "runtime_digest": runtime_digest(),
            "engine": context.options.to_dict(),
            "quant": quant,
            "model": {"source": str(source), "file": MODEL_FILE},
            "plan": _plan_summary(plan),
            "artifacts": [{"path": a.relative_to(tmp).as_posix(), "sha256": sha256_file(a), "bytes": a.stat().st_size}
                          for a in artifacts],
            "sources": sorted(s.relative_to(tmp).as_posix() for s in sources),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    context.out_dir = out_dir
    context.model_path = out_dir / MODEL_FILE
    return BuildResult(context, [out_dir / a.relative_to(tmp) for a in artifacts], manifest)


def _plan_summary(plan):
    if plan is None:
        return None
    if hasattr(plan, "to_dict"):
        return plan.to_dict()
    try:
        return json.loads(json.dumps(dataclasses.asdict(plan), default=str))
    except TypeError:
        return str(plan)


def build(board_name: str, model=None, quant: str | None = DEFAULT_QUANT, out_dir=None, ctx: int | None = None,
          options: EngineOptions | None = None) -> BuildResult:
    """Model (quantized to `quant`; None keeps it as given), plan check, sources, program, manifest.
    `options` are the engine options asked for (0: the planner's default; ctx sets max_model_len)."""
    return _make(board_name, model, quant, out_dir, requested_options(ctx, options), True)


def export_c(board_name: str, model=None, quant: str | None = DEFAULT_QUANT, out_dir=None, ctx: int | None = None,
             options: EngineOptions | None = None) -> BuildResult:
    """The standalone source tree (sources, Makefile, model) that `build` would compile."""
    return _make(board_name, model, quant, out_dir, requested_options(ctx, options), False)


def manifest_engine(manifest: dict) -> EngineOptions:
    """The engine options a build's manifest records ("runtime_options" in builds before "engine")."""
    return EngineOptions.from_dict(manifest.get("engine") or manifest.get("runtime_options") or {})


def load_build(out_dir, board_name: str | None = None) -> BuildContext:
    """The BuildContext of a finished build directory (from its manifest)."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeLlamaError(f"{out_dir}: no build here (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise EdgeLlamaError(f"{path}: cannot read ({e})") from None
    if manifest.get("kind") != "build":
        raise EdgeLlamaError(f"{out_dir}: holds exported sources, not a build; run `edgellama build` first")
    if board_name is not None and manifest.get("board") != board_name:
        raise EdgeLlamaError(f"{out_dir}: is a build for {manifest.get('board')}, not {board_name}")
    board = get_board(manifest["board"])
    return BuildContext(board, get_toolchain(board.toolchain), out_dir / manifest["model"]["file"],
                        manifest.get("quant"), out_dir, manifest_engine(manifest),
                        {k: manifest[k] for k in ("flags",) if k in manifest})
