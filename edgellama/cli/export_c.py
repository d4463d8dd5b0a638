import click

from ..builder import export_c
from ..quant import QUANT_NAMES


@click.command("export-c")
@click.option("--board", required=True, help="Board name (see `edgellama boards`).")
@click.option("--model", type=click.Path(dir_okay=False),
              help="GGUF model or checkpoint (default: the embedded model).")
@click.option("--quant", type=click.Choice(list(QUANT_NAMES)), default="q8_0", show_default=True,
              help="Tensor type of the matrices in the exported model.")
@click.option("--ctx", type=click.IntRange(min=1), help="Context length to plan for (default: the model's).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output directory.")
def command(board, model, quant, ctx, output):
    """Write the standalone source tree for a board (sources, Makefile, model): `make -C DIR/src`."""
    result = export_c(board, model, quant, output, ctx)
    click.echo(f"wrote {result.out_dir} for {board}: {len(result.manifest['sources'])} source files and "
               f"{result.context.model_path.name} ({quant}); build it with: make -C {result.out_dir / 'src'}")
