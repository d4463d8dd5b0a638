"""Which tensor gets which GGUF type, and the bytes for it.

The block formats are llama.cpp's (Q8_0: 32 int8 + one fp16 scale; Q4_0: 32 4-bit
values + one fp16 scale), computed with the `gguf` package's reference numpy code
so files match what llama.cpp itself would write.

The rules, shown per tensor by `edgellama inspect`:
- 1-D tensors (the RMSNorm weights) always stay F32: they are tiny and sensitive.
- A matrix whose row length is not a multiple of 32 cannot be cut into blocks; it is
  kept F32 rather than padded, so the file still has llama.cpp's shapes and every
  GGUF reader loads it unchanged (stories260K's ffn_down, rows of 172, is one).
- Q4_0 keeps the token embedding (also the classifier when tied) and output.weight
  at Q8_0, as llama.cpp keeps its output matrix at higher precision: on models this
  small it decides most of Q4_0's loss.
"""

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType, quants

from edgellama.errors import EdgeLlamaError

BLOCK_SIZE = 32
QUANT_NAMES = {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}
FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
              "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0}
SUPPORTED_TYPES = (T.F32, T.F16, T.Q8_0, T.Q4_0)
HIGH_PRECISION_TENSORS = ("token_embd.weight", "output.weight")


@dataclass
class TensorChoice:
    name: str
    shape: tuple
    qtype: T
    reason: str = ""  # why the tensor is not of the requested type, if it is not


def choose_type(name: str, shape: tuple, quant: str) -> TensorChoice:
    if quant not in QUANT_NAMES:
        raise EdgeLlamaError(f"--quant: unknown type {quant!r} (choose from {', '.join(QUANT_NAMES)})")
    wanted = QUANT_NAMES[quant]
    if len(shape) == 1:
        return TensorChoice(name, shape, T.F32, "1-D tensors stay F32" if wanted != T.F32 else "")
    if wanted in (T.F32, T.F16):
        return TensorChoice(name, shape, wanted)
    if shape[-1] % BLOCK_SIZE:
        return TensorChoice(name, shape, T.F32, f"row of {shape[-1]} is not a multiple of {BLOCK_SIZE}")
    if wanted == T.Q4_0 and name in HIGH_PRECISION_TENSORS:
        return TensorChoice(name, shape, T.Q8_0, "embedding/classifier kept at Q8_0")
    return TensorChoice(name, shape, wanted)


def encode(array: np.ndarray, qtype: T) -> np.ndarray:
    """float32 array -> the array to store (float32, float16 or uint8 blocks)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if qtype == T.F32:
        return array
    if qtype == T.F16:
        return array.astype(np.float16)
    return quants.quantize(array, qtype)


def decode(data: np.ndarray, qtype: T, shape: tuple) -> np.ndarray:
    """Stored array -> float32 array of `shape` (the inverse of encode)."""
    if qtype == T.F32:
        return np.asarray(data, dtype=np.float32).reshape(shape)
    if qtype == T.F16:
        return np.asarray(data).view(np.float16).astype(np.float32).reshape(shape)
    return quants.dequantize(np.asarray(data).view(np.uint8), qtype).reshape(shape).astype(np.float32)


def roundtrip(array: np.ndarray, qtype: T) -> np.ndarray:
    """What a tensor becomes after being stored as qtype."""
    return decode(encode(array, qtype), qtype, array.shape)
