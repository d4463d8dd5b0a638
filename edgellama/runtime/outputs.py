"""What LLM.generate returns, with vLLM's field names."""

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """One token's log-probability under the model's own distribution (log-softmax of
    the raw logits, before penalties and temperature), its rank (1 = most likely) and
    its text. CompletionOutput.logprobs holds one {token_id: Logprob} per token."""
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list
    cumulative_logprob: float | None = None
    logprobs: list | None = None
    finish_reason: str | None = None   # "stop", "length", "abort" or "error" (NaN/Inf logits; see stop_reason)
    stop_reason: int | str | None = None  # the stop token id or stop string; None for EOS

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    last_token_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    time_in_queue: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list
    prompt_logprobs: list | None
    outputs: list
    finished: bool
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = 0
    extra: dict = field(default_factory=dict, repr=False)


@dataclass
class BeamSearchSequence:
    """One hypothesis of a beam search: the prompt's tokens and its own, its text (the
    generated part), and the sum of its tokens' log-probabilities."""
    tokens: list
    text: str
    cum_logprob: float
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class BeamSearchOutput:
    """vLLM's result of LLM.beam_search for one prompt: its best sequences, best first."""
    sequences: list
