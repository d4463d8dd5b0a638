import dataclasses
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


def _decode_rate(stats) -> float | None:
    """Tokens/s after the first token (the first one pays for the prompt)."""
    if stats is None or stats.ttft_s is None or not stats.total_s or stats.output_tokens < 2:
        return None
    decode_s = stats.total_s - stats.ttft_s
    return (stats.output_tokens - 1) / decode_s if decode_s > 0 else None


def _mib(n) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def stats_lines(counters: dict, info: dict, last=None) -> list:
    """/stats as aligned `label  value` lines: the runtime's counters, read by a person."""
    rate = _decode_rate(last)
    used, total = counters.get("blocks_used", 0), counters.get("blocks_total", 0)
    block, ctx = info.get("block"), info.get("context_length")
    if block and ctx:
        context = f"up to {min(used * block, ctx)} of {ctx} tokens ({used} KV blocks of {block} tokens)"
    else:
        context = f"{used} KV blocks" + (f" of a {ctx}-token context" if ctx else "")
    rows = [
        ("tokens/s", f"{rate:.1f} (last reply)" if rate is not None else "no reply timed yet"),
        ("context used", context),
        ("KV blocks", f"{used} used, {counters.get('blocks_cached', 0)} cached, "
                      f"{counters.get('blocks_high_water', 0)} peak, of {total}"),
        ("memory", f"arena {_mib(counters.get('arena_used', 0))} used, "
                   f"{_mib(counters.get('arena_high_water', 0))} peak, of {_mib(counters.get('arena_size', 0))}"),
        ("tokens", f"{counters.get('prompt_tokens_computed', 0)} prompt computed, "
                   f"{counters.get('tokens_generated', 0)} generated"),
        ("prefix cache", f"{counters.get('prefix_hits', 0)} hits of {counters.get('prefix_queries', 0)} lookups"),
    ]
    width = max(len(label) for label, _ in rows)
    return [f"{label:<{width}}  {value}" for label, value in rows]


@click.command("chat")
@device_options
@click.option("--system", default="", help="System prompt.")
@click.option("--chat-template", type=click.Choice(["plain", "llama2", "chatml"]),
              help="Local runtime only. Default: the one the model's metadata names, else plain.")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past the end-of-sequence token.")
@click.option("--logprobs", type=int, default=None,
              help="After each reply, its tokens' logprobs and ranks and this many top tokens (0-20), on stderr.")
@sampling_options
def command(board, host, port, local, model, threads, system, chat_template, ignore_eos, logprobs, **options):
    """Multi-turn chat with the runtime or a device. Commands: /reset, /stats, /system TEXT, /quit.

    Replies print as they arrive. The conversation stays on the device between turns;
    Ctrl-C stops the current reply, not the chat (a second Ctrl-C stops waiting for it).
    A conversation goes on with one reply a turn: samples (--n) and beam search are
    generate's."""
    from edgellama.devices.device import LocalDevice
    from edgellama.devices.opener import open_device
    params = dataclasses.replace(sampling_params(options, logprobs=logprobs), ignore_eos=ignore_eos)
    device = open_device(board=board, host=host, port=port, local=local, model=model, threads=threads)
    with device:
        info = device.info()
        if isinstance(device, LocalDevice):
            device.session = device.llm.chat_session(system, chat_template)
            where = f"{device.llm.model} ({device.session.chat.name} template)"
            info.setdefault("block", device.llm._rt.block_size)
        else:
            if chat_template:
                raise EdgeLlamaError("--chat-template: a device uses its model's own template")
            if system:
                device.reset(system)
            where = f"{info.get('model') or 'the model'} on {info.get('board') or info.get('transport') or device.name}"
        click.echo(f"chat with {where}; /reset, /stats, /system TEXT, /quit or Ctrl-D to leave", err=True)
        _loop(device, params, system, info)


def _loop(device, params, system, info):
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
            click.echo("conversation reset" + (" (the system prompt stays)" if system else ""), err=True)
            continue
        if command == "/stats":
            last = getattr(device, "last_stats", None)
            timed = last if last is not None and last.total_s is not None else None
            click.echo("\n".join(stats_lines(device.stats(), info, timed)), err=True)
            if timed is not None:
                click.echo("last reply: " + timed.summary(), err=True)
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
        elif device.last_stats is not None and params.structured_outputs is not None \
                and device.last_stats.finish_reason == "length":
            from edgellama.cli.generate import say_if_cut
            click.echo()
            say_if_cut(params, "length")
        logprobs = device.last_stats.extra.get("logprobs") if device.last_stats is not None else None
        if logprobs is not None:
            from edgellama.cli.generate import logprob_lines
            click.echo()
            click.echo(f"[logprobs] {len(logprobs)} tokens, cumulative "
                       f"{sum(entry[token].logprob for token, entry in logprobs):.4f}", err=True)
            for text in logprob_lines(logprobs):
                click.echo(text, err=True)
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
