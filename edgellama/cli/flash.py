import click

from edgellama.devices import flash as flash_lib


@click.command("flash")
@click.option("--board", required=True, help="Board name (see `edgellama boards`).")
@click.option("--host", help="user@addr[:port] of a Linux board (SSH).")
@click.option("--port", "serial_port", help="A microcontroller's serial port or URL: with --model, the model goes "
              "over the line into its model store; else PlatformIO's upload port.")
@click.option("--model", type=click.Path(dir_okay=False, exists=True),
              help="With --port: the GGUF model to upload (checked against the device first; resumes a cut upload).")
@click.option("--dir", "build_dir", type=click.Path(file_okay=False), help="Build directory (default: build/BOARD).")
@click.option("--identity", "-i", type=click.Path(dir_okay=False), help="SSH private key (default: agent, ~/.ssh).")
@click.option("--known-hosts", type=click.Path(dir_okay=False), help="known_hosts file (default: ~/.ssh/known_hosts).")
@click.option("--trust-host-key", is_flag=True, help="Accept an unknown host key and add it to known_hosts.")
@click.option("--remote-dir", default=flash_lib.DEFAULT_REMOTE_DIR, show_default=True,
              help="Where releases go on the board (relative to the home directory).")
@click.option("--rollback", is_flag=True, help="Switch back to the previous release (SSH), or model (--port).")
def command(board, host, serial_port, model, build_dir, identity, known_hosts, trust_host_key, remote_dir, rollback):
    """Put a build on its board: SSH release with atomic switch, PlatformIO upload, or (emulated) nothing;
    with --port and --model (or --rollback), a model over the serial line into a microcontroller's store."""
    if serial_port and (model or rollback) and not host:
        from edgellama.devices.model_upload import flash_model_serial
        click.echo(flash_model_serial(board, serial_port, model, rollback, echo=click.echo))
        return
    ssh = {"identity": identity, "known_hosts": known_hosts, "trust_host_key": trust_host_key, "remote_dir": remote_dir}
    if rollback:
        click.echo(flash_lib.rollback(board, host, **ssh))
    else:
        click.echo(flash_lib.flash(board, host, build_dir, serial_port, echo=click.echo, **ssh))
