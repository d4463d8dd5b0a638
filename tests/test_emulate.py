"""`edgellama emulate`: an emulated board kept up as a device on a TCP port, reached by
the other verbs with --port socket://... as a real board on a serial port. Real QEMU, the
real CLI in its own process, real TCP clients one after another, and SIGTERM at the end."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import PROMPT, require_board

from edgellama.cli import main
from edgellama.devices.protocol_device import ProtocolDevice
from edgellama.devices.streams import SerialStream, open_serial
from edgellama.runtime.sampling_params import SamplingParams

pytestmark = pytest.mark.emulated


def start(args, timeout=240):
    """`edgellama emulate ARGS` in its own process: (process, URL) once it prints the URL."""
    proc = subprocess.Popen([sys.executable, "-m", "edgellama", "emulate", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()  # the build, when one is made, comes first (on stderr)
    if not line.startswith("socket://") or time.monotonic() > deadline:
        proc.kill()
        pytest.fail(f"emulate printed {line!r}; stderr: {proc.stderr.read()[-2000:]}")
    return proc, line.strip()


def stop(proc):
    """SIGTERM, as a service manager would: it exits 0 and leaves no emulator behind."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # the emulator ran in the command's process group: none of it is left


def generate(url, board, *extra):
    result = CliRunner().invoke(main, ["generate", PROMPT, "--port", url, "--board", board, "--temperature", "0",
                                       "--max-tokens", "40", *extra])
    assert result.exit_code == 0, result.output
    return result.stdout


def host_generate(model):
    result = CliRunner().invoke(main, ["generate", PROMPT, "--model", str(model), "--temperature", "0",
                                       "--max-tokens", "40"])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_bare_metal_board_is_built_then_serves_client_after_client(tmp_path):
    require_board("mps2-an386")
    out = tmp_path / "an386"
    proc, url = start(["--board", "mps2-an386", "-o", str(out)])
    try:
        assert (out / "manifest.json").is_file()  # there was no build: it made one
        want = host_generate(out / "model.gguf")
        assert generate(url, "mps2-an386") == want
        # a client that hangs up in the middle of a reply: the next one is answered
        port = open_serial(url, 115200, "test")
        device = ProtocolDevice(SerialStream(port, url), timeout=60)
        stream = device.generate(PROMPT, SamplingParams(temperature=0, max_tokens=200))
        next(iter(stream))
        port.close()
        assert generate(url, "mps2-an386") == want
        bench = CliRunner().invoke(main, ["bench", "--port", url, "--board", "mps2-an386", "-r", "1", "-n", "8",
                                          "--warmup", "0", "--no-history"])
        assert bench.exit_code == 0 and "tg8" in bench.stdout, bench.output
    finally:
        stop(proc)


def test_a_linux_board_serves_through_the_relay(board_builds):
    require_board("qemu-aarch64")
    out = board_builds("qemu-aarch64", "q8_0").out_dir
    proc, url = start(["--board", "qemu-aarch64", "-o", str(out), "--listen", "127.0.0.1:0"])
    try:
        want = host_generate(out / "model.gguf")
        assert generate(url, "qemu-aarch64") == want
        assert generate(url, "qemu-aarch64") == want
    finally:
        stop(proc)


def one_line_error(args):
    result = CliRunner().invoke(main, ["emulate", *args])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_bad_requests_are_one_line(tmp_path):
    assert "expected HOST:PORT" in one_line_error(["--board", "mps2-an386", "--listen", "4321"])
    assert "is not emulated" in one_line_error(["--board", "rpi4"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        require_board("mps2-an386")
        assert "cannot listen there" in one_line_error(["--board", "mps2-an386", "--listen", f"127.0.0.1:{port}",
                                                        "-o", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()  # refused before anything was built
