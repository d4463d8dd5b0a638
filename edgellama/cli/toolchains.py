import click

from ..toolchains import all_toolchains, get_toolchain, install


@click.group("toolchains", invoke_without_command=True)
@click.pass_context
def command(ctx):
    """List the compilers edgellama uses, and whether they are installed."""
    if ctx.invoked_subcommand is not None:
        return
    for t in all_toolchains():
        state = "installed" if t.installed() else f"missing: {t.install_command()}"
        click.echo(f"{t.name:<26} {t.cc:<26} {state}")


@command.command("install")
@click.argument("name")
def install_cmd(name):
    """Install a toolchain with apt (or pip for PlatformIO)."""
    t = get_toolchain(name)
    install(t)
    click.echo(f"{t.name}: {'installed' if t.installed() else 'still missing'} ({t.version()})")
