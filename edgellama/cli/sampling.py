"""The sampling flags every verb that generates shares, named after SamplingParams."""

import click

from edgellama.errors import EdgeLlamaError
from edgellama.runtime.sampling_params import SamplingParams

FLAGS = [
    ("--temperature", "temperature", float, 0.8, "0 is greedy."),
    ("--top-p", "top_p", float, 0.95, "Keep the most likely tokens up to this probability mass."),
    ("--top-k", "top_k", int, 0, "Keep this many most likely tokens; 0 keeps all."),
    ("--min-p", "min_p", float, 0.0, "Drop tokens below this fraction of the most likely one."),
    ("--repetition-penalty", "repetition_penalty", float, 1.0, "Above 1 discourages repeating tokens."),
    ("--max-tokens", "max_tokens", int, 200, "Generate at most this many tokens."),
    ("--seed", "seed", int, 0, "Same seed, same text, on every target."),
]


def sampling_options(f):
    f = click.option("--stop", multiple=True, help="Stop before this string (repeatable).")(f)
    for flag, name, kind, default, text in reversed(FLAGS):
        f = click.option(flag, name, type=kind, default=default, show_default=True, help=text)(f)
    return f


def sampling_params(options: dict, **more) -> SamplingParams:
    """SamplingParams from the flags (popped from options) and a verb's own (`more`, named
    as SamplingParams names them and as their flags); a bad value names its flag."""
    values = {name: options.pop(name) for _, name, *_ in FLAGS}
    values["stop"] = list(options.pop("stop"))
    values.update(more)
    try:
        return SamplingParams(**values)
    except ValueError as e:
        flags = [f for f, name, *_ in FLAGS] + [f"--{name.replace('_', '-')}" for name in more]
        names = [name for _, name, *_ in FLAGS] + list(more)
        flag = next((f for f, name in zip(flags, names) if str(e).startswith(name)), "sampling")
        raise EdgeLlamaError(f"{flag}: {e}") from None
