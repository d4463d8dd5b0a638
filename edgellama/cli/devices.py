"""The options that pick a device, the same on every verb that talks to one."""

import click


def threads_option(f):
    """--threads N: the runtime's threads (default: the board's count, or every core here)."""
    return click.option("--threads", type=click.IntRange(1, 1024), default=None,
                        help="Threads for the model (default: the board file's, or this machine's cores).")(f)


def device_options(f):
    """--board, --host, --port, --local, --model and --threads, passed through as keyword arguments."""
    f = threads_option(f)
    for option in reversed([
        click.option("--board", help="A board by name (an emulated board runs under its emulator)."),
        click.option("--host", help="A Linux board over SSH: [user@]address (after `edgellama flash`)."),
        click.option("--port", help="A serial device or URL (socket://, rfc2217://), or auto (with --board)."),
        click.option("--local", is_flag=True, help="The runtime on this machine (the default)."),
        click.option("--model", type=click.Path(dir_okay=False), help="GGUF model (default: the embedded model)."),
    ]):
        f = option(f)
    return f
