"""Put a build on its board: `edgellama flash`.

Linux boards, over SSH (transports/ssh.py):

    ~/edgellama/                       (remote_dir)
        releases/<sha12>-<time>/       edgellama-run  model.gguf  manifest.json
        current  -> releases/...       the running release
        previous -> releases/...       what `flash --rollback` goes back to

1. the remote's architecture (`uname -m`) and CPU features (/proc/cpuinfo) must match the
   build; an emulated board (qemu-user) needs its emulator on the remote instead, so an
   aarch64 build can be flashed to an x86 test host and run there under qemu-aarch64;
2. program and model are uploaded under temporary names (*.part) into a staging directory
   (releases/.<name>.partial) with a progress bar, their sha256 checked on the device
   (sha256sum) against manifest.json, then renamed into releases/<name>;
3. `current` is switched atomically: a new symlink under a temporary name, then
   `mv -T` over `current` (rename(2)); `previous` keeps the release it replaced.

Nothing under `current` changes until step 3, so a transfer cut midway (or a bad
checksum) leaves the running release as it was; the next flash removes its staging.

PlatformIO boards: PlatformIO's own upload (`pio run -t upload -d PROJECT`). Emulated
bare-metal boards: the image in the build directory is what the emulator boots, so there
is nothing to flash.
"""

import json
import os
import posixpath
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgellama.boards.builder import MANIFEST, default_out_dir
from edgellama.boards.catalog import Board, get_board
from edgellama.errors import EdgeLlamaError

PROGRAM = "edgellama-run"
DEFAULT_REMOTE_DIR = "edgellama"
UNAME_ARCH = {"aarch64": ("aarch64", "arm64"), "armhf": ("armv7l", "armv8l"), "riscv64": ("riscv64",)}


@dataclass
class FlashResult:
    target: str
    release: str            # absolute remote path of the release now current
    previous: str | None    # the release it replaced (or, after a rollback, the one rolled back from)
    message: str


# ------------------------------------------------------------------ checks

def required_features(board: Board, kernels: str | None = None) -> list:
    """CPU features (/proc/cpuinfo words) a build for the board needs; `kernels` is the
    build's (manifest.json): the dot-product kernels need asimddp."""
    if board.arch == "aarch64":
        return ["asimd", "asimddp"] if kernels == "neon-dotprod" else ["asimd"]
    if board.arch == "armhf":
        fpu = " ".join(f for f in board.cflags if f.startswith("-mfpu="))
        need = []
        if "neon" in fpu:
            need.append("neon")
        for vfp in ("vfpv4", "vfpv3"):
            if vfp in fpu:
                need.append(vfp)
        return need or ["vfp"]
    if board.arch == "riscv64":
        return ["rv64gc"]
    return []


def _riscv_has(isa: str, want: str) -> bool:
    isa = isa.strip().lower()
    if not isa.startswith("rv64"):
        return False
    letters = isa[4:].split("_")[0]
    if "g" in letters:
        letters += "imafd"
    return all(c in letters for c in want[4:].replace("g", "imafd"))


def check_remote(client, board: Board, kernels: str | None = None) -> str:
    """Refuse a remote that cannot run the board's build (whose kernels, from its
    manifest, may need a CPU extension: the dot product, RISC-V's V); a line saying what
    was found."""
    machine = client.check(["uname", "-m"]).strip()
    if board.emulated:
        emulator = board.reach.emulator
        rc, out, _ = client.run(["sh", "-c", 'command -v "$1"', "sh", emulator])
        if rc != 0 or not out.strip():
            raise EdgeLlamaError(f"{client.target}: board {board.name} is emulated and the remote ({machine}) has no "
                                 f"{emulator}; install it there (apt-get install {' '.join(board.reach.apt) or 'qemu-user'})")
        return f"{machine} with {out.strip()}"
    accepted = UNAME_ARCH.get(board.arch)
    if accepted is None:
        raise EdgeLlamaError(f"board {board.name} ({board.arch}) is not a Linux board that flashes over SSH")
    if machine not in accepted:
        raise EdgeLlamaError(f"{client.target} is {machine}, but the build for {board.name} is {board.arch} "
                             f"(needs uname -m {' or '.join(accepted)}); refusing to flash")
    rc, cpuinfo, _ = client.run(["cat", "/proc/cpuinfo"])
    if rc != 0:
        raise EdgeLlamaError(f"{client.target}: cannot read /proc/cpuinfo to check CPU features")
    missing = []
    if board.arch == "riscv64":
        isas = re.findall(r"^isa\s*:\s*(\S+)", cpuinfo, re.MULTILINE)
        want = "rv64gcv" if kernels == "rvv" else "rv64gc"
        if not isas or not all(_riscv_has(i, want) for i in isas):
            missing = [f"{want} (isa: {isas[0] if isas else 'not reported'})"]
    else:
        lines = re.findall(r"^Features\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
        have = set(lines[0].split()) if lines else set()
        missing = [f for f in required_features(board, kernels)
                   if f not in have and not (f == "vfp" and "vfpv3" in have)]
    if missing:
        raise EdgeLlamaError(f"{client.target} ({machine}) lacks CPU features the {board.name} build needs: "
                             f"{', '.join(missing)}; refusing to flash")
    return machine


# ------------------------------------------------------------------ remote layout

def remote_base(client, remote_dir: str = DEFAULT_REMOTE_DIR) -> str:
    remote_dir = str(remote_dir)
    return posixpath.normpath(remote_dir if remote_dir.startswith("/") else posixpath.join(client.home(), remote_dir))


def _readlink(client, path: str) -> str | None:
    rc, out, _ = client.run(["readlink", "--", path])
    return out.strip() if rc == 0 and out.strip() else None


def _switch(client, base: str, name: str, target: str):
    """Point base/name at target atomically: a fresh symlink, renamed over the old one."""
    tmp = posixpath.join(base, f".{name}.{secrets.token_hex(4)}.tmp")
    client.check(["ln", "-s", "--", target, tmp])
    try:
        client.check(["mv", "-T", "--", tmp, posixpath.join(base, name)])
    except EdgeLlamaError:
        client.run(["rm", "-f", "--", tmp])
        raise


def current_release(client, remote_dir: str = DEFAULT_REMOTE_DIR) -> str | None:
    """The absolute path of the running release, or None."""
    base = remote_base(client, remote_dir)
    link = _readlink(client, posixpath.join(base, "current"))
    return None if link is None else posixpath.normpath(posixpath.join(base, link))


def remote_program_argv(board, args, remote_dir: str = DEFAULT_REMOTE_DIR) -> list:
    """argv that runs the current release on the remote: PROGRAM MODEL ARGS..., under the
    board's emulator for an emulated board. Relative remote_dir is relative to the home
    directory, where SSH commands start."""
    board = get_board(board)
    current = posixpath.join(str(remote_dir), "current")
    argv = [posixpath.join(current, PROGRAM), posixpath.join(current, "model.gguf"), *map(str, args)]
    if board.emulated:
        prefix = [board.reach.emulator]
        if board.reach.cpu:
            prefix += ["-cpu", board.reach.cpu]
        argv = prefix + argv
    return argv


# ------------------------------------------------------------------ flash

def _tqdm_progress(total: int):
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="upload", leave=False)


def read_manifest(build_dir: Path) -> dict:
    path = Path(build_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeLlamaError(f"{build_dir}: no build here (no {MANIFEST}); run `edgellama build` first") from None
    except (OSError, ValueError) as e:
        raise EdgeLlamaError(f"{path}: cannot read ({e})") from None


def _connect(host, identity, known_hosts, trust_host_key, timeout):
    from edgellama.devices.transports.ssh import connect
    return connect(host, key_filename=identity, known_hosts=known_hosts, trust_new_host_key=trust_host_key,
                   timeout=timeout)


SPACE_MARGIN = 64 * 1024  # directory entries and the links' room, beyond the files themselves


def _free_bytes(client, path: str) -> int | None:
    """Bytes free for the remote user on the filesystem holding path (POSIX `df -Pk`), or None."""
    try:
        rc, out, _ = client.run(["df", "-Pk", "--", path], timeout=30)
    except EdgeLlamaError:
        return None
    lines = out.strip().splitlines()
    if rc != 0 or len(lines) < 2:
        return None
    fields = " ".join(lines[1:]).split()  # a long device name wraps onto its own line
    try:
        return int(fields[3]) * 1024
    except (IndexError, ValueError):
        return None


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 10 << 20 else f"{n / (1 << 20):,.1f} MiB"


def _check_space(client, releases: str, need: int):
    """Refuse before uploading when the remote's disk cannot hold the release."""
    free = _free_bytes(client, releases)
    if free is not None and free < need + SPACE_MARGIN:
        raise EdgeLlamaError(f"{client.target}: not enough disk space on the device for the release: {_kib(free)} "
                             f"free under {releases}, it needs {_kib(need + SPACE_MARGIN)}; remove old releases "
                             f"there or free space; the running release is untouched")


def _upload_error(client, e: EdgeLlamaError, staging: str, name: str, still_needed: int) -> EdgeLlamaError:
    """One line for a failed upload: the disk filling up says so (SFTP reports it only as
    \"Failure\"); anything else keeps its own words."""
    from edgellama.devices.transports.ssh import UploadRefused
    if isinstance(e, UploadRefused):
        free = _free_bytes(client, staging)
        if free is not None and free < still_needed:
            return EdgeLlamaError(f"{client.target}: the device ran out of disk space while uploading {name} "
                                  f"({_kib(free)} free, {_kib(still_needed)} still to write); the running "
                                  f"release is untouched")
    return EdgeLlamaError(f"{e}; the running release is untouched")


def flash_linux(board: Board, build_dir, host: str, identity=None, known_hosts=None, trust_host_key: bool = False,
                remote_dir: str = DEFAULT_REMOTE_DIR, progress=None, after_upload=None, timeout: float = 15.0,
                echo=None) -> FlashResult:
    """Upload the build in build_dir to host as a new release and make it current.
    progress(name, sent, total) replaces the tqdm bar; after_upload(client, paths) runs after
    the uploads, before the checksum check (a test hook)."""
    echo = echo or (lambda text: None)
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    if manifest.get("kind") != "build":
        raise EdgeLlamaError(f"{build_dir}: holds exported sources, not a build; run `edgellama build` first")
    if manifest.get("board") != board.name:
        raise EdgeLlamaError(f"{build_dir}: is a build for {manifest.get('board')}, not {board.name}")
    artifacts = [a for a in manifest.get("artifacts", []) if "/" not in a["path"]]
    names = {a["path"] for a in artifacts}
    if PROGRAM not in names or "model.gguf" not in names:
        raise EdgeLlamaError(f"{build_dir}: the manifest lists no {PROGRAM} and model.gguf")
    for a in artifacts:
        local = build_dir / a["path"]
        if not local.is_file() or local.stat().st_size != a["bytes"]:
            raise EdgeLlamaError(f"{local}: missing or not the size manifest.json records; rebuild")
    program_sha = next(a["sha256"] for a in artifacts if a["path"] == PROGRAM)
    model_sha = next(a["sha256"] for a in artifacts if a["path"] == "model.gguf")

    with _connect(host, identity, known_hosts, trust_host_key, timeout) as client:
        found = check_remote(client, board, manifest.get("kernels"))
        echo(f"{client.target}: {found}")
        base = remote_base(client, remote_dir)
        releases = posixpath.join(base, "releases")
        client.check(["mkdir", "-p", "--", releases])
        # staging left by an earlier flash that was cut off (never under `current`)
        client.run(["find", releases, "-mindepth", "1", "-maxdepth", "1", "-name", ".*.partial", "-exec",
                    "rm", "-rf", "--", "{}", "+"])
        total = sum(a["bytes"] for a in artifacts)
        manifest_bytes = (build_dir / MANIFEST).stat().st_size
        _check_space(client, releases, total + manifest_bytes)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name = f"{program_sha[:8]}{model_sha[:4]}-{stamp}-{secrets.token_hex(2)}"
        release = posixpath.join(releases, name)
        staging = posixpath.join(releases, f".{name}.partial")
        client.check(["mkdir", "--", staging])
        done = False
        try:
            bar = None if progress is not None else _tqdm_progress(total)
            sent_before = 0
            remote_parts = []
            for a in artifacts:
                part = posixpath.join(staging, a["path"] + ".part")

                def callback(sent, size, _name=a["path"], _base=sent_before):
                    if bar is not None:
                        bar.update(_base + sent - bar.n)
                    else:
                        progress(_name, sent, size)
                try:
                    client.upload(build_dir / a["path"], part, callback)
                except EdgeLlamaError as e:
                    raise _upload_error(client, e, staging, a["path"], total + manifest_bytes - sent_before) from None
                sent_before += a["bytes"]
                remote_parts.append((a, part))
            if bar is not None:
                bar.close()
            if after_upload is not None:
                after_upload(client, [p for _, p in remote_parts])
            out = client.check(["sha256sum", "--", *[p for _, p in remote_parts]])
            sums = {}
            for line in out.splitlines():
                digest, _, path = line.partition("  ")
                sums[path.strip()] = digest.strip().lower()
            for a, part in remote_parts:
                if sums.get(part) != a["sha256"]:
                    raise EdgeLlamaError(f"{client.target}: {a['path']} has sha256 {sums.get(part, '?')[:16]}... on the "
                                         f"device, the build has {a['sha256'][:16]}...; the upload is corrupt, the "
                                         f"running release is untouched")
            for a, part in remote_parts:
                client.check(["mv", "--", part, posixpath.join(staging, a["path"])])
            client.check(["chmod", "755", "--", posixpath.join(staging, PROGRAM)])
            try:
                client.upload(build_dir / MANIFEST, posixpath.join(staging, MANIFEST))
            except EdgeLlamaError as e:
                raise _upload_error(client, e, staging, MANIFEST, manifest_bytes) from None
            client.check(["mv", "-T", "--", staging, release])
            done = True
        finally:
            if not done:
                try:
                    client.run(["rm", "-rf", "--", staging], timeout=30)
                except EdgeLlamaError:
                    pass
        old = current_release(client, remote_dir)
        if old is not None:
            _switch(client, base, "previous", posixpath.relpath(old, base))
        _switch(client, base, "current", posixpath.relpath(release, base))
        return FlashResult(client.target, release, old,
                           f"flashed {board.name} to {client.target}: {release} is current"
                           + (f" (previous: {posixpath.basename(old)}; `edgellama flash --rollback` returns to it)"
                              if old else ""))


def rollback_linux(board: Board, host: str, identity=None, known_hosts=None, trust_host_key: bool = False,
                   remote_dir: str = DEFAULT_REMOTE_DIR, timeout: float = 15.0) -> FlashResult:
    """Make `previous` current again (atomically); the release rolled back from becomes `previous`."""
    with _connect(host, identity, known_hosts, trust_host_key, timeout) as client:
        base = remote_base(client, remote_dir)
        cur = current_release(client, remote_dir)
        link = _readlink(client, posixpath.join(base, "previous"))
        if link is None:
            raise EdgeLlamaError(f"{client.target}: no previous release under {base} to roll back to")
        prev = posixpath.normpath(posixpath.join(base, link))
        rc, _, _ = client.run(["test", "-x", posixpath.join(prev, PROGRAM)])
        if rc != 0:
            raise EdgeLlamaError(f"{client.target}: the previous release {prev} is gone or incomplete")
        _switch(client, base, "current", posixpath.relpath(prev, base))
        if cur is not None:
            _switch(client, base, "previous", posixpath.relpath(cur, base))
        return FlashResult(client.target, prev, cur, f"rolled back {client.target}: {prev} is current")


def flash_platformio(board: Board, build_dir, port: str | None = None) -> str:
    from edgellama.boards.targets import platformio as pio_target
    project = Path(build_dir) / "src"
    if not (project / "platformio.ini").is_file():
        raise EdgeLlamaError(f"{build_dir}: no PlatformIO project (src/platformio.ini); run `edgellama build "
                             f"--board {board.name}` or `edgellama export-c --board {board.name} -o {build_dir}`")
    pio = pio_target.pio_command()
    if pio is None:
        raise EdgeLlamaError("PlatformIO is not installed (pip install platformio)")
    cmd = [*pio, "run", "-t", "upload", "-d", str(project)]
    if port:
        cmd += ["--upload-port", port]
    try:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=pio_target.PIO_TIMEOUT,
                                env=dict(os.environ, PLATFORMIO_NO_ANSI="true"))
    except subprocess.TimeoutExpired:
        raise EdgeLlamaError(f"`pio run -t upload -d {project}` did not finish in {pio_target.PIO_TIMEOUT} s") from None
    if result.returncode != 0:
        output = result.stdout + result.stderr
        said = pio_target.fetch_failure(output)
        if said:
            said = f"PlatformIO could not fetch what it builds with ({said})"
        else:
            lines = [line.strip() for line in output.splitlines() if line.strip()]
            errors = [line for line in lines if "error" in line.lower()]
            said = (errors or lines or ["no output"])[-1]
        raise EdgeLlamaError(f"board {board.name}: `pio run -t upload -d {project}` failed: {said}")
    return f"flashed {board.name} with PlatformIO ({project})"


def flash(board_name: str, host: str | None = None, build_dir=None, port: str | None = None, **ssh) -> str:
    """Dispatch on the board; returns the message to print."""
    board = get_board(board_name)
    build_dir = Path(build_dir) if build_dir else default_out_dir(board.name)
    if board.os == "linux":
        if not host:
            hint = (f"; or run it here with `edgellama run --board {board.name}`" if board.emulated else "")
            raise EdgeLlamaError(f"board {board.name} is a Linux board: pass --host user@addr{hint}")
        return flash_linux(board, build_dir, host, **ssh).message
    if board.os == "platformio":
        return flash_platformio(board, build_dir, port)
    if board.emulated:
        return (f"board {board.name} is emulated: the image in {build_dir} is what the emulator boots, so there is "
                f"nothing to flash; run it with `edgellama run --board {board.name}`")
    raise EdgeLlamaError(f"board {board.name} ({board.os}): flashing is not supported")


def rollback(board_name: str, host: str | None = None, **ssh) -> str:
    board = get_board(board_name)
    if board.os != "linux" or not host:
        raise EdgeLlamaError("--rollback needs a Linux board and --host user@addr")
    return rollback_linux(board, host, **ssh).message

