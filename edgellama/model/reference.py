"""The reference Llama in PyTorch, for training and as the oracle for the C runtime.

Parameter names are the GGUF tensor names (blk.N.attn_q.weight, ...), so a state
dict and a model file map one to one. RoPE rotates adjacent pairs (x[2i], x[2i+1]),
as Meta's original code, llama2.c and llama.cpp's `llama` architecture do.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgellama.model.llama import LlamaConfig, LlamaModel, Vocab


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim, seq_len, theta):
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    # x: (batch, time, heads, head_dim); cos/sin: (time, head_dim/2)
    xr, xi = x.float().reshape(*x.shape[:-1], -1, 2).unbind(-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((xr * cos - xi * sin, xr * sin + xi * cos), dim=-1).flatten(3).type_as(x)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn_q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_k = nn.Linear(cfg.dim, cfg.kv_dim, bias=False)
        self.attn_v = nn.Linear(cfg.dim, cfg.kv_dim, bias=False)
        self.attn_output = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_gate = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.ffn_down = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.ffn_up = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)

    def attention(self, x, cos, sin):
        B, T, _ = x.shape
        hd = self.cfg.head_dim
        q = apply_rope(self.attn_q(x).view(B, T, self.cfg.n_heads, hd), cos, sin)
        k = apply_rope(self.attn_k(x).view(B, T, self.cfg.n_kv_heads, hd), cos, sin)
        v = self.attn_v(x).view(B, T, self.cfg.n_kv_heads, hd)
        group = self.cfg.n_heads // self.cfg.n_kv_heads
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.attn_output(y.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x, cos, sin):
        x = x + self.attention(self.attn_norm(x), cos, sin)
        h = self.ffn_norm(x)
        return x + self.ffn_down(F.silu(self.ffn_gate(h)) * self.ffn_up(h))


class Transformer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embd = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blk = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.output_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tied_embeddings:
            self.output.weight = self.token_embd.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith(("attn_output.weight", "ffn_down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, tokens, targets=None):
        T = tokens.shape[1]
        x = self.token_embd(tokens)
        for block in self.blk:
            x = block(x, self.rope_cos[:T], self.rope_sin[:T])
        logits = self.output(self.output_norm(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    # ---------------------------------------------- LlamaModel <-> torch

    @classmethod
    def from_llama(cls, model: LlamaModel) -> "Transformer":
        net = cls(model.config)
        state = {name: torch.from_numpy(np.array(arr, dtype=np.float32)) for name, arr in model.tensors.items()}
        if model.config.tied_embeddings:
            state["output.weight"] = state["token_embd.weight"]
        net.load_state_dict(state, strict=True)
        return net.eval()

    def to_llama(self, vocab: Vocab, name="edgellama") -> LlamaModel:
        tensors = {k: v.detach().cpu().float().numpy().copy() for k, v in self.state_dict().items()}
        if self.cfg.tied_embeddings:
            del tensors["output.weight"]
        return LlamaModel(self.cfg, vocab, tensors, name).validate()

    # ---------------------------------------------- sampling (no KV cache: it is a reference)

    @torch.no_grad()
    def next_token(self, tokens, temperature=0.0, top_k=0, top_p=1.0, generator=None) -> int:
        """The next token after `tokens`: argmax when temperature is 0, else a sample."""
        logits = self(torch.tensor([tokens[-self.cfg.max_seq_len:]]))[0][0, -1]
        if temperature <= 0:
            return int(torch.argmax(logits))
        probs = F.softmax(logits / temperature, dim=-1)
        order = torch.argsort(probs, descending=True)
        keep = torch.ones_like(probs, dtype=torch.bool)
        if top_k > 0:
            keep[order[top_k:]] = False
        if top_p < 1.0:  # smallest prefix of the sorted tokens whose mass reaches top_p
            cumulative = torch.cumsum(probs[order], dim=0)
            keep[order[1:][cumulative[:-1] >= top_p]] = False
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))

    def generate(self, tokens, max_new_tokens, stop_ids=(), **sampling):
        """Extend the token list until max_new_tokens, the context end, or a stop id."""
        tokens = list(tokens)
        for _ in range(max_new_tokens):
            if len(tokens) >= self.cfg.max_seq_len:
                break
            next_id = self.next_token(tokens, **sampling)
            if next_id in stop_ids:
                break
            tokens.append(next_id)
        return tokens
