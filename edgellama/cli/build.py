import click

from edgellama.boards.builder import build
from edgellama.cli.plan import engine_options, requested_engine
from edgellama.model.quant import QUANT_NAMES


def describe(result, verb: str) -> str:
    m = result.manifest
    lines = [f"{verb} {result.out_dir} for {m['board']} ({m['toolchain']['version'] or m['toolchain']['cc']})"]
    for a in m["artifacts"]:
        lines.append(f"  {a['path']:<16} {a['bytes']:>12,} bytes  sha256 {a['sha256'][:16]}...")
    if m.get("plan"):
        lines.append(f"  plan   {m['plan']['verdict']}")
    flags = m.get("flags", {})
    if flags:
        lines.append(f"  flags  {' '.join(flags.get('cflags', []))} {' '.join(flags.get('ldflags', []))}".rstrip())
    return "\n".join(lines)


def build_options(f):
    """--board, --model, --quant and the engine options (--ctx, --max-seqs, --kv-dtype,
    --block-size, as `edgellama plan` takes them): what build and export-c share."""
    for option in reversed([
        click.option("--board", required=True, help="Board name (see `edgellama boards`)."),
        click.option("--model", type=click.Path(dir_okay=False),
                     help="GGUF model or checkpoint (default: the embedded model)."),
        click.option("--quant", type=click.Choice(list(QUANT_NAMES)), default="q8_0", show_default=True,
                     help="Tensor type of the matrices in the model the output carries."),
        engine_options,
    ]):
        f = option(f)
    return f


@click.command("build")
@build_options
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Output directory (default: build/BOARD).")
def command(board, model, quant, ctx, max_seqs, kv_dtype, block_size, speculative_tokens, output):
    """Cross-compile the runtime for a board: program or image, model, manifest.json."""
    result = build(board, model, quant, output, ctx, requested_engine(kv_dtype, block_size, max_seqs,
                                                                          speculative_tokens))
    click.echo(describe(result, "built"))
