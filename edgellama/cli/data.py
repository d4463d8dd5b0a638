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


@command.command("distill")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The corpus to write.")
@click.option("--segment", type=click.Choice(SEGMENTS), default="auto", show_default=True,
              help="How CORPUS is cut into stories (as `edgellama train --segment`).")
@click.option("--val-fraction", default=0.05, show_default=True,
              help="The share of last stories left out (the held-out split `edgellama train` cuts).")
@click.option("--max-tokens", type=int, help="Tokens to continue each opening by [default: to the model's context].")
@click.option("--temperature", default=1.0, show_default=True)
@click.option("--seed", default=1, show_default=True, help="The first story's seed; each next story's is one more.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for the model [default: every CPU].")
def distill_cmd(model, corpus, output, segment, val_fraction, max_tokens, temperature, seed, threads):
    """Training data for a draft model of MODEL: MODEL's continuation of each training
    story's first sentence in CORPUS (sequence-level distillation), as documents
    separated by <|endoftext|>."""
    from pathlib import Path

    from edgellama.errors import EdgeLlamaError
    from edgellama.runtime.distill import write_distill_corpus
    if not Path(model).is_file():
        raise EdgeLlamaError(f"{model}: no such model file")
    stats = write_distill_corpus(model, corpus, output, segment, val_fraction, max_tokens, temperature, seed,
                                 threads)
    click.echo(f"wrote {output}: {stats.documents:,} stories continued by the model ({stats.generated_tokens:,} "
               f"tokens in {stats.seconds:,.0f} s), {stats.held_out:,} held out; train the draft on it with the "
               f"model's tokenizer")
