"""The Linux target under QEMU user mode: build, run, same tokens as the host.

For each emulated Linux board (qemu-aarch64, qemu-armhf, qemu-riscv64) and the default
model in F32 and Q8_0: `build` cross-compiles a static edgellama-run, the emulator runs
a greedy generation, and the text equals the host program's on the same model file
(the runtime computes the same bits on every target). The manifest's sha256s match the
files; the ELF is static, for the board's machine and ABI, built with the board's CPU
flags, and runs under QEMU emulating exactly that CPU. `export-c` builds with plain
`make`; bad input gives one-line errors. A table of guest instructions per generated
token (counted by a QEMU TCG plugin) is printed, not asserted.
"""

import hashlib
import json
import shutil
import struct
import subprocess

import pytest
from click.testing import CliRunner
from conftest import GREEDY, PROMPT, require_board, write_first_layers

from edgellama.boards import builder, emulator
from edgellama.boards.catalog import get_board
from edgellama.boards.targets import BuildContext, linux
from edgellama.boards.toolchains import get_toolchain
from edgellama.cli import main
from edgellama.errors import EdgeLlamaError
from edgellama.runtime import build as runtime_build

pytestmark = pytest.mark.emulated  # boards under QEMU, cross-built programs under qemu-user

BOARDS = ["qemu-aarch64", "qemu-armhf", "qemu-riscv64"]
QUANTS = ["f32", "q8_0"]
# e_machine, ELF class (1 = 32-bit, 2 = 64-bit), e_flags bits that must be set
ELF_EXPECTED = {
    "qemu-aarch64": (183, 2, 0),
    "qemu-armhf": (40, 1, 0x400),            # EF_ARM_ABI_FLOAT_HARD
    "qemu-riscv64": (243, 2, 0x1 | 0x4),     # EF_RISCV_RVC | EF_RISCV_FLOAT_ABI_DOUBLE
}


@pytest.fixture(scope="module")
def builds(board_builds):
    """(board, quant) -> BuildResult, from the session's builds."""
    return lambda board, quant: board_builds(board, quant)


def elf_header(path):
    data = path.read_bytes()[:64]
    assert data[:4] == b"\x7fELF"
    elf_class = data[4]
    e_machine, = struct.unpack_from("<H", data, 18)
    e_flags, = struct.unpack_from("<I", data, 0x30 if elf_class == 2 else 0x24)
    return e_machine, elf_class, e_flags


# ---------------------------------------------------------------- same tokens on every target

@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("board_name", BOARDS)
def test_build_runs_and_matches_host(builds, host_text, board_name, quant):
    result = builds(board_name, quant)
    board = get_board(board_name)
    out = result.out_dir
    manifest = json.loads((out / "manifest.json").read_text())

    # the manifest describes what is there
    assert manifest["board"] == board_name and manifest["quant"] == quant and manifest["kind"] == "build"
    assert manifest["toolchain"]["name"] == board.toolchain
    assert manifest["toolchain"]["version"].startswith(get_toolchain(board.toolchain).cc)
    assert manifest["runtime_version"] == builder.runtime_version() != "unknown"
    paths = [a["path"] for a in manifest["artifacts"]]
    assert paths == ["edgellama-run", "model.gguf"]
    for artifact in manifest["artifacts"]:
        data = (out / artifact["path"]).read_bytes()
        assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
        assert artifact["bytes"] == len(data)

    # static, for the board's machine and ABI, built with the board's CPU flags
    program = out / "edgellama-run"
    assert linux.elf_interpreter(program) is None
    assert "-static" in manifest["flags"]["ldflags"]
    machine, elf_class, must_flags = ELF_EXPECTED[board_name]
    e_machine, e_class, e_flags = elf_header(program)
    assert (e_machine, e_class) == (machine, elf_class) and e_flags & must_flags == must_flags
    for flag in board.cflags:
        assert flag in manifest["flags"]["cflags"]
    makefile = (out / "src" / "Makefile").read_text()
    assert all(flag in makefile for flag in board.cflags)

    # run under QEMU emulating the board's CPU (an instruction it lacks would be SIGILL)
    command = emulator.command(board_name, out, ["generate", PROMPT, *GREEDY])
    assert command[:3] == [board.reach.emulator, "-cpu", board.reach.cpu]
    streamed = []
    returncode, stdout, stderr = emulator.run(board_name, out, ["generate", PROMPT, *GREEDY], timeout=120,
                                              on_output=streamed.append)
    assert returncode == 0, stderr
    assert stdout == host_text(out / "model.gguf")
    assert stdout.startswith(PROMPT) and len(stdout) > len(PROMPT) + 40
    assert len(streamed) > 5 and "".join(streamed) == stdout


# the kernels each board's CPU flags pick (el_kernel_ops.h)
KERNELS = {"qemu-aarch64": "neon", "qemu-armhf": "neon", "qemu-riscv64": "portable"}


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("board_name", BOARDS)
def test_logits_equal_the_hosts_bit_for_bit(builds, board_name, quant):
    """Not only the same greedy tokens: the same logits at every position, with the board's
    vector kernels against the host's, as an FNV-1a digest of all their bytes."""
    out = builds(board_name, quant).out_dir
    assert json.loads((out / "manifest.json").read_text())["kernels"] == KERNELS[board_name]
    args = ["logits", "--prompt-tokens", "24"]
    returncode, stdout, stderr = emulator.run(board_name, out, args, timeout=120)
    assert returncode == 0, stderr
    host = subprocess.run([str(runtime_build.host_program()), str(out / "model.gguf"), *args], capture_output=True,
                          text=True, timeout=60, check=True)
    board_logits, host_logits = json.loads(stdout), json.loads(host.stdout)
    assert board_logits["kernels"] == KERNELS[board_name] and board_logits["positions"] == 24
    assert board_logits["logits_fnv1a64"] == host_logits["logits_fnv1a64"]


@pytest.mark.parametrize("board_name", BOARDS)
def test_a_draft_model_gives_the_hosts_tokens(builds, board_name, tmp_path):
    """Speculative decoding with a draft model (el_draft.h) on the board: greedy and
    sampled, the same text as the host program with the same two files (the rejection
    rule's arithmetic is the same on every target)."""
    out = builds(board_name, "q8_0").out_dir
    draft = write_first_layers(tmp_path / "draft.gguf", 2, "q8_0")
    for sampling in (["--temperature", "0"], ["--temperature", "1", "--seed", "3"]):
        args = ["generate", PROMPT, "--max-tokens", "60", *sampling, "--speculative-tokens", "3", "--draft-model",
                str(draft)]
        returncode, stdout, stderr = emulator.run(board_name, out, args, timeout=300)
        assert returncode == 0, stderr
        host = subprocess.run([str(runtime_build.host_program()), str(out / "model.gguf"), *args],
                              capture_output=True, text=True, timeout=60, check=True)
        assert stdout == host.stdout and len(stdout) > len(PROMPT) + 40


def test_same_model_bytes_on_every_board(builds):
    for quant in QUANTS:
        digests = {builds(b, quant).manifest["artifacts"][1]["sha256"] for b in BOARDS}
        assert len(digests) == 1


# ---------------------------------------------------------------- export-c

def test_export_c_builds_with_make_alone(builds, tmp_path):
    board = require_board("qemu-riscv64")
    out = tmp_path / "rv-src"
    result = builder.export_c("qemu-riscv64", quant="q8_0", out_dir=out)
    assert result.manifest["kind"] == "source"
    assert not (out / "edgellama-run").exists() and (out / "model.gguf").is_file()
    # the tree is what `build` compiles: same files, same bytes
    built = builds("qemu-riscv64", "q8_0").out_dir / "src"
    exported = sorted(p.relative_to(out / "src") for p in (out / "src").rglob("*") if p.is_file())
    assert exported == sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file() and "obj" not in p.parts)
    for rel in exported:
        assert (out / "src" / rel).read_bytes() == (built / rel).read_bytes(), rel
    # a user's plain `make` (the Makefile names the board's compiler and flags)
    made = subprocess.run(["make", "-C", str(out / "src"), "-j2"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert made.returncode == 0, made.stderr
    assert linux.elf_interpreter(out / "edgellama-run") is None
    run = subprocess.run([board.reach.emulator, "-cpu", board.reach.cpu, str(out / "edgellama-run"),
                          str(out / "model.gguf"), "generate", PROMPT, *GREEDY], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0 and run.stdout == emulator.run("qemu-riscv64", built.parent,
                                                              ["generate", PROMPT, *GREEDY])[1]


def test_compiler_error_is_the_compilers_message(tmp_path):
    require_board("qemu-aarch64")
    out = tmp_path / "broken"
    builder.export_c("qemu-aarch64", quant="f32", out_dir=out)
    with open(out / "src" / "core" / "el_math.c", "a") as f:
        f.write("\nthis is not C;\n")
    made = subprocess.run(["make", "-C", str(out / "src")], capture_output=True, text=True, timeout=300, check=False)
    assert made.returncode != 0 and "el_math.c" in made.stderr and "error" in made.stderr
    board = get_board("qemu-aarch64")
    ctx = BuildContext(board, get_toolchain(board.toolchain), out / "model.gguf", "f32", out)
    with pytest.raises(EdgeLlamaError) as e:
        linux.compile(ctx)
    first = str(e.value).splitlines()[0]
    assert first.startswith("compiling edgellama-run for qemu-aarch64 with aarch64-linux-gnu-gcc failed: ")
    assert "el_math.c" in first and "error" in first


def test_failed_build_leaves_the_old_build_intact(builds, tmp_path, monkeypatch):
    require_board("qemu-armhf")
    out = tmp_path / "armhf"
    first = builder.build("qemu-armhf", quant="q8_0", out_dir=out)
    before = (out / "manifest.json").read_bytes()
    firmware = tmp_path / "firmware"
    shutil.copytree(runtime_build.firmware_dir(), firmware)
    with open(firmware / "core" / "el_kernels.c", "a") as f:
        f.write("\nint broken(void) { return undeclared_name; }\n")
    monkeypatch.setattr(runtime_build, "firmware_dir", lambda: firmware)
    result = CliRunner().invoke(main, ["build", "--board", "qemu-armhf", "-o", str(out)])
    assert result.exit_code == 1
    assert result.output.startswith("error: compiling edgellama-run for qemu-armhf")
    assert "undeclared_name" in result.output.splitlines()[0] and "Traceback" not in result.output
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["armhf", "firmware"]  # no temporary left behind
    assert emulator.run("qemu-armhf", first.out_dir, ["generate", PROMPT, "--max-tokens", "4"])[0] == 0


# ---------------------------------------------------------------- bad input, one line each

def one_line_error(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_unknown_board_lists_close_names():
    line = one_line_error(["build", "--board", "qemu-arch64"])
    assert "unknown board 'qemu-arch64'" in line and "qemu-aarch64" in line


def test_missing_toolchain_names_the_install_command(tmp_path, monkeypatch):
    boards, tools = tmp_path / "boards", tmp_path / "toolchains"
    boards.mkdir()
    tools.mkdir()
    (boards / "fake-arm.toml").write_text(
        'name = "fake-arm"\ndescription = "a board whose compiler is missing"\narch = "aarch64"\ncpu = "cortex-a53"\n'
        'cflags = ["-mcpu=cortex-a53"]\nos = "linux"\ntoolchain = "gcc-missing"\nram = "1GiB"\n'
        '[reach]\nkind = "emulator"\nemulator = "qemu-aarch64"\ncpu = "cortex-a53"\n')
    (tools / "gcc-missing.toml").write_text(
        'name = "gcc-missing"\ndescription = "not installed"\nkind = "gnu-linux"\ncc = "no-such-gcc-4242"\n'
        'apt = ["gcc-no-such-package"]\n')
    import edgellama.boards.catalog
    import edgellama.boards.toolchains
    monkeypatch.setattr(edgellama.boards.catalog, "boards_dir", lambda: boards)
    monkeypatch.setattr(edgellama.boards.toolchains, "toolchains_dir", lambda: tools)
    out = tmp_path / "out"
    line = one_line_error(["build", "--board", "fake-arm", "-o", str(out)])
    assert "no-such-gcc-4242 is not installed" in line
    assert "sudo apt-get install -y --no-install-recommends gcc-no-such-package" in line
    assert not out.exists()


def test_model_too_big_gives_the_plans_numbers(tmp_path, monkeypatch):
    pytest.importorskip("edgellama.boards.planner")
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "small-arm.toml").write_text(
        'name = "small-arm"\ndescription = "too little RAM"\narch = "aarch64"\ncpu = "cortex-a53"\n'
        'cflags = ["-mcpu=cortex-a53"]\nos = "linux"\ntoolchain = "gcc-aarch64-linux-gnu"\nram = "129MiB"\n'
        '[reach]\nkind = "emulator"\nemulator = "qemu-aarch64"\ncpu = "cortex-a53"\n[runtime]\narena = "512KiB"\n')
    import edgellama.boards.catalog
    monkeypatch.setattr(edgellama.boards.catalog, "boards_dir", lambda: boards)
    out = tmp_path / "out"
    line = one_line_error(["build", "--board", "small-arm", "--quant", "f32", "-o", str(out)])
    assert "does not fit small-arm" in line and any(ch.isdigit() for ch in line)
    assert not out.exists()


def test_run_on_a_board_that_is_not_emulated():
    line = one_line_error(["run", "--board", "rpi4", PROMPT])
    assert "not emulated" in line and "edgellama flash" in line


def test_cli_run_builds_first_then_streams(tmp_path, host_text):
    require_board("qemu-aarch64")
    out = tmp_path / "a64"
    result = CliRunner().invoke(main, ["run", "--board", "qemu-aarch64", "-o", str(out), "--temperature", "0",
                                       "--max-tokens", "48", PROMPT])
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()
    assert host_text(out / "model.gguf") in result.output


def test_generate_prints_the_same_text_on_every_device(tmp_path, builds):
    """The host, an emulated Linux board and an emulated bare-metal board: the prompt, then
    the same greedy continuation; no banner, no [stats] unless asked for."""
    require_board("qemu-aarch64")
    flags = ["--temperature", "0", "--max-tokens", "24", PROMPT]
    texts = {}
    for where in (["--board", "qemu-aarch64", "-o", str(builds("qemu-aarch64", "q8_0").out_dir)],
                  ["--board", "mps2-an386", "-o", str(tmp_path / "m"), "--quant", "q8_0"]):
        result = CliRunner().invoke(main, ["generate", *where, *flags])
        assert result.exit_code == 0, result.output
        texts[where[-1]] = result.stdout
    model = builds("qemu-aarch64", "q8_0").out_dir / "model.gguf"  # the embedded model in q8_0
    local = CliRunner().invoke(main, ["generate", "--local", "--model", str(model), "--stats", *flags])
    assert local.exit_code == 0 and local.stdout.startswith(PROMPT) and len(local.stdout) > len(PROMPT) + 20
    assert "[stats]" in local.stderr and "[stats]" not in local.stdout
    assert set(texts.values()) == {local.stdout}, texts


# ---------------------------------------------------------------- guest instructions per token

def test_instructions_per_token_table(builds):
    rows = []
    for board in BOARDS:
        for quant in QUANTS:
            r = emulator.instructions_per_token(board, builds(board, quant).out_dir, PROMPT, n_tokens=33)
            assert 0 < r["instructions_1"] < r["instructions_n"]
            rows.append((board, quant, r["instructions_per_token"]))
    # exact and repeatable: the same count twice
    out = builds("qemu-aarch64", "q8_0").out_dir
    args = emulator.generate_args(PROMPT, 2)
    counts = [emulator.count_instructions("qemu-aarch64", out, args) for _ in range(2)]
    assert counts[0] == counts[1]
    table = ["", "| board | quant | guest instructions per token |", "|---|---|---:|"]
    table += [f"| {b} | {q} | {n:,.0f} |" for b, q, n in rows]
    print("\n".join(table))
