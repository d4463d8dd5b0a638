"""Open any model source by content: a GGUF file or a training checkpoint."""

from pathlib import Path

from edgellama.errors import EdgeLlamaError
from edgellama.model.gguf_file import GGUF_MAGIC, file_magic, read_gguf
from edgellama.model.llama import LlamaModel
from edgellama.resources import DEFAULT_MODEL

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def resolve(path) -> Path:
    """The model path a user gave, or the embedded default model."""
    return Path(path) if path else DEFAULT_MODEL


def load_model(path) -> LlamaModel:
    path = resolve(path)
    magic = file_magic(path)
    if magic == GGUF_MAGIC:
        return read_gguf(path).model
    if magic == ZIP_MAGIC or path.suffix == ".pt":
        try:
            from edgellama.model.checkpoint import llama_from_checkpoint
        except ImportError:
            raise EdgeLlamaError(f"{path}: reading checkpoints needs torch: pip install 'edgellama[train]'") from None
        return llama_from_checkpoint(path)
    raise EdgeLlamaError(f"{path}: neither a GGUF model nor an edgellama checkpoint (starts with {magic!r})")
