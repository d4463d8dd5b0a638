import click

from edgellama.model.chat_format import CHAT_FORMATS
from edgellama.model.data import SEGMENTS


@click.group("data")
def command():
    """Training data tools."""


@command.command("chat")
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The chat corpus to write.")
@click.option("--segment", type=click.Choice(SEGMENTS), default="auto", show_default=True,
              help="How CORPUS is cut into stories (as `edgellama train --segment`).")
@click.option("--template", type=click.Choice(CHAT_FORMATS), default="plain", show_default=True,
              help="The chat template conversations are written in; train with the same --chat-format.")
@click.option("--chat-fraction", default=0.5, show_default=True,
              help="The share of stories written as a request and its story; the rest stay plain stories.")
@click.option("--seed", default=1, show_default=True)
def chat_cmd(corpus, output, segment, template, chat_fraction, seed):
    """Turn the stories of CORPUS into chat training data: a request derived from each
    story (its main character, things it mentions, a feature), answered by the story."""
    from edgellama.model.chat_data import write_chat_corpus
    stats = write_chat_corpus(corpus, output, segment, template, chat_fraction, seed)
    click.echo(f"wrote {output}: {stats.stories:,} stories, {stats.conversations:,} as conversations "
               f"({stats.with_name:,} asking for a named character), {stats.plain:,} plain; "
               f"train with --chat-format {template}")
