"""`edgellama run`: the name `generate` had when it ran only on emulated boards; kept as an
alias so scripts that say `edgellama run --board qemu-aarch64 PROMPT` still work."""

import click

from edgellama.cli import generate

command = click.Command("run", params=generate.command.params, callback=generate.command.callback,
                        help="Alias of `generate` (the same options and output).", hidden=False)
