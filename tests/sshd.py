"""A real sshd on 127.0.0.1 for the SSH tests (DESIGN.md: absolute path, -D -e -f CONFIG,
its own host key, /run/sshd first).

    with SSHD(tmp_dir) as server:        # server.host, .port, .user, .client_key, .known_hosts
        ...
        server.kill_sessions()           # drop every open connection (fault tests)
"""

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD_PATH = "/usr/sbin/sshd"


def available() -> str | None:
    """Why the fixture cannot run here, or None."""
    if not os.path.isfile(SSHD_PATH) or shutil.which("ssh-keygen") is None:
        return "openssh-server is not installed (apt-get install -y openssh-server openssh-client)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str = "edgellama-test"):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


class SSHD:
    def __init__(self, directory):
        self.dir = Path(directory)
        self.host = "127.0.0.1"
        self.user = getpass.getuser()
        self.port = None
        self.proc = None

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def known_hosts_line(self) -> str:
        kind, blob = self.host_key_pub.read_text().split()[:2]
        return f"[{self.host}]:{self.port} {kind} {blob}\n"

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.host_key_pub = self.dir / "ssh_host_ed25519_key.pub"
        self.client_key = self.dir / "id_ed25519"
        if not self.host_key.exists():
            keygen(self.host_key, "edgellama-test-host")
        if not self.client_key.exists():
            keygen(self.client_key)
        authorized = self.dir / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        os.chmod(authorized, 0o600)
        subprocess.run(["mkdir", "-p", "/run/sshd"], check=True)
        self.port = free_port()
        self.config = self.dir / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
            "MaxStartups 50",
            "",
        ]))
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(self.known_hosts_line())
        self.log = open(self.dir / "sshd.log", "ab")
        self.proc = subprocess.Popen([SSHD_PATH, "-D", "-e", "-f", str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.proc.returncode}): {(self.dir / 'sshd.log').read_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {self.host}:{self.port}")

    def session_pids(self) -> list:
        """The sshd processes serving connections: the daemon's children and their children."""
        if self.proc is None:
            return []
        parents = {self.proc.pid}
        found = []
        for _ in range(3):
            more = []
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) in found:
                    continue
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid in parents:
                    more.append(int(entry.name))
            found += more
            parents = set(more)
        return found

    def kill_sessions(self):
        """Kill every connection's sshd process (the connection drops mid-whatever)."""
        for pid in self.session_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self):
        if self.proc is not None:
            self.kill_sessions()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
