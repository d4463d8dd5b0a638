import click

from edgellama.cli.devices import threads_option
from edgellama.cli.sampling import sampling_options, sampling_params
from edgellama.runtime.llm import LLM


@click.command("generate")
@click.argument("prompt")
@click.option("--model", type=click.Path(dir_okay=False), help="GGUF model (default: the embedded model).")
@threads_option
@sampling_options
def command(prompt, model, threads, **options):
    """Continue PROMPT with the model on the C runtime, streaming the text."""
    params = sampling_params(options)
    llm = LLM(model, threads=threads)
    click.echo(prompt, nl=False)
    for chunk in llm.generate_stream(prompt, params):
        click.echo(chunk.outputs[0].text, nl=False)
    click.echo()
