import json
from pathlib import Path

import click

from edgellama.boards import emulator
from edgellama.boards.builder import MANIFEST, build, default_out_dir
from edgellama.boards.catalog import get_board
from edgellama.cli.devices import threads_option
from edgellama.cli.sampling import sampling_options, sampling_params
from edgellama.errors import EdgeLlamaError
from edgellama.model.loading import resolve
from edgellama.model.quant import QUANT_NAMES


def program_flags(params) -> list:
    """SamplingParams as edgellama-run flags."""
    flags = ["--temperature", repr(params.temperature), "--top-p", repr(params.top_p), "--top-k", str(params.top_k),
             "--min-p", repr(params.min_p), "--repetition-penalty", repr(params.repetition_penalty),
             "--max-tokens", str(params.max_tokens)]
    if params.frequency_penalty:
        flags += ["--frequency-penalty", repr(params.frequency_penalty)]
    if params.presence_penalty:
        flags += ["--presence-penalty", repr(params.presence_penalty)]
    if params.seed is not None:
        flags += ["--seed", str(params.seed)]
    for stop in params.stop or []:
        flags += ["--stop", stop]
    return flags


def _needs_build(out_dir: Path, board: str, model, quant) -> str | None:
    """Why out_dir must be (re)built, or None when its build fits the request."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no build there"
    if manifest.get("kind") != "build" or manifest.get("board") != board:
        what = "a build" if manifest.get("kind") == "build" else "exported sources"
        raise EdgeLlamaError(f"{out_dir}: holds {what} for {manifest.get('board')}, not {board}; "
                             "choose another -o")
    if model and str(resolve(model)) != manifest.get("model", {}).get("source"):
        return "it carries another model"
    if quant and manifest.get("quant") != quant:
        return f"it carries the model in {manifest.get('quant')}"
    return None


@click.command("run")
@click.argument("prompt")
@click.option("--board", required=True, help="An emulated board (see `edgellama boards`).")
@click.option("--model", type=click.Path(dir_okay=False), help="Model to build with (default: the embedded model).")
@click.option("--quant", type=click.Choice(list(QUANT_NAMES)), help="Build with this type (default: the build's, "
              "q8_0 for a new one).")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Build directory (default: build/BOARD).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Seconds before the emulator is stopped.")
@threads_option
@sampling_options
def command(prompt, board, model, quant, output, timeout, threads, **options):
    """Run PROMPT on an emulated board, building first when the directory has no build."""
    params = sampling_params(options)
    b = get_board(board)
    if not b.emulated:
        raise EdgeLlamaError(f"board {board} is reached by {b.reach.kind}, not emulated: `edgellama run` "
                                   f"runs emulated boards; build with `edgellama build --board {board}` and copy "
                                   "the directory to it (`edgellama flash` comes later)")
    out_dir = Path(output) if output else default_out_dir(board)
    reason = _needs_build(out_dir, board, model, quant)
    if reason:
        click.echo(f"building {out_dir} for {board} ({reason})", err=True)
        build(board, model, quant or "q8_0", out_dir)
    streamed = []

    def show(text):
        streamed.append(text)
        click.echo(text, nl=False)

    try:
        thread_flags = ["--threads", str(threads)] if threads and b.os == "linux" else []  # bare metal: one
        returncode, _, stderr = emulator.run(b, out_dir, ["generate", prompt, *program_flags(params), *thread_flags],
                                             timeout, on_output=show)
    finally:
        if streamed:
            click.echo()  # the error, if any, starts on its own line
    if returncode != 0:
        raise EdgeLlamaError(stderr.strip().removeprefix("error: ") or f"the program exited with {returncode}")
    if stderr.strip():
        click.echo(stderr.rstrip(), err=True)
