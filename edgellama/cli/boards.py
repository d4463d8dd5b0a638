import click

from edgellama.boards.catalog import all_boards, get_board
from edgellama.boards.toolchains import get_toolchain


def _size(n: int) -> str:
    if not n:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("GB", 10**9), ("MiB", 1 << 20), ("MB", 10**6), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} B"


def _reach(board, emulator_args: bool = False) -> str:
    r = board.reach
    if r.kind == "emulator":
        args = r.emulator_args if emulator_args else []
        return f"{r.emulator}" + (f" -M {r.machine}" if r.machine else "") + "".join(f" {a}" for a in args)
    if r.kind == "serial":
        return f"serial {r.baud} baud" + (f" (USB {', '.join(r.usb)})" if r.usb else "")
    return "ssh"


@click.group("boards", invoke_without_command=True)
@click.pass_context
def command(ctx):
    """List the boards edgellama builds for (each is a file in boards/)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = [("board", "arch", "os", "RAM", "flash/storage", "reached by", "emulated")]
    for b in all_boards():
        rows.append((b.name, b.arch, b.os, _size(b.ram), _size(b.flash or b.storage), _reach(b),
                     "yes" if b.emulated else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


@command.command("show")
@click.argument("name")
def show(name):
    """Everything the catalog says about one board."""
    b = get_board(name)
    t = get_toolchain(b.toolchain)
    lines = [
        f"{b.name}: {b.description}",
        f"  cpu        {b.cpu} ({b.arch}), {b.clock_mhz or '?'} MHz, flags: {' '.join(b.cflags) or '-'}",
        f"  os         {b.os}",
        f"  memory     RAM {_size(b.ram)}, flash {_size(b.flash)}, PSRAM {_size(b.psram)}, storage {_size(b.storage)}",
        f"  reached by {_reach(b, emulator_args=True)}",
        f"  toolchain  {t.name}: {t.cc} ({'installed' if t.installed() else 'not installed: ' + t.install_command()})",
        f"  runtime    {b.threads} thread(s), KV blocks of {b.kv_block_size} tokens, arena {_size(b.arena)}",
        *([f"  port       firmware/ports/{b.port or b.name}/"] if b.os == "baremetal" else []),
        f"  file       {b.path}",
    ]
    click.echo("\n".join(lines))
