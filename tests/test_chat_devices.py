"""edgellama chat over a device: commands, multi-turn, and Ctrl-C stopping a reply."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

ENV = dict(os.environ, PYTHONUNBUFFERED="1")

# The local runtime writes this tiny model's 200 tokens in milliseconds, too fast to
# interrupt: this runs the real CLI with the first reply slowed to one token per 20 ms.
SLOW_CHAT = """
import sys, time
from edgellama.devices import device
from edgellama.cli import main
generate, calls = device.LocalDevice.generate, []
def slow(self, prompt, params, chat=False):
    calls.append(prompt)
    for text in generate(self, prompt, params, chat):
        if len(calls) == 1:
            time.sleep(0.02)
        yield text
device.LocalDevice.generate = slow
sys.argv = ["edgellama", *sys.argv[1:]]
main()
"""


def replies(stdout):
    """The replies in a session's output (what follows each "> " prompt, commands' output left out)."""
    return [p for p in stdout.split("> ") if p.strip() and not p.startswith("{")]


def counters(stderr):
    """The token counters of the last /stats summary (on stderr)."""
    prompt, generated = re.findall(r"^tokens +(\d+) prompt computed, (\d+) generated$", stderr, re.M)[-1]
    return {"prompt_tokens_computed": int(prompt), "tokens_generated": int(generated)}


def run_chat(*args, stdin):
    return subprocess.run([sys.executable, "-m", "edgellama", "chat", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env=ENV)


def test_local_chat_turns_and_commands():
    r = run_chat("--local", "--temperature", "0", "--max-tokens", "16",
                 stdin="once there was a dog.\nwhat did it do?\n/stats\n/reset\n/system be brief.\nonce there was a cat.\n/bogus\n/quit\n")
    assert r.returncode == 0, r.stderr
    assert len(replies(r.stdout)) == 3, r.stdout
    stats = counters(r.stderr)
    assert stats["tokens_generated"] >= 2 and stats["prompt_tokens_computed"] > 0
    assert "last reply:" in r.stderr and "tokens" in r.stderr
    assert "conversation reset" in r.stderr
    # The second turn continued the first conversation: greedy, it differs from a fresh start.
    fresh = run_chat("--local", "--temperature", "0", "--max-tokens", "16", stdin="what did it do?\n")
    assert replies(fresh.stdout)[0] != replies(r.stdout)[1]


def test_system_prompt_and_reset_change_the_context():
    a = run_chat("--local", "--temperature", "0", "--max-tokens", "12", stdin="the dog\n/system you are a cat.\nthe dog\n")
    b = run_chat("--local", "--temperature", "0", "--max-tokens", "12", "--system", "you are a cat.", stdin="the dog\n")
    first, second = replies(a.stdout)
    assert first != second and replies(b.stdout) == [second]  # /system TEXT starts over with that prompt
    c = run_chat("--local", "--temperature", "0", "--max-tokens", "12", stdin="the dog\n/reset\nthe dog\n")
    assert replies(c.stdout) == [first, first]  # /reset forgets the turn


def test_ctrl_c_stops_the_reply_not_the_session():
    p = subprocess.Popen([sys.executable, "-c", SLOW_CHAT, "chat", "--local", "--max-tokens", "200", "--ignore-eos",
                          "--seed", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV)
    out = []
    reader = threading.Thread(target=lambda: out.extend(iter(lambda: p.stdout.read(1), "")), daemon=True)
    reader.start()
    try:
        p.stdin.write("once upon a time\n")
        p.stdin.flush()
        deadline = time.time() + 30
        while len("".join(out)) < 12 and time.time() < deadline:  # the reply has started
            time.sleep(0.02)
        started = time.time()
        p.send_signal(signal.SIGINT)
        while "[stopped]" not in "".join(out) and time.time() < deadline:
            time.sleep(0.02)
        assert "[stopped]" in "".join(out), "".join(out)
        assert time.time() - started < 3  # before the 200 slowed tokens (4 s or more) were done
        p.stdin.write("the dog ran.\n/stats\n/quit\n")
        p.stdin.flush()
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    reader.join(5)
    text = "".join(out)
    err = p.stderr.read()
    assert p.returncode == 0, err
    stopped, after = text.split("[stopped]", 1)
    reply = after.split("> ")[1]
    assert reply.strip()   # the next line was answered
    assert len(stopped.split("> ", 1)[1]) < len(reply)  # the stopped reply was cut short
    assert counters(err)["tokens_generated"] >= 2


def start_chat(*args, cwd=None):
    """The chat CLI in a subprocess (args after "edgellama"), with its output collected as it arrives."""
    argv = list(args) if args[0] == "-c" else ["-m", "edgellama", *args]
    p = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd)
    out = []
    threading.Thread(target=lambda: out.extend(iter(lambda: p.stdout.read(1), "")), daemon=True).start()
    return p, out


def interrupt_reply(p, out):
    """Ask for a long reply, press Ctrl-C once it has started; True when it stopped."""
    p.stdin.write("once upon a time\n")
    p.stdin.flush()
    deadline = time.time() + 30
    while len("".join(out)) < 12 and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    while "[stopped]" not in "".join(out) and time.time() < deadline:
        time.sleep(0.01)
    return "[stopped]" in "".join(out)


@pytest.mark.emulated
def test_chat_over_an_emulated_board(tmp_path):
    # cwd: the board's build goes to tmp_path/build/qemu-aarch64.
    r = subprocess.run([sys.executable, "-m", "edgellama", "chat", "--board", "qemu-aarch64", "--temperature", "0",
                        "--max-tokens", "12"], input="once there was a dog.\nwhat did it do?\n/stats\n/quit\n",
                       capture_output=True, text=True, timeout=120, env=ENV, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(replies(r.stdout)) == 2
    stats = counters(r.stderr)
    assert stats["tokens_generated"] == 24 and stats["prompt_tokens_computed"] > 0
    # The same greedy conversation as on the local runtime (F32 there, Q8_0 here: the same words this far).
    local = run_chat("--local", "--temperature", "0", "--max-tokens", "12", stdin="once there was a dog.\n")
    assert replies(local.stdout)[0] == replies(r.stdout)[0]

    # Ctrl-C cancels the reply on the board; the session goes on.
    p, out = start_chat("chat", "--board", "qemu-aarch64", "--max-tokens", "200", "--ignore-eos", "--seed", "1",
                        cwd=tmp_path)
    try:
        assert interrupt_reply(p, out), "".join(out)
        p.stdin.write("/stats\nthe dog ran.\n/quit\n")
        p.stdin.flush()
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    time.sleep(0.1)
    text, err = "".join(out), p.stderr.read()
    assert p.returncode == 0, err
    assert "finish abort" in err  # the device said it aborted
    assert counters(err)["tokens_generated"] < 200
    assert replies(text.split("[stopped]", 1)[1])[0].strip()  # the next line was answered
