"""edgellama: train tiny Llama models, quantize them, and run them on small computers."""

from importlib.metadata import PackageNotFoundError, version

from edgellama.runtime.outputs import BeamSearchOutput, BeamSearchSequence, CompletionOutput, RequestOutput
from edgellama.runtime.sampling_params import BeamSearchParams, SamplingParams
from edgellama.runtime.structured import StructuredOutputsParams

try:
    __version__ = version("edgellama")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["LLM", "SamplingParams", "BeamSearchParams", "StructuredOutputsParams", "RequestOutput",
           "CompletionOutput", "BeamSearchOutput", "BeamSearchSequence"]


def __getattr__(name):
    # LLM builds the C runtime on first use; importing edgellama alone should not.
    if name == "LLM":
        from edgellama.runtime.llm import LLM
        return LLM
    raise AttributeError(name)
