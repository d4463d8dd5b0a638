import dataclasses
import json
import signal

import click

from edgellama.cli.devices import device_options
from edgellama.cli.sampling import sampling_options, sampling_params
from edgellama.errors import EdgeLlamaError


class _Interrupts:
    """While a reply streams: the first Ctrl-C asks the device to cancel (the reply ends
    soon after, the chat goes on); a second one raises KeyboardInterrupt."""

    def __init__(self, device):
        self.device, self.pressed = device, 0

    def _handler(self, signum, frame):
        self.pressed += 1
        if self.pressed > 1:
            raise KeyboardInterrupt
        try:
            self.device.cancel()
        except Exception:  # the device is in trouble; a second Ctrl-C gets out
            pass

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)


def _reply_summary(stats) -> str:
    parts = [f"{stats.output_tokens} tokens"]
    if stats.prompt_tokens:
        parts.insert(0, f"{stats.prompt_tokens} prompt tokens")
    if stats.ttft_s is not None:
        parts.append(f"first token {stats.ttft_s * 1000:.1f} ms")
    if stats.total_s and stats.output_tokens > 1 and stats.ttft_s is not None and stats.total_s > stats.ttft_s:
        parts.append(f"{(stats.output_tokens - 1) / (stats.total_s - stats.ttft_s):.1f} tokens/s")
    if stats.finish_reason:
        parts.append(f"finish {stats.finish_reason}")
    return "last reply: " + ", ".join(parts)


@click.command("chat")
@device_options
@click.option("--system", default="", help="System prompt.")
@click.option("--chat-template", type=click.Choice(["plain", "llama2", "chatml"]),
              help="Local runtime only. Default: the one the model's metadata names, else plain.")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past the end-of-sequence token.")
@sampling_options
def command(board, host, port, local, model, threads, system, chat_template, ignore_eos, **options):
    """Multi-turn chat with the runtime or a device. Commands: /reset, /stats, /system TEXT, /quit.

    Replies print as they arrive. The conversation stays on the device between turns;
    Ctrl-C stops the current reply, not the chat (a second Ctrl-C stops waiting for it)."""
    from edgellama.devices.device import LocalDevice, open_device
    params = dataclasses.replace(sampling_params(options), ignore_eos=ignore_eos)
    device = open_device(board=board, host=host, port=port, local=local, model=model, threads=threads)
    with device:
        if isinstance(device, LocalDevice):
            device.session = device.llm.chat_session(system, chat_template)
            where = f"{device.llm.model} ({device.session.chat.name} template)"
        else:
            if chat_template:
                raise EdgeLlamaError("--chat-template: a device uses its model's own template")
            if system:
                device.reset(system)
            info = device.info()
            where = f"{info.get('model') or 'the model'} on {info.get('board') or info.get('transport') or device.name}"
        click.echo(f"chat with {where}; /reset, /stats, /system TEXT, /quit or Ctrl-D to leave", err=True)
        _loop(device, params, system)


def _loop(device, params, system):
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        except KeyboardInterrupt:
            click.echo()
            continue
        command = line.strip()
        if not command:
            continue
        if command == "/quit":
            break
        if command == "/reset":
            device.reset(system)
            continue
        if command == "/stats":
            click.echo(json.dumps(device.stats()))
            if getattr(device, "last_stats", None) is not None and device.last_stats.total_s is not None:
                click.echo(_reply_summary(device.last_stats), err=True)
            continue
        if command == "/system" or command.startswith("/system "):
            system = command[len("/system"):].strip()
            device.reset(system)
            continue
        if command.startswith("/") and command[1:2].isalpha():
            if command.split()[0] != "/help":
                click.echo(f"unknown command {command.split()[0]}", err=True)
            click.echo("commands: /reset, /stats, /system TEXT, /quit; Ctrl-C stops a reply", err=True)
            continue
        _reply(device, line, params, system)


def _reply(device, line, params, system):
    interrupts = _Interrupts(device)
    try:
        with interrupts:
            for text in device.generate(line, params, chat=True):
                click.echo(text, nl=False)
        if interrupts.pressed:
            click.echo(" [stopped]", nl=False)
    except KeyboardInterrupt:
        # Pressed twice: the reply did not end; start the conversation over.
        try:
            device.reset(system)
            click.echo(" [stopped; the conversation starts over]", nl=False)
        except Exception as e:
            click.echo(f" [stopped; the device did not answer: {e}]", nl=False)
    except EdgeLlamaError as e:
        click.echo()
        click.echo(f"error: {e}", err=True)
    click.echo()
