"""Training loop: AdamW, warmup + cosine decay, clipping, accumulation, checkpoints.

The same code runs on one process or under `torchrun --nproc_per_node=N` with
DistributedDataParallel (gloo on CPU, nccl on CUDA). Each rank draws its own random
windows from a generator seeded with seed + rank; checkpoints hold that generator's
state, so `--resume` continues exactly where the run stopped.
"""

import contextlib
import hashlib
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from edgellama.errors import EdgeLlamaError
from edgellama.model import data, presets
from edgellama.model.checkpoint import load_checkpoint, save_checkpoint
from edgellama.model.evaluate import mean_loss
from edgellama.model.llama import LlamaConfig
from edgellama.model.reference import Transformer
from edgellama.model.tokenizer import train_tokenizer
from edgellama.model.train_config import TrainConfig


def lr_at(it: int, cfg: TrainConfig) -> float:
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def _distributed():
    """(rank, world_size, device) from torchrun's environment, or a single process."""
    if "RANK" not in os.environ:
        return 0, 1, None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return rank, world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


def _tokenizer_bytes(cfg: TrainConfig, vocab_size: int, rank: int) -> bytes:
    if cfg.tokenizer:
        try:
            return Path(cfg.tokenizer).read_bytes()
        except OSError as e:
            raise EdgeLlamaError(f"{cfg.tokenizer}: cannot read tokenizer ({e.strerror})") from None
    # No tokenizer given: train one on the corpus and keep it beside the checkpoint.
    path = Path(cfg.out).with_suffix(".tokenizer.model")
    if rank == 0 and not (cfg.resume and path.is_file()):
        train_tokenizer(cfg.data, vocab_size, path)
    if dist.is_initialized():
        dist.barrier()
    return path.read_bytes()


def model_config(cfg: TrainConfig, vocab_size: int) -> LlamaConfig:
    fields = presets.preset(cfg.preset)
    unknown = set(cfg.model_overrides) - set(LlamaConfig.__dataclass_fields__)
    if unknown:
        raise EdgeLlamaError(f"model override: unknown field {sorted(unknown)[0]}")
    fields.update(cfg.model_overrides)
    fields["vocab_size"] = vocab_size
    return LlamaConfig(**fields).validate("model config")


def param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def train(cfg: TrainConfig) -> dict:
    rank, world, device = _distributed()
    try:
        return _train(cfg, rank, world, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rank: int, world: int, device) -> dict:
    if device is None:
        device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if cfg.device == "auto" else cfg.device))
    for name in ("batch_size", "grad_accum", "max_iters", "eval_interval"):
        if getattr(cfg, name) <= 0:
            raise EdgeLlamaError(f"--{name.replace('_', '-')}: must be positive, got {getattr(cfg, name)}")
    cfg.check_data()
    torch.manual_seed(cfg.seed)
    tok_bytes = _tokenizer_bytes(cfg, presets.preset(cfg.preset)["vocab_size"], rank)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(tok_bytes)
    except Exception:
        raise EdgeLlamaError(f"{cfg.tokenizer}: not a sentencepiece model") from None
    mcfg = model_config(cfg, sp.get_piece_size())
    corpus = data.pretokenize(cfg.data, tok_bytes, cfg.val_fraction, cfg.segment)
    data.check_fits(corpus, mcfg.max_seq_len, cfg.data)

    model = Transformer(mcfg).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))
    gen = torch.Generator().manual_seed(cfg.seed + rank)
    it, best_val = 0, float("inf")
    if cfg.resume and Path(cfg.out).is_file():
        ckpt = load_checkpoint(cfg.out)
        if ckpt["model_args"] != mcfg.to_dict():
            raise EdgeLlamaError(f"{cfg.out}: checkpoint was trained with a different model shape; cannot resume")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        it, best_val = ckpt["iter_num"], ckpt["best_val_loss"]
        rng = ckpt["rng"]
        gen.set_state(rng[rank] if rank < len(rng) else rng[0])
    raw_model = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)

    train_tokens = torch.from_numpy(corpus.train.astype(np.int64))
    T = mcfg.max_seq_len
    tokens_per_iter = cfg.batch_size * T * cfg.grad_accum * world

    def batch():
        ix = torch.randint(len(train_tokens) - T - 1, (cfg.batch_size,), generator=gen)
        xy = torch.stack([train_tokens[i:i + T + 1] for i in ix]).to(device)
        return xy[:, :-1], xy[:, 1:]

    def forward(x, y):
        if cfg.dtype == "float32":
            return model(x, y)
        with torch.autocast(device.type, dtype=getattr(torch, cfg.dtype)):
            return model(x, y)

    val_windows = data.eval_windows(corpus.val, T, cfg.eval_windows)
    bar = tqdm(total=cfg.max_iters, initial=it, disable=rank != 0, desc="train", unit="it", dynamic_ncols=True)
    last_time, val_loss, loss = time.time(), None, float("nan")
    while it < cfg.max_iters:
        lr = lr_at(it, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(cfg.grad_accum):
            x, y = batch()
            sync = contextlib.nullcontext() if world == 1 or micro == cfg.grad_accum - 1 else model.no_sync()
            with sync:
                _, loss_t = forward(x, y)
                (loss_t / cfg.grad_accum).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
        loss = loss_t.item()
        now = time.time()
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{tokens_per_iter / max(now - last_time, 1e-9):,.0f}")
        bar.update(1)
        last_time = now
        if it % cfg.eval_interval == 0 or it == cfg.max_iters:
            val_loss = mean_loss(raw_model, val_windows, cfg.batch_size, device)
            best_val = min(best_val, val_loss)
            # Every rank's sampler state (for --resume) and parameter digest (DDP must
            # keep the replicas identical: a difference stops training here).
            rng, digests = [gen.get_state()], [param_digest(raw_model)]
            if world > 1:
                gathered = [None] * world
                dist.all_gather_object(gathered, (gen.get_state(), digests[0]))
                rng, digests = [g[0] for g in gathered], [g[1] for g in gathered]
                if len(set(digests)) != 1:
                    raise EdgeLlamaError(f"ranks out of sync at step {it}: parameter digests {digests}")
            if rank == 0:
                bar.write(f"step {it}: train loss {loss:.4f}, val loss {val_loss:.4f}")
                save_checkpoint(cfg.out, raw_model, optimizer, it, best_val, asdict(cfg), tok_bytes, rng, digests)
    bar.close()
    digest = param_digest(raw_model)
    if world > 1:
        print(f"rank {rank}: parameters sha256 {digest}", flush=True)
    return dict(iters=it, train_loss=loss, val_loss=val_loss, best_val_loss=best_val, digest=digest,
                params=mcfg.n_params(), out=cfg.out)
