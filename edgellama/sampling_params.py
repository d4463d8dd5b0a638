"""vLLM's import path: `from edgellama.sampling_params import SamplingParams, StructuredOutputsParams`."""

from edgellama.runtime.sampling_params import BeamSearchParams, SamplingParams
from edgellama.runtime.structured import StructuredOutputsParams

__all__ = ["SamplingParams", "BeamSearchParams", "StructuredOutputsParams"]
