"""edgellama: train tiny Llama models, quantize them, and run them on small computers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgellama")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
