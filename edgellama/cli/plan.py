import click

from edgellama.boards.planner import format_plan, plan, plan_json
from edgellama.model.quant import QUANT_NAMES
from edgellama.runtime.engine_options import KV_DTYPES, EngineOptions


def engine_options(f):
    """--ctx, --max-seqs, --kv-dtype and --block-size: what plan, build and export-c share,
    so that a build is planned with the options `edgellama plan` suggests."""
    for option in reversed([
        click.option("--ctx", type=click.IntRange(min=1),
                     help="Context (max_model_len) to plan for [default: the model's]."),
        click.option("--max-seqs", type=click.IntRange(min=1),
                     help="Sequences at once [default: 1 on MCUs, 8 on Linux]."),
        click.option("--kv-dtype", type=click.Choice(list(KV_DTYPES)), default="f32", show_default=True,
                     help="Element type of the KV cache (int8 needs about a third of f32's memory)."),
        click.option("--block-size", type=click.IntRange(min=1), help="Tokens per KV block [default: the board's]."),
        click.option("--speculative-tokens", type=click.IntRange(0, 16), default=0,
                     help="N-gram speculation: drafts a sequence verifies per step [default: 0, none]."),
    ]):
        f = option(f)
    return f


def requested_engine(kv_dtype: str, block_size: int | None, max_seqs: int | None,
                     speculative_tokens: int = 0) -> EngineOptions:
    """The engine options given on the command line (0: the planner's default); --ctx travels apart."""
    return EngineOptions(kv_dtype=kv_dtype, block_size=block_size or 0, max_seqs=max_seqs or 0,
                         speculative_tokens=speculative_tokens or 0)


@click.command("plan")
@click.option("--board", "board_name", required=True, help="Board name (see `edgellama boards`).")
@click.option("--model", type=click.Path(dir_okay=False),
              help="GGUF model or checkpoint [default: the embedded model].")
@click.option("--quant", type=click.Choice(list(QUANT_NAMES)),
              help="Plan the model as `export --quant` would write it [default: as stored].")
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(board_name, model, ctx, quant, max_seqs, kv_dtype, block_size, speculative_tokens, as_json):
    """Where the weights live, what the arena holds, the largest context, and whether it fits.

    Prints the plan and exits 0 whether or not the model fits; `build` refuses one that does not."""
    p = plan(board_name, model, ctx=ctx, quant=quant, max_seqs=max_seqs, kv_dtype=kv_dtype, block_size=block_size,
             speculative_tokens=speculative_tokens)
    click.echo(plan_json(p) if as_json else format_plan(p))
