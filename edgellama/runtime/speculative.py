"""vLLM's speculative_config for the C engine's speculative decoding (el_speculate.h).

    LLM(speculative_config={"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4})
    LLM(speculative_config={"model": "draft.gguf", "num_speculative_tokens": 4})

With n-grams every token is the one plain decoding would draw, greedy or sampled, seed for
seed; only the number of forward passes changes (the proof is at the top of
el_speculate.h). A draft model (el_draft.h: a smaller model with the same vocabulary,
on this machine) keeps greedy tokens the same, and sampled ones go by the rejection rule,
which keeps their distribution. LLM.stats() counts draft_tokens, draft_accepted and, for a
draft model, draft_rows (its forward rows).
"""

MAX_SPECULATIVE_TOKENS = 16  # EL_MAX_SPECULATIVE_TOKENS (el_speculate.h)
KEYS = ("method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min", "model")


def engine_options(config: dict | None) -> dict:
    """The engine options of a speculative_config: speculative_tokens with prompt_lookup_max
    and prompt_lookup_min (vLLM's defaults: both 5 when neither is given, else the one given
    for both), or with draft_model (the file). ValueError names the key."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError("speculative_config must be a dict")
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ValueError(f"speculative_config: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    method = config.get("method", "ngram" if config.get("model") is None else "draft_model")
    k = config.get("num_speculative_tokens")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SPECULATIVE_TOKENS:
        raise ValueError(f"speculative_config: num_speculative_tokens must be an integer from 1 to "
                         f"{MAX_SPECULATIVE_TOKENS}, got {k!r}")
    if method == "draft_model":
        return {"speculative_tokens": k, "draft_model": _draft_path(config)}
    if config.get("model") is not None or method not in ("ngram", "[ngram]"):
        raise ValueError(f"speculative_config: method {method!r} is not supported here; \"ngram\" (proposals "
                         "from the text itself) and \"draft_model\" (a \"model\" file) are")
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


def _draft_path(config: dict) -> str:
    """The draft model's file: a GGUF path (the engine checks that its vocabulary is the model's)."""
    from pathlib import Path
    model = config.get("model")
    if not isinstance(model, (str, Path)) or not str(model):
        raise ValueError(f"speculative_config: model must be the path of a GGUF file, got {model!r}")
    for key in ("prompt_lookup_min", "prompt_lookup_max"):
        if config.get(key) is not None:
            raise ValueError(f"speculative_config: {key} is for the ngram method, not a draft model")
    if not Path(model).is_file():
        raise ValueError(f"speculative_config: model {str(model)!r} is not a file")
    return str(model)
