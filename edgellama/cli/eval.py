import json

import click

from edgellama.cli.needs import needs_torch
from edgellama.model.data import SEGMENTS
from edgellama.model.loading import load_model


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Corpus; its held-out split is used.")
@click.option("--seq-len", type=int, default=None, help="Window length (default: the model's context).")
@click.option("--val-fraction", default=0.05, show_default=True, help="The split used by `edgellama train`.")
@click.option("--max-windows", type=int, default=None, help="Evaluate at most this many windows.")
@click.option("--segment", type=click.Choice(SEGMENTS), default="auto", show_default=True,
              help="How the corpus is cut into documents (as `edgellama train --segment`).")
@click.option("--json", "as_json", is_flag=True)
def command(model, data, seq_len, val_fraction, max_windows, segment, as_json):
    """Validation loss and perplexity of MODEL (default: the embedded model) on CORPUS."""
    evaluate_model = needs_torch("eval", "model.evaluate", "evaluate_model")
    r = evaluate_model(load_model(model), data, seq_len, val_fraction, max_windows, segment)
    if as_json:
        click.echo(json.dumps(r.__dict__))
    else:
        click.echo(f"val loss {r.loss:.4f}  perplexity {r.perplexity:.3f}  "
                   f"({r.tokens:,} tokens in {r.windows} windows of {r.seq_len})")
