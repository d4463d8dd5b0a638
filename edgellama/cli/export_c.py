import click

from edgellama.boards.builder import export_c
from edgellama.cli.build import build_options


@click.command("export-c")
@build_options
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output directory.")
def command(board, model, quant, ctx, output):
    """Write the standalone source tree for a board (sources, Makefile, model): `make -C DIR/src`."""
    result = export_c(board, model, quant, output, ctx)
    click.echo(f"wrote {result.out_dir} for {board}: {len(result.manifest['sources'])} source files and "
               f"{result.context.model_path.name} ({quant}); build it with: make -C {result.out_dir / 'src'}")
