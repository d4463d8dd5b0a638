import json

import click

from ..llm import LLM
from .sampling import sampling_options, sampling_params


@click.command("chat")
@click.option("--model", type=click.Path(dir_okay=False), help="GGUF model (default: the embedded model).")
@click.option("--system", default="", help="System prompt.")
@click.option("--chat-template", type=click.Choice(["plain", "llama2", "chatml"]),
              help="Default: the one the model's metadata names, else plain.")
@sampling_options
def command(model, system, chat_template, **options):
    """Multi-turn chat on the C runtime. Commands: /reset, /stats, /system TEXT, /quit.

    The conversation stays in the engine's KV cache between turns; Ctrl-C stops the
    current reply, not the chat."""
    params = sampling_params(options)
    llm = LLM(model)
    session = llm.chat_session(system, chat_template)
    click.echo(f"chat with {llm.model} ({session.chat.name} template); /quit or Ctrl-D to leave", err=True)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        except KeyboardInterrupt:
            click.echo()
            continue
        if not line.strip():
            continue
        if line.strip() == "/quit":
            break
        if line.strip() == "/reset":
            session.reset()
            continue
        if line.strip() == "/stats":
            click.echo(json.dumps(llm.stats()))
            continue
        if line.startswith("/system"):
            session.reset(line[len("/system"):].strip())
            continue
        try:
            for text in session.send(line, params):
                click.echo(text, nl=False)
        except KeyboardInterrupt:
            session.cancel()
            click.echo(" [stopped]", nl=False)
        click.echo()
