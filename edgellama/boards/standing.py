"""An emulated board kept up as a device: its serial line on a TCP port, reached with
--port socket://HOST:PORT exactly as a real board on /dev/ttyACM0.

    with StandingBoard("mps2-an386") as board:    # built first when it has no build
        print(board.url)                           # socket://127.0.0.1:PORT
        board.wait()                               # until stop() (a signal handler) or the emulator exits

A bare-metal board's UART is QEMU's own TCP server (`-serial tcp:...,server=on,wait=off`):
the guest boots at once, and QEMU takes the next client when one hangs up. A Linux board's
program runs under qemu-user serving the framed protocol on its standard input and
output; a small relay here joins those to the TCP port, one client at a time. Bytes the
device writes while no client is connected are dropped, as on a serial line nobody
listens to; the protocol's HELLO puts the next client back in step.
"""

import os
import selectors
import socket
import subprocess
import threading
import time

from edgellama.boards import emulator
from edgellama.boards.builder import ensure_build, load_build
from edgellama.boards.catalog import get_board
from edgellama.errors import EdgeLlamaError

DEFAULT_HOST = "127.0.0.1"


def parse_listen(text: str) -> tuple:
    """HOST:PORT (PORT 0: any free port) as (host, port); EdgeLlamaError names the problem."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise EdgeLlamaError(f"--listen: expected HOST:PORT (for example 127.0.0.1:4321), got {text!r}")
    return host.strip("[]"), int(port)


def _bound_port(host: str, port: int) -> int:
    """`port`, or a free one for 0; refuses a port something else holds."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise EdgeLlamaError(f"--listen {host}:{port}: cannot listen there ({e.strerror or e})") from None
        return s.getsockname()[1]


class StandingBoard:
    """One emulated board serving its serial line on a TCP port until stopped."""

    def __init__(self, board, model=None, quant=None, out_dir=None, engine=None, host=DEFAULT_HOST, port=0,
                 say=None):
        self.board = get_board(board)
        if not self.board.emulated:
            raise EdgeLlamaError(f"board {self.board.name} is not emulated (reached by {self.board.reach.kind}); "
                                 "emulate runs the emulated boards (edgellama boards lists them)")
        if self.board.os not in ("baremetal", "linux"):
            raise EdgeLlamaError(f"board {self.board.name}: no emulated serial line for os {self.board.os!r}")
        self.host = host
        self.port = _bound_port(host, port)  # before building: a port that is taken fails at once
        self.out_dir = ensure_build(self.board, model, quant, out_dir, engine, say=say)
        self.url = f"socket://{host if ':' not in host else '[' + host + ']'}:{self.port}"
        self._stopped = threading.Event()
        self._relay = None
        self.proc = None

    # ------------------------------------------------------------------ life

    def start(self) -> "StandingBoard":
        if self.board.os == "baremetal":
            self._start_baremetal()
        else:
            self._start_linux()
        return self

    def wait(self) -> int:
        """Until stop() or the emulator's exit; returns the emulator's status (0 when stopped)."""
        while not self._stopped.is_set():
            if self.proc.poll() is not None:
                break
            self._stopped.wait(0.2)
        status = 0 if self._stopped.is_set() else self.proc.returncode
        self.close()
        return status

    def stop(self):
        """Ask wait() to end (safe from a signal handler)."""
        self._stopped.set()

    def close(self):
        self._stopped.set()
        if self.proc is not None:
            emulator.kill_process_group(self.proc)
        if self._relay is not None:
            self._relay.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ bare metal: QEMU's own server

    def _start_baremetal(self):
        from edgellama.boards.targets import baremetal
        ctx = load_build(self.out_dir, self.board.name)
        serial = f"tcp:{self.host}:{self.port},server=on,wait=off"
        self.proc = subprocess.Popen([*baremetal.emulator_command(ctx), "-serial", serial],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + 30.0
        while not self._listening():  # QEMU opens the port before the guest runs
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode("utf-8", "replace").strip() if self.proc.poll() is not None \
                    else "no port after 30 s"
                emulator.kill_process_group(self.proc)
                raise EdgeLlamaError(f"{self.board.name}: the emulator did not start: {err[-300:]}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        """Whether the port takes connections, without becoming QEMU's client: a probe
        that connects would be QEMU's one client until it hangs up, which it does at once."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    # ------------------------------------------------------------------ Linux: a relay to the program

    def _start_linux(self):
        argv = emulator.command(self.board, self.out_dir, ["serve"])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True, bufsize=0)
        listener = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(1)
        self._relay = threading.Thread(target=self._relay_loop, args=(listener,), daemon=True)
        self._relay.start()

    def _relay_loop(self, listener):
        """Bytes between the program's pipes and one TCP client at a time."""
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, "listener")
        sel.register(self.proc.stdout, selectors.EVENT_READ, "device")
        client = None
        try:
            while not self._stopped.is_set():
                for key, _ in sel.select(0.2):
                    if key.data == "listener":
                        conn, _ = listener.accept()
                        if client is not None:  # a new client takes the line, as on a serial port
                            sel.unregister(client)
                            client.close()
                        client = conn
                        sel.register(client, selectors.EVENT_READ, "client")
                    elif key.data == "device":
                        data = os.read(self.proc.stdout.fileno(), 65536)
                        if not data:  # the program ended: wait() sees its status
                            return
                        if client is not None:
                            try:
                                client.sendall(data)
                            except OSError:
                                sel.unregister(client)
                                client.close()
                                client = None
                    else:
                        try:
                            data = client.recv(65536)
                        except OSError:
                            data = b""
                        if not data:
                            sel.unregister(client)
                            client.close()
                            client = None
                            continue
                        try:
                            self.proc.stdin.write(data)
                        except (BrokenPipeError, ValueError):
                            return
        finally:
            if client is not None:
                client.close()
            listener.close()
            sel.close()
