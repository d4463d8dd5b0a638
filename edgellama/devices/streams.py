"""Byte streams a device is reached through, in one place: a local program's pipes
(an emulated Linux board, the host program), a serial port or pyserial URL (a board's
UART, an emulated bare-metal board's TCP socket), and an SSH channel.

Each is write(bytes), read(timeout) -> bytes (b"" when nothing came in time; EOFError
when the link is closed) and close().
"""

import os
import selectors
import signal
import socket
import subprocess
import tempfile

from edgellama.errors import EdgeLlamaError


class Stream:
    """write(bytes); read(timeout) -> bytes (b"" when nothing came in time; raises
    EOFError when the link is closed); close()."""

    description = "stream"

    def write(self, data: bytes):
        raise NotImplementedError

    def read(self, timeout: float) -> bytes:
        raise NotImplementedError

    def close(self):
        pass


class ProcessStream(Stream):
    """A local program's stdin/stdout (its stderr kept in a file, for error messages)."""

    def __init__(self, argv, description: str | None = None):
        self.argv = [str(a) for a in argv]
        self.description = description or self.argv[0]
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, start_new_session=True)
        except FileNotFoundError:
            raise EdgeLlamaError(f"{self.argv[0]} is not installed") from None
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def write(self, data: bytes):
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise EOFError(self._ended()) from None

    def read(self, timeout: float) -> bytes:
        if not self._sel.select(max(0.0, timeout)):
            return b""
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            raise EOFError(self._ended())
        return chunk

    def stderr_text(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def _ended(self) -> str:
        try:
            code = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            code = None
        err = self.stderr_text()
        return f"{self.description} ended (exit status {code})" + (f": {err[-300:]}" if err else "")

    def close(self):
        try:
            self.proc.stdin.close()  # end of input: the program leaves its serve loop
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._sel.close()
        self.proc.stdout.close()
        self._stderr.close()


class SerialStream(Stream):
    """A pyserial port (serial_for_url: device paths, socket://, rfc2217://, loop://)."""

    def __init__(self, port, description: str):
        self.port = port
        self.description = description

    def write(self, data: bytes):
        try:
            self.port.write(data)
            self.port.flush()
        except Exception as e:  # serial.SerialException, OSError: the link is gone
            raise EOFError(f"{self.description}: write failed ({e})") from None

    def read(self, timeout: float) -> bytes:
        try:
            self.port.timeout = max(0.0, timeout)
            first = self.port.read(1)
            if not first:
                return b""
            rest = self.port.read(self.port.in_waiting) if self.port.in_waiting else b""
            return first + rest
        except Exception as e:
            raise EOFError(f"{self.description}: the link closed ({type(e).__name__}: {e})") from None

    def close(self):
        try:
            self.port.close()
        except Exception:
            pass


class ChannelStreamAdapter(Stream):
    """The SSH module's ChannelStream (the remote program's stdio)."""

    def __init__(self, stream, channel, description: str, client=None):
        self.stream, self.channel, self.client = stream, channel, client
        self.description = description

    def write(self, data: bytes):
        try:
            self.stream.write(data)
        except (EdgeLlamaError, OSError) as e:
            raise EOFError(f"{self.description}: {e}") from None

    def read(self, timeout: float) -> bytes:
        self.stream.timeout = max(0.0, timeout)
        try:
            data = self.stream.read_available()
        except (EdgeLlamaError, OSError) as e:
            raise EOFError(f"{self.description}: {e}") from None
        if not data and self.stream.eof:
            raise EOFError(f"{self.description}: the remote program ended")
        return data

    def close(self):
        try:
            self.stream.close()
        finally:
            if self.client is not None:
                self.client.close()



# ---------------------------------------------------------------- serial ports

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_serial(url: str, baud: int, description: str):
    try:
        import serial
    except ImportError:
        raise EdgeLlamaError("serial ports need pyserial: pip install pyserial") from None
    try:
        return serial.serial_for_url(url, baudrate=baud, timeout=1.0)
    except (serial.SerialException, ValueError, OSError) as e:
        raise EdgeLlamaError(f"{description}: cannot open {url}: {e}") from None


def find_usb_port(board) -> str:
    """The one serial port whose USB VID:PID is among the board's reach.usb."""
    try:
        from serial.tools import list_ports
    except ImportError:
        raise EdgeLlamaError("serial ports need pyserial: pip install pyserial") from None
    wanted = {v.lower() for v in board.reach.usb}
    if not wanted:
        raise EdgeLlamaError(f"board {board.name} names no USB VID:PID ([reach] usb); give --port DEVICE")
    found = [p for p in list_ports.comports()
             if p.vid is not None and f"{p.vid:04x}:{p.pid:04x}" in wanted]
    if not found:
        raise EdgeLlamaError(f"--port auto: no serial port with USB id {' or '.join(sorted(wanted))} "
                             f"({board.name}) is connected; give --port DEVICE")
    if len(found) > 1:
        raise EdgeLlamaError(f"--port auto: {len(found)} ports match {board.name}: "
                             f"{', '.join(p.device for p in found)}; give --port DEVICE")
    return found[0].device
