"""Hugging Face import: logits match transformers' LlamaForCausalLM; bad folders fail in one line.

The logit tests build small random models with transformers. The format and error
tests write folders by hand, so they run without transformers (and check the reader
and the RoPE permutation against the format, not against transformers alone).
"""

import copy
import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from edgellama.errors import EdgeLlamaError
from edgellama.model.gguf_file import read_gguf
from edgellama.model.hf import import_hf

pytestmark = pytest.mark.slow  # training, a fresh virtual environment, or Hugging Face models

SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
SEQ = 32


# ---------------------------------------------------------------- against transformers

@pytest.fixture(scope="module")
def hf_models(tmp_path_factory, shared_data):
    """Save each case once: name -> (folder, float32 reference LlamaForCausalLM)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("hf")
    cases = {}
    for case, seed in (("tied", 1), ("untied", 2), ("sharded", 3), ("bf16", 4)):
        torch.manual_seed(seed)
        config = transformers.LlamaConfig(**SMALL, tie_word_embeddings=case == "tied", rope_theta=5000.0,
                                          attn_implementation="eager")
        ref = transformers.LlamaForCausalLM(config).eval()
        with torch.no_grad():
            # The default init (std 0.02, unit norms) makes attention nearly uniform,
            # which would hide a wrong RoPE permutation; wider weights do not.
            for p in ref.parameters():
                p.normal_(*(0.0, 0.15) if p.ndim == 2 else (1.0, 0.2))
        folder = root / case
        if case == "bf16":
            # Round the weights to bf16 but keep the reference in float32: casting the
            # whole model would also round its RoPE frequency buffer.
            with torch.no_grad():
                for p in ref.parameters():
                    p.copy_(p.bfloat16().float())
            copy.deepcopy(ref).to(torch.bfloat16).save_pretrained(folder)
        else:
            ref.save_pretrained(folder, **({"max_shard_size": "100KB"} if case == "sharded" else {}))
        shutil.copy(shared_data / "tok512.model", folder / "tokenizer.model")
        cases[case] = folder, ref
    return cases


@pytest.mark.parametrize("case", ["tied", "untied", "sharded", "bf16"])
def test_logits_match_transformers(hf_models, case):
    import torch

    from edgellama.model.reference import Transformer

    folder, ref = hf_models[case]
    if case == "sharded":
        assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    model = import_hf(folder)
    assert model.name == case
    assert model.config.tied_embeddings == (case == "tied")
    assert model.config.rope_theta == 5000.0 and model.config.norm_eps == 1e-5 and model.config.n_kv_heads == 2
    tokens = torch.randint(0, SMALL["vocab_size"], (1, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(tokens).logits.float().numpy()
        got = Transformer.from_llama(model)(tokens)[0].numpy()
    assert np.abs(expected).max() > 0.5  # logits far from zero, so the tolerance means something
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)  # measured: below 1e-5


@pytest.mark.parametrize("case", ["tied", "untied"])
def test_gguf_round_trip(hf_models, tmp_path, case):
    """Through the command line, as a user runs it."""
    model = import_hf(hf_models[case][0])
    r = subprocess.run([sys.executable, "-m", "edgellama", "import", "hf", str(hf_models[case][0]),
                        "-o", str(tmp_path / "m.gguf")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    back = read_gguf(tmp_path / "m.gguf").model
    assert back.config.to_dict() == {**model.config.to_dict(), "norm_eps": pytest.approx(1e-5)}  # GGUF has float32
    assert back.vocab.tokens == model.vocab.tokens
    assert sorted(back.tensors) == sorted(model.tensors)
    for name, array in model.tensors.items():
        assert back.tensors[name].dtype == np.float32
        np.testing.assert_array_equal(back.tensors[name], array, err_msg=name)


# ---------------------------------------------------------------- folders written by hand

DIM, HEADS, KV_HEADS, HIDDEN, VOCAB = 16, 2, 1, 24, 512
HEAD = DIM // HEADS


def write_safetensors(path, tensors, dtypes=None):
    """tensors: name -> float32 array; dtypes: name -> "F32" | "F16" | "BF16" | other (raw float32 bytes)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in tensors.items():
        dtype = (dtypes or {}).get(name, "F32")
        if dtype == "F16":
            raw = array.astype("<f2").tobytes()
        elif dtype == "BF16":
            raw = (array.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
        else:
            raw = array.astype("<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def hand_tensors(rng, n_layers=1):
    t = {"model.embed_tokens.weight": (VOCAB, DIM), "model.norm.weight": (DIM,)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": (DIM,), p + "post_attention_layernorm.weight": (DIM,),
                  p + "self_attn.q_proj.weight": (DIM, DIM), p + "self_attn.k_proj.weight": (KV_HEADS * HEAD, DIM),
                  p + "self_attn.v_proj.weight": (KV_HEADS * HEAD, DIM), p + "self_attn.o_proj.weight": (DIM, DIM),
                  p + "mlp.gate_proj.weight": (HIDDEN, DIM), p + "mlp.up_proj.weight": (HIDDEN, DIM),
                  p + "mlp.down_proj.weight": (DIM, HIDDEN)})
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in t.items()}


def hand_config(**changes):
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": DIM, "intermediate_size": HIDDEN,
              "num_hidden_layers": 1, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
              "vocab_size": VOCAB, "max_position_embeddings": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "tie_word_embeddings": True}
    config.update(changes)
    return config


@pytest.fixture
def hand_folder(tmp_path, shared_data):
    def make(config=None, tensors=None, dtypes=None):
        folder = tmp_path / "hand"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config or hand_config()))
        tensors = hand_tensors(np.random.default_rng(0)) if tensors is None else tensors
        write_safetensors(folder / "model.safetensors", tensors, dtypes)
        shutil.copy(shared_data / "tok512.model", folder / "tokenizer.model")
        return folder, tensors
    return make


def test_dtypes_names_and_rope_permutation(hand_folder):
    tensors = hand_tensors(np.random.default_rng(1))
    folder, tensors = hand_folder(tensors=tensors, dtypes={"model.layers.0.self_attn.v_proj.weight": "F16",
                                                           "model.layers.0.mlp.up_proj.weight": "BF16"})
    model = import_hf(folder)
    t = model.tensors
    assert model.config.tied_embeddings and "output.weight" not in t
    assert all(a.dtype == np.float32 for a in t.values())
    np.testing.assert_array_equal(t["token_embd.weight"], tensors["model.embed_tokens.weight"])
    np.testing.assert_array_equal(t["blk.0.ffn_down.weight"], tensors["model.layers.0.mlp.down_proj.weight"])
    np.testing.assert_array_equal(t["blk.0.attn_v.weight"],
                                  tensors["model.layers.0.self_attn.v_proj.weight"].astype(np.float16))
    up = tensors["model.layers.0.mlp.up_proj.weight"]
    np.testing.assert_allclose(t["blk.0.ffn_up.weight"], up, rtol=2 ** -7)  # bf16 truncates to 8 bits
    # HF row h*HEAD + j*HEAD/2 + i (rotate-half) is row h*HEAD + 2i + j (adjacent pairs).
    for hf, ours, heads in (("q_proj", "attn_q", HEADS), ("k_proj", "attn_k", KV_HEADS)):
        src, dst = tensors[f"model.layers.0.self_attn.{hf}.weight"], t[f"blk.0.{ours}.weight"]
        for h in range(heads):
            for i in range(HEAD // 2):
                for j in range(2):
                    np.testing.assert_array_equal(dst[h * HEAD + 2 * i + j], src[h * HEAD + j * HEAD // 2 + i])


def _drop(name):
    def change(folder, tensors):
        del tensors[name]
        write_safetensors(folder / "model.safetensors", tensors)
    return change


def _config(**changes):
    return lambda folder, tensors: (folder / "config.json").write_text(json.dumps(hand_config(**changes)))


def _truncate(folder, tensors):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])


def _reshape(folder, tensors):
    tensors["model.layers.0.mlp.gate_proj.weight"] = tensors["model.layers.0.mlp.gate_proj.weight"].T.copy()
    write_safetensors(folder / "model.safetensors", tensors)


def _int_dtype(folder, tensors):
    write_safetensors(folder / "model.safetensors", tensors, {"model.norm.weight": "I32"})


def _shard_gone(folder, tensors):
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "gone.safetensors"}}))


@pytest.mark.parametrize("change, words", [
    (lambda f, t: (f / "config.json").unlink(), ["config.json", "missing"]),
    (lambda f, t: (f / "config.json").write_text("{not json"), ["config.json", "invalid JSON"]),
    (_config(architectures=["MistralForCausalLM"]), ["config.json", "MistralForCausalLM"]),
    (_config(hidden_size=None), ["config.json", "hidden_size"]),
    (_config(head_dim=4), ["config.json", "head_dim"]),
    (_config(rope_scaling={"rope_type": "llama3", "factor": 8.0}), ["config.json", "llama3"]),
    (_config(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), ["config.json", "yarn"]),
    (lambda f, t: (f / "tokenizer.model").unlink(), ["tokenizer.model", "missing"]),
    (_config(vocab_size=600), ["tokenizer.model", "600"]),
    (lambda f, t: (f / "model.safetensors").unlink(), ["model.safetensors", "no weights"]),
    (_truncate, ["model.safetensors", "truncated"]),
    (lambda f, t: (f / "model.safetensors").write_bytes(b"\x10\x00"), ["model.safetensors", "truncated"]),
    (_drop("model.norm.weight"), ["model.safetensors", "model.norm.weight"]),
    (_reshape, ["model.safetensors", "gate_proj", "(24, 16)"]),
    (_int_dtype, ["model.safetensors", "model.norm.weight", "I32"]),
    (_shard_gone, ["gone.safetensors", "missing"]),
])
def test_bad_folders_fail_in_one_line(hand_folder, change, words):
    folder, tensors = hand_folder()
    change(folder, tensors)
    with pytest.raises(EdgeLlamaError) as e:
        import_hf(folder)
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_missing_folder(tmp_path):
    with pytest.raises(EdgeLlamaError, match="nowhere"):
        import_hf(tmp_path / "nowhere")


# ---------------------------------------------------------------- chat templates

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
LLAMA2 = "{% for message in messages %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endfor %}"


def _runtime_template(model, tmp_path):
    from edgellama.model.gguf_file import write_gguf
    from edgellama.runtime import capi
    path = tmp_path / "imported.gguf"
    write_gguf(model, path)
    assert read_gguf(path).model.vocab.chat_template == model.vocab.chat_template
    return capi.Chat(capi.Runtime(path, max_seqs=1, threads=1)).name


@pytest.mark.parametrize("files, stored, runtime", [
    ({}, "", "plain"),
    ({"tokenizer_config.json": {"chat_template": CHATML}}, CHATML, "chatml"),
    ({"tokenizer_config.json": {"chat_template": [{"name": "tool_use", "template": "x"},
                                                  {"name": "default", "template": LLAMA2}]}}, LLAMA2, "llama2"),
    ({"tokenizer_config.json": {"chat_template": LLAMA2}, "chat_template.jinja": CHATML}, CHATML, "chatml"),
    ({"tokenizer_config.json": {"model_max_length": 32}}, "", "plain"),
    ({"tokenizer_config.json": {"chat_template": None}}, "", "plain"),
])
def test_chat_template_is_carried_into_the_gguf(hand_folder, tmp_path, files, stored, runtime):
    """The folder's chat template reaches GGUF tokenizer.chat_template, and the runtime
    renders conversations in the family it names."""
    folder, _ = hand_folder()
    for name, content in files.items():
        (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    model = import_hf(folder)
    assert model.vocab.chat_template == stored
    assert _runtime_template(model, tmp_path) == runtime


@pytest.mark.parametrize("content, words", [
    ({"chat_template": 7}, ["tokenizer_config.json", "chat_template", "string"]),
    ("{not json", ["tokenizer_config.json", "invalid JSON"]),
])
def test_bad_chat_template_fails_in_one_line(hand_folder, content, words):
    folder, _ = hand_folder()
    (folder / "tokenizer_config.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(EdgeLlamaError) as e:
        import_hf(folder)
    assert "\n" not in str(e.value)
    for word in words:
        assert word in str(e.value), str(e.value)
