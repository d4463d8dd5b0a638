"""SamplingParams with vLLM's names, defaults and checks.

The C sampler applies them in vLLM's order: repetition penalty, frequency and
presence penalties, temperature (below 1e-5 is greedy), min_p, top_k, top_p.
"""

import math
import numbers
from dataclasses import dataclass, field

from edgellama.runtime.structured import StructuredOutputsParams, compile_constraint

GREEDY_TEMPERATURE = 1e-5
# The C request's types (capi.Sampling, capi.Request): past these, a value would wrap or
# turn into inf on its way across.
INT32_MAX = (1 << 31) - 1
FLOAT32_MAX = 3.4028234663852886e38
MAX_LOGPROBS = 20  # EL_MAX_LOGPROBS (el_logprobs.h): vLLM's default max_logprobs
FLOAT_FIELDS = ("presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "min_p")


@dataclass
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list | None = None
    stop_token_ids: list | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    skip_special_tokens: bool = True
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    structured_outputs: StructuredOutputsParams | None = None
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self._verify()

    def _verify(self):
        def fail(message):
            raise ValueError(message)

        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                fail(f"{name} must be a number, got {value!r}.")
            try:
                finite = math.isfinite(value) and abs(float(value)) <= FLOAT32_MAX
            except OverflowError:  # an int past float's range
                finite = False
            if not finite:
                fail(f"{name} must be a finite number, got {value}.")
        for name in ("n", "top_k", "min_tokens", "max_tokens", "seed", "logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                fail(f"{name} must be an integer, got {value!r}.")
        if not 1 <= self.n <= INT32_MAX:
            fail(f"n must be at least 1, got {self.n}.")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                fail(f"{name} must be in [0, {MAX_LOGPROBS}] (the top tokens reported per position), got {value}.")
        if not -2.0 <= self.presence_penalty <= 2.0:
            fail(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            fail(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if not self.repetition_penalty > 0.0:
            fail(f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.")
        if not self.temperature >= 0.0:
            fail(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            fail(f"top_p must be in (0, 1], got {self.top_p}.")
        if not -1 <= self.top_k <= INT32_MAX:
            fail(f"top_k must be 0 or -1 (disable), or in [1, 2**31), got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            fail(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and not 1 <= self.max_tokens <= INT32_MAX:
            fail(f"max_tokens must be in [1, 2**31), got {self.max_tokens}.")
        if not 0 <= self.min_tokens <= INT32_MAX:
            fail(f"min_tokens must be in [0, 2**31), got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            fail(f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got {self.min_tokens}.")
        if self.seed is not None and not 0 <= self.seed < 1 << 64:
            fail(f"seed must be an integer in [0, 2**64), got {self.seed}.")
        for t in self.stop_token_ids:
            if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t <= INT32_MAX:
                fail(f"stop_token_ids must hold token ids in [0, 2**31), got {t!r}.")
        if any(not isinstance(s, str) for s in self.stop):
            fail(f"stop must be a string or a list of strings, got {self.stop!r}.")
        if any(not s for s in self.stop):
            fail("stop cannot contain an empty string.")
        if self.structured_outputs is not None:
            if not isinstance(self.structured_outputs, StructuredOutputsParams):
                fail("structured_outputs must be a StructuredOutputsParams.")
            self.structured_outputs.compiled = compile_constraint(self.structured_outputs)

    @property
    def constraint(self) -> bytes | None:
        """The compiled structured-outputs DFA the C core masks with (el_constraint.h), or None."""
        return None if self.structured_outputs is None else self.structured_outputs.compiled

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE


MAX_BEAM_WIDTH = 8  # EL_MAX_BEAM_WIDTH (el_sequence.h)


@dataclass
class BeamSearchParams:
    """vLLM's parameters of LLM.beam_search. A search of width W holds 2W of the engine's
    sequences (W beams, W finished hypotheses); scores are cum_logprob / length **
    length_penalty, with logprobs of the logits divided by the temperature when it is
    above 0 (0, the default, takes the model's own distribution)."""
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0

    def __post_init__(self):
        for name in ("beam_width", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {value!r}.")
        if not 1 <= self.beam_width <= MAX_BEAM_WIDTH:
            raise ValueError(f"beam_width must be in [1, {MAX_BEAM_WIDTH}], got {self.beam_width}.")
        if not 1 <= self.max_tokens <= INT32_MAX:
            raise ValueError(f"max_tokens must be in [1, 2**31), got {self.max_tokens}.")
        for name in ("temperature", "length_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or abs(value) > 1e6:
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
