"""`edgellama emulate --board B`: an emulated board kept up as a device on a TCP port."""

import signal

import click

from edgellama.cli.devices import requested_engine
from edgellama.errors import EdgeLlamaError


@click.command("emulate")
@click.option("--board", required=True, help="An emulated board (built first when it has no build).")
@click.option("--listen", default="127.0.0.1:0", show_default=True,
              help="HOST:PORT for the board's serial line (port 0: any free one).")
@click.option("--model", type=click.Path(dir_okay=False), help="GGUF model (default: the build's, or the embedded one).")
@click.option("--quant", help="Build with this type when building (default: the build's, q8_0 for a new one).")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="The build directory (default: build/BOARD).")
@click.option("--ctx", type=click.IntRange(min=1), help="Context (max_model_len) [default: the build's].")
@click.option("--kv-dtype", help="KV cache type [default: the build's].")
@click.option("--block-size", type=click.IntRange(min=1), help="Tokens per KV block [default: the build's].")
@click.option("--max-seqs", type=click.IntRange(min=1), help="Sequences at once [default: the build's].")
@click.option("--speculative-tokens", type=click.IntRange(0, 16), help="N-gram drafts a step [default: the build's].")
def command(board, listen, model, quant, output, **engine):
    """Boot BOARD's build under QEMU with its serial line on a TCP port, print the port's URL
    and run until Ctrl-C or SIGTERM. Meanwhile generate, chat, bench and serve reach it with
    --port URL --board BOARD, as a real board on a serial port."""
    from edgellama.boards.standing import StandingBoard, parse_listen
    host, port = parse_listen(listen)
    say = lambda line: click.echo(line, err=True)  # noqa: E731
    standing = StandingBoard(board, model, quant, output, requested_engine(engine), host, port, say=say)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: standing.stop())
    with standing:
        click.echo(standing.url)  # stdout: the one line a script reads
        say(f"{standing.board.name} ({standing.out_dir}) is up; reach it with --port {standing.url} "
            f"--board {standing.board.name}; Ctrl-C stops it")
        status = standing.wait()
    if status != 0:
        raise EdgeLlamaError(f"{standing.board.name}: the emulator exited with status {status}")
