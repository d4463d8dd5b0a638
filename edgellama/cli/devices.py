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


def build_options(f):
    """--quant, -o/--output, the engine options and --timeout: how an emulated board is
    built (or the runtime here opened), and how long a request may wait for an answer."""
    from edgellama.model.quant import QUANT_NAMES
    from edgellama.runtime.engine_options import KV_DTYPES
    for option in reversed([
        click.option("--ctx", type=click.IntRange(min=1), help="Context (max_model_len) [default: the build's]."),
        click.option("--kv-dtype", type=click.Choice(list(KV_DTYPES)), help="KV cache type [default: the build's]."),
        click.option("--block-size", type=click.IntRange(min=1), help="Tokens per KV block [default: the build's]."),
        click.option("--max-seqs", type=click.IntRange(min=1), help="Sequences at once [default: the build's]."),
        click.option("--speculative-tokens", type=click.IntRange(0, 16),
                     help="N-gram speculation: drafts verified per step (the same tokens, fewer passes) "
                          "[default: the build's, 0 here]."),
        click.option("--draft-model", type=click.Path(dir_okay=False),
                     help="Here only: speculate with this smaller model's drafts (the same vocabulary), "
                          "--speculative-tokens a step (default 4); greedy text unchanged."),
        click.option("--quant", type=click.Choice(list(QUANT_NAMES)),
                     help="Emulated boards: build with this type (default: the build's, q8_0 for a new one)."),
        click.option("-o", "--output", type=click.Path(file_okay=False),
                     help="Emulated boards: the build directory (default: build/BOARD)."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Seconds a request may wait for the device's next answer (default 60)."),
    ]):
        f = option(f)
    return f


def requested_engine(options: dict):
    """The engine options popped from the flags build_options adds: None when none was
    given (a build is used as it is), else EngineOptions with the rest at 0 (the default)."""
    from edgellama.runtime.engine_options import EngineOptions
    ctx, kv_dtype, block_size, max_seqs, speculative = (
        options.pop(k) for k in ("ctx", "kv_dtype", "block_size", "max_seqs", "speculative_tokens"))
    if not any((ctx, kv_dtype, block_size, max_seqs, speculative)):
        return None
    return EngineOptions(max_model_len=ctx or 0, kv_dtype=kv_dtype or "f32", block_size=block_size or 0,
                         max_seqs=max_seqs or 0, speculative_tokens=speculative or 0)
