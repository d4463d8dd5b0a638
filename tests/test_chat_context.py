"""A chat that fills its context starts over the same way everywhere: ChatSession, the
POSIX program's `chat` mode and its `serve` mode over the protocol all admit turns with
el_runtime_chat_admit, so they start over at the same turn and give the same replies."""

import json
import re
import subprocess

import pytest

from edgellama.devices.protocol_device import ProtocolDevice
from edgellama.devices.streams import ProcessStream
from edgellama.runtime import build, capi
from edgellama.runtime.llm import LLM
from edgellama.runtime.sampling_params import SamplingParams

MODEL = build.firmware_dir().parent / "edgellama" / "models" / "tinystories-850k.gguf"
CONTEXT = 64
SYSTEM = "you tell stories"
TURNS = ["hello there", "what is your name", "tell me about a dog", "and the cat?", "once more", "the end"]
MAX_TOKENS = 8
STATS = re.compile(r'^\{"template".*\}$', re.MULTILINE)


def greedy():
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)


def session_turns():
    """(reply, prompt tokens of the conversation after the turn) per turn."""
    llm = LLM(str(MODEL), max_model_len=CONTEXT)
    session = llm.chat_session(SYSTEM)
    out = []
    for text in TURNS:
        reply = "".join(session.send(text, greedy()))
        out.append((reply, llm._rt.tokens(session.seq_id)[1], session.started_over))
    return out


def chat_mode_turns():
    lines = "".join(f"{t}\n/stats\n" for t in TURNS)
    r = subprocess.run([str(build.host_program()), str(MODEL), "chat", "--temperature", "0", "--max-tokens",
                        str(MAX_TOKENS), "--max-model-len", str(CONTEXT), "--system", SYSTEM], input=lines,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    out, at = [], 0
    for m in STATS.finditer(r.stdout):
        stats = json.loads(m.group(0))
        reply = r.stdout[at:m.start()]
        assert reply.endswith("\n")  # the reply, then a line break
        out.append((reply[:-1], stats["turn_prompt_tokens"], stats["turns"]))
        at = m.end() + 1
    return out, r.stderr


def serve_turns():
    dev = ProtocolDevice(ProcessStream([build.host_program(), MODEL, "serve", "--max-model-len", str(CONTEXT)],
                                       "edgellama-run serve"), timeout=30)
    try:
        dev.reset(SYSTEM)
        out = []
        for text in TURNS:
            reply = "".join(dev.generate(text, greedy(), chat=True))
            out.append((reply, int(dev.last_stats.extra["prompt"])))
        return out
    finally:
        dev.close()


@pytest.fixture(scope="module")
def session():
    return session_turns()


def test_chat_session_starts_over_only_when_full(session):
    prompts = [p for _, p, _ in session]
    over = [i for i, (_, _, started_over) in enumerate(session) if started_over]
    assert over and over[0] > 0, prompts  # the context filled after some turns, not at the first
    for i in over:  # the turn was re-rendered as the first one: as long as the first turn's prompt
        assert prompts[i] < prompts[i - 1]
    assert all(p < CONTEXT for p in prompts)
    assert all(prompts[i] > prompts[i - 1] for i in range(1, len(prompts)) if i not in over)


def test_chat_mode_and_serve_agree_with_chat_session(session):
    chat, stderr = chat_mode_turns()
    served = serve_turns()
    assert [(reply, prompt) for reply, prompt, _ in chat] == [(reply, prompt) for reply, prompt, _ in session]
    assert served == [(reply, prompt) for reply, prompt, _ in session]
    # the chat mode counts turns from the start over, and says so once each time
    over = [i for i, (_, _, started_over) in enumerate(session) if started_over]
    assert [i for i, (_, _, turns) in enumerate(chat) if turns == 1] == [0, *over]
    assert stderr.count("starting over") == len(over)


def test_only_a_full_context_starts_over():
    llm = LLM(str(MODEL), max_model_len=CONTEXT)
    session = llm.chat_session(SYSTEM)
    first = "".join(session.send("hello", greedy()))
    seq = session.seq_id
    # another error (a request the runtime rejects) fails the turn and keeps the conversation
    with pytest.raises(ValueError) as bad:
        session.chat.admit(seq, SYSTEM, "more", capi.make_request({"temperature": -1.0}, MAX_TOKENS))
    assert not bad.value.started_over and llm._rt.tokens(seq)[0]
    # a turn that does not fit even alone: the full conversation is gone, the session can go on
    with pytest.raises(ValueError, match="too long"):
        "".join(session.send("word " * 200, greedy()))
    assert session.seq_id == -1
    with pytest.raises(ValueError):
        llm._rt.tokens(seq)
    assert "".join(session.send("hello", greedy())) == first


def test_a_sampled_chat_says_the_same_in_chat_mode_and_chat_session():
    """Every turn samples with the request's own seed everywhere (the POSIX chat mode once
    added the turn number to it), so a seeded, sampled chat repeats across targets."""
    params = SamplingParams(temperature=0.8, top_p=1.0, top_k=0, min_p=0.0, seed=7, max_tokens=MAX_TOKENS)
    session = LLM(str(MODEL)).chat_session(SYSTEM)
    expected = ["".join(session.send(text, params)) for text in TURNS[:3]]
    lines = "".join(f"{t}\n/stats\n" for t in TURNS[:3])
    r = subprocess.run([str(build.host_program()), str(MODEL), "chat", "--temperature", "0.8", "--top-p", "1",
                        "--top-k", "0", "--min-p", "0", "--seed", "7", "--max-tokens", str(MAX_TOKENS),
                        "--system", SYSTEM], input=lines, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    replies = [part.rstrip("\n") for part in STATS.split(r.stdout)[:-1]]
    assert [reply.lstrip("\n") for reply in replies] == expected
    assert len(set(expected)) > 1  # sampled replies, not one repeated text
