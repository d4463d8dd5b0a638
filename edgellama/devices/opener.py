"""Opening a device: every sensible combination of --board, --host, --port and --local
becomes one Device (devices/device.py).

    --local, or nothing          the runtime on this machine, in-process
    --board NAME                 an emulated board under QEMU, built into build/NAME first when needed
    --host USER@ADDR [--board]   a Linux board over SSH, running what `edgellama flash` put there
    --port DEV|URL [--board]     a board on a serial line; `--port auto` finds it by the board's USB id

    with open_device(board="qemu-aarch64") as dev:
        for text in dev.generate("once upon a time", SamplingParams(max_tokens=40)):
            print(text, end="")
"""

import subprocess
import time

from edgellama.boards import emulator
from edgellama.boards.builder import ensure_build
from edgellama.boards.catalog import get_board
from edgellama.devices.device import Device, LocalDevice
from edgellama.devices.protocol_device import BOOT_TIMEOUT, DEFAULT_TIMEOUT, HELLO_TRIES, ProtocolDevice
from edgellama.devices.streams import (
    ChannelStreamAdapter,
    ProcessStream,
    SerialStream,
    find_usb_port,
    free_port,
    open_serial,
)
from edgellama.errors import EdgeLlamaError
from edgellama.runtime.engine_options import EngineOptions


def _refuse_mixed(board, host, port, local):
    """One line for the combinations that name two different places to run."""
    if local and (board or host or port):
        given = ", ".join(name for name, value in (("--board", board), ("--host", host), ("--port", port)) if value)
        raise EdgeLlamaError(f"--local runs the model on this machine; it takes no {given}")
    if host and port:
        raise EdgeLlamaError("give --host (a Linux board over SSH) or --port (a serial line), not both")


def open_device(board: str | None = None, host: str | None = None, port: str | None = None, local: bool = False,
                model=None, threads: int | None = None, engine: EngineOptions | None = None, draft_model=None,
                **options) -> Device:
    """The device the options name (see the module's table). `engine`: the engine options
    asked for (the runtime here; an emulated board's build, rebuilt when it has others).
    `draft_model`: speculative decoding with that model's drafts, on this machine only.
    Options for boards: quant and output (the build directory of an emulated board),
    timeout (seconds a request may wait for an answer), baud; for SSH identity,
    known_hosts, trust_host_key, remote_dir."""
    _refuse_mixed(board, host, port, local)
    if engine is not None and (host or port):
        raise EdgeLlamaError("--ctx, --kv-dtype, --block-size and --max-seqs choose how a build is made; a board "
                             "reached by --host or --port runs the build flashed there")
    if draft_model is not None and (board or host or port):
        raise EdgeLlamaError("--draft-model runs with the runtime on this machine; a board speculates with "
                             "n-grams (--speculative-tokens)")
    b = get_board(board) if board else None
    if port:
        return _open_serial_device(port, b, options)
    if host:
        return _open_host(host, b, dict(options, threads=threads), _timeout(options))
    if b is None:
        arguments = dict((engine or EngineOptions()).llm_arguments(), threads=threads)
        if draft_model is not None:
            k = engine.speculative_tokens if engine is not None and engine.speculative_tokens else 4
            arguments["speculative_config"] = {"model": str(draft_model), "num_speculative_tokens": k}
        return LocalDevice(model, **arguments)
    return _open_emulated(b, model, dict(options, threads=threads, engine=engine))


def _timeout(options) -> float:
    return float(options.get("timeout") or DEFAULT_TIMEOUT)


def _open_serial_device(port, b, options):
    if port == "auto":
        if b is None:
            raise EdgeLlamaError("--port auto needs --board (its USB VID:PID picks the port)")
        port = find_usb_port(b)
    baud = int(options.get("baud") or (b.reach.baud if b else 115200))
    stream = SerialStream(open_serial(port, baud, port), port)
    try:
        device = ProtocolDevice(stream, timeout=_timeout(options), transport="serial")
    except BaseException:
        stream.close()
        raise
    if b is not None:
        device.board_name = b.name
    return device


def _open_emulated(b, model, options):
    if not b.emulated:
        raise EdgeLlamaError(f"board {b.name} is not emulated: it is reached over {b.reach.kind}; give "
                             f"{'--host USER@ADDR' if b.reach.kind == 'ssh' else '--port DEVICE (or auto)'} "
                             f"after `edgellama flash --board {b.name}`")
    out_dir = ensure_build(b, model, options.get("quant"), options.get("output"), options.get("engine"),
                           say=options.get("say"))
    timeout = _timeout(options)
    if b.os == "linux":
        device = _open_emulated_linux(b, out_dir, timeout, options)
    elif b.os == "baremetal":
        device = _open_emulated_baremetal(b, out_dir, timeout)
    else:
        raise EdgeLlamaError(f"board {b.name}: no protocol transport for os {b.os!r}")
    device.build_dir = out_dir  # the manifest there gives bench its program and model sizes
    device.board_name = b.name  # the Linux program only knows it is "posix"
    return device


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
    port = free_port()
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
            serial_port = open_serial(url, board.reach.baud, board.name)
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
    from edgellama.devices import flash
    from edgellama.devices.transports import ssh  # paramiko is imported (or missing, one line) on connect
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
