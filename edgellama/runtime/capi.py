"""ctypes bindings to the C runtime (firmware/core/el_runtime.h), built for the host.

The structs below mirror the C ones field for field; el_runtime.h is the source of
truth and the library is rebuilt whenever the sources change (build.py hashes them).
"""

import ctypes as C
import functools
import os
from pathlib import Path

import numpy as np

from edgellama.errors import EdgeLlamaError
from edgellama.runtime.build import build_shared_library, runtime_library_sources
from edgellama.runtime.engine_options import KV_DTYPES
from edgellama.runtime.sampling_params import MAX_LOGPROBS  # EL_MAX_LOGPROBS (el_logprobs.h)

MAX_STOP_STRINGS, MAX_STOP_LEN, MAX_STOP_TOKENS = 4, 32, 8
FINISH_REASONS = {0: None, 1: "stop", 2: "length", 3: "abort", 4: "error"}
FINISH_ERROR = 4
# EL_FINISH_ERROR_TEXT (el_sequence.h): why a sequence finished with "error"
FINISH_ERROR_TEXT = "the model's logits became NaN or infinite (its activations overflowed)"
STOP_NONE, STOP_EOS, STOP_TOKEN, STOP_STRING, STOP_CONSTRAINT = 0, 1, 2, 3, 4
STATUS_NAMES = {1: "argument", 2: "format", 3: "unsupported", 4: "no memory", 5: "capacity"}
NO_MEMORY = 4


class Error(C.Structure):
    _fields_ = [("status", C.c_int), ("message", C.c_char * 200)]

    def text(self) -> str:
        return self.message.decode("utf-8", "replace")


class EngineOptions(C.Structure):
    _fields_ = [("max_model_len", C.c_int), ("block_size", C.c_int), ("kv_cache_bytes", C.c_longlong),
                ("max_seqs", C.c_int), ("max_batch_tokens", C.c_int), ("kv_dtype", C.c_int),
                ("no_prefix_caching", C.c_int), ("threads", C.c_int), ("check_values", C.c_int),
                ("weights_writable", C.c_int), ("speculative_tokens", C.c_int), ("prompt_lookup_max", C.c_int),
                ("prompt_lookup_min", C.c_int)]


class Sampling(C.Structure):
    _fields_ = [("temperature", C.c_float), ("top_p", C.c_float), ("top_k", C.c_int), ("min_p", C.c_float),
                ("repetition_penalty", C.c_float), ("frequency_penalty", C.c_float),
                ("presence_penalty", C.c_float), ("seed", C.c_uint64)]


class Request(C.Structure):
    _fields_ = [("sampling", Sampling), ("max_tokens", C.c_int), ("min_tokens", C.c_int), ("ignore_eos", C.c_int),
                ("n_stop_token_ids", C.c_int), ("stop_token_ids", C.c_int32 * MAX_STOP_TOKENS),
                ("n_stop", C.c_int), ("stop", (C.c_char * MAX_STOP_LEN) * MAX_STOP_STRINGS),
                ("stop_len", C.c_int * MAX_STOP_STRINGS), ("n", C.c_int), ("logprobs", C.c_int),
                ("prompt_logprobs", C.c_int), ("beam_width", C.c_int), ("length_penalty", C.c_float),
                ("constraint", C.c_void_p), ("constraint_len", C.c_int)]


class LogprobEntry(C.Structure):
    _fields_ = [("token", C.c_int32), ("logprob", C.c_float), ("rank", C.c_int), ("n_top", C.c_int),
                ("top_ids", C.c_int32 * MAX_LOGPROBS), ("top_logprobs", C.c_float * MAX_LOGPROBS)]


class Event(C.Structure):
    _fields_ = [("seq_id", C.c_int), ("parent_id", C.c_int), ("sample_index", C.c_int), ("prompt_pos", C.c_int),
                ("logprobs", C.POINTER(LogprobEntry)), ("cumulative_logprob", C.c_float), ("token", C.c_int),
                ("text", C.c_void_p),
                ("text_len", C.c_int), ("finished", C.c_int), ("finish", C.c_int), ("stop_kind", C.c_int),
                ("stop_value", C.c_int)]

    def text_bytes(self) -> bytes:
        return C.string_at(self.text, self.text_len) if self.text_len > 0 else b""

    def logprob_figures(self):
        """(token, logprob, rank, [(top id, top logprob), ...]) copied out of the engine
        (valid only until the next step there), or None when none were asked for."""
        if not self.logprobs:
            return None
        e = self.logprobs.contents
        return (e.token, e.logprob, e.rank, [(e.top_ids[i], e.top_logprobs[i]) for i in range(e.n_top)])


class Stats(C.Structure):
    _fields_ = [("prompt_tokens_computed", C.c_longlong), ("tokens_generated", C.c_longlong),
                ("steps", C.c_longlong), ("rows", C.c_longlong), ("blocks_total", C.c_int),
                ("blocks_used", C.c_int), ("blocks_cached", C.c_int), ("blocks_high_water", C.c_int),
                ("prefix_queries", C.c_longlong), ("prefix_hits", C.c_longlong), ("preemptions", C.c_longlong),
                ("arena_used", C.c_size_t), ("arena_high_water", C.c_size_t), ("arena_size", C.c_size_t),
                ("blocks_copied", C.c_longlong), ("draft_tokens", C.c_longlong), ("draft_accepted", C.c_longlong),
                ("draft_rows", C.c_longlong)]

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name, _ in self._fields_}


class Config(C.Structure):
    _fields_ = [(name, C.c_int) for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "kv_dim",
                                              "hidden_dim", "vocab_size", "context_length")] + \
               [("norm_eps", C.c_float), ("rope_theta", C.c_float)]


@functools.lru_cache(maxsize=None)
def library() -> C.CDLL:
    lib = C.CDLL(str(build_shared_library(runtime_library_sources(), "edgellama-runtime")))
    P, I, S = C.c_void_p, C.c_int, C.c_size_t
    signatures = {
        "el_runtime_open": (P, [P, S, P, S, C.POINTER(EngineOptions), C.POINTER(Error)]),
        "el_runtime_set_draft": (I, [P, P, S, P, S, C.POINTER(Error)]),
        "el_runtime_config": (C.POINTER(Config), [P]),
        "el_runtime_version": (C.c_char_p, []),
        "el_runtime_tokenize": (I, [P, C.c_char_p, I, I, C.POINTER(C.c_int32), I, C.POINTER(Error)]),
        "el_tokenize_bound": (C.c_size_t, [C.c_size_t]),
        "el_runtime_token_text": (I, [P, I, I, C.c_char_p, I]),
        "el_runtime_allowed_tokens": (I, [P, C.c_char_p, I, I, I, C.POINTER(C.c_uint8), C.POINTER(Error)]),
        "el_runtime_add": (I, [P, C.POINTER(C.c_int32), I, C.POINTER(Request), C.POINTER(Error)]),
        "el_runtime_max_events": (I, [P]),
        "el_runtime_check_blocks": (I, [P, C.POINTER(Error)]),
        "el_runtime_continue": (I, [P, I, C.POINTER(C.c_int32), I, C.POINTER(Request), C.POINTER(Error)]),
        "el_runtime_step": (I, [P, C.POINTER(Event), I]),
        "el_runtime_pending": (I, [P]),
        "el_runtime_tokens": (I, [P, I, C.POINTER(C.POINTER(C.c_int32)), C.POINTER(I), C.POINTER(I)]),
        "el_runtime_abort": (None, [P, I]),
        "el_runtime_release": (None, [P, I]),
        "el_runtime_stats": (None, [P, C.POINTER(Stats)]),
        "el_runtime_logits": (I, [P, C.POINTER(C.c_int32), I, C.POINTER(C.c_float), C.POINTER(Error)]),
        "el_request_defaults": (None, [C.POINTER(Request)]),
        "el_kv_block_bytes": (S, [C.POINTER(Config), I, I]),
        "el_runtime_chat_template": (I, [P]),
        "el_kernels_name": (C.c_char_p, []),
        "el_cpu_count": (I, []),
        "el_thread_pool_create": (P, [I]),
        "el_thread_pool_destroy": (None, [P]),
        "el_thread_pool_attach": (I, [P, P, C.POINTER(Error)]),
        "el_chat_template_from_name": (I, [C.c_char_p]),
        "el_chat_template_name": (C.c_char_p, [I]),
        "el_chat_message": (I, [I, I, I, C.c_char_p, I, C.c_char_p, I]),
        "el_chat_message_specials": (I, [I, I, I]),
        "el_chat_generation_prompt": (C.c_char_p, [I]),
        "el_runtime_chat_request": (I, [P, I, C.POINTER(Request), C.POINTER(Error)]),
        "el_runtime_chat_turn": (I, [P, I, I, C.c_char_p, I, C.c_char_p, I, C.POINTER(C.c_int32), I,
                                     C.POINTER(Error)]),
        "el_runtime_chat_admit": (I, [P, I, I, C.c_char_p, I, C.c_char_p, I, C.POINTER(C.c_int32), I,
                                      C.POINTER(Request), C.POINTER(I), C.POINTER(Error)]),
        "el_runtime_chat_prompt": (I, [P, I, C.POINTER(C.c_int32), C.POINTER(C.c_char_p), C.POINTER(C.c_int32), I,
                                       C.POINTER(C.c_int32), I, C.POINTER(Error)]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def default_threads() -> int:
    """Threads for the host runtime: EDGELLAMA_THREADS, else every online CPU."""
    value = os.environ.get("EDGELLAMA_THREADS")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise EdgeLlamaError(f"EDGELLAMA_THREADS must be a whole number, got {value!r}") from None
    return max(1, library().el_cpu_count())


def kernels_name() -> str:
    """The kernels the host library runs ("avx2", "neon", "portable", ...)."""
    return library().el_kernels_name().decode()


def _int32_array(values):
    return (C.c_int32 * len(values))(*values)


def _open_growing(size: int, attempt, grow: bool, what) -> np.ndarray:
    """A memory block that attempt(block, err) succeeds in: `size` bytes, and while the C
    side says NO_MEMORY (and grow) four times larger, up to three times. EdgeLlamaError
    with the C message otherwise."""
    for _ in range(4):
        memory, err = np.zeros(size, dtype=np.uint8), Error()
        if attempt(memory, err):
            return memory
        if err.status != NO_MEMORY or not grow:
            break
        size *= 4
    raise EdgeLlamaError(f"{what}: {err.text()}")


class Runtime:
    """One model opened in the C runtime, with its own memory block and engine."""

    def __init__(self, model_path, max_model_len=0, block_size=16, kv_cache_bytes=0, max_seqs=8,
                 max_batch_tokens=0, kv_dtype="f32", memory_bytes=None, enable_prefix_caching=True, threads=None,
                 speculative_tokens=0, prompt_lookup_max=0, prompt_lookup_min=0, draft_model=None):
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {sorted(KV_DTYPES)}, got {kv_dtype!r}")
        self.lib = library()
        self._pool = None
        self.threads = default_threads() if threads is None else int(threads)
        if not 1 <= self.threads <= 1024:
            raise ValueError(f"threads must be 1 to 1024, got {threads!r}")
        self.path = Path(model_path)
        try:
            # copy-on-write: the kernels may rearrange matrices in place (weights_writable)
            self._model = np.memmap(self.path, dtype=np.uint8, mode="c")
        except (OSError, ValueError) as e:
            raise EdgeLlamaError(f"{self.path}: cannot map the model ({e})") from None
        # The arena: pages are only touched as the runtime carves them, so a generous
        # virtual size costs nothing; the stats report what was really used. A default
        # pool (max_seqs full sequences) of a big model may need more: then grow and retry.
        size = memory_bytes or (64 << 20) + 2 * int(kv_cache_bytes or 0) + 8 * self._model.size
        options = EngineOptions(max_model_len, block_size, int(kv_cache_bytes or 0), max_seqs, max_batch_tokens,
                                KV_DTYPES[kv_dtype], int(not enable_prefix_caching), self.threads,
                                check_values=1,  # refuse NaN/Inf weights at load
                                weights_writable=1, speculative_tokens=speculative_tokens,
                                prompt_lookup_max=prompt_lookup_max, prompt_lookup_min=prompt_lookup_min)

        def open_runtime(memory, err):
            self._rt = self.lib.el_runtime_open(memory.ctypes.data, memory.size, self._model.ctypes.data,
                                                self._model.size, C.byref(options), C.byref(err))
            return bool(self._rt)
        self._memory = _open_growing(size, open_runtime, grow=not memory_bytes, what=self.path)
        if draft_model is not None:
            self._open_draft(Path(draft_model))
        self.config = self.lib.el_runtime_config(self._rt).contents
        self.vocab_size = self.config.vocab_size
        self.block_size = block_size or 16
        self.max_seqs = max_seqs or 8
        # what one KV block costs, bookkeeping included: kv_cache_bytes // this = blocks
        self.kv_block_bytes = self.lib.el_kv_block_bytes(self.lib.el_runtime_config(self._rt), self.block_size,
                                                         KV_DTYPES[kv_dtype])
        if self.threads > 1:
            self._pool = self.lib.el_thread_pool_create(self.threads)
            if not self._pool:
                raise EdgeLlamaError(f"cannot start {self.threads} threads")
            err = Error()
            if self.lib.el_thread_pool_attach(self._pool, self._rt, C.byref(err)) != 0:
                raise EdgeLlamaError(err.text())

    def _open_draft(self, path: Path):
        """The draft model of speculative decoding (el_runtime_set_draft), mapped as the
        model is, in a memory block of its own that grows like the model's."""
        try:
            self._draft = np.memmap(path, dtype=np.uint8, mode="c")
        except (OSError, ValueError) as e:
            raise EdgeLlamaError(f"{path}: cannot map the draft model ({e})") from None

        def set_draft(memory, err):
            return self.lib.el_runtime_set_draft(self._rt, memory.ctypes.data, memory.size, self._draft.ctypes.data,
                                                 self._draft.size, C.byref(err)) == 0
        self._draft_memory = _open_growing((64 << 20) + 8 * self._draft.size, set_draft, grow=True, what=path)

    def __del__(self):
        # the pool's threads spin on the runtime's work: stop them before the memory goes
        pool, self._pool = getattr(self, "_pool", None), None
        if pool:
            self.lib.el_thread_pool_destroy(pool)

    # -------------------------------------------------------------- tokens and text

    def tokenize(self, text: str | bytes, add_bos=True) -> list:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        capacity = self.lib.el_tokenize_bound(len(data))
        out = (C.c_int32 * capacity)()
        err = Error()
        n = self.lib.el_runtime_tokenize(self._rt, data, len(data), int(add_bos), out, capacity, C.byref(err))
        if n < 0:
            raise EdgeLlamaError(err.text())  # the C message starts with "tokenize: "
        return list(out[:n])

    def token_bytes(self, previous: int, token: int) -> bytes:
        capacity = 256
        while True:  # the C side truncates to the capacity: a full buffer may mean more
            buf = C.create_string_buffer(capacity)
            n = self.lib.el_runtime_token_text(self._rt, previous, token, buf, capacity)
            if n < capacity:
                return buf.raw[:n]
            capacity *= 4

    def allowed_tokens(self, constraint: bytes, state: int, previous: int) -> list:
        """0/1 per token: what the constraint's mask keeps after `previous` in `state`."""
        err = Error()
        allowed = (C.c_uint8 * self.config.vocab_size)()
        if self.lib.el_runtime_allowed_tokens(self._rt, constraint, len(constraint), state, previous, allowed,
                                              C.byref(err)) < 0:
            raise ValueError(err.text())
        return list(allowed)

    # -------------------------------------------------------------- requests

    def add(self, prompt_tokens, request: Request) -> int:
        err = Error()
        seq = self.lib.el_runtime_add(self._rt, _int32_array(prompt_tokens), len(prompt_tokens), C.byref(request),
                                      C.byref(err))
        if seq < 0:
            raise ValueError(err.text())
        return seq

    def cont(self, seq_id: int, tokens, request: Request):
        err = Error()
        if self.lib.el_runtime_continue(self._rt, seq_id, _int32_array(tokens), len(tokens), C.byref(request),
                                        C.byref(err)):
            raise ValueError(err.text())

    def step(self, max_events=None) -> list:
        """One engine step's events. A step can work and report none (a prefill chunk of
        a long prompt): use pending() to know whether to go on. Each sequence reports
        at most one token event a step; with forks and prompt logprobs a step reports at
        most el_runtime_max_events, the default here."""
        max_events = max_events or self.lib.el_runtime_max_events(self._rt)
        events = (Event * max_events)()
        n = self.lib.el_runtime_step(self._rt, events, max_events)
        return [events[i] for i in range(n)]

    def pending(self) -> int:
        """Sequences still waiting or running."""
        return self.lib.el_runtime_pending(self._rt)

    def tokens(self, seq_id: int):
        """(all tokens, n_prompt, n_cached) of a sequence."""
        ptr, n_prompt, n_cached = C.POINTER(C.c_int32)(), C.c_int(), C.c_int()
        n = self.lib.el_runtime_tokens(self._rt, seq_id, C.byref(ptr), C.byref(n_prompt), C.byref(n_cached))
        if n < 0:
            raise ValueError(f"no sequence {seq_id}")
        return list(ptr[:n]), n_prompt.value, n_cached.value

    def abort(self, seq_id: int):
        self.lib.el_runtime_abort(self._rt, seq_id)

    def release(self, seq_id: int):
        self.lib.el_runtime_release(self._rt, seq_id)

    def stats(self) -> dict:
        s = Stats()
        self.lib.el_runtime_stats(self._rt, C.byref(s))
        return s.as_dict()

    def check_blocks(self):
        """Raise when the KV block manager's books do not balance (el_runtime_check_blocks)."""
        err = Error()
        if self.lib.el_runtime_check_blocks(self._rt, C.byref(err)) != 0:
            raise EdgeLlamaError(err.text())

    def logits(self, tokens) -> np.ndarray:
        out = np.zeros((len(tokens), self.vocab_size), dtype=np.float32)
        err = Error()
        if self.lib.el_runtime_logits(self._rt, _int32_array(tokens), len(tokens),
                                      out.ctypes.data_as(C.POINTER(C.c_float)), C.byref(err)):
            raise EdgeLlamaError(f"logits: {err.text()}")
        return out


CHAT_ROLES = {"system": 0, "user": 1, "assistant": 2}


def _template_id(lib, name: str) -> int:
    template = lib.el_chat_template_from_name(name.encode())
    if template < 0:
        raise ValueError(f"chat_template must be one of plain, llama2, chatml; got {name!r}")
    return template


def _message_role(i: int, message) -> int:
    if message.get("role") not in CHAT_ROLES or not isinstance(message.get("content"), str):
        raise ValueError(f"messages[{i}]: needs a role (system, user, assistant) and a string content")
    return CHAT_ROLES[message["role"]]


class Chat:
    """Chat templates of the runtime (el_chat.h): the one place they are written."""

    def __init__(self, runtime: "Runtime", template: str | None = None):
        self.rt = runtime
        lib = runtime.lib
        if template is None:
            self.template = lib.el_runtime_chat_template(runtime._rt)
        else:
            self.template = _template_id(lib, template)
        self.name = lib.el_chat_template_name(self.template).decode()

    def _call(self, fn, *args, text_bytes=0):
        capacity = 2 * text_bytes + 64
        out = (C.c_int32 * capacity)()
        err = Error()
        n = fn(self.rt._rt, self.template, *args, out, capacity, C.byref(err))
        if n < 0:
            raise ValueError(f"chat: {err.text()}")
        return list(out[:n])

    def prompt_tokens(self, messages) -> list:
        """A whole conversation, ending with the assistant's generation prompt."""
        roles, contents = [], []
        for i, m in enumerate(messages):
            roles.append(_message_role(i, m))
            contents.append(m["content"].encode("utf-8"))
        lens = [len(c) for c in contents]
        return self._call(self.rt.lib.el_runtime_chat_prompt, _int32_array(roles),
                          (C.c_char_p * len(contents))(*contents), _int32_array(lens), len(contents),
                          text_bytes=sum(lens))

    def turn_tokens(self, seq_id: int, system: str, user: str) -> list:
        """One user turn; seq_id < 0 starts a conversation, else continues that sequence."""
        s, u = system.encode("utf-8"), user.encode("utf-8")
        return self._call(self.rt.lib.el_runtime_chat_turn, seq_id, s, len(s), u, len(u), text_bytes=len(s) + len(u))

    def admit(self, seq_id: int, system: str, user: str, request: Request) -> tuple:
        """Admit one user turn (el_runtime_chat_admit): appended to sequence seq_id, or a
        new conversation when seq_id < 0 or when seq_id's context is full (then seq_id is
        released). Returns (the conversation's sequence id, whether it started over);
        raises ValueError for a turn that cannot be admitted, and then seq_id is still
        the caller's unless the exception's started_over is True."""
        s, u = system.encode("utf-8"), user.encode("utf-8")
        capacity = 2 * (len(s) + len(u)) + 64
        out, started_over, err = (C.c_int32 * capacity)(), C.c_int(), Error()
        seq = self.rt.lib.el_runtime_chat_admit(self.rt._rt, self.template, seq_id, s, len(s), u, len(u), out,
                                                capacity, C.byref(request), C.byref(started_over), C.byref(err))
        if seq < 0:
            e = ValueError(f"chat: {err.text()}")
            e.started_over = bool(started_over.value)
            raise e
        return seq, bool(started_over.value)

    def add_stop(self, request: Request) -> Request:
        err = Error()
        if self.rt.lib.el_runtime_chat_request(self.rt._rt, self.template, C.byref(request), C.byref(err)):
            raise ValueError(f"chat: {err.text()}")
        return request


CHAT_BOS_BEFORE, CHAT_EOS_AFTER = 1, 2  # el_chat.h


def render_chat(template: str, messages, generation_prompt: bool = False) -> list:
    """A conversation as the runtime renders it, without a model: one (text, specials)
    pair per message, specials being CHAT_BOS_BEFORE and/or CHAT_EOS_AFTER (BOS and EOS
    are tokens, never text). With generation_prompt, the prompt that asks for a reply
    follows as one more pair."""
    lib = library()
    tmpl = _template_id(lib, template)
    out, previous = [], -1
    for i, m in enumerate(messages):
        role, content = _message_role(i, m), m["content"].encode("utf-8")
        capacity = len(content) + 64
        buf = C.create_string_buffer(capacity)
        n = lib.el_chat_message(tmpl, previous, role, content, len(content), buf, capacity)
        if n < 0:
            raise ValueError(f"messages[{i}]: cannot be rendered")
        out.append((buf.raw[:n].decode("utf-8"), lib.el_chat_message_specials(tmpl, previous, role)))
        previous = role
    if generation_prompt:
        out.append((lib.el_chat_generation_prompt(tmpl).decode("utf-8"), 0))
    return out


def make_request(sampling: dict, max_tokens: int, min_tokens=0, ignore_eos=False, stop=(), stop_token_ids=(), n=1,
                 logprobs=None, prompt_logprobs=None, beam_width=0, length_penalty=1.0, constraint=None):
    """A C request from plain values (SamplingParams does the validation first).

    Fields not named in `sampling` keep the C defaults (temperature 1, top_p 1, ...);
    the C side checks the values again when the request is added. `constraint` (bytes:
    a compiled DFA) is read in place by the engine, so the caller keeps it alive until
    the request ends (SamplingParams holds it)."""
    r = Request()
    library().el_request_defaults(C.byref(r))
    known = {name for name, _ in Sampling._fields_}
    for name, value in sampling.items():
        if name not in known:
            raise ValueError(f"sampling: unknown field {name!r} (known: {', '.join(sorted(known))})")
        setattr(r.sampling, name, value)
    r.max_tokens, r.min_tokens, r.ignore_eos = max_tokens, min_tokens, int(ignore_eos)
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"stop: at most {MAX_STOP_STRINGS} strings (a chat's own stop string counts), got {len(stop)}")
    if len(stop_token_ids) > MAX_STOP_TOKENS:
        raise ValueError(f"stop_token_ids: at most {MAX_STOP_TOKENS} token ids, got {len(stop_token_ids)}")
    r.n_stop = len(stop)
    for i, s in enumerate(stop):
        data = s.encode("utf-8")
        if not 0 < len(data) < MAX_STOP_LEN:
            raise ValueError(f"stop: each stop string must be 1 to {MAX_STOP_LEN - 1} bytes, got {s!r}")
        r.stop[i].raw = data.ljust(MAX_STOP_LEN, b"\0")
        r.stop_len[i] = len(data)
    r.n_stop_token_ids = len(stop_token_ids)
    for i, t in enumerate(stop_token_ids):
        r.stop_token_ids[i] = t
    r.n = n
    r.logprobs = -1 if logprobs is None else logprobs
    r.prompt_logprobs = -1 if prompt_logprobs is None else prompt_logprobs
    r.beam_width, r.length_penalty = beam_width, length_penalty
    if constraint is not None:
        r.constraint, r.constraint_len = C.cast(C.c_char_p(constraint), C.c_void_p), len(constraint)
    return r
