"""Compilers as data: one TOML file per toolchain in toolchains/.

A toolchain that is not installed is reported with the exact command that installs
it; `edgellama toolchains install NAME` runs that command where apt is available.
"""

import os
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgellama.errors import EdgeLlamaError
from edgellama.resources import share_dir

KINDS = ("host", "gnu-linux", "gnu-baremetal", "platformio")


@dataclass
class Toolchain:
    name: str
    description: str
    kind: str
    cc: str
    sysroot: str = ""
    apt: list = field(default_factory=list)
    pip: list = field(default_factory=list)
    flags: list = field(default_factory=list)  # part of the compiler command: clang's --target=...

    @property
    def command(self) -> str:
        """cc and its flags, as a Makefile's CC: `clang-19 --target=riscv64-linux-gnu ...`."""
        return shlex.join([self.cc, *self.flags])

    @property
    def prefix(self) -> str:
        """aarch64-linux-gnu- for aarch64-linux-gnu-gcc: objcopy, ld etc. share it."""
        return self.cc[:-3] if self.cc.endswith("gcc") else ""

    def tool(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def installed(self) -> bool:
        if self.kind == "platformio":  # `python -m platformio` works without pio on PATH
            import importlib.util
            return shutil.which(self.cc) is not None or importlib.util.find_spec("platformio") is not None
        return shutil.which(self.cc) is not None

    def install_command(self) -> str:
        if self.apt:
            return "sudo apt-get install -y --no-install-recommends " + " ".join(self.apt)
        return "pip install " + " ".join(self.pip)

    def require(self) -> "Toolchain":
        if not self.installed():
            raise EdgeLlamaError(f"toolchain {self.name}: {self.cc} is not installed; install it with: "
                                 f"{self.install_command()}  (or: edgellama toolchains install {self.name})")
        return self

    def version(self) -> str:
        try:
            out = subprocess.run([self.cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        except OSError:
            return ""
        return out.splitlines()[0] if out else ""


def load_toolchain(path) -> Toolchain:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise EdgeLlamaError(f"{path}: not valid TOML ({e})") from None
    where = str(path)
    for key in ("name", "description", "kind", "cc"):
        if not isinstance(data.get(key), str):
            raise EdgeLlamaError(f"{where}: missing or non-string field {key!r}")
    unknown = sorted(set(data) - {"name", "description", "kind", "cc", "sysroot", "apt", "pip", "flags"})
    if unknown:
        raise EdgeLlamaError(f"{where}: unknown field {unknown[0]!r}")
    if data["kind"] not in KINDS:
        raise EdgeLlamaError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}")
    for key in ("apt", "pip"):
        if not isinstance(data.get(key, []), list):
            raise EdgeLlamaError(f"{where}: field {key!r} must be a list of package names")
    flags = data.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise EdgeLlamaError(f"{where}: field 'flags' must be a list of strings")
    if not data.get("apt") and not data.get("pip"):
        raise EdgeLlamaError(f"{where}: needs 'apt' or 'pip' packages that install it")
    return Toolchain(**data)


def toolchains_dir() -> Path:
    return share_dir("toolchains")


def all_toolchains() -> list:
    return [load_toolchain(p) for p in sorted(toolchains_dir().glob("*.toml"))]


def get_toolchain(name: str) -> Toolchain:
    path = toolchains_dir() / f"{name}.toml"
    if not path.is_file():
        names = ", ".join(p.stem for p in sorted(toolchains_dir().glob("*.toml")))
        raise EdgeLlamaError(f"unknown toolchain {name!r} (known: {names})")
    return load_toolchain(path)


def install_apt(packages):
    """apt-get install, as root or through sudo."""
    if not shutil.which("apt-get"):
        raise EdgeLlamaError(f"no apt-get here; install {' '.join(packages)} with your system's package manager")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    cmd = [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if subprocess.run(cmd, env=env).returncode != 0:
        raise EdgeLlamaError(f"`{' '.join(cmd)}` failed")


def install(toolchain: Toolchain):
    """Run the toolchain's install command (apt, or pip into this Python)."""
    if toolchain.apt:
        install_apt(toolchain.apt)
        return
    import sys
    cmd = [sys.executable, "-m", "pip", "install", "-q", *toolchain.pip]
    if subprocess.run(cmd).returncode != 0:
        raise EdgeLlamaError(f"toolchain {toolchain.name}: `{' '.join(cmd)}` failed")


def missing_system_packages(boards=None) -> list:
    """apt packages of the toolchains and emulators (of `boards`, default all) not installed yet."""
    from edgellama.boards.catalog import all_boards
    wanted = {}
    toolchains = all_toolchains() if boards is None else [get_toolchain(b.toolchain) for b in boards]
    for t in toolchains:
        if t.apt and not t.installed():
            wanted.update(dict.fromkeys(t.apt))
    for b in all_boards() if boards is None else boards:
        if b.emulated and not shutil.which(b.reach.emulator):
            wanted.update(dict.fromkeys(b.reach.apt))
    return list(wanted)
