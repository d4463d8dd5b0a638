"""`edgellama generate PROMPT`: the prompt and its continuation, streamed, the same text on
every device (this machine, an emulated board, a board over SSH or a serial line)."""

import click

from edgellama.cli.devices import build_options, device_options, requested_engine
from edgellama.cli.sampling import sampling_options, sampling_params


def generate_on_device(prompt: str, params, echo=click.echo, stats: bool = False, **device):
    """Open the device the options name, stream the prompt and its continuation to echo;
    with stats, one line of timings after the text (on stderr)."""
    from edgellama.devices.opener import open_device
    with open_device(say=lambda line: echo(line, err=True), **device) as dev:
        echo(prompt, nl=False)
        try:
            for text in dev.generate(prompt, params):
                echo(text, nl=False)
        finally:
            echo()  # an error, if any, starts on its own line
        if stats and dev.last_stats is not None:
            echo(f"[stats] {dev.last_stats.summary()}", err=True)


@click.command("generate")
@click.argument("prompt")
@device_options
@build_options
@click.option("--stats", is_flag=True, help="After the text, one line of timings on stderr.")
@sampling_options
def command(prompt, stats, **options):
    """Continue PROMPT with the model, streaming the text: on this machine by default, or
    on the device --board, --host or --port names (an emulated board is built first)."""
    params = sampling_params(options)
    generate_on_device(prompt, params, stats=stats, engine=requested_engine(options), **options)
