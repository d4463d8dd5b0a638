import click

from ..errors import EdgeLlamaError
from ..loading import load_model
from ..tokenizer import processor_for
from .needs import needs_torch


@click.command("generate")
@click.argument("prompt")
@click.option("--model", type=click.Path(dir_okay=False), help="GGUF or checkpoint (default: the embedded model).")
@click.option("--max-tokens", default=200, show_default=True, help="Tokens to generate at most.")
@click.option("--temperature", default=0.8, show_default=True, help="0 is greedy.")
@click.option("--top-k", default=0, show_default=True, help="0 keeps every token.")
@click.option("--top-p", default=0.9, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--stop", multiple=True, help="Stop when this string appears (repeatable); it is not printed.")
def command(prompt, model, max_tokens, temperature, top_k, top_p, seed, stop):
    """Continue PROMPT with the model (PyTorch reference; the C runtime comes later)."""
    for name, value, ok in (("--max-tokens", max_tokens, max_tokens >= 1), ("--temperature", temperature, temperature >= 0),
                            ("--top-k", top_k, top_k >= 0), ("--top-p", top_p, 0 < top_p <= 1)):
        if not ok:
            raise EdgeLlamaError(f"{name}: invalid value {value}")
    Transformer = needs_torch("generate", "model", "Transformer")
    import torch
    llama = load_model(model)
    sp = processor_for(llama.vocab)
    net = Transformer.from_llama(llama)
    generator = torch.Generator().manual_seed(seed)
    tokens = [llama.vocab.bos_id] + sp.encode(prompt)
    n_prompt, shown = len(tokens), prompt
    click.echo(prompt, nl=False)
    for _ in range(max_tokens):
        if len(tokens) >= llama.config.max_seq_len:
            break
        next_id = net.next_token(tokens, temperature, top_k, top_p, generator)
        if next_id in (llama.vocab.bos_id, llama.vocab.eos_id):
            break
        tokens.append(next_id)
        text = prompt + sp.decode(tokens[n_prompt:]) if tokens[n_prompt:] else prompt
        hits = [text.find(s, len(prompt)) for s in stop if text.find(s, len(prompt)) >= 0]
        if hits:
            click.echo(text[len(shown):min(hits)], nl=False)
            break
        held = max((len(s) - 1 for s in stop), default=0)  # a stop string may be half-written
        ready = text[:len(text) - held] if held else text
        if ready.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            continue
        if len(ready) > len(shown):
            click.echo(ready[len(shown):], nl=False)
            shown = ready
    else:
        click.echo(text[len(shown):] if max_tokens and len(tokens) > n_prompt else "", nl=False)
    click.echo()
