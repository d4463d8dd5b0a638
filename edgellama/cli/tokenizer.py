import click

from edgellama.model.tokenizer import train_tokenizer


@click.group("tokenizer")
def command():
    """Tokenizer tools."""


@command.command("train")
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("--vocab-size", type=int, required=True, help="Number of tokens, specials and 256 bytes included.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write tok.model.")
def train_cmd(corpus, vocab_size, output):
    """Train a sentencepiece BPE tokenizer with byte fallback on CORPUS."""
    vocab = train_tokenizer(corpus, vocab_size, output)
    click.echo(f"wrote {output}: {len(vocab)} tokens")
