import click

from edgellama.model.gguf_file import write_gguf
from edgellama.model.llama2c import write_llama2c_v0
from edgellama.model.loading import load_model
from edgellama.model.quant import QUANT_NAMES


@click.command("export")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--quant", type=click.Choice(list(QUANT_NAMES)), default="f32", show_default=True,
              help="Tensor type of the matrices (GGUF only).")
@click.option("--format", "fmt", type=click.Choice(["gguf", "llama2c"]), default="gguf", show_default=True,
              help="llama2c writes llama2.c's legacy v0 float32 file.")
@click.option("--name", help="The model's name in the file (default: the source's).")
def command(source, output, quant, fmt, name):
    """Write a checkpoint or model file as GGUF (or llama2.c v0)."""
    model = load_model(source)
    if name:
        model.name = name
    if fmt == "llama2c":
        if quant != "f32":
            raise click.UsageError("--format llama2c writes float32 only; drop --quant")
        write_llama2c_v0(model, output)
        click.echo(f"wrote {output} (llama2.c v0, float32)")
        return
    entries = write_gguf(model, output, quant)
    kept = [e for e in entries if e.reason and len(e.shape) == 2]
    click.echo(f"wrote {output} ({quant}, {sum(e.nbytes for e in entries):,} bytes of weights)")
    for e in kept:
        click.echo(f"  {e.name}: {e.qtype.name} ({e.reason})")
