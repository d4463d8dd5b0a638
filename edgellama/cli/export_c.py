import click

from edgellama.boards.builder import export_c
from edgellama.boards.targets import for_board
from edgellama.cli.build import build_options
from edgellama.cli.plan import requested_engine


@click.command("export-c")
@build_options
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output directory.")
def command(board, model, quant, ctx, max_seqs, kv_dtype, block_size, speculative_tokens, output):
    """Write the standalone source tree for a board (sources, model, and a Makefile or platformio.ini)."""
    result = export_c(board, model, quant, output, ctx, requested_engine(kv_dtype, block_size, max_seqs,
                                                                             speculative_tokens))
    build_command = for_board(result.context.board).build_command(result.context)
    click.echo(f"wrote {result.out_dir} for {board}: {len(result.manifest['sources'])} source files and "
               f"{result.context.model_path.name} ({quant}); build it with: {build_command}")
