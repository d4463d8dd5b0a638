"""Tokenizer training and the vocabulary <-> sentencepiece round trip."""

import random
import subprocess
import sys

import sentencepiece as spm

from edgellama.model.llama import TOKEN_BYTE
from edgellama.model.tokenizer import load_vocab, processor_for, train_tokenizer


def test_trained_tokenizer_is_bpe_with_byte_fallback(tiny_tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer))
    assert sp.get_piece_size() == 384
    vocab = load_vocab(tiny_tokenizer)
    assert vocab.types.count(TOKEN_BYTE) == 256
    assert (vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2)
    rng = random.Random(0)
    for _ in range(50):  # any text, even characters never seen in training, round-trips
        text = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFF), 0x1F600])) for _ in range(40))
        ids = sp.encode(text)
        assert sp.decode(ids) == text
    assert sp.encode("\u00e9\U0001F600")  # unseen characters become byte tokens, not <unk>
    assert 0 not in sp.encode("\u00e9\U0001F600")


def test_vocabulary_rebuilds_the_same_encoder(tiny_tokenizer, small_corpus):
    original = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer))
    rebuilt = processor_for(load_vocab(tiny_tokenizer))
    lines = small_corpus.read_text().splitlines()
    assert all(original.encode(line) == rebuilt.encode(line) for line in lines)


def test_llama2c_tokenizer_bin_matches_model(shared_data):
    a = load_vocab(shared_data / "tok512.model")
    b = load_vocab(shared_data / "tok512.bin", 512)
    assert (a.tokens, a.scores, a.types) == (b.tokens, b.scores, b.types)


def test_cli_trains_tokenizer(tmp_path, small_corpus):
    out = tmp_path / "tok.model"
    r = subprocess.run([sys.executable, "-m", "edgellama", "tokenizer", "train", str(small_corpus),
                        "--vocab-size", "400", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert spm.SentencePieceProcessor(model_file=str(out)).get_piece_size() == 400


def test_too_small_vocabulary_is_refused(tmp_path, small_corpus):
    import pytest

    from edgellama.errors import EdgeLlamaError
    with pytest.raises(EdgeLlamaError, match="vocab-size"):
        train_tokenizer(small_corpus, 100, tmp_path / "t.model")
    assert not (tmp_path / "t.model").exists()
