"""Tokenizers: sentencepiece BPE training, and vocabularies in and out of files.

A model's vocabulary lives in its GGUF file as pieces, scores and types. Encoding
follows llama.cpp's SPM rules for that vocabulary: identity normalization, a dummy
space prefix, spaces kept as they are, unknown bytes as <0xXX> tokens. To encode in
Python we rebuild a sentencepiece model from the vocabulary (`processor_for`), so the
`sentencepiece` library itself does the work and stays the oracle for the C runtime.
"""

import os
import re
import struct
import tempfile
from pathlib import Path

import sentencepiece as spm

from edgellama.errors import EdgeLlamaError
from edgellama.fileio import atomic_write_bytes
from edgellama.model.llama import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, Vocab

MIN_VOCAB = 259 + 1  # 3 specials and 256 byte tokens leave room for one merge


def train_tokenizer(corpus, vocab_size: int, out_path, num_threads: int | None = None) -> Vocab:
    """Train a sentencepiece BPE tokenizer with byte fallback (llama2.c's recipe)."""
    corpus = Path(corpus)
    if vocab_size < MIN_VOCAB:
        raise EdgeLlamaError(f"--vocab-size: {vocab_size} is too small; byte fallback needs at least {MIN_VOCAB}")
    if not corpus.is_file():
        raise EdgeLlamaError(f"{corpus}: no such file")
    if not corpus.read_text(encoding="utf-8", errors="replace").strip():
        raise EdgeLlamaError(f"{corpus}: corpus is empty")
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "tok")
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=prefix, model_type="bpe", vocab_size=vocab_size,
                input_format="text", character_coverage=1.0,
                num_threads=num_threads or os.cpu_count() or 1, split_digits=True,
                allow_whitespace_only_pieces=True, byte_fallback=True, unk_surface=r" \342\201\207 ",
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                max_sentence_length=1 << 16, minloglevel=2)
        except RuntimeError as e:
            needed = re.search(r"required_chars\. (\d+) vs (\d+)", str(e))
            if needed:
                raise EdgeLlamaError(f"--vocab-size: {vocab_size} is too small for {corpus}: its characters and the "
                                     f"byte and special tokens need at least {needed.group(2)}") from None
            raise EdgeLlamaError(f"{corpus}: sentencepiece training failed: {str(e).strip().splitlines()[-1]}") from None
        data = Path(prefix + ".model").read_bytes()
    atomic_write_bytes(out_path, data)
    return vocab_from_sentencepiece(data)


def vocab_from_sentencepiece(model_bytes: bytes, where="tokenizer") -> Vocab:
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model_bytes)
    except Exception:
        raise EdgeLlamaError(f"{where}: not a sentencepiece model") from None
    n = sp.get_piece_size()
    types = []
    for i in range(n):
        if sp.is_unknown(i):
            types.append(TOKEN_UNKNOWN)
        elif sp.is_control(i):
            types.append(TOKEN_CONTROL)
        elif sp.is_byte(i):
            types.append(TOKEN_BYTE)
        else:
            types.append(TOKEN_NORMAL)
    return Vocab(tokens=[sp.id_to_piece(i) for i in range(n)], scores=[sp.get_score(i) for i in range(n)],
                 types=types, bos_id=max(sp.bos_id(), 0), eos_id=max(sp.eos_id(), 0), unk_id=max(sp.unk_id(), 0))


def vocab_from_llama2c_bin(data: bytes, vocab_size: int, where="tokenizer.bin") -> Vocab:
    """llama2.c's tokenizer.bin: max_token_length, then per token (score, len, bytes).

    Its export wrote '▁' as a space and wrapped <s>/</s> in newlines; undo both.
    """
    tokens, scores, types, offset = [], [], [], 4
    try:
        for i in range(vocab_size):
            score, length = struct.unpack_from("<fi", data, offset)
            offset += 8
            raw = data[offset:offset + length]
            if length < 0 or len(raw) != length:
                raise struct.error("token runs past the end")
            offset += length
            piece = raw.decode("utf-8").replace(" ", "\u2581")
            if piece.strip("\n") in ("<s>", "</s>") and piece != piece.strip("\n"):
                piece = piece.strip("\n")
            tokens.append(piece)
            scores.append(score)
    except (struct.error, UnicodeDecodeError) as e:
        raise EdgeLlamaError(f"{where}: truncated or corrupt llama2.c tokenizer ({e})") from None
    if offset != len(data):
        raise EdgeLlamaError(f"{where}: holds more than the model's {vocab_size} tokens "
                             f"({len(data) - offset} bytes left over); is it the tokenizer of another model?")
    for i, piece in enumerate(tokens):
        if i == 0 and piece == "<unk>":
            types.append(TOKEN_UNKNOWN)
        elif piece in ("<s>", "</s>"):
            types.append(TOKEN_CONTROL)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            types.append(TOKEN_BYTE)
        else:
            types.append(TOKEN_NORMAL)
    return Vocab(tokens, scores, types)


def load_vocab(path, vocab_size: int | None = None) -> Vocab:
    """A tokenizer file: sentencepiece .model, or llama2.c tokenizer.bin (needs vocab_size)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EdgeLlamaError(f"{path}: cannot read tokenizer ({e.strerror})") from None
    if path.suffix == ".bin":
        if vocab_size is None:
            raise EdgeLlamaError(f"{path}: a llama2.c tokenizer.bin needs the model's vocabulary size")
        return vocab_from_llama2c_bin(data, vocab_size, str(path))
    return vocab_from_sentencepiece(data, str(path))


# ------------------------------------------------ vocabulary -> sentencepiece model
# A ModelProto written by hand (it is three small messages), so no protobuf package
# is needed. Field numbers are those of sentencepiece_model.proto.

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 values are sent as 64-bit two's complement
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _int_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(int(value))


def sentencepiece_proto(vocab: Vocab) -> bytes:
    pieces = b"".join(
        _bytes_field(1, _bytes_field(1, tok.encode("utf-8")) + _key(2, 5) + struct.pack("<f", score)
                     + _int_field(3, typ))
        for tok, score, typ in zip(vocab.tokens, vocab.scores, vocab.types))
    trainer = (_int_field(3, 2)  # model_type = BPE
               + _int_field(4, len(vocab))
               + _int_field(35, int(TOKEN_BYTE in vocab.types))  # byte_fallback
               + _int_field(40, vocab.unk_id) + _int_field(41, vocab.bos_id)
               + _int_field(42, vocab.eos_id) + _int_field(43, -1))
    normalizer = (_bytes_field(1, b"identity") + _int_field(3, 1)  # add_dummy_prefix
                  + _int_field(4, 0) + _int_field(5, 1))  # keep extra spaces; escape them as '▁'
    return pieces + _bytes_field(2, trainer) + _bytes_field(3, normalizer)


def processor_for(vocab: Vocab) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(sentencepiece_proto(vocab))
    return sp
