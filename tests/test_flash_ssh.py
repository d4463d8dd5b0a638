"""`edgellama flash` over SSH, against a real sshd on 127.0.0.1 (tests/sshd.py).

The remote is this machine: a qemu-aarch64 build is flashed to it and runs there under
qemu-aarch64 (the board is emulated, so the remote needs the emulator rather than an
aarch64 CPU). Checked: the remote greedy text equals the host program's; a second
release and --rollback switch `current` atomically; a corrupted upload fails its sha256
check on the device and changes nothing; unknown host keys are refused with their
fingerprint unless trusted, changed ones always; a connection killed mid-upload leaves
the running release as it was; a build for another architecture is refused.
"""

import posixpath
import subprocess

import pytest
from click.testing import CliRunner
from conftest import require_board

from edgellama.boards import builder
from edgellama.boards.catalog import get_board
from edgellama.cli import main
from edgellama.devices import flash
from edgellama.devices.transports import ssh
from edgellama.errors import EdgeLlamaError
from edgellama.runtime import build as runtime_build

pytestmark = pytest.mark.emulated  # boards under QEMU, cross-built programs under qemu-user

BOARD = "qemu-aarch64"
PROMPT = "once upon a time"
GREEDY = ["--temperature", "0", "--max-tokens", "20"]


@pytest.fixture(scope="module")
def builds(board_builds):
    return {quant: board_builds(BOARD, quant) for quant in ("q8_0", "f32")}


@pytest.fixture(scope="module")
def remote(sshd_server, tmp_path_factory):
    """Where releases go on the remote (a temporary directory, not the user's home)."""
    return str(tmp_path_factory.mktemp("remote") / "edgellama")


@pytest.fixture
def flashed(sshd_server, remote, builds):
    """The remote with a release (the Q8_0 build) when an earlier test has not made one."""
    with client(sshd_server) as c:
        if flash.current_release(c, remote) is None:
            flash.flash(BOARD, sshd_server.target, builds["q8_0"].out_dir, progress=lambda *a: None,
                        **ssh_kwargs(sshd_server, remote))
    return remote


def ssh_args(server, remote_dir):
    return ["--identity", str(server.client_key), "--known-hosts", str(server.known_hosts), "--remote-dir", remote_dir]


def ssh_kwargs(server, remote_dir):
    return {"identity": server.client_key, "known_hosts": server.known_hosts, "remote_dir": remote_dir}


def client(server, **kw):
    return ssh.connect(server.target, key_filename=server.client_key, known_hosts=kw.pop("known_hosts", server.known_hosts),
                       **kw)


def host_text(model_path):
    program = runtime_build.host_program()
    result = subprocess.run([str(program), str(model_path), "generate", PROMPT, *GREEDY], capture_output=True,
                            text=True, timeout=60, check=True)
    return result.stdout


def remote_state(server, remote_dir):
    """(current release path, its file names, output of the program run remotely)."""
    with client(server) as c:
        current = flash.current_release(c, remote_dir)
        files = sorted(c.check(["ls", "-A", posixpath.join(remote_dir, "current") + "/"]).split())
        rc, out, err = c.run(flash.remote_program_argv(BOARD, ["generate", PROMPT, *GREEDY], remote_dir), timeout=60)
        assert rc == 0, err
    return current, files, out


def cli_flash(*args):
    return CliRunner().invoke(main, ["flash", "--board", BOARD, *args])


# ---------------------------------------------------------------- the transport itself

def test_parse_target_and_quoting():
    assert ssh.parse_target("pi@raspberrypi.local") == ("pi", "raspberrypi.local", 22)
    assert ssh.parse_target("pi@10.0.0.2:2222") == ("pi", "10.0.0.2", 2222)
    assert ssh.parse_target("u@[::1]:2200") == ("u", "::1", 2200)
    with pytest.raises(EdgeLlamaError, match="port"):
        ssh.parse_target("pi@host:notaport")
    assert ssh.quote_argv(["echo", "a b", "$(id)", ";rm"]) == "echo 'a b' '$(id)' ';rm'"


def test_run_quotes_every_argument_and_streams(sshd_server, tmp_path):
    with client(sshd_server) as c:
        hostile = f"$(touch {tmp_path}/pwned); `id` ; echo 'x' > {tmp_path}/pwned2"
        rc, out, err = c.run(["echo", hostile])
        assert (rc, out, err) == (0, hostile + "\n", "")
        assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
        assert c.run(["sh", "-c", "echo oops >&2; exit 3"]) == (3, "", "oops\n")
        writer, reader, channel = c.exec_stream(["cat"])
        reader.timeout = 10
        writer.write(b"hello\nworld\n")
        assert reader.readline() == b"hello\n" and reader.read(6) == b"world\n"
        channel.shutdown_write()
        assert reader.read(1) == b"" and channel.recv_exit_status() == 0
        channel.close()


# ---------------------------------------------------------------- flash, run, rollback

def test_flash_then_run_remotely_matches_host(sshd_server, remote, builds):
    result = cli_flash("--host", sshd_server.target, "--dir", str(builds["q8_0"].out_dir),
                       *ssh_args(sshd_server, remote))
    assert result.exit_code == 0, result.output
    assert "is current" in result.output
    current, files, out = remote_state(sshd_server, remote)
    assert current.startswith(posixpath.join(remote, "releases") + "/")
    assert files == ["edgellama-run", "manifest.json", "model.gguf"]
    expected = host_text(builds["q8_0"].out_dir / "model.gguf")
    assert out == expected and out.startswith(PROMPT) and len(out) > len(PROMPT) + 20


def test_second_release_then_rollback(sshd_server, remote, builds, flashed):
    first, _, _ = remote_state(sshd_server, remote)
    msg = flash.flash(BOARD, sshd_server.target, builds["f32"].out_dir, progress=lambda *a: None,
                      **ssh_kwargs(sshd_server, remote))
    assert "previous" in msg
    second, _, out = remote_state(sshd_server, remote)
    assert second != first and out == host_text(builds["f32"].out_dir / "model.gguf")
    with client(sshd_server) as c:
        assert posixpath.join(remote, c.check(["readlink", posixpath.join(remote, "previous")]).strip()) == first

    result = cli_flash("--host", sshd_server.target, "--rollback", *ssh_args(sshd_server, remote))
    assert result.exit_code == 0, result.output
    current, _, out = remote_state(sshd_server, remote)
    assert current == first and out == host_text(builds["q8_0"].out_dir / "model.gguf")
    with client(sshd_server) as c:  # both releases stay; no temporary links are left behind
        names = c.check(["ls", "-A", remote]).split()
        assert sorted(names) == ["current", "previous", "releases"]
        assert len(c.check(["ls", "-A", posixpath.join(remote, "releases")]).split()) >= 2


def test_corrupt_upload_is_refused(sshd_server, remote, builds, flashed):
    before = remote_state(sshd_server, remote)
    releases = posixpath.join(remote, "releases")
    with client(sshd_server) as c:
        listed = sorted(c.check(["ls", "-A", releases]).split())

    def corrupt(c, paths):
        c.check(["sh", "-c", 'printf X | dd of="$1" bs=1 seek=1000 conv=notrunc 2>/dev/null', "sh", paths[-1]])

    with pytest.raises(EdgeLlamaError, match=r"model.gguf has sha256 .*corrupt.*untouched"):
        flash.flash(BOARD, sshd_server.target, builds["f32"].out_dir, progress=lambda *a: None, after_upload=corrupt,
                    **ssh_kwargs(sshd_server, remote))
    assert remote_state(sshd_server, remote) == before
    with client(sshd_server) as c:  # the staging directory is gone
        assert sorted(c.check(["ls", "-A", releases]).split()) == listed


def test_connection_killed_mid_upload_leaves_the_release_running(sshd_server, remote, builds, flashed):
    before = remote_state(sshd_server, remote)
    seen = []

    def progress(name, sent, total):
        seen.append((name, sent))
        if name == "model.gguf" and sent >= 256 * 1024:
            sshd_server.kill_sessions()

    with pytest.raises(EdgeLlamaError, match="connection lost while uploading model.gguf.*untouched"):
        flash.flash(BOARD, sshd_server.target, builds["f32"].out_dir, progress=progress,
                    **ssh_kwargs(sshd_server, remote))
    assert any(name == "model.gguf" for name, _ in seen)
    current, files, out = remote_state(sshd_server, remote)
    assert (current, files, out) == before  # old release still runs, nothing partial under current
    assert not any(f.endswith(".part") for f in files)

    with client(sshd_server) as c:  # the cut-off upload's staging directory is there, outside `current`
        assert [n for n in c.check(["ls", "-A", posixpath.join(remote, "releases")]).split() if n.endswith(".partial")]
    # the next flash goes through and clears it
    flash.flash(BOARD, sshd_server.target, builds["f32"].out_dir, progress=lambda *a: None,
                **ssh_kwargs(sshd_server, remote))
    current, files, out = remote_state(sshd_server, remote)
    assert current != before[0] and out == host_text(builds["f32"].out_dir / "model.gguf")
    with client(sshd_server) as c:
        assert not [n for n in c.check(["ls", "-A", posixpath.join(remote, "releases")]).split() if n.startswith(".")]


# ---------------------------------------------------------------- host keys

def fingerprint_of(server):
    out = subprocess.run(["ssh-keygen", "-lf", str(server.host_key_pub)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


def test_unknown_host_key_refused_then_trusted(sshd_server, builds, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    remote_dir = str(tmp_path / "remote")
    args = ["--host", sshd_server.target, "--dir", str(builds["q8_0"].out_dir), "--identity",
            str(sshd_server.client_key), "--known-hosts", str(known_hosts), "--remote-dir", remote_dir]
    result = cli_flash(*args)
    assert result.exit_code == 1
    fp = fingerprint_of(sshd_server)
    assert fp.startswith("SHA256:") and fp in result.output and "--trust-host-key" in result.output
    assert not known_hosts.exists()

    result = cli_flash(*args, "--trust-host-key")
    assert result.exit_code == 0, result.output
    assert known_hosts.read_text() == sshd_server.known_hosts_line()
    client(sshd_server, known_hosts=known_hosts).close()  # now known: no flag needed


def test_changed_host_key_is_always_refused(sshd_server, tmp_path):
    from sshd import keygen
    keygen(tmp_path / "other")
    kind, blob = (tmp_path / "other.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{sshd_server.host}]:{sshd_server.port} {kind} {blob}\n")
    for trust in (False, True):
        with pytest.raises(ssh.HostKeyError, match="CHANGED") as e:
            client(sshd_server, known_hosts=known_hosts, trust_new_host_key=trust)
        assert fingerprint_of(sshd_server) in str(e.value)
    assert known_hosts.read_text() == f"[{sshd_server.host}]:{sshd_server.port} {kind} {blob}\n"


# ---------------------------------------------------------------- refusals

def test_wrong_architecture_is_refused(sshd_server, tmp_path):
    require_board("rpi4")  # skips when the aarch64 cross compiler is missing
    build = builder.build("rpi4", out_dir=tmp_path / "rpi4")
    result = CliRunner().invoke(main, ["flash", "--board", "rpi4", "--host", sshd_server.target, "--dir",
                                       str(build.out_dir), *ssh_args(sshd_server, str(tmp_path / "remote"))])
    assert result.exit_code == 1
    assert "x86_64" in result.output and "aarch64" in result.output and "refusing" in result.output
    assert not (tmp_path / "remote").exists()


class FakeClient:
    target = "pi@board"

    def __init__(self, machine, cpuinfo):
        self.machine, self.cpuinfo = machine, cpuinfo

    def check(self, argv, timeout=None):
        assert argv == ["uname", "-m"]
        return self.machine + "\n"

    def run(self, argv, timeout=None):
        assert argv == ["cat", "/proc/cpuinfo"]
        return 0, self.cpuinfo, ""


@pytest.mark.parametrize("board,machine,cpuinfo,ok,kernels", [
    ("rpi4", "aarch64", "Features\t: fp asimd evtstrm crc32\n", True, "neon"),
    ("rpi5", "aarch64", "Features\t: fp asimd evtstrm crc32 asimddp\n", True, "neon-dotprod"),
    ("rpi5", "aarch64", "Features\t: fp asimd evtstrm crc32\n", False, "neon-dotprod"),
    ("bpi-f3", "riscv64", "isa\t\t: rv64imafdcv_zicsr\n", True, "rvv"),
    ("bpi-f3", "riscv64", "isa\t\t: rv64imafdc_zicsr\n", False, "rvv"),
    ("rpi4", "aarch64", "Features\t: fp evtstrm\n", False, "neon"),
    ("beaglebone-black", "armv7l", "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls\n", True, "neon"),
    ("beaglebone-black", "armv7l", "Features\t: half thumb fastmult vfp edsp vfpv3 tls\n", False, "neon"),
    ("beaglebone-black", "aarch64", "Features\t: fp asimd\n", False, "neon"),
    ("visionfive2", "riscv64", "isa\t\t: rv64imafdc_zicntr_zicsr\n", True, "portable"),
    ("visionfive2", "riscv64", "isa\t\t: rv64imac\n", False, "portable"),
])
def test_cpu_features_are_checked(board, machine, cpuinfo, ok, kernels):
    fake = FakeClient(machine, cpuinfo)
    if ok:
        assert flash.check_remote(fake, get_board(board), kernels) == machine
    else:
        with pytest.raises(EdgeLlamaError, match="refusing to flash"):
            flash.check_remote(fake, get_board(board), kernels)


def test_emulated_bare_metal_board_has_nothing_to_flash():
    result = CliRunner().invoke(main, ["flash", "--board", "mps2-an386"])
    assert result.exit_code == 0 and "edgellama run --board mps2-an386" in result.output


def test_platformio_upload_error_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["flash", "--board", "rpi-pico2", "--dir", str(tmp_path)])
    assert result.exit_code == 1 and "platformio.ini" in result.output and len(result.output.splitlines()) == 1


def test_platformio_upload_runs_pio_and_reports_one_line(tmp_path, monkeypatch):
    from edgellama.boards.targets import platformio
    project = tmp_path / "build" / "src"
    project.mkdir(parents=True)
    (project / "platformio.ini").write_text("[env:x]\n")
    fake = tmp_path / "pio"
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\necho "Uploading..."\n'
                    'echo "Error: Please specify upload_port for environment" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setattr(platformio, "pio_command", lambda: [str(fake)])
    result = CliRunner().invoke(main, ["flash", "--board", "rpi-pico2", "--dir", str(tmp_path / "build"),
                                       "--port", "/dev/ttyACM7"])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert "Error: Please specify upload_port" in result.output
    assert (tmp_path / "args").read_text().split() == ["run", "-t", "upload", "-d", str(project),
                                                       "--upload-port", "/dev/ttyACM7"]
