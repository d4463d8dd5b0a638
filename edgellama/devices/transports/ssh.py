"""SSH to a Linux board, with paramiko.

    client = connect("pi@raspberrypi.local")          # key or agent authentication
    rc, out, err = client.run(["uname", "-m"])         # argv, never a shell string
    client.upload("build/rpi4/model.gguf", "/home/pi/m.gguf", progress=lambda sent, total: ...)
    writer, reader, channel = client.exec_stream(["./edgellama-run", "model.gguf", "serve"])

Host keys are checked against known_hosts (default ~/.ssh/known_hosts). An unknown key
is refused with its fingerprint, printed as OpenSSH prints it (SHA256:...), unless the
caller trusts it explicitly (`trust_new_host_key=True`, the CLI's --trust-host-key);
then it is added to known_hosts. A changed key is always refused.

Remote commands are built from argument lists only: every argument goes through
shlex.quote, so no user input reaches the remote shell unquoted.
"""

import base64
import contextlib
import hashlib
import os
import shlex
import time
from pathlib import Path

from edgellama.errors import EdgeLlamaError

DEFAULT_TIMEOUT = 15.0


class HostKeyError(EdgeLlamaError):
    """The server's host key is unknown (and not trusted) or has changed."""


class UploadRefused(EdgeLlamaError):
    """The remote's SFTP server failed a write (its disk is full, the directory is read-only
    or gone) while the connection stays up."""


def _paramiko():
    try:
        import paramiko
    except ImportError:
        raise EdgeLlamaError("SSH needs paramiko: pip install paramiko") from None
    return paramiko


def parse_target(target: str) -> tuple:
    """'user@host[:port]' (or '[v6addr]:port') -> (user, host, port); user defaults to the local user."""
    text = str(target).strip()
    user, sep, rest = text.rpartition("@")
    if not sep:
        user, rest = "", text
    port = 22
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = tail[1:]
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host = rest
    try:
        port = int(port)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise EdgeLlamaError(f"--host {target!r}: the port must be a number from 1 to 65535") from None
    if not host:
        raise EdgeLlamaError(f"--host {target!r}: expected user@host[:port]")
    if not user:
        import getpass
        user = getpass.getuser()
    return user, host, port


def fingerprint(key) -> str:
    """The key's SHA256 fingerprint as OpenSSH prints it: SHA256:<base64, no padding>."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def quote_argv(argv) -> str:
    """The remote command line for argv: every argument quoted."""
    argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in argv]
    if not argv:
        raise ValueError("empty command")
    return " ".join(shlex.quote(a) for a in argv)


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _make_policy(paramiko, known_hosts: Path, trust: bool):
    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            fp = fingerprint(key)
            if not trust:
                raise HostKeyError(
                    f"{hostname}: unknown host key ({key.get_name()} {fp}); not in {known_hosts}. Check the "
                    f"fingerprint on the board (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then pass "
                    f"--trust-host-key to add it")
            client.get_host_keys().add(hostname, key.get_name(), key)
            known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(known_hosts, "a", encoding="ascii") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
    return Policy()


class ChannelStream:
    """One end of a remote program's stdio, shaped like a pyserial port: write(data),
    flush(), read(size) (waits until size bytes arrive, `timeout` seconds pass or the
    program's stdout ends; returns what it has), read_available(), readline(), in_waiting,
    close(). `timeout` None waits for ever."""

    def __init__(self, channel, timeout: float | None = None):
        self.channel = channel
        self.timeout = timeout
        self._buf = bytearray()
        self._eof = False

    def write(self, data: bytes) -> int:
        view = memoryview(bytes(data))
        sent = 0
        while sent < len(view):
            n = self.channel.send(view[sent:])
            if n <= 0:
                raise EdgeLlamaError("SSH: the remote program's stdin is closed")
            sent += n
        return sent

    def flush(self):
        pass

    def _fill(self, deadline) -> bool:
        """Receive once into the buffer; False on EOF or timeout."""
        if self._eof:
            return False
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.channel.settimeout(wait)
        try:
            chunk = self.channel.recv(65536)
        except TimeoutError:
            return False
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def read(self, size: int = 1) -> bytes:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while len(self._buf) < size and self._fill(deadline):
            pass
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def read_available(self) -> bytes:
        """What has arrived (waiting up to `timeout` for at least one byte)."""
        if not self._buf:
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            self._fill(deadline)
        while self.channel.recv_ready():
            self._fill(time.monotonic())
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def readline(self) -> bytes:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while b"\n" not in self._buf and self._fill(deadline):
            pass
        end = self._buf.find(b"\n")
        end = len(self._buf) if end < 0 else end + 1
        out = bytes(self._buf[:end])
        del self._buf[:end]
        return out

    @property
    def in_waiting(self) -> int:
        while self.channel.recv_ready():
            self._fill(time.monotonic())
        return len(self._buf)

    @property
    def eof(self) -> bool:
        return self._eof and not self._buf

    def close(self):
        self.channel.close()


class SSHClient:
    """A connection to one host (make it with connect()). A context manager."""

    def __init__(self, client, user: str, host: str, port: int):
        self._client = client
        self.user, self.host, self.port = user, host, port
        self._sftp = None

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" + ("" if self.port == 22 else f":{self.port}")

    @property
    def transport(self):
        return self._client.get_transport()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._sftp is not None:
            with contextlib.suppress(OSError, EOFError, _paramiko().SSHException):
                self._sftp.close()
            self._sftp = None
        self._client.close()

    def _lost(self, what: str, e: BaseException) -> EdgeLlamaError:
        reason = str(e) or type(e).__name__
        return EdgeLlamaError(f"{self.target}: connection lost while {what} ({reason})")

    def _session(self):
        transport = self.transport
        if transport is None or not transport.is_active():
            raise EdgeLlamaError(f"{self.target}: the SSH connection is closed")
        return transport.open_session()

    def run(self, argv, timeout: float | None = 120.0, input: bytes | str | None = None) -> tuple:
        """Run argv on the remote host: (returncode, stdout, stderr), output decoded as UTF-8."""
        command = quote_argv(argv)
        paramiko = _paramiko()
        try:
            channel = self._session()
            channel.exec_command(command)
            if input is not None:
                data = input.encode() if isinstance(input, str) else input
                ChannelStream(channel).write(data)
            channel.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = None if timeout is None else time.monotonic() + timeout
            channel.settimeout(0.05)
            while True:
                progressed = False
                while channel.recv_ready():
                    out += channel.recv(65536)
                    progressed = True
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    progressed = True
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if channel.closed and not progressed:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    channel.close()
                    raise EdgeLlamaError(f"{self.target}: `{command}` did not finish in {timeout:g} s")
                if not progressed:
                    try:
                        chunk = channel.recv(65536)
                        if chunk:
                            out += chunk
                    except TimeoutError:
                        pass
            rc = channel.recv_exit_status() if channel.exit_status_ready() else -1
            channel.close()
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise self._lost(f"running `{command}`", e) from None
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def check(self, argv, timeout: float | None = 120.0) -> str:
        """run(argv); its stdout when it exits 0, else an EdgeLlamaError with its stderr."""
        rc, out, err = self.run(argv, timeout)
        if rc != 0:
            said = " ".join((err or out).split())[-300:]
            raise EdgeLlamaError(f"{self.target}: `{quote_argv(argv)}` failed (exit {rc}): {said or 'no output'}")
        return out

    def sftp(self):
        if self._sftp is None:
            paramiko = _paramiko()
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, EOFError, OSError) as e:
                raise self._lost("opening SFTP", e) from None
        return self._sftp

    def _refused(self, e: BaseException) -> bool:
        """An SFTP error status (a failed write: a full disk, a read-only or missing
        directory) on a connection that is still up, rather than a lost connection."""
        if not isinstance(e, OSError) or isinstance(e, (TimeoutError, ConnectionError)):
            return False
        transport = self.transport
        channel = self._sftp.get_channel() if self._sftp is not None else None
        return bool(transport is not None and transport.is_active() and channel is not None and not channel.closed)

    def home(self) -> str:
        """The remote user's home directory (where relative paths start)."""
        return self.sftp().normalize(".")

    def upload(self, local, remote: str, progress=None) -> int:
        """Copy the local file to the remote path over SFTP; progress(sent, total) as it goes.
        Returns the bytes sent. A dropped connection is an EdgeLlamaError."""
        paramiko = _paramiko()
        local = Path(local)
        size = local.stat().st_size
        try:
            attrs = self.sftp().put(str(local), str(remote), callback=progress, confirm=True)
        except (paramiko.SSHException, EOFError, OSError) as e:
            if self._refused(e):  # the server answered with an error status: the connection is fine
                raise UploadRefused(f"{self.target}: the remote refused the write of {local.name} to {remote} "
                                    f"({str(e) or type(e).__name__})") from None
            raise self._lost(f"uploading {local.name} to {remote}", e) from None
        if attrs.st_size != size:
            raise EdgeLlamaError(f"{self.target}: {remote} has {attrs.st_size} bytes after upload, expected {size}")
        return size

    def exec_stream(self, argv, stderr_to_stdout: bool = False, timeout: float | None = None) -> tuple:
        """Start argv on the remote host, its stdio a byte stream: (writer, reader, channel).
        writer and reader are the same ChannelStream (pyserial-like: write/read(size)/readline,
        `timeout` attribute); channel is the paramiko Channel (exit_status_ready(),
        recv_exit_status(), recv_stderr(), close()). Closing the channel ends the program's
        stdin; the remote program should exit when its stdin ends."""
        paramiko = _paramiko()
        command = quote_argv(argv)
        try:
            channel = self._session()
            channel.set_combine_stderr(stderr_to_stdout)
            channel.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise self._lost(f"starting `{command}`", e) from None
        stream = ChannelStream(channel, timeout)
        return stream, stream, channel


def connect(target: str, key_filename=None, known_hosts=None, trust_new_host_key: bool = False,
            timeout: float = DEFAULT_TIMEOUT) -> SSHClient:
    """Connect to 'user@host[:port]'. Authenticates with key_filename when given, else with
    the SSH agent and the usual ~/.ssh keys. The host key must be in known_hosts (default
    ~/.ssh/known_hosts) unless trust_new_host_key, which adds an unknown one there; a changed
    key is always refused. Errors are EdgeLlamaError (HostKeyError for host keys)."""
    paramiko = _paramiko()
    user, host, port = parse_target(target)
    known_hosts = Path(known_hosts).expanduser() if known_hosts else Path("~/.ssh/known_hosts").expanduser()
    client = paramiko.SSHClient()
    if known_hosts.is_file():
        try:
            client.load_host_keys(str(known_hosts))
        except (OSError, paramiko.SSHException) as e:
            raise EdgeLlamaError(f"{known_hosts}: cannot read ({e})") from None
    client.set_missing_host_key_policy(_make_policy(paramiko, known_hosts, trust_new_host_key))
    if key_filename is not None and not Path(key_filename).expanduser().is_file():
        raise EdgeLlamaError(f"--identity {key_filename}: no such file")
    where = f"{user}@{known_hosts_name(host, port)}"
    try:
        client.connect(host, port=port, username=user,
                       key_filename=str(Path(key_filename).expanduser()) if key_filename else None,
                       allow_agent=True, look_for_keys=key_filename is None, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout)
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        raise HostKeyError(
            f"{known_hosts_name(host, port)}: the host key has CHANGED: the server offers {e.key.get_name()} "
            f"{fingerprint(e.key)}, {known_hosts} has {fingerprint(e.expected_key)}. This may be an attack or a "
            f"reinstalled board; if you know it is the latter, remove the old key (ssh-keygen -R "
            f"{shlex.quote(known_hosts_name(host, port))} -f {shlex.quote(str(known_hosts))}); refusing") from None
    except paramiko.AuthenticationException as e:
        client.close()
        how = f"key {key_filename}" if key_filename else "the SSH agent and ~/.ssh keys"
        raise EdgeLlamaError(f"{where}: authentication failed with {how} ({e}); pass --identity KEY") from None
    except (paramiko.SSHException, OSError, EOFError) as e:
        client.close()
        raise EdgeLlamaError(f"{where}: cannot connect ({e or type(e).__name__})") from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)
    return SSHClient(client, user, host, port)
