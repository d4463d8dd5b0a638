"""Corpus to token ids: documents, pretokenized uint16 shards with a held-out split.

A corpus is a UTF-8 text file cut into documents by one of SEGMENTS:
  endoftext  documents end at `<|endoftext|>` (what `edgellama data chat` writes);
  stories    TinyStories' layout: a story's paragraphs are separated by a blank line,
             stories by a single newline; a document is one whole story, its blank
             lines kept, so the model sees paragraph breaks as newline tokens (<0x0A>);
  lines      each non-empty line is a document;
  auto       endoftext when the file has the marker, otherwise lines.
Each document is encoded with BOS in front, as llama2.c does, so a model learns to end
a document by writing BOS (which the runtime takes as the end of the text). The last
`val_fraction` of the documents is the validation split.

Encoding is cached under $EDGELLAMA_CACHE (default ~/.cache/edgellama), keyed by
the corpus, the tokenizer and the split, as uint16 shards: train_000.bin, ..., val.bin.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from edgellama.errors import EdgeLlamaError
from edgellama.fileio import atomic_path

SHARD_TOKENS = 1 << 20
FORMAT = "edgellama-pretok-1"
DOC_SEPARATOR = "<|endoftext|>"
SEGMENTS = ("auto", "endoftext", "stories", "lines")
# A newline with no newline on either side: the end of one story and the start of the next.
_STORY_BREAK = re.compile(r"(?<!\n)\n(?!\n)")


@dataclass
class TokenizedCorpus:
    train: np.ndarray
    val: np.ndarray
    cache_dir: Path


def cache_root() -> Path:
    return Path(os.environ.get("EDGELLAMA_CACHE", Path.home() / ".cache" / "edgellama"))


def check_segment(segment: str):
    if segment not in SEGMENTS:
        raise EdgeLlamaError(f"--segment: unknown segmentation {segment!r} (choose from {', '.join(SEGMENTS)})")


def split_documents(text: str, segment: str = "auto") -> list:
    """The documents of a corpus, cut as `segment` says (see the module's docstring)."""
    check_segment(segment)
    if segment == "auto":
        segment = "endoftext" if DOC_SEPARATOR in text else "lines"
    text = text.replace("\r\n", "\n")
    if segment == "endoftext":
        parts = text.split(DOC_SEPARATOR)
    elif segment == "stories":
        parts = _STORY_BREAK.split(text)
    else:
        parts = text.split("\n")
    return [p.strip() for p in parts if p.strip()]


def write_documents(path, docs: list):
    """Write documents as a corpus that `--segment endoftext` cuts back into them, atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(f"\n{DOC_SEPARATOR}\n".join(docs) + "\n", encoding="utf-8")


def validation_count(n_docs: int, val_fraction: float) -> int:
    """How many of the last documents are held out for validation."""
    return max(1, int(n_docs * val_fraction))


def read_corpus(path) -> str:
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise EdgeLlamaError(f"{path}: cannot read corpus ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise EdgeLlamaError(f"{path}: not UTF-8 text (byte {e.start})") from None


def pretokenize(corpus_path, tokenizer_model: bytes, val_fraction: float = 0.05,
                segment: str = "auto") -> TokenizedCorpus:
    corpus_path = Path(corpus_path)
    text = read_corpus(corpus_path)
    if not 0 < val_fraction < 1:
        raise EdgeLlamaError(f"--val-fraction: must be between 0 and 1, got {val_fraction}")
    check_segment(segment)
    key = hashlib.sha256(f"{FORMAT} {val_fraction!r} {segment}".encode() + tokenizer_model
                         + text.encode()).hexdigest()[:20]
    final = cache_root() / "pretok" / key
    if not (final / "meta.json").is_file():
        _encode_to(final, split_documents(text, segment), tokenizer_model, val_fraction, corpus_path)
    shards = sorted(final.glob("train_*.bin"))
    train = np.concatenate([np.fromfile(s, dtype=np.uint16) for s in shards]) if shards else np.zeros(0, np.uint16)
    return TokenizedCorpus(train, np.fromfile(final / "val.bin", dtype=np.uint16), final)


def _encode_to(final: Path, docs: list, tokenizer_model: bytes, val_fraction: float, corpus_path: Path):
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(tokenizer_model)
    if sp.get_piece_size() > 65535:
        raise EdgeLlamaError(f"tokenizer: {sp.get_piece_size()} tokens do not fit uint16 shards")
    if len(docs) < 2:
        raise EdgeLlamaError(f"{corpus_path}: need at least 2 documents to hold one out for validation")
    n_val = validation_count(len(docs), val_fraction)
    encoded = sp.encode(docs, num_threads=os.cpu_count() or 1)
    bos = sp.bos_id()
    train = np.array([t for ids in encoded[:-n_val] for t in [bos, *ids]], dtype=np.uint16)
    val = np.array([t for ids in encoded[-n_val:] for t in [bos, *ids]], dtype=np.uint16)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        for i in range(0, max(len(train), 1), SHARD_TOKENS):
            train[i:i + SHARD_TOKENS].tofile(tmp / f"train_{i // SHARD_TOKENS:03d}.bin")
        val.tofile(tmp / "val.bin")
        meta = dict(format=FORMAT, corpus=str(corpus_path), documents=len(docs), val_documents=n_val,
                    train_tokens=int(len(train)), val_tokens=int(len(val)))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "meta.json").is_file():  # another process (a DDP rank) may have won the race
            raise


def check_fits(corpus: TokenizedCorpus, seq_len: int, corpus_path):
    need = seq_len + 1
    if len(corpus.train) < need or len(corpus.val) < need:
        raise EdgeLlamaError(
            f"{corpus_path}: corpus too small for sequence length {seq_len}: {len(corpus.train)} training and "
            f"{len(corpus.val)} validation tokens, need at least {need} in each (lower --max-seq-len or add text)")


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Non-overlapping windows of seq_len+1 tokens from the start: a fixed evaluation set."""
    n = (len(tokens) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return tokens[idx].astype(np.int64)
