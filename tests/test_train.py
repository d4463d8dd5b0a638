"""Training: loss goes down, resume is exact, data is cached, DDP ranks stay in sync."""

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

import edgellama.model.train as train_mod
from edgellama.errors import EdgeLlamaError
from edgellama.model import data
from edgellama.model.checkpoint import load_checkpoint
from edgellama.model.presets import PRESETS
from edgellama.model.train import lr_at, train

pytestmark = pytest.mark.slow  # training, a fresh virtual environment, or Hugging Face models


def test_training_lowers_validation_loss(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt["iter_num"] == 60
    # An untrained model scores about ln(vocab) = 5.95; 60 tiny steps must beat it clearly.
    assert ckpt["best_val_loss"] < math.log(384) - 1.0


def test_resume_continues_exactly(tmp_path, small_corpus, tiny_tokenizer, monkeypatch):
    full = tmp_path / "full.pt"
    halfway = tmp_path / "halfway.pt"
    original_save = train_mod.save_checkpoint

    def save_and_keep_step_10(path, model, optimizer, iter_num, *rest):
        original_save(path, model, optimizer, iter_num, *rest)
        if iter_num == 10:
            shutil.copy(path, halfway)

    monkeypatch.setattr(train_mod, "save_checkpoint", save_and_keep_step_10)
    straight = train(tiny_config(small_corpus, tiny_tokenizer, full))
    monkeypatch.setattr(train_mod, "save_checkpoint", original_save)
    resumed = train(tiny_config(small_corpus, tiny_tokenizer, halfway, resume=True))
    assert resumed["iters"] == 20
    assert resumed["digest"] == straight["digest"]
    a, b = load_checkpoint(full)["model"], load_checkpoint(halfway)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bfloat16_forward_trains_float32_parameters(tmp_path, small_corpus, tiny_tokenizer):
    # The forward under autocast, the parameters and the checkpoint float32: 60 steps learn
    # as the float32 run does, to within a few hundredths of a nat, and the two differ.
    out = tmp_path / "bf16.pt"
    bf16 = train(tiny_config(small_corpus, tiny_tokenizer, out, max_iters=60, eval_interval=30, dtype="bfloat16"))
    ckpt = load_checkpoint(out)
    assert all(t.dtype == torch.float32 for t in ckpt["model"].values())
    assert ckpt["train_config"]["dtype"] == "bfloat16"
    f32 = train(tiny_config(small_corpus, tiny_tokenizer, tmp_path / "f32.pt", max_iters=60, eval_interval=30))
    assert bf16["digest"] != f32["digest"]
    assert bf16["best_val_loss"] < math.log(384) - 1.0 and abs(bf16["val_loss"] - f32["val_loss"]) < 0.1


def test_pretokenized_shards_are_cached(small_corpus, tiny_tokenizer):
    tok = tiny_tokenizer.read_bytes()
    first = data.pretokenize(small_corpus, tok)
    stamp = os.path.getmtime(first.cache_dir / "val.bin")
    second = data.pretokenize(small_corpus, tok)
    assert second.cache_dir == first.cache_dir and os.path.getmtime(second.cache_dir / "val.bin") == stamp
    assert (first.train == second.train).all() and len(first.val) > 0
    assert first.train.dtype.name == "uint16" and sorted(p.name for p in first.cache_dir.glob("train_*.bin"))
    assert first.train[0] == 1  # each document starts with BOS


def test_schedule_warms_up_then_decays():
    cfg = tiny_config("x", "y", "z", max_iters=100, warmup_iters=10, learning_rate=1e-3, min_lr=1e-4)
    lrs = [lr_at(i, cfg) for i in range(101)]
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(1e-4)


def test_presets_have_llama2c_shapes():
    assert PRESETS["260k"] == dict(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, hidden_dim=172, vocab_size=512,
                                   max_seq_len=512)
    assert PRESETS["15m"]["dim"] == 288 and PRESETS["15m"]["n_layers"] == 6 and PRESETS["15m"]["max_seq_len"] == 256


def test_model_fields_override_the_preset(tmp_path, small_corpus, tiny_tokenizer):
    result = train(tiny_config(small_corpus, tiny_tokenizer, tmp_path / "o.pt", max_iters=2, eval_interval=2,
                               model_overrides=dict(dim=48, n_layers=1)))
    args = load_checkpoint(tmp_path / "o.pt")["model_args"]
    assert (args["dim"], args["n_layers"], args["vocab_size"]) == (48, 1, 384)
    assert result["iters"] == 2


def test_corpus_too_small_for_sequence(tmp_path, tiny_tokenizer):
    corpus = tmp_path / "small.txt"
    corpus.write_text("one short line.\nanother short line.\n")
    with pytest.raises(EdgeLlamaError, match="too small for sequence length 64"):
        train(tiny_config(corpus, tiny_tokenizer, tmp_path / "o.pt"))
    assert not (tmp_path / "o.pt").exists()


def test_trains_its_own_tokenizer_when_none_given(tmp_path, small_corpus):
    out = tmp_path / "self.pt"
    train(tiny_config(small_corpus, None, out, max_iters=2, eval_interval=2))
    assert (tmp_path / "self.tokenizer.model").is_file()
    assert load_checkpoint(out)["model_args"]["vocab_size"] == 384


def test_ddp_two_processes_stay_in_sync(tmp_path, small_corpus, tiny_tokenizer):
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "edgellama",
           "train", "--data", str(small_corpus), "--tokenizer", str(tiny_tokenizer), "--preset", "tiny",
           "--batch-size", "4", "--max-iters", "12", "--warmup-iters", "2", "--eval-interval", "6", "--eval-windows", "8", "-o", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = load_checkpoint(out)
    # Each rank's parameter digest at the last evaluation, gathered by rank 0.
    assert ckpt["iter_num"] == 12 and len(ckpt["rank_digests"]) == 2
    assert ckpt["rank_digests"][0] == ckpt["rank_digests"][1] == train_mod.param_digest(_model_from(ckpt))
    assert len(ckpt["rng"]) == 2
    # The ranks drew different batches: their sampler states differ.
    assert not torch.equal(ckpt["rng"][0], ckpt["rng"][1])


def _model_from(ckpt):
    from edgellama.model.llama import LlamaConfig
    from edgellama.model.reference import Transformer
    model = Transformer(LlamaConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model


def test_chat_corpus_trains_into_a_model_that_carries_its_template(tmp_path, small_corpus, tiny_tokenizer):
    """`data chat`, then `train --chat-format`: the exported file stores the template and
    the runtime chats in it; the stories split keeps whole stories as documents."""
    chat = tmp_path / "chat.txt"
    r = subprocess.run([sys.executable, "-m", "edgellama", "data", "chat", str(small_corpus), "--segment", "stories",
                        "--template", "chatml", "-o", str(chat)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "chat.pt"
    train(tiny_config(chat, tiny_tokenizer, out, max_iters=4, eval_interval=4, warmup_iters=2, chat_format="chatml"))
    assert load_checkpoint(out)["train_config"]["chat_format"] == "chatml"
    gguf = tmp_path / "chat.gguf"
    r = subprocess.run([sys.executable, "-m", "edgellama", "export", str(out), "--quant", "q8_0", "-o", str(gguf)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    from edgellama.model.chat_format import JINJA
    from edgellama.model.gguf_file import read_gguf
    from edgellama.runtime import capi
    from edgellama.runtime.llm import LLM
    assert read_gguf(gguf).model.vocab.chat_template == JINJA["chatml"]
    assert capi.Chat(LLM(str(gguf))._rt).name == "chatml"
    stories = data.pretokenize(small_corpus, tiny_tokenizer.read_bytes(), segment="stories")
    lines = data.pretokenize(small_corpus, tiny_tokenizer.read_bytes(), segment="lines")
    assert (stories.train == 1).sum() < (lines.train == 1).sum() / 2  # fewer, longer documents
    with pytest.raises(EdgeLlamaError, match="--chat-format: unknown chat format 'llama2'"):
        train(tiny_config(chat, tiny_tokenizer, tmp_path / "no.pt", chat_format="llama2"))
    assert not (tmp_path / "no.pt").exists()
