"""A device that speaks the framed protocol (firmware/PROTOCOL.md) over a byte stream:
a serial port (a device path or a pyserial URL), an emulated board (a Linux build under
qemu-user on pipes, a bare-metal image under qemu-system behind a TCP socket), or a
Linux board's `edgellama-run MODEL serve` over SSH.

    with open_protocol_device(board="qemu-aarch64") as dev:
        print(dev.info())
        for text in dev.generate("once upon a time", SamplingParams(temperature=0, max_tokens=40)):
            print(text, end="")
        print(dev.last_stats)

Every wait has a deadline: a link that goes quiet or closes is an EdgeLlamaError that
says what was received, never a hang.
"""

import codecs
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edgellama.boards import emulator
from edgellama.devices import protocol as P
from edgellama.devices.device import Device, Stats
from edgellama.errors import EdgeLlamaError
from edgellama.runtime.sampling_params import SamplingParams

DEFAULT_TIMEOUT = 60.0      # seconds without a frame before a request fails
HELLO_TIMEOUT = 5.0         # seconds per HELLO attempt
HELLO_TRIES = 3
BOOT_TIMEOUT = 120.0        # an emulator that loads a model before it answers


# ---------------------------------------------------------------- byte streams

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


# ---------------------------------------------------------------- the device

def _int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class ProtocolDevice(Device):
    """The Device interface over a Stream that carries the framed protocol."""

    name = "protocol"

    def __init__(self, stream: Stream, timeout: float = DEFAULT_TIMEOUT, hello_timeout: float = HELLO_TIMEOUT,
                 hello_tries: int = HELLO_TRIES, on_close=None, transport: str = "serial"):
        self.stream = stream
        self.timeout = timeout
        self.transport = transport
        self.decoder = P.Decoder()
        self.frames = []
        self.link_errors = []   # the device's answers to noise that looked like a frame header
        self.last_stats = Stats()
        self._on_close = on_close
        self._in_flight = False
        self._cancel_sent = False
        self._cancelled = False
        self._info = None
        self._closed = False
        try:
            self._info = self._hello(hello_timeout, hello_tries)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------ frames

    def send(self, type_: int, payload: bytes = b""):
        try:
            self.stream.write(P.encode(type_, payload))
        except EOFError as e:
            raise EdgeLlamaError(f"{self.stream.description}: the link is closed ({e})") from None

    def _received(self) -> str:
        noise = bytes(self.decoder.noise[-200:]).decode("utf-8", "replace")
        return (f"{len(self.decoder.noise)} bytes outside frames" + (f" (last: {noise!r})" if noise else "") +
                (", a half frame" if self.decoder.partial() else ""))

    def next_frame(self, timeout: float, what: str) -> P.Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EdgeLlamaError(f"{self.stream.description}: no answer to {what} within {timeout:g} s; "
                                     f"received {self._received()}")
            try:
                data = self.stream.read(min(left, 1.0))
            except EOFError as e:
                raise EdgeLlamaError(f"{self.stream.description}: the link closed during {what} ({e}); "
                                     f"received {self._received()}") from None
            if data:
                for frame in self.decoder.feed(data):
                    if frame.type == P.ERROR and frame.payload.startswith(P.FRAMING_ERROR):
                        self.link_errors.append(frame.payload.decode("utf-8", "replace"))  # about line noise
                    else:
                        self.frames.append(frame)
        return self.frames.pop(0)

    def _request(self, type_: int, payload: bytes, answer: int, timeout: float | None = None) -> P.Frame:
        """Send one message and wait for its answer, skipping what an earlier reply left."""
        name = P.NAMES.get(type_, hex(type_))
        self.send(type_, payload)
        while True:
            frame = self.next_frame(self.timeout if timeout is None else timeout, name)
            if frame.type == answer:
                return frame
            if frame.type == P.ERROR:
                raise EdgeLlamaError(f"{self.stream.description}: {frame.payload.decode('utf-8', 'replace')}")

    def _hello(self, timeout: float, tries: int) -> dict:
        last = None
        for _ in range(max(1, tries)):
            try:
                self.send(P.CANCEL)  # a reply left running by an earlier host stops
                return self._request(P.HELLO, b"", P.INFO, timeout).kv()
            except EdgeLlamaError as e:
                last = e
                if "link closed" in str(e) or "link is closed" in str(e):
                    raise
        raise EdgeLlamaError(f"no HELLO answer after {tries} tries: {last}")

    # ------------------------------------------------ Device

    def info(self) -> dict:
        kv = dict(self._info)
        out = {"runtime_version": kv.pop("version", None), "model": kv.pop("model", None),
               "context_length": _int(kv.pop("ctx", None)), "vocab_size": _int(kv.pop("vocab", None)),
               "arena_bytes": _int(kv.pop("arena", None)), "board": kv.pop("board", None),
               "transport": self.transport}
        for key, value in kv.items():
            out[key] = _int(value, value)
        if getattr(self, "board_name", None):
            out["board"] = self.board_name
        if getattr(self, "build_dir", None) is not None:
            out["build_dir"] = str(self.build_dir)
            model_file = Path(self.build_dir) / "model.gguf"
            if model_file.is_file():
                out["model_path"] = str(model_file)
        return out

    def generate(self, prompt: str, params: SamplingParams | None = None, chat: bool = False, reset: bool = False,
                 system: str | None = None):
        params = params if params is not None else SamplingParams()
        payload = P.generate_payload(prompt, params, chat=chat, reset=reset, system=system)
        self._cancelled = self._cancel_sent = False
        stats = Stats()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.frames.clear()
        self.send(P.GENERATE, payload)
        self._in_flight = True
        start = time.perf_counter()
        done = None
        try:
            while done is None:
                if self._cancelled and not self._cancel_sent:
                    self._send_cancel()
                frame = self.next_frame(self.timeout, "GENERATE")
                if frame.type == P.TOKEN:
                    t, data = frame.token()
                    stats.token_times_s.append(t)
                    stats.extra.setdefault("host_token_times_s", []).append(time.perf_counter() - start)
                    text = decoder.decode(data)
                    if text:
                        yield text
                elif frame.type == P.DONE:
                    done = frame.kv()
                elif frame.type == P.ERROR:
                    raise EdgeLlamaError(f"{self.stream.description}: {frame.payload.decode('utf-8', 'replace')}")
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            if done is None:
                self._drain_after_abort()
            self._in_flight = False
        stats.output_tokens = _int(done.get("tokens"), len(stats.token_times_s))
        stats.prompt_tokens = _int(done.get("computed") if chat else done.get("prompt"), 0)
        stats.cached_tokens = _int(done.get("cached"), 0)
        stats.finish_reason = done.get("finish")
        if "ttft_us" in done:
            stats.ttft_s = int(done["ttft_us"]) / 1e6
            stats.total_s = int(done["total_us"]) / 1e6
        stats.arena_high_water = _int(done.get("arena_hw"))
        stats.kv_blocks_used = _int(done.get("kv_blocks"))
        stats.extra.update({k: _int(v, v) for k, v in done.items()})
        stats.extra["host_total_s"] = time.perf_counter() - start
        self.last_stats = stats

    def _send_cancel(self):
        self._cancel_sent = True
        try:
            self.send(P.CANCEL)
        except EdgeLlamaError:
            pass

    def _drain_after_abort(self):
        """The caller stopped reading mid-reply: cancel it and read up to its DONE."""
        try:
            if not self._cancel_sent:
                self._send_cancel()
            while True:
                frame = self.next_frame(min(self.timeout, 30.0), "CANCEL")
                if frame.type in (P.DONE, P.ERROR):
                    return
        except EdgeLlamaError:
            pass

    def cancel(self):
        self._cancelled = True
        if self._in_flight and not self._cancel_sent:
            self._send_cancel()

    def reset(self, system: str | None = None):
        self._request(P.RESET, (system or "").encode("utf-8"), P.OK)

    def stats(self) -> dict:
        return {k: _int(v, v) for k, v in self._request(P.STATS, b"", P.STATS_RESULT).kv().items()}

    def ping(self, payload: bytes = b"ping") -> bytes:
        return self._request(P.PING, payload, P.PONG).payload

    def bench_once(self, prompt_tokens: int, gen_tokens: int) -> dict:
        """One device-side run of N prompt tokens and M generated ones (greedy, EOS
        ignored), timed with the device's clock."""
        self.frames.clear()
        self.send(P.BENCH, P.bench_payload(prompt_tokens, gen_tokens))
        times, result = [], None
        while result is None:
            frame = self.next_frame(self.timeout, "BENCH")
            if frame.type == P.TOKEN:
                times.append(frame.token()[0])
            elif frame.type == P.BENCH_RESULT:
                result = frame.kv()
            elif frame.type == P.ERROR:
                raise EdgeLlamaError(f"{self.stream.description}: {frame.payload.decode('utf-8', 'replace')}")

        def seconds(key):
            return int(result[key]) / 1e6 if key in result else None

        return {"prefill_s": seconds("prefill_us"), "ttft_s": seconds("ttft_us"), "token_times_s": times,
                "total_s": seconds("total_us"), "prompt_tokens": _int(result.get("prompt_tokens")),
                "gen_tokens": _int(result.get("gen_tokens")), "arena_high_water": _int(result.get("arena_hw")),
                "kv_blocks_used": _int(result.get("kv_blocks")), "rss_bytes": _int(result.get("rss_bytes"))}

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            self.stream.close()
        finally:
            if self._on_close is not None:
                self._on_close()


# ---------------------------------------------------------------- opening one

def _ensure_build(board, model, quant, output):
    from edgellama.boards.builder import build, default_out_dir
    from edgellama.cli.run import _needs_build
    out_dir = Path(output) if output else default_out_dir(board.name)
    if _needs_build(out_dir, board.name, model, quant):
        build(board.name, model, quant or "q8_0", out_dir)
    return out_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _open_serial(url: str, baud: int, description: str):
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


def _stale_hint(board, out_dir, error: EdgeLlamaError) -> EdgeLlamaError:
    return EdgeLlamaError(f"{error}\n(is {out_dir} a build from before the serial protocol? rebuild it with "
                          f"`edgellama build --board {board.name} -o {out_dir}`)")


def _serve_args(options) -> list:
    """The POSIX program's serve mode, with --threads when one was asked for (else the
    board's own count, compiled into the build)."""
    threads = options.get("threads")
    return ["serve", *(["--threads", str(int(threads))] if threads else [])]


def _open_emulated_linux(board, out_dir, timeout, options):
    argv = emulator.command(board, out_dir, _serve_args(options))
    stream = ProcessStream(argv, f"{board.name} (qemu-user)")
    try:
        return ProtocolDevice(stream, timeout=timeout, hello_timeout=BOOT_TIMEOUT, hello_tries=1,
                              transport="emulator")
    except EdgeLlamaError as e:
        raise _stale_hint(board, out_dir, e) from None


def _open_emulated_baremetal(board, out_dir, timeout):
    from edgellama.boards.builder import load_build
    from edgellama.boards.targets import baremetal
    ctx = load_build(out_dir, board.name)
    port = _free_port()
    argv = [*baremetal.emulator_command(ctx), "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)

    def stop():
        emulator.kill_process_group(proc)
        proc.stderr.close()

    url = f"socket://127.0.0.1:{port}"
    deadline = time.monotonic() + 30.0
    while True:  # QEMU listens once it has started; the guest starts at the first connection
        if proc.poll() is not None:
            err = proc.stderr.read().decode("utf-8", "replace").strip()
            stop()
            raise EdgeLlamaError(f"{board.name}: the emulator exited ({proc.returncode}): {err[-300:]}")
        try:
            serial_port = _open_serial(url, board.reach.baud, board.name)
            break
        except EdgeLlamaError:
            if time.monotonic() > deadline:
                stop()
                raise
            time.sleep(0.1)
    stream = SerialStream(serial_port, f"{board.name} ({url})")
    try:
        device = ProtocolDevice(stream, timeout=timeout, hello_timeout=BOOT_TIMEOUT / HELLO_TRIES,
                                on_close=stop, transport="emulator")
    except EdgeLlamaError as e:
        stop()
        raise _stale_hint(board, out_dir, e) from None
    except BaseException:
        stop()
        raise
    device.url = url
    device.emulator = proc
    return device


def _open_host(host, board, options, timeout):
    try:
        from edgellama.devices import flash
        from edgellama.devices.transports import ssh
    except ImportError:
        raise EdgeLlamaError("--host needs the SSH transport (edgellama/transports/ssh.py); flash the board with "
                             "`edgellama flash --host USER@ADDR` first") from None
    client = ssh.connect(host, key_filename=options.get("identity"), known_hosts=options.get("known_hosts"),
                         trust_new_host_key=bool(options.get("trust_host_key")))
    try:
        remote_dir = options.get("remote_dir") or flash.DEFAULT_REMOTE_DIR
        if flash.current_release(client, remote_dir) is None:
            raise EdgeLlamaError(f"{host}: nothing is flashed there; run `edgellama flash --host {host}` first")
        if board is not None:
            argv = flash.remote_program_argv(board, _serve_args(options), remote_dir)
        else:
            current = f"{remote_dir}/current"
            argv = [f"{current}/edgellama-run", f"{current}/model.gguf", *_serve_args(options)]
        writer, _, channel = client.exec_stream(argv)
    except BaseException:
        client.close()
        raise
    stream = ChannelStreamAdapter(writer, channel, f"{host} (ssh)", client)
    return ProtocolDevice(stream, timeout=timeout, hello_timeout=30.0, hello_tries=1, transport="ssh")


def open_protocol_device(board: str | None = None, host: str | None = None, port: str | None = None, model=None,
                         **options) -> ProtocolDevice:
    """--port DEV|URL|auto (auto needs --board), --host USER@ADDR, or --board NAME (an
    emulated board, built into build/NAME first when needed). Options: quant, output
    (the build directory), timeout, baud; for SSH identity, known_hosts, trust_host_key,
    remote_dir; threads (Linux boards: the program's --threads; bare metal runs one)."""
    from edgellama.boards.catalog import get_board
    timeout = float(options.get("timeout") or DEFAULT_TIMEOUT)
    b = get_board(board) if board else None
    if port:
        if port == "auto":
            if b is None:
                raise EdgeLlamaError("--port auto needs --board (its USB VID:PID picks the port)")
            port = find_usb_port(b)
        baud = int(options.get("baud") or (b.reach.baud if b else 115200))
        stream = SerialStream(_open_serial(port, baud, port), port)
        try:
            return ProtocolDevice(stream, timeout=timeout, transport="serial")
        except BaseException:
            stream.close()
            raise
    if host:
        return _open_host(host, b, options, timeout)
    if b is None:
        raise EdgeLlamaError("give --board, --host or --port")
    if not b.emulated:
        raise EdgeLlamaError(f"board {b.name} is reached by {b.reach.kind}: give --host USER@ADDR (Linux boards) or "
                             f"--port DEVICE (serial)")
    out_dir = _ensure_build(b, model, options.get("quant"), options.get("output"))
    if b.os == "linux":
        device = _open_emulated_linux(b, out_dir, timeout, options)
    elif b.os == "baremetal":
        device = _open_emulated_baremetal(b, out_dir, timeout)
    else:
        raise EdgeLlamaError(f"board {b.name}: no protocol transport for os {b.os!r}")
    device.build_dir = out_dir  # the manifest there gives bench its program and model sizes
    device.board_name = b.name  # the Linux program only knows it is "posix"
    return device
