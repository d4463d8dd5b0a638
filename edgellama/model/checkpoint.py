"""Training checkpoints (.pt): model, optimizer and sampler state, and the tokenizer.

The tokenizer's sentencepiece model travels inside the checkpoint, so an export can
never pair weights with the wrong vocabulary.
"""

from pathlib import Path

import torch

from edgellama.errors import EdgeLlamaError
from edgellama.fileio import atomic_path
from edgellama.model.chat_format import jinja_template
from edgellama.model.llama import LlamaConfig, LlamaModel
from edgellama.model.tokenizer import vocab_from_sentencepiece

REQUIRED = ("model_args", "model", "optimizer", "iter_num", "best_val_loss", "tokenizer_model", "rng")


def save_checkpoint(path, model, optimizer, iter_num, best_val_loss, train_config, tokenizer_model, rng,
                    rank_digests):
    state = dict(model_args=model.cfg.to_dict(), model=model.state_dict(), optimizer=optimizer.state_dict(),
                 iter_num=iter_num, best_val_loss=best_val_loss, train_config=train_config,
                 tokenizer_model=tokenizer_model, rng=rng, rank_digests=rank_digests)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgeLlamaError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeLlamaError(f"{path}: not a readable checkpoint ({reason[:120]})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        raise EdgeLlamaError(f"{path}: not an edgellama checkpoint (missing fields)")
    return ckpt


def llama_from_checkpoint(path) -> LlamaModel:
    ckpt = load_checkpoint(path)
    try:
        cfg = LlamaConfig(**ckpt["model_args"]).validate(str(path))
    except TypeError as e:
        raise EdgeLlamaError(f"{path}: bad model_args ({e})") from None
    vocab = vocab_from_sentencepiece(ckpt["tokenizer_model"], f"{path} tokenizer")
    train_config = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), dict) else {}
    try:
        vocab.chat_template = jinja_template(train_config.get("chat_format") or "")
    except EdgeLlamaError as e:
        raise EdgeLlamaError(f"{path}: train_config: {e}") from None
    tensors = {k: v.float().numpy().copy() for k, v in ckpt["model"].items()}
    if cfg.tied_embeddings:
        tensors.pop("output.weight", None)
    return LlamaModel(cfg, vocab, tensors, Path(path).stem).validate(str(path))
