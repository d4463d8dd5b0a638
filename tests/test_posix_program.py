"""The POSIX program (firmware/apps/posix/main.c) and the chat templates (firmware/core/el_chat.c).

The program is built with the core's flags through build.host_program(); its generate
mode must reproduce llama2.c's greedy text for stories260K, chat must keep the KV of
earlier turns, bench must print one JSON object, and bad input must give one line
"error: ..." with exit status 1. The templates are checked through ctypes: rendered
text, the choice from metadata, and the tokens of a turn.
"""

import ctypes as C
import json
import subprocess

import pytest

from edgellama.resources import DEFAULT_MODEL
from edgellama.runtime import build
from edgellama.runtime.capi import Error, Runtime, library, make_request

PLAIN, LLAMA2, CHATML = 0, 1, 2
SYSTEM, USER, ASSISTANT, NONE = 0, 1, 2, -1
BOS_BEFORE, EOS_AFTER = 1, 2
LLAMA2_JINJA = "{% for m in messages %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}{% endfor %}"
CHATML_JINJA = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def program():
    return build.host_program()


def run(program, *args, stdin=None, timeout=60):
    return subprocess.run([str(program), *map(str, args)], input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)


def write_model(path, shared_data, vocab_changes=None, chat_template=None):
    """stories260K as GGUF, optionally with tokens replaced and a chat template added."""
    import edgellama.model.gguf_file as gf
    from edgellama.model.llama2c import read_llama2c
    from edgellama.model.tokenizer import load_vocab

    vocab = load_vocab(shared_data / "tok512.model")
    for token_id, piece in (vocab_changes or {}).items():
        vocab.tokens[token_id], vocab.types[token_id] = piece, 3  # control tokens, as chat models have them
    model = read_llama2c(shared_data / "stories260K.bin", vocab)

    class Writer(gf.GGUFWriter):
        def write_header_to_file(self, *args, **kwargs):
            if chat_template is not None:
                self.add_string("tokenizer.chat_template", chat_template)
            return super().write_header_to_file(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gf, "GGUFWriter", Writer)
        gf.write_gguf(model, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("models")
    return {
        "plain": write_model(out / "s260.gguf", shared_data),
        "llama2": write_model(out / "s260-llama2.gguf", shared_data, chat_template=LLAMA2_JINJA),
        "chatml": write_model(out / "s260-chatml.gguf", shared_data, {510: "<|im_start|>", 511: "<|im_end|>"},
                              CHATML_JINJA),
    }


@pytest.fixture(scope="module")
def s260(models):
    return models["plain"]


@pytest.fixture(scope="module")
def reference_text(shared_data):
    return (shared_data / "stories260K_greedy200.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def lib():
    lib = library()
    P, I, S = C.c_void_p, C.c_int, C.c_char_p
    signatures = {
        "el_chat_template_from_name": (I, [S]),
        "el_chat_template_name": (S, [I]),
        "el_chat_message": (I, [I, I, I, S, I, C.c_char_p, I]),
        "el_chat_message_specials": (I, [I, I, I]),
        "el_chat_turn_bos": (I, [I, I]),
        "el_chat_generation_prompt": (S, [I]),
        "el_chat_reply_end": (S, [I]),
        "el_chat_stop_string": (S, [I]),
        "el_runtime_chat_template": (I, [P]),
        "el_runtime_chat_request": (I, [P, I, P, C.POINTER(Error)]),
        "el_runtime_chat_message": (I, [P, I, I, I, S, I, C.POINTER(C.c_int32), I, C.POINTER(Error)]),
        "el_runtime_chat_turn": (I, [P, I, I, S, I, S, I, C.POINTER(C.c_int32), I, C.POINTER(Error)]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


# ---------------------------------------------------------------- generate

def test_greedy_generate_reproduces_llama2c(program, s260, reference_text):
    assert reference_text.startswith("Once upon a time, there was a little girl named Lily.")
    # 200 positions after BOS: the 4 prompt tokens and 196 generated ones
    r = run(program, s260, "generate", "Once upon a time", "--temperature", "0", "--max-tokens", "196")
    assert r.returncode == 0, r.stderr
    assert r.stdout == reference_text
    short = run(program, s260, "generate", "Once upon a time", "--temperature=0", "--max-tokens", "20")
    assert short.returncode == 0 and reference_text.startswith(short.stdout) and len(short.stdout) > 40


def test_generate_kv_options_keep_greedy_text(program, s260, reference_text):
    r = run(program, s260, "generate", "Once upon a time", "--temperature", "0", "--max-tokens", "60",
            "--block-size", "4", "--arena-mb", "8")
    assert r.returncode == 0, r.stderr
    assert reference_text.startswith(r.stdout)
    r8 = run(program, s260, "generate", "Once upon a time", "--temperature", "0", "--max-tokens", "10",
             "--kv-dtype", "int8")
    assert r8.returncode == 0 and r8.stdout.startswith("Once upon a time")


def test_seeded_sampling_repeats(program, s260):
    args = ["generate", "Once upon a time", "--temperature", "0.9", "--top-p", "0.9", "--top-k", "40",
            "--min-p", "0.01", "--repetition-penalty", "1.1", "--max-tokens", "60"]
    a, b = run(program, s260, *args, "--seed", "7"), run(program, s260, *args, "--seed", "7")
    c = run(program, s260, *args, "--seed", "8")
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    assert a.stdout != c.stdout


def test_stop_string_cuts_text_before_it(program, s260, reference_text):
    r = run(program, s260, "generate", "Once upon a time", "--temperature", "0", "--max-tokens", "100",
            "--stop", "Lily", "--stop", "zzz")
    assert r.returncode == 0, r.stderr
    assert r.stdout == reference_text[:reference_text.index("Lily")]


# ---------------------------------------------------------------- chat

def stats_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_chat_keeps_the_kv_of_earlier_turns(program):
    turns = "tell me a story about a cat\n/stats\nwhat did the cat do next\n/stats\n"
    again = "/reset\ntell me a story about a cat\n/stats\n"
    r = run(program, DEFAULT_MODEL, "chat", "--temperature", "0", "--max-tokens", "16", stdin=turns + again)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    replies, current = [], []
    for line in r.stdout.splitlines():
        if line.startswith('{"template"'):
            replies.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    assert len(replies) == 3 and all(replies), r.stdout  # a reply before each /stats
    first, second, third = stats_lines(r.stdout)
    assert first["template"] == "plain" and (first["turns"], second["turns"], third["turns"]) == (1, 2, 1)
    # the second turn computed only its own tokens (plus the last reply token, never
    # run through the model): the first turn's KV stayed in the cache
    assert second["turn_cached_tokens"] == first["sequence_tokens"] - 1
    assert second["turn_computed_tokens"] == second["turn_new_tokens"] + 1
    assert second["turn_prompt_tokens"] == first["sequence_tokens"] + second["turn_new_tokens"]
    assert second["prompt_tokens_computed"] == first["prompt_tokens_computed"] + second["turn_computed_tokens"]
    # after /reset the same first turn finds its full blocks in the prefix cache
    assert third["prefix_hits"] > 0 and third["turn_cached_tokens"] > 0


def test_chat_system_prompt_and_templates(program, models):
    for name in ("llama2", "chatml"):
        r = run(program, models[name], "chat", "--temperature", "0", "--max-tokens", "8", "--system", "be kind",
                stdin="hello\n/stats\nmore\n/stats\n/system be brief\nhi\n/stats\n")
        assert r.returncode == 0, r.stderr
        stats = stats_lines(r.stdout)
        assert [s["template"] for s in stats] == [name] * 3
        assert [s["turns"] for s in stats] == [1, 2, 1]
    forced = run(program, models["chatml"], "chat", "--template", "plain", "--max-tokens", "4", stdin="hi\n/stats\n")
    assert forced.returncode == 0 and stats_lines(forced.stdout)[0]["template"] == "plain"


def test_chat_starts_over_when_the_context_is_full(program, s260):
    lines = "".join(f"turn {i}\n" for i in range(6)) + "/stats\n"
    r = run(program, s260, "chat", "--temperature", "0", "--max-tokens", "40", "--max-model-len", "128",
            stdin=lines)
    assert r.returncode == 0, r.stderr
    assert "starting over" in r.stderr and "Traceback" not in r.stderr
    assert stats_lines(r.stdout)[-1]["sequence_tokens"] <= 128


# ---------------------------------------------------------------- bench

BENCH_KEYS = ["prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "tpot_ms", "tokens_generated",
              "arena_bytes_used", "arena_bytes_high_water", "kv_blocks_used", "kv_blocks_total",
              "kv_blocks_high_water", "model_bytes", "prompt_tokens", "gen_tokens"]


def test_bench_prints_one_json_object(program):
    r = run(program, DEFAULT_MODEL, "bench", "--repetitions", "2")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1
    figures = json.loads(r.stdout)
    for key in BENCH_KEYS:
        assert figures[key] > 0, key
    assert (figures["prompt_tokens"], figures["gen_tokens"], figures["tokens_generated"]) == (64, 128, 128)
    assert figures["model_bytes"] == DEFAULT_MODEL.stat().st_size
    assert figures["kv_blocks_used"] == (64 + 128 + 15) // 16 <= figures["kv_blocks_total"]
    assert figures["arena_bytes_high_water"] >= figures["arena_bytes_used"]
    assert figures["prefix_hits"] == 0 and figures["preemptions"] == 0
    short = json.loads(run(program, DEFAULT_MODEL, "bench", "--prompt", "once upon a time", "--gen-tokens", "8",
                           "--kv-dtype", "int8").stdout)
    assert short["prompt_tokens"] == 5 and short["tokens_generated"] == 8 and short["kv_dtype"] == "int8"


# ---------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def broken_files(tmp_path_factory, s260):
    out = tmp_path_factory.mktemp("broken")
    data = s260.read_bytes()
    (out / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (out / "header.gguf").write_bytes(data[:100])
    (out / "empty.gguf").write_bytes(b"")
    (out / "garbage.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 8)
    return out


BAD_CASES = {
    "missing model": (["{dir}/nope.gguf", "generate", "x"], "nope.gguf"),
    "truncated model": (["{dir}/truncated.gguf", "generate", "x"], "truncated.gguf"),
    "header only": (["{dir}/header.gguf", "bench"], "header.gguf"),
    "empty model": (["{dir}/empty.gguf", "chat"], "empty"),
    "garbage model": (["{dir}/garbage.gguf", "generate", "x"], "garbage.gguf"),
    "directory": (["{dir}", "generate", "x"], "regular file"),
    "unknown flag": (["{model}", "generate", "x", "--bogus", "1"], "--bogus"),
    "top_p 2": (["{model}", "generate", "x", "--top-p", "2"], "top_p"),
    "temperature text": (["{model}", "generate", "x", "--temperature", "hot"], "--temperature"),
    "negative temperature": (["{model}", "generate", "x", "--temperature", "-1"], "temperature"),
    "max tokens 0": (["{model}", "generate", "x", "--max-tokens", "0"], "--max-tokens"),
    "kv dtype": (["{model}", "generate", "x", "--kv-dtype", "f16"], "--kv-dtype"),
    "missing value": (["{model}", "generate", "x", "--seed"], "--seed"),
    "no prompt": (["{model}", "generate"], "prompt"),
    "extra argument": (["{model}", "generate", "x", "y"], "'y'"),
    "unknown mode": (["{model}", "dance"], "unknown mode 'dance': use generate, chat, bench, serve or logits"),
    "no arguments": ([], "usage"),
    "bad template": (["{model}", "chat", "--template", "jinja"], "--template"),
    "too long for context": (["{model}", "bench", "--prompt-tokens", "400", "--gen-tokens", "200"], "context"),
    "arena too small": (["{model}", "generate", "x", "--arena-mb", "1", "--max-batch-tokens", "4096"], "{model}"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_error_line(program, s260, broken_files, case):
    args, needle = BAD_CASES[case]
    fill = {"dir": broken_files, "model": s260}
    r = run(program, *(a.format(**fill) for a in args), stdin="")
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle.format(**fill) in lines[0]
    assert r.stdout == ""


def test_help_and_version(program):
    r = run(program, "--help")
    assert r.returncode == 0 and "generate" in r.stdout and "bench prints" in r.stdout
    v = run(program, "--version")
    assert v.returncode == 0 and v.stdout.startswith("edgellama-run ")


# ---------------------------------------------------------------- templates: text

def message(lib, tmpl, previous, role, content):
    data = content.encode()
    buf = C.create_string_buffer(len(data) + 128)
    n = lib.el_chat_message(tmpl, previous, role, data, len(data), buf, len(buf))
    assert n >= 0
    return buf.raw[:n].decode()


def render(lib, tmpl, messages, generation_prompt=True):
    """A whole conversation, one message at a time, with BOS/EOS written as <s> and </s>."""
    out, previous = "", NONE
    for role, content in messages:
        specials = lib.el_chat_message_specials(tmpl, previous, role)
        out += ("<s>" if specials & BOS_BEFORE else "") + message(lib, tmpl, previous, role, content)
        out += "</s>" if specials & EOS_AFTER else ""
        previous = role
    return out + (lib.el_chat_generation_prompt(tmpl).decode() if generation_prompt else "")


CONVERSATION = [(SYSTEM, "Be nice."), (USER, "Hi!"), (ASSISTANT, "Hello."), (USER, "How are you?")]


def test_llama2_text(lib):
    assert render(lib, LLAMA2, CONVERSATION) == \
        "<s>[INST] <<SYS>>\nBe nice.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] How are you? [/INST]"
    assert render(lib, LLAMA2, CONVERSATION[1:]) == "<s>[INST] Hi! [/INST] Hello. </s><s>[INST] How are you? [/INST]"
    assert lib.el_chat_turn_bos(LLAMA2, NONE) and lib.el_chat_turn_bos(LLAMA2, ASSISTANT)
    assert not lib.el_chat_turn_bos(LLAMA2, SYSTEM)
    assert lib.el_chat_stop_string(LLAMA2) == b"" and lib.el_chat_reply_end(LLAMA2) == b""


def test_chatml_text(lib):
    assert render(lib, CHATML, CONVERSATION) == (
        "<s><|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert lib.el_chat_stop_string(CHATML) == b"<|im_end|>"
    assert not lib.el_chat_turn_bos(CHATML, ASSISTANT) and lib.el_chat_turn_bos(CHATML, NONE)


def test_plain_text(lib):
    assert render(lib, PLAIN, CONVERSATION) == "<s>Be nice.\n\nuser: Hi!\nassistant: Hello.\nuser: How are you?\nassistant:"
    assert render(lib, PLAIN, [(USER, "hello")]) == "<s>user: hello\nassistant:"
    assert lib.el_chat_stop_string(PLAIN) == b"\nuser:"


def test_message_bad_arguments(lib):
    buf = C.create_string_buffer(8)
    assert lib.el_chat_message(7, NONE, USER, b"x", 1, buf, 8) == -1
    assert lib.el_chat_message(PLAIN, NONE, 9, b"x", 1, buf, 8) == -1
    assert lib.el_chat_message(PLAIN, NONE, USER, b"a long message", 14, buf, 8) == -1  # no overflow
    assert lib.el_chat_message(PLAIN, NONE, USER, b"x", -1, buf, 8) == -1


def test_template_names(lib):
    assert [lib.el_chat_template_from_name(n) for n in (b"plain", b"llama2", b"chatml", b"jinja", b"")] == \
        [PLAIN, LLAMA2, CHATML, -1, -1]
    assert [lib.el_chat_template_name(t) for t in (0, 1, 2, 3, -1)] == [b"plain", b"llama2", b"chatml", b"", b""]


# ---------------------------------------------------------------- templates: tokens

def chat_turn(lib, rt, tmpl, seq_id, user, system=""):
    out, err = (C.c_int32 * 512)(), Error()
    s, u = system.encode(), user.encode()
    n = lib.el_runtime_chat_turn(rt._rt, tmpl, seq_id, s, len(s), u, len(u), out, 512, C.byref(err))
    assert n > 0, err.text()
    return list(out[:n])


def chat_request(lib, rt, tmpl, max_tokens):
    request = make_request({"temperature": 0.0}, max_tokens)
    err = Error()
    assert lib.el_runtime_chat_request(rt._rt, tmpl, C.addressof(request), C.byref(err)) == 0, err.text()
    return request


def finish(rt, seq):
    while True:
        events = rt.step()
        if any(e.seq_id == seq and e.finished for e in events):
            return


def test_template_chosen_from_metadata(lib, models):
    runtimes = [Runtime(models[n], max_seqs=1) for n in ("plain", "llama2", "chatml")]  # alive while used
    assert [lib.el_runtime_chat_template(rt._rt) for rt in runtimes] == [PLAIN, LLAMA2, CHATML]


def test_llama2_turn_tokens(lib, models):
    rt = Runtime(models["llama2"], max_seqs=1)
    first = chat_turn(lib, rt, LLAMA2, -1, "hi there", system="be kind")
    assert first == rt.tokenize("[INST] <<SYS>>\nbe kind\n<</SYS>>\n\nhi there [/INST]")  # BOS first
    request = chat_request(lib, rt, LLAMA2, 3)
    assert request.n_stop == 0  # EOS ends a Llama-2 reply
    seq = rt.add(first, request)
    finish(rt, seq)
    tokens, _, _ = rt.tokens(seq)
    assert tokens[-1] != 2  # cut by max_tokens: the next turn closes the reply with EOS
    second = chat_turn(lib, rt, LLAMA2, seq, "more")
    assert second == [2] + rt.tokenize("[INST] more [/INST]")
    rt.cont(seq, second, request)
    finish(rt, seq)
    _, n_prompt, n_cached = rt.tokens(seq)
    assert n_prompt == len(tokens) + len(second) and n_cached == len(tokens) - 1


def test_chatml_turn_tokens(lib, models):
    rt = Runtime(models["chatml"], max_seqs=1)
    start, end = 510, 511
    first = chat_turn(lib, rt, CHATML, -1, "hi", system="sys")
    assert [t for t in first if t in (1, start, end)] == [1, start, end, start, end, start]
    request = chat_request(lib, rt, CHATML, 2)
    assert list(request.stop_token_ids[:request.n_stop_token_ids]) == [end]
    assert request.stop[0].value == b"<|im_end|>"
    seq = rt.add(first, request)
    finish(rt, seq)
    second = chat_turn(lib, rt, CHATML, seq, "again")
    assert second[0] == end and [t for t in second if t in (1, start, end)] == [end, start, end, start]
    assert second[1] == rt.tokenize("\n", add_bos=False)[-1]  # no stray space before the newline


def test_plain_turn_tokens(lib, s260):
    rt = Runtime(s260, max_seqs=1)
    first = chat_turn(lib, rt, PLAIN, -1, "hi")
    assert first == rt.tokenize("user: hi\nassistant:")
    request = chat_request(lib, rt, PLAIN, 2)
    assert request.stop[0].value == b"\nuser:"
    seq = rt.add(first, request)
    finish(rt, seq)
    second = chat_turn(lib, rt, PLAIN, seq, "more")
    text = b"".join(rt.token_bytes(a, b) for a, b in zip([0] + second, second))
    assert text == b"\nuser: more\nassistant:"


def test_chat_turn_errors(lib, s260):
    rt = Runtime(s260, max_seqs=1)
    out, err = (C.c_int32 * 4)(), Error()
    assert lib.el_runtime_chat_turn(rt._rt, PLAIN, 0, None, 0, b"hi", 2, out, 4, C.byref(err)) == -1
    assert "finished sequence" in err.text()
    assert lib.el_runtime_chat_turn(rt._rt, 5, -1, None, 0, b"hi", 2, out, 4, C.byref(err)) == -1
    assert lib.el_runtime_chat_turn(rt._rt, PLAIN, -1, None, 0, b"a long line of text", 19, out, 4,
                                    C.byref(err)) == -1


# ---------------------------------------------------------------- other compilers

def test_builds_with_clang(monkeypatch, s260, program):
    clang = build.clang_compiler()
    assert clang is not None  # scripts/setup.sh test installs clang-19
    monkeypatch.setenv("CC", clang)
    exe = build.build_program(build.posix_program_sources(), "edgellama-run-clang")
    args = [s260, "generate", "Once upon a time", "--temperature", "0", "--max-tokens", "60"]
    a, b = run(exe, *args), run(program, *args)
    assert a.returncode == 0 and a.stdout == b.stdout  # bit-identical greedy text across compilers
