import click

from edgellama.cli.needs import needs_torch
from edgellama.model.chat_format import CHAT_FORMATS
from edgellama.model.data import SEGMENTS
from edgellama.model.llama import LlamaConfig
from edgellama.model.presets import PRESETS
from edgellama.model.train_config import DTYPES, TrainConfig

DEFAULTS = TrainConfig(data="")
MODEL_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "max_seq_len")


def _model_options(f):
    for name in reversed(MODEL_FIELDS):
        f = click.option(f"--{name.replace('_', '-')}", name, type=int, default=None,
                         help=f"Override the preset's {name}.")(f)
    return f


@click.command("train")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="UTF-8 text corpus.")
@click.option("--tokenizer", type=click.Path(dir_okay=False),
              help="sentencepiece .model; without it one is trained and saved beside the checkpoint.")
@click.option("--preset", default=DEFAULTS.preset, show_default=True, help=f"One of: {', '.join(PRESETS)}.")
@_model_options
@click.option("-o", "--output", "out", default=DEFAULTS.out, show_default=True, type=click.Path(dir_okay=False))
@click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True)
@click.option("--grad-accum", default=DEFAULTS.grad_accum, show_default=True, help="Micro-batches per step.")
@click.option("--max-iters", default=DEFAULTS.max_iters, show_default=True)
@click.option("--learning-rate", default=DEFAULTS.learning_rate, show_default=True)
@click.option("--min-lr", default=DEFAULTS.min_lr, show_default=True)
@click.option("--warmup-iters", default=DEFAULTS.warmup_iters, show_default=True)
@click.option("--weight-decay", default=DEFAULTS.weight_decay, show_default=True)
@click.option("--grad-clip", default=DEFAULTS.grad_clip, show_default=True)
@click.option("--eval-interval", default=DEFAULTS.eval_interval, show_default=True)
@click.option("--eval-windows", default=DEFAULTS.eval_windows, show_default=True,
              help="Validation windows per evaluation.")
@click.option("--val-fraction", default=DEFAULTS.val_fraction, show_default=True)
@click.option("--segment", type=click.Choice(SEGMENTS), default=DEFAULTS.segment, show_default=True,
              help="How the corpus is cut into documents: at <|endoftext|>, whole stories (paragraphs "
                   "separated by a blank line, stories by a newline), or lines; auto: endoftext when present, "
                   "else lines.")
@click.option("--chat-format", type=click.Choice(CHAT_FORMATS), default=None,
              help="The chat template of the corpus's conversations (`edgellama data chat`); stored in the "
                   "model file as tokenizer.chat_template.")
@click.option("--seed", default=DEFAULTS.seed, show_default=True)
@click.option("--device", default=DEFAULTS.device, show_default=True, help="auto, cpu or cuda.")
@click.option("--dtype", type=click.Choice(DTYPES), default=DEFAULTS.dtype, show_default=True,
              help="The forward pass's precision; bfloat16 under autocast, with float32 parameters.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint at --output.")
def command(**options):
    """Train a Llama model on a text corpus (also under torchrun for DDP)."""
    overrides = {k: options.pop(k) for k in MODEL_FIELDS if options[k] is not None}
    for k in MODEL_FIELDS:
        options.pop(k, None)
    assert set(overrides) <= set(LlamaConfig.__dataclass_fields__)
    options["chat_format"] = options["chat_format"] or ""
    config = TrainConfig(model_overrides=overrides, **options)
    config.check_schedule()  # before torch is imported or any data is read
    train = needs_torch("train", "model.train", "train")
    result = train(config)
    if result["digest"] and result["val_loss"] is not None:
        click.echo(f"wrote {result['out']}: {result['params']:,} parameters, {result['iters']} steps, "
                   f"val loss {result['val_loss']:.4f}")
