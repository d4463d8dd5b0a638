"""`edgellama generate PROMPT`: the prompt and its continuation, streamed, the same text on
every device (this machine, an emulated board, a board over SSH or a serial line)."""

import click

from edgellama.cli.devices import build_options, device_options, requested_engine
from edgellama.cli.sampling import sampling_options, sampling_params
from edgellama.errors import EdgeLlamaError


def logprob_lines(tokens_and_entries) -> list:
    """One line per generated token, given (token, {token_id: Logprob}) pairs: its text,
    logprob and rank, then the top tokens (and the chosen one when it is not among them),
    most likely first."""
    lines = []
    for token, entry in tokens_and_entries:
        chosen = entry[token]
        top = "  ".join(f"{lp.decoded_token!r}={lp.logprob:.3f}"
                        for _, lp in sorted(entry.items(), key=lambda item: item[1].rank))
        lines.append(f"  {chosen.decoded_token!r:>16} {chosen.logprob:9.4f}  rank {chosen.rank:<5} top: {top}")
    return lines


def say_if_cut(params, finish_reason, echo=click.echo):
    """A structured output that max_tokens cut short is not a whole one: say so."""
    if params.structured_outputs is not None and finish_reason == "length":
        echo(f"note: the output stopped at max_tokens ({params.max_tokens}) before its "
             f"{params.structured_outputs.kind()} constraint was complete", err=True)


def generate_samples(prompt: str, params, echo=click.echo, **device):
    """n samples, or logprobs: each sample as the prompt and its continuation (a header
    line before each when n > 1), the logprobs after it on stderr. The runtime forks the
    samples from one prefill, here or on the device (GENERATE's n= and logprobs=)."""
    from edgellama.devices.opener import open_device
    with open_device(say=lambda line: echo(line, err=True), **device) as dev:
        out = dev.generate_samples(prompt, params)
        for c in out.outputs:
            if params.n > 1:
                echo(f"--- sample {c.index + 1} of {params.n} (finish: {c.finish_reason}) ---")
            echo(prompt + c.text)
            say_if_cut(params, c.finish_reason, echo)
            if c.logprobs is not None:
                echo(f"[logprobs] sample {c.index + 1}: cumulative {c.cumulative_logprob:.4f}", err=True)
                for line in logprob_lines(zip(c.token_ids, c.logprobs)):
                    echo(line, err=True)


def beam_search_on_device(prompt: str, params, echo=click.echo, **device):
    """The beams of a search, best first, each as the prompt and its continuation after a
    header with its cumulative logprob, here or on the device (GENERATE's beam_width=)."""
    from edgellama.devices.opener import open_device
    with open_device(say=lambda line: echo(line, err=True), **device) as dev:
        out = dev.beam_search(prompt, params)
        for i, seq in enumerate(out.sequences):
            echo(f"--- beam {i + 1} of {len(out.sequences)} (cumulative logprob {seq.cum_logprob:.4f}, "
                 f"finish: {seq.finish_reason}) ---")
            echo(prompt + seq.text)


def generate_on_device(prompt: str, params, echo=click.echo, stats: bool = False, **device):
    """Open the device the options name, stream the prompt and its continuation to echo;
    with stats, one line of timings after the text (on stderr)."""
    from edgellama.devices.opener import open_device
    if params.n > 1 or params.logprobs is not None:
        return generate_samples(prompt, params, echo, **device)
    with open_device(say=lambda line: echo(line, err=True), **device) as dev:
        echo(prompt, nl=False)
        try:
            for text in dev.generate(prompt, params):
                echo(text, nl=False)
        finally:
            echo()  # an error, if any, starts on its own line
        if dev.last_stats is not None:
            say_if_cut(params, dev.last_stats.finish_reason, echo)
        if stats and dev.last_stats is not None:
            echo(f"[stats] {dev.last_stats.summary()}", err=True)


@click.command("generate")
@click.argument("prompt")
@device_options
@build_options
@click.option("--stats", is_flag=True, help="After the text, one line of timings on stderr.")
@click.option("--n", "n", type=int, default=1, show_default=True,
              help="Samples of the prompt, forked from one prefill (sample i draws with seed + i).")
@click.option("--logprobs", type=int, default=None,
              help="After the text, each token's logprob and rank and this many top tokens (0-20), on stderr.")
@click.option("--beam-width", type=int, default=0, show_default=True,
              help="Beam search of this width instead of sampling (its beams, best first); 0 samples.")
@sampling_options
def command(prompt, stats, n, logprobs, beam_width, **options):
    """Continue PROMPT with the model, streaming the text: on this machine by default, or
    on the device --board, --host or --port names (an emulated board is built first)."""
    params = sampling_params(options, n=n, logprobs=logprobs)
    if beam_width:
        from edgellama.runtime.sampling_params import BeamSearchParams
        if n != 1 or logprobs is not None:
            raise EdgeLlamaError("--beam-width: a beam search returns its beams; --n and --logprobs are for sampling")
        # vLLM's beam search scores the model's own distribution unless a temperature is asked for
        given = click.get_current_context().get_parameter_source("temperature") != click.core.ParameterSource.DEFAULT
        try:
            beam = BeamSearchParams(beam_width=beam_width, max_tokens=params.max_tokens,
                                    temperature=params.temperature if given else 0.0)
        except ValueError as e:
            raise EdgeLlamaError(f"--{str(e).split(' ', 1)[0].replace('_', '-')}: {e}") from None
        return beam_search_on_device(prompt, beam, engine=requested_engine(options), **options)
    generate_on_device(prompt, params, stats=stats, engine=requested_engine(options), **options)
