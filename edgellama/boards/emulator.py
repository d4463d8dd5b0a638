"""Run a build on its board's emulator, and count the guest instructions it executes.

    run(board, out_dir, args, timeout)   -> (returncode, stdout, stderr), streaming stdout
    count_instructions(board, out_dir, args) -> guest instructions executed (exact)
    instructions_per_token(board, out_dir, prompt) -> guest instructions per generated token

The command line comes from the board's target (targets.<os>.run_command), so every
target is run the same way. Instructions are counted by a QEMU TCG plugin
(firmware/tools/qemu_insn_count.c, built for the host on first use): exact and
repeatable, unlike wall time under emulation.
"""

import codecs
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from edgellama.boards import targets
from edgellama.boards.catalog import Board, get_board
from edgellama.errors import EdgeLlamaError

DEFAULT_TIMEOUT = 600.0


def _board(board) -> Board:
    return get_board(board)


def flash_command(board: Board) -> str:
    """The `edgellama flash` line that puts a build on a real board of this kind."""
    if board.os == "linux":
        return f"`edgellama flash --board {board.name} --host USER@ADDR`"
    if board.os == "platformio":
        return f"`edgellama flash --board {board.name} --port PORT`"
    return "the board's own programmer (`edgellama flash` handles Linux and PlatformIO boards)"


def _require_emulator(board: Board):
    if board.reach.kind != "emulator":
        raise EdgeLlamaError(f"board {board.name} is not emulated (reached by {board.reach.kind}); "
                             f"put the build on it with {flash_command(board)}")
    if shutil.which(board.reach.emulator) is None:
        packages = " ".join(board.reach.apt) or "qemu-user"
        raise EdgeLlamaError(f"board {board.name}: the emulator {board.reach.emulator} is not installed; install it "
                             f"with: sudo apt-get install -y --no-install-recommends {packages}")


def command(board, out_dir, args) -> list:
    """The emulator command line that runs the build in out_dir with the program's args."""
    from edgellama.boards.builder import load_build
    board = _board(board)
    _require_emulator(board)
    ctx = load_build(out_dir, board.name)
    return targets.for_board(board).run_command(ctx, list(args))


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else "..." + text[-limit:]


def run_command(cmd: list, timeout: float | None = DEFAULT_TIMEOUT, on_output=None, input: str | None = None,
                env: dict | None = None):
    """Run cmd, calling on_output(text) with stdout as it arrives (UTF-8, never a split
    character); returns (returncode, stdout, stderr). Past `timeout` seconds the process
    (and its group) is killed and EdgeLlamaError says so, with the last output."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    except FileNotFoundError:
        raise EdgeLlamaError(f"{cmd[0]} is not installed") from None
    if input is not None:
        try:
            proc.stdin.write(input.encode("utf-8"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
    decoders = {proc.stdout: codecs.getincrementaldecoder("utf-8")("replace"),
                proc.stderr: codecs.getincrementaldecoder("utf-8")("replace")}
    texts = {proc.stdout: [], proc.stderr: []}
    deadline = None if timeout is None else time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        sel.register(stream, selectors.EVENT_READ)
    try:
        while sel.get_map():
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                kill_process_group(proc)
                last = _one_line("".join(texts[proc.stdout]) + " " + "".join(texts[proc.stderr])) or "(none)"
                raise EdgeLlamaError(f"emulator timed out after {timeout:g} s; last output: {last}")
            for key, _ in sel.select(wait):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    text = decoders[key.fileobj].decode(b"", final=True)
                else:
                    text = decoders[key.fileobj].decode(chunk)
                if text:
                    texts[key.fileobj].append(text)
                    if key.fileobj is proc.stdout and on_output is not None:
                        on_output(text)
        remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
        try:
            returncode = proc.wait(remaining)
        except subprocess.TimeoutExpired:
            kill_process_group(proc)
            raise EdgeLlamaError(f"emulator timed out after {timeout:g} s (its output had ended)") from None
    except BaseException:
        kill_process_group(proc)
        raise
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    return returncode, "".join(texts[proc.stdout]), "".join(texts[proc.stderr])


def kill_process_group(proc):
    """Kill an emulator started with start_new_session=True, and everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run(board, out_dir, args, timeout: float | None = DEFAULT_TIMEOUT, on_output=None, input: str | None = None):
    """Run the build in out_dir on the board's emulator: (returncode, stdout, stderr)."""
    return run_command(command(board, out_dir, args), timeout, on_output, input)


# ---------------------------------------------------------------- instruction counting

def plugin_path() -> Path:
    """The instruction-counting TCG plugin, built for the host on first use (cached)."""
    from edgellama.runtime.build import build_shared_library, firmware_dir
    return build_shared_library([firmware_dir() / "tools" / "qemu_insn_count.c"], "qemu-insn-count")


def count_instructions(board, out_dir, args, timeout: float | None = DEFAULT_TIMEOUT, input: str | None = None) -> int:
    """Guest instructions the program executes for `args` (exact: a TCG plugin counts
    every executed instruction of every translated block). The same command line gives
    the same count every time; a different build path can move it by a few instructions
    (string alignment on the guest stack). Fails unless the program exits 0."""
    cmd = command(board, out_dir, args)
    with tempfile.TemporaryDirectory(prefix="edgellama-insn-") as tmp:
        count_file = Path(tmp) / "count"
        cmd = [cmd[0], "-plugin", f"{plugin_path()},out={count_file}", *cmd[1:]]
        # a fixed, empty environment: qemu-user hands its environment to the guest, whose
        # stack (and so the alignment of string copies) would otherwise shift with it
        returncode, _, stderr = run_command(cmd, timeout, input=input, env={})
        if returncode != 0:
            raise EdgeLlamaError(f"counting instructions: {cmd[0]} exited with {returncode}: {_one_line(stderr)}")
        try:
            return int(count_file.read_text().strip())
        except (OSError, ValueError):
            raise EdgeLlamaError(f"counting instructions: the plugin wrote no count ({_one_line(stderr)})") from None


def generate_args(prompt: str, max_tokens: int) -> list:
    return ["generate", prompt, "--temperature", "0", "--max-tokens", str(max_tokens), "--ignore-eos"]


def instructions_per_token(board, out_dir, prompt: str = "once upon a time", n_tokens: int = 33,
                           timeout: float | None = DEFAULT_TIMEOUT) -> dict:
    """Guest instructions per generated token, defined as

        (count(generate N tokens) - count(generate 1 token)) / (N - 1)

    for a greedy generation of the same prompt with EOS ignored: both runs load the
    model, prefill the prompt and sample the first token, so the difference is exactly
    N - 1 decode steps (forward pass, sampling, detokenizing, writing the text)."""
    if n_tokens < 2:
        raise EdgeLlamaError("instructions_per_token needs n_tokens of at least 2")
    one = count_instructions(board, out_dir, generate_args(prompt, 1), timeout)
    many = count_instructions(board, out_dir, generate_args(prompt, n_tokens), timeout)
    return {"prompt": prompt, "n_tokens": n_tokens, "instructions_1": one, "instructions_n": many,
            "instructions_per_token": (many - one) / (n_tokens - 1)}
