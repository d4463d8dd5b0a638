import importlib

from edgellama.errors import EdgeLlamaError


def needs_torch(verb: str, module: str, name: str):
    """`name` from edgellama.`module`, which needs torch (the `train` extra)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise EdgeLlamaError(f"{verb} needs PyTorch: pip install 'edgellama[train]'") from None
    return getattr(importlib.import_module(f"edgellama.{module}"), name)
