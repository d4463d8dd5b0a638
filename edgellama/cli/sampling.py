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


STRUCTURED_FLAGS = (("--choice", "choice"), ("--regex", "regex"), ("--json-schema", "json_schema"),
                    ("--grammar", "grammar"))


def sampling_options(f):
    f = click.option("--grammar", type=click.Path(dir_okay=False),
                     help="Structured output: follow this GBNF grammar file (a regular subset; the start rule is "
                          "root).")(f)
    f = click.option("--json-schema", type=click.Path(dir_okay=False),
                     help="Structured output: a JSON document that follows this JSON schema file.")(f)
    f = click.option("--regex", help="Structured output: text that matches this regular expression, whole.")(f)
    f = click.option("--choice", multiple=True, help="Structured output: exactly one of these strings (repeatable).")(f)
    f = click.option("--stop", multiple=True, help="Stop before this string (repeatable).")(f)
    for flag, name, kind, default, text in reversed(FLAGS):
        f = click.option(flag, name, type=kind, default=default, show_default=True, help=text)(f)
    return f


def structured_outputs(options: dict):
    """StructuredOutputsParams from --choice/--regex/--json-schema/--grammar (popped from
    options), or None; a bad one names its flag and the file."""
    from edgellama.runtime.structured import StructuredOutputsParams, compile_constraint
    given = {flag: options.pop(name) for flag, name in STRUCTURED_FLAGS}
    given = {flag: value for flag, value in given.items() if value}
    if not given:
        return None
    if len(given) > 1:
        raise EdgeLlamaError(f"{' and '.join(given)}: give one structured-output constraint")
    (flag, value), = given.items()
    if flag in ("--json-schema", "--grammar"):
        try:
            text = open(value, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise EdgeLlamaError(f"{flag}: {value}: cannot read it ({e})") from None
        if flag == "--json-schema":
            import json
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise EdgeLlamaError(f"{flag}: {value}: not valid JSON ({e})") from None
        else:
            value = text
    field = {"--choice": "choice", "--regex": "regex", "--json-schema": "json", "--grammar": "grammar"}[flag]
    try:
        params = StructuredOutputsParams(**{field: list(value) if field == "choice" else value})
        compile_constraint(params)  # an impossible or too large constraint is refused here, by flag
    except ValueError as e:
        raise EdgeLlamaError(f"{flag}: {e}") from None
    return params


def sampling_params(options: dict, **more) -> SamplingParams:
    """SamplingParams from the flags (popped from options) and a verb's own (`more`, named
    as SamplingParams names them and as their flags); a bad value names its flag."""
    values = {name: options.pop(name) for _, name, *_ in FLAGS}
    values["stop"] = list(options.pop("stop"))
    values["structured_outputs"] = structured_outputs(options)
    values.update(more)
    try:
        return SamplingParams(**values)
    except ValueError as e:
        flags = [f for f, name, *_ in FLAGS] + [f"--{name.replace('_', '-')}" for name in more]
        names = [name for _, name, *_ in FLAGS] + list(more)
        flag = next((f for f, name in zip(flags, names) if str(e).startswith(name)), "sampling")
        raise EdgeLlamaError(f"{flag}: {e}") from None
