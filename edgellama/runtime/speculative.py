"""vLLM's speculative_config for the C engine's n-gram speculation (el_speculate.h).

    LLM(speculative_config={"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4})

Every token is the one plain decoding would draw, greedy or sampled, seed for seed; only
the number of forward passes changes (the proof is at the top of el_speculate.h).
LLM.stats() counts draft_tokens and draft_accepted.
"""

MAX_SPECULATIVE_TOKENS = 16  # EL_MAX_SPECULATIVE_TOKENS (el_speculate.h)
KEYS = ("method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min", "model")


def engine_options(config: dict | None) -> dict:
    """The engine options (speculative_tokens, prompt_lookup_max, prompt_lookup_min) of a
    speculative_config, with vLLM's defaults: both lookup bounds 5 when neither is given,
    else the one given for both. ValueError names the key."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError("speculative_config must be a dict")
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ValueError(f"speculative_config: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    method = config.get("method", "ngram" if config.get("model") is None else "draft_model")
    if config.get("model") is not None or method not in ("ngram", "[ngram]"):
        raise ValueError(f"speculative_config: method {method!r} is not supported here; \"ngram\" is "
                         "(proposals from the text itself, no second model)")
    k = config.get("num_speculative_tokens")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SPECULATIVE_TOKENS:
        raise ValueError(f"speculative_config: num_speculative_tokens must be an integer from 1 to "
                         f"{MAX_SPECULATIVE_TOKENS}, got {k!r}")
    low, high = config.get("prompt_lookup_min"), config.get("prompt_lookup_max")
    for name, value in (("prompt_lookup_min", low), ("prompt_lookup_max", high)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024):
            raise ValueError(f"speculative_config: {name} must be an integer from 1 to 1024, got {value!r}")
    if low is None and high is None:
        low = high = 5
    low, high = low or high, high or low
    if low > high:
        raise ValueError(f"speculative_config: prompt_lookup_min ({low}) is above prompt_lookup_max ({high})")
    return {"speculative_tokens": k, "prompt_lookup_max": high, "prompt_lookup_min": low}
