"""The `edgellama` command: one module per verb, each a thin layer over the library.

Errors the user can fix (EdgeLlamaError, unreadable files) become one line on
stderr and exit code 1; anything else is a bug and keeps its traceback.
"""

import sys

import click

from edgellama.cli import (
    boards,
    build,
    chat,
    data,
    export,
    export_c,
    generate,
    import_,
    inspect,
    plan,
    run,
    tokenizer,
    toolchains,
    train,
)
from edgellama.cli import eval as eval_cmd
from edgellama.errors import EdgeLlamaError


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeLlamaError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgellama")
def main():
    """Train tiny Llama models, quantize them, and run them on small computers."""


for module in (tokenizer, data, train, export, import_, inspect, eval_cmd, generate, chat, boards, toolchains, build,
               export_c, run, plan):
    main.add_command(module.command)
main.add_command(__import__(f"{__name__}.bench", fromlist=["command"]).command)
main.add_command(__import__(f"{__name__}.serve", fromlist=["command"]).command)
main.add_command(__import__(f"{__name__}.flash", fromlist=["command"]).command)
main.add_command(__import__(f"{__name__}.emulate", fromlist=["command"]).command)
