"""The board and toolchain catalog: files checked against the schema, and the CLI."""

import subprocess
import sys

import pytest

from edgellama.boards.catalog import all_boards, get_board, load_board, parse_size
from edgellama.boards.toolchains import Toolchain, all_toolchains, get_toolchain
from edgellama.errors import EdgeLlamaError

SHIPPED = {"rpi5", "rpi4", "rpi3", "rpi-zero2w", "beaglebone-black", "visionfive2", "bpi-f3", "qemu-aarch64",
           "qemu-armhf", "qemu-riscv64", "qemu-riscv64-rvv", "mps2-an386", "qemu-virt-rv64", "esp32-s3", "rpi-pico2",
           "mps2-an505", "mps2-an500", "qemu-virt-rv32"}


def run(*args):
    return subprocess.run([sys.executable, "-m", "edgellama", *args], capture_output=True, text=True, timeout=60)


def test_every_shipped_board_loads_and_names_a_known_toolchain():
    boards = {b.name: b for b in all_boards()}
    assert set(boards) == SHIPPED
    toolchains = {t.name for t in all_toolchains()}
    for b in boards.values():
        assert b.toolchain in toolchains and b.ram > 0
        if b.emulated:
            assert b.reach.emulator and b.reach.apt
    assert boards["rpi4"].cflags == ["-mcpu=cortex-a72"] and boards["rpi4"].ram == 2 << 30
    assert boards["mps2-an386"].flash == 4 << 20 and boards["mps2-an386"].psram == 16 << 20
    assert boards["esp32-s3"].reach.usb == ["303a:1001"] and boards["esp32-s3"].platformio["board"]


@pytest.mark.parametrize("text, words", [
    ("name = 'x'", "missing field"),
    ("name = 'bad'\\ndescription = 'd'\\narch = 'a'\\ncpu = 'c'\\ncflags = []\\nos = 'windows'", "'os' must be one of"),
    ("ram = [1", "not valid TOML"),
    ("colour = 'red'", "unknown field 'colour'"),
])
def test_bad_board_files_name_the_field(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text.replace("\\n", "\n"))
    with pytest.raises(EdgeLlamaError, match=words) as e:
        load_board(path)
    assert "bad.toml" in str(e.value)


def test_board_field_types_are_checked(tmp_path):
    good = get_board("rpi4").path.read_text()
    path = tmp_path / "rpi4.toml"
    path.write_text(good.replace('ram = "2GiB"', 'ram = "lots"'))
    with pytest.raises(EdgeLlamaError, match="field 'ram'"):
        load_board(path)
    path.write_text(good.replace('kind = "ssh"', 'kind = "pigeon"'))
    with pytest.raises(EdgeLlamaError, match=r"\[reach\].*'kind'"):
        load_board(path)
    path.write_text(good.replace('name = "rpi4"', 'name = "rpi9"'))
    with pytest.raises(EdgeLlamaError, match="named rpi4.toml"):
        load_board(path)


def test_sizes():
    assert parse_size("512KiB", "x") == 512 * 1024 and parse_size("16GB", "x") == 16 * 10**9 and parse_size(7, "x") == 7
    with pytest.raises(EdgeLlamaError):
        parse_size("-1", "x")


def test_missing_toolchain_names_the_install_command():
    t = Toolchain("gcc-imaginary", "d", "gnu-linux", "imaginary-linux-gnu-gcc", apt=["gcc-imaginary"])
    with pytest.raises(EdgeLlamaError, match="apt-get install -y --no-install-recommends gcc-imaginary"):
        t.require()
    assert get_toolchain("gcc-aarch64-linux-gnu").tool("objcopy") == "aarch64-linux-gnu-objcopy"


def test_cli_lists_and_shows_boards():
    r = run("boards")
    assert r.returncode == 0
    for name in SHIPPED:
        assert name in r.stdout
    assert "qemu-system-arm -M mps2-an386" in r.stdout
    show = run("boards", "show", "rpi-pico2")
    assert show.returncode == 0 and "cortex-m33" in show.stdout and "2e8a:000f" in show.stdout
    bad = run("boards", "show", "rpi44")
    assert bad.returncode == 1 and bad.stderr.strip() == "error: --board: unknown board 'rpi44'; did you mean rpi4, rpi5, rpi3?"


def test_cli_lists_toolchains():
    r = run("toolchains")
    assert r.returncode == 0 and "gcc-arm-none-eabi" in r.stdout and "arm-none-eabi-gcc" in r.stdout


def test_install_for_a_board_names_what_it_needs():
    from edgellama.boards.toolchains import missing_system_packages
    assert missing_system_packages([get_board("qemu-aarch64")]) == []  # the test setup installed them
    r = run("toolchains", "install", "--board", "qemu-aarch64")
    assert r.returncode == 0 and "everything is installed" in r.stdout
    assert run("toolchains", "install").returncode == 2
