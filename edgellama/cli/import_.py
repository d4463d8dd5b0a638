import struct
from pathlib import Path

import click

from edgellama.model.gguf_file import write_gguf
from edgellama.model.llama2c import MAGIC, read_llama2c
from edgellama.model.quant import QUANT_NAMES
from edgellama.model.tokenizer import load_vocab


@click.group("import")
def command():
    """Convert models from other tools to GGUF."""


def _write(model, output, quant):
    write_gguf(model, output, quant)
    c = model.config
    click.echo(f"wrote {output}: dim {c.dim}, {c.n_layers} layers, vocab {c.vocab_size}, {quant}")


@command.command("llama2c")
@click.argument("model_bin", type=click.Path(dir_okay=False))
@click.option("--tokenizer", required=True, type=click.Path(dir_okay=False), help="tok.model or tokenizer.bin.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--quant", type=click.Choice(list(QUANT_NAMES)), default="f32", show_default=True)
def llama2c_cmd(model_bin, tokenizer, output, quant):
    """Import a llama2.c checkpoint (v0 legacy, v1 float32, v2 int8)."""
    # tokenizer.bin does not store its size: take it from the model header.
    head = Path(model_bin).read_bytes()[:36] if Path(model_bin).is_file() else b""
    vocab_size = None
    if len(head) >= 36 and struct.unpack_from("<I", head)[0] == MAGIC:
        vocab_size = abs(struct.unpack_from("<i", head, 28)[0])
    elif len(head) >= 28:
        vocab_size = abs(struct.unpack_from("<i", head, 20)[0])
    _write(read_llama2c(model_bin, load_vocab(tokenizer, vocab_size)), output, quant)


@command.command("hf")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--quant", type=click.Choice(list(QUANT_NAMES)), default="f32", show_default=True)
def hf_cmd(directory, output, quant):
    """Import a Hugging Face LlamaForCausalLM folder (config.json, safetensors, tokenizer.model)."""
    from edgellama.model.hf import import_hf
    _write(import_hf(directory), output, quant)
