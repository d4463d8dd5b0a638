import json

import click

from edgellama.model.modelinfo import describe, describe_dict


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(model, as_json):
    """Show a GGUF model's architecture, tensors and the memory they need (default: the embedded model)."""
    click.echo(json.dumps(describe_dict(model), indent=1) if as_json else describe(model))
