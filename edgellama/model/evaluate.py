"""Validation loss and perplexity of a model file on a corpus's held-out split."""

import math
from dataclasses import dataclass

import numpy as np
import torch

from edgellama.model import data
from edgellama.model.tokenizer import sentencepiece_proto


@torch.no_grad()
def mean_loss(model, windows: np.ndarray, batch_size: int = 32, device="cpu") -> float:
    """Mean next-token cross-entropy over fixed windows (every window weighs the same)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        xy = torch.from_numpy(windows[i:i + batch_size]).to(device)
        _, loss = model(xy[:, :-1], xy[:, 1:])
        total += loss.item() * len(xy)
        count += len(xy)
    model.train(was_training)
    return total / max(count, 1)


@dataclass
class EvalResult:
    loss: float
    perplexity: float
    tokens: int
    windows: int
    seq_len: int


def evaluate_model(llama_model, corpus_path, seq_len: int | None = None, val_fraction: float = 0.05,
                   max_windows: int | None = None, segment: str = "auto") -> EvalResult:
    from edgellama.model.reference import Transformer
    seq_len = seq_len or llama_model.config.max_seq_len
    corpus = data.pretokenize(corpus_path, sentencepiece_proto(llama_model.vocab), val_fraction, segment)
    data.check_fits(corpus, seq_len, corpus_path)
    windows = data.eval_windows(corpus.val, seq_len, max_windows)
    loss = mean_loss(Transformer.from_llama(llama_model), windows)
    return EvalResult(loss, math.exp(loss), int(windows.shape[0] * seq_len), int(windows.shape[0]), seq_len)
