import click

from edgellama.boards.catalog import get_board
from edgellama.boards.toolchains import all_toolchains, get_toolchain, install, install_apt, missing_system_packages


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
@click.argument("name", required=False)
@click.option("--all", "everything", is_flag=True,
              help="Every apt toolchain and every emulator the emulated boards need (what the tests use).")
@click.option("--board", help="What this board needs: its toolchain and, if emulated, its emulator.")
def install_cmd(name, everything, board):
    """Install a toolchain with apt (or pip for PlatformIO)."""
    if sum((bool(name), everything, bool(board))) != 1:
        raise click.UsageError("give one of: a toolchain NAME, --board NAME, --all")
    if board:
        packages = missing_system_packages([get_board(board)])
        if packages:
            install_apt(packages)
        click.echo(f"installed {' '.join(packages)}" if packages else f"{board}: everything is installed")
        return
    if name:
        t = get_toolchain(name)
        install(t)
        click.echo(f"{t.name}: {'installed' if t.installed() else 'still missing'} ({t.version()})")
        return
    packages = missing_system_packages()
    if packages:
        install_apt(packages)
    click.echo(f"installed {' '.join(packages)}" if packages else "all toolchains and emulators are installed")
