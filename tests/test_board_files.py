"""Bare-metal boards are files: a board file (emulator flags in [reach] emulator_args, the
port folder in `port`) and a port folder (link.ld's MEMORY block names the regions).
A new board on an existing port needs no Python; a bad value is one error naming it."""

import pytest

import edgellama.boards.catalog
from edgellama.boards import builder
from edgellama.boards.catalog import get_board, load_board
from edgellama.boards.targets import BuildContext, baremetal
from edgellama.boards.toolchains import get_toolchain
from edgellama.errors import EdgeLlamaError

AN386 = "mps2-an386"
TWIN = "my-an386"   # another board name on the AN386 port


def context(board, out_dir) -> BuildContext:
    return BuildContext(board, get_toolchain(board.toolchain), out_dir / "model.gguf", "q8_0", out_dir)


def kernel_command(board, out_dir) -> list:
    """emulator_command without the image path (the one part that names out_dir)."""
    command = baremetal.emulator_command(context(board, out_dir))
    assert command[-2] == "-kernel" and command[-1].endswith("firmware.elf")
    return command[:-1]


@pytest.fixture
def twin_boards(tmp_path, monkeypatch):
    """A boards dir holding the shipped mps2-an386.toml and a copy named my-an386 that
    points at the same port."""
    boards = tmp_path / "boards"
    boards.mkdir()
    text = get_board(AN386).path.read_text(encoding="utf-8")
    (boards / f"{AN386}.toml").write_text(text, encoding="utf-8")
    twin = text.replace(f'name = "{AN386}"', f'name = "{TWIN}"\nport = "{AN386}"')
    (boards / f"{TWIN}.toml").write_text(twin, encoding="utf-8")
    monkeypatch.setattr(edgellama.boards.catalog, "boards_dir", lambda: boards)
    return boards


def test_shipped_emulator_commands_are_unchanged(tmp_path):
    store = (tmp_path / baremetal.STORE_FILE).resolve()
    assert kernel_command(get_board(AN386), tmp_path) == [
        "qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4", "-semihosting-config",
        "enable=on,target=native",
        # its PSRAM (the machine's RAM) in a file: the model store outlives the emulator
        "-object", f"memory-backend-file,id=store,size={16 << 20},mem-path={store},share=on",
        "-machine", "memory-backend=store",
        "-display", "none", "-monitor", "none", "-no-reboot", "-kernel"]
    assert store.stat().st_size == 16 << 20
    virt = tmp_path / "virt"
    virt.mkdir()
    assert kernel_command(get_board("qemu-virt-rv64"), virt) == [
        "qemu-system-riscv64", "-M", "virt", "-cpu", "rv64", "-bios", "none",
        # all of its RAM in a file: the store at its end outlives the emulator
        "-object", f"memory-backend-file,id=store,size={128 << 20},mem-path={virt / baremetal.STORE_FILE},share=on",
        "-machine", "memory-backend=store",
        "-display", "none", "-monitor", "none", "-no-reboot", "-kernel"]


def test_shipped_ports_name_their_regions_in_link_ld():
    assert baremetal.region_names(baremetal.port_dir(get_board(AN386))) == {
        "flash": "FLASH", "ram": "RAM", "psram": "PSRAM"}
    assert baremetal.region_names(baremetal.port_dir(get_board("qemu-virt-rv64"))) == {
        "flash": "RAM", "ram": "RAM", "psram": "RAM"}


def test_a_board_added_as_a_file_builds_like_its_port(twin_boards, tmp_path):
    twin = get_board(TWIN)
    assert twin.port == AN386 and get_board(AN386).port == AN386
    assert kernel_command(twin, tmp_path) == kernel_command(get_board(AN386), tmp_path)
    configs = {}
    for name in (AN386, TWIN):
        result = builder.export_c(name, quant="q8_0", out_dir=tmp_path / name)
        src = result.out_dir / "src"
        assert sorted(p.name for p in (src / "port").iterdir()) == ["link.ld", "port.c", "port.mk", "startup.c"]
        configs[name] = (src / "config.mk").read_text(encoding="utf-8")
    assert "WEIGHTS_REGION = FLASH\n" in configs[AN386] and "ARENA_REGION = RAM\n" in configs[AN386]
    assert configs[TWIN] == configs[AN386].replace(AN386, TWIN)


def test_a_port_without_psram_or_flash_keeps_them_in_ram(tmp_path):
    (tmp_path / "link.ld").write_text("/* FLASH (rx) : ORIGIN = 0 in a comment */\n"
                                      "MEMORY\n{\n  RAM (rwx) : ORIGIN = 0x80000000, LENGTH = 1M\n}\n")
    assert baremetal.region_names(tmp_path) == {"flash": "RAM", "ram": "RAM", "psram": "RAM"}
    (tmp_path / "link.ld").write_text("MEMORY\n{\n  SRAM (rwx) : ORIGIN = 0, LENGTH = 1M\n}\n")
    with pytest.raises(EdgeLlamaError, match=r"link\.ld: .*region named RAM.*SRAM"):
        baremetal.region_names(tmp_path)


def test_a_board_whose_port_is_missing_names_it(twin_boards, tmp_path):
    path = twin_boards / f"{TWIN}.toml"
    path.write_text(path.read_text().replace(f'port = "{AN386}"', 'port = "no-such-port"'))
    with pytest.raises(EdgeLlamaError, match="no bare-metal port 'no-such-port'"):
        baremetal.port_dir(get_board(TWIN))


@pytest.mark.parametrize("old, new, words", [
    ("emulator_args = [", "emulator_args = '-bios none' # [", r"\[reach\]: field 'emulator_args' must be a list"),
    ('emulator_args = ["-semihosting-config"', 'emulator_args = [1, "-semihosting-config"',
     r"\[reach\]: field 'emulator_args' must be a list"),
    ('kind = "emulator"', 'kind = "serial"', r"\[reach\]: field 'emulator_args' is only for kind"),
    ('name = "mps2-an386"', 'name = "mps2-an386"\nport = "../ports/x"', "field 'port' must be a folder name"),
    ('name = "mps2-an386"', 'name = "mps2-an386"\nport = 3', "field 'port' must be a str"),
    ('os = "baremetal"', 'os = "linux"\nport = "x"', "field 'port' is only for os"),
    ('name = "mps2-an386"', 'name = "mps2-an386"\nmodel_store = "1MiB"', "field 'model_store' is flash a PlatformIO"),
    ('psram = "16MiB"', '# no psram', "field 'store_file' is for an emulated board whose machine RAM"),
])
def test_bad_bare_metal_fields_are_one_error_naming_them(tmp_path, old, new, words):
    text = get_board(AN386).path.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / f"{AN386}.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(EdgeLlamaError, match=words) as e:
        load_board(path)
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_every_shipped_bare_metal_board_has_its_port():
    for board in edgellama.boards.catalog.all_boards():
        if board.os == "baremetal":
            port = baremetal.port_dir(board)
            assert {"link.ld", "port.mk"} <= {p.name for p in port.iterdir()}
            assert "RAM" in baremetal.linker_regions(port)


def _linker_lengths(port) -> dict:
    """REGION -> LENGTH in bytes, from the MEMORY block of the port's link.ld."""
    import re
    text = (port / "link.ld").read_text(encoding="utf-8")
    units = {"": 1, "K": 1 << 10, "M": 1 << 20}
    return {name: int(number) * units[unit.upper()]
            for name, number, unit in re.findall(r"^\s*(\w+)\s*\([^)]*\)\s*:.*LENGTH\s*=\s*(\d+)([KkMm]?)", text, re.M)}


def test_board_sizes_agree_with_the_port_they_run_on():
    """A bare-metal board's ram/flash/psram (what the planner plans with) are the lengths of
    the port's link.ld regions (what the linker checks), and RAM_BYTES in port.mk is its RAM."""
    import re
    from pathlib import Path
    boards = sorted(Path(edgellama.boards.catalog.boards_dir()).glob("*.toml"))
    checked = 0
    for path in boards:
        board = load_board(path)
        if board.os != "baremetal":
            continue
        port = baremetal.port_dir(board)
        lengths = _linker_lengths(port)
        for place in ("flash", "ram", "psram"):
            if place.upper() in lengths:
                assert getattr(board, place) == lengths[place.upper()], (board.name, place)
        ram_bytes = re.search(r"^RAM_BYTES\s*=\s*(\d+)", (port / "port.mk").read_text(), re.M)
        assert ram_bytes and int(ram_bytes[1]) == board.ram, board.name
        checked += 1
    assert checked >= 2
