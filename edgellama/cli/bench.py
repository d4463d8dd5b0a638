import sys
from pathlib import Path

import click

from edgellama.cli.devices import device_options
from edgellama.errors import EdgeLlamaError


def _open(board, host, port, local, model, threads=None, speculative_tokens=0, draft_model=None):
    from edgellama.devices.opener import open_device
    from edgellama.runtime.engine_options import EngineOptions
    engine = EngineOptions(speculative_tokens=speculative_tokens) if speculative_tokens else None
    try:
        return open_device(board=board, host=host, port=port, local=local, model=model, threads=threads,
                           engine=engine, draft_model=draft_model)
    except ImportError as e:
        raise EdgeLlamaError(f"bench: this device kind is not available here ({e})") from None
    except (OSError, ValueError) as e:
        raise EdgeLlamaError(f"bench: cannot open the device ({e})") from None


@click.group("bench", invoke_without_command=True)
@device_options
@click.option("-p", "--prompt-tokens", type=int, default=64, show_default=True, help="Prompt length (ppN).")
@click.option("-n", "--gen-tokens", type=int, default=128, show_default=True, help="Generated tokens (tgN).")
@click.option("-r", "--repetitions", type=int, default=5, show_default=True, help="Measured repetitions.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Warm-up runs, not measured.")
@click.option("--output", "output", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--no-history", is_flag=True, help="Do not record this run in the bench history.")
@click.option("--speculative-tokens", type=click.IntRange(0, 16), default=0,
              help="N-gram speculation with this many drafts a step (here, or an emulated board built so); "
                   "the table adds how many drafts were accepted.")
@click.option("--draft-model", type=click.Path(dir_okay=False),
              help="Here only: speculate with this smaller model's drafts (the same vocabulary), "
                   "--speculative-tokens a step (default 4); the table adds the drafts accepted.")
@click.option("--suite", is_flag=True, help="The speed and memory goals on this machine (edgellama.runtime.bench_suite): "
              "its own models, one process per case, a table with bounds, JSON with --output json; with "
              "--model and --draft-model, a trained pair's draft-model case too (`make draft-pair`).")
@click.pass_context
def command(ctx, board, host, port, local, model, threads, prompt_tokens, gen_tokens, repetitions, warmup, output,
            no_history, speculative_tokens, draft_model, suite):
    """Prefill and decode tokens/s, latencies, memory and sizes on a device, llama-bench style.

    Results go into the bench history ($EDGELLAMA_HOME/bench.sqlite); `edgellama bench
    report` compares the recorded runs."""
    if ctx.invoked_subcommand is not None:
        return
    if model and not Path(model).is_file():
        raise EdgeLlamaError(f"{model}: no such model file")
    if draft_model and not Path(draft_model).is_file():
        raise EdgeLlamaError(f"{draft_model}: no such draft model file")
    if suite:
        _suite(repetitions, threads, output, _suite_pair(board, host, port, model, draft_model))
        return
    from edgellama.devices import bench, history
    for name, value, least in (("-p", prompt_tokens, 1), ("-n", gen_tokens, 1), ("-r", repetitions, 1),
                               ("--warmup", warmup, 0)):
        if value < least:
            raise EdgeLlamaError(f"{name} must be at least {least}, got {value}")
    with _open(board, host, port, local, model, threads, speculative_tokens, draft_model) as device:
        def progress(i, total):
            if sys.stderr.isatty():
                click.echo(f"\rbench: run {i}/{total}", err=True, nl=(i == total))
        result = bench.run(device, prompt_tokens, gen_tokens, repetitions, warmup, model=model, progress=progress)
    click.echo(bench.format_result(result, output).rstrip("\n"))
    if not no_history:
        history.record(result)


@command.command("report")
@click.option("--board", help="Only this board.")
@click.option("--model", help="Only this model (name, sha256 prefix, or model file).")
@click.option("--quant", help="Only this quant type (f32, f16, q8_0, q4_0).")
@click.option("--png", type=click.Path(dir_okay=False), help="Also plot tokens/s over time into this PNG.")
def report(board, model, quant, png):
    """Compare recorded bench runs across boards, models and quant types over time."""
    from edgellama.devices import history
    rows = history.query(board=board, model=model, quant=quant)
    click.echo(history.report_table(rows))
    if png:
        history.plot(rows, png)
        click.echo(f"wrote {png}", err=True)


def _suite_pair(board, host, port, model, draft_model) -> tuple | None:
    """The suite runs here on its own models; --model and --draft-model, given together,
    name a trained pair for its draft-model case."""
    if board or host or port:
        raise EdgeLlamaError("--suite runs on this machine: drop --board, --host and --port")
    if bool(model) != bool(draft_model):
        raise EdgeLlamaError("--suite makes its own models: --model and --draft-model together name a trained "
                             "target and its draft for the draft-model case")
    return (Path(model), Path(draft_model)) if model else None


def _suite(repetitions: int, threads: int | None, output: str, draft_pair: tuple | None = None):
    """The bench suite on this host; the run is kept to compare the next one with."""
    import json
    import os

    from edgellama.runtime import bench_suite
    if output == "csv":
        raise EdgeLlamaError("--suite: --output must be table or json")
    if repetitions < 1:
        raise EdgeLlamaError(f"-r must be at least 1, got {repetitions}")
    last = bench_suite.load_last()
    result = bench_suite.run_suite(repetitions=repetitions, threads=threads or max(2, os.cpu_count() or 1),
                                   progress=lambda text: click.echo(f"suite: {text}", err=True), draft_pair=draft_pair)
    click.echo(json.dumps(result, indent=2) if output == "json" else bench_suite.format_table(result, last))
    click.echo(f"kept in {bench_suite.save(result)} (the next run compares with it)", err=True)
