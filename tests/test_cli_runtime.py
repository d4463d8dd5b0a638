"""generate and chat on the command line, on the C runtime."""

import re
import subprocess
import sys


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "edgellama", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_generate_streams_a_seeded_story():
    a = run("generate", "once upon a time", "--seed", "4", "--max-tokens", "40")
    b = run("generate", "once upon a time", "--seed", "4", "--max-tokens", "40")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("once upon a time") and len(a.stdout.split()) > 8


def test_generate_stops_before_a_stop_string():
    full = run("generate", "once upon a time", "--temperature", "0", "--max-tokens", "30").stdout
    cut = run("generate", "once upon a time", "--temperature", "0", "--max-tokens", "30", "--stop", "lily").stdout
    assert "lily" in full and cut.rstrip("\n") == full[:full.index("lily")]


def test_chat_commands():
    r = run("chat", "--seed", "1", "--max-tokens", "12",
            stdin="once there was a dog.\n/stats\nwhat did it do?\n/reset\n/system be brief.\nhi\n/quit\n")
    assert r.returncode == 0, r.stderr
    generated = int(re.search(r"^tokens +\d+ prompt computed, (\d+) generated$", r.stderr, re.M)[1])
    blocks = int(re.search(r"^KV blocks +(\d+) used", r.stderr, re.M)[1])
    assert generated >= 1 and blocks >= 1
    assert "conversation reset" in r.stderr
    assert r.stdout.count("> ") >= 6


def test_generate_n_samples_and_logprobs():
    r = run("generate", "once upon a time", "--n", "3", "--seed", "4", "--max-tokens", "10", "--logprobs", "2")
    assert r.returncode == 0, r.stderr
    headers = re.findall(r"^--- sample (\d) of 3 \(finish: (\w+)\) ---$", r.stdout, re.M)
    assert [h[0] for h in headers] == ["1", "2", "3"]
    texts = re.split(r"^--- sample \d of 3 .*---\n", r.stdout, flags=re.M)[1:]
    assert all(t.startswith("once upon a time") for t in texts)
    alone = run("generate", "once upon a time", "--seed", "6", "--max-tokens", "10").stdout
    assert texts[2] == alone  # sample 3 draws with seed + 2
    assert len(re.findall(r"^\[logprobs\] sample \d: cumulative -?\d+\.\d+$", r.stderr, re.M)) == 3
    assert len(re.findall(r" rank \d+ +top: ", r.stderr)) == 30


def test_generate_beam_search():
    from edgellama import LLM, BeamSearchParams
    r = run("generate", "once upon a time", "--beam-width", "3", "--max-tokens", "10")
    assert r.returncode == 0, r.stderr
    headers = re.findall(r"^--- beam (\d) of 3 \(cumulative logprob (-\d+\.\d+), finish: \w+\) ---$", r.stdout, re.M)
    assert [h[0] for h in headers] == ["1", "2", "3"]
    expected = LLM().beam_search("once upon a time", BeamSearchParams(beam_width=3, max_tokens=10))[0]
    assert [float(h[1]) for h in headers] == [round(s.cum_logprob, 4) for s in expected.sequences]
    bad = run("generate", "hi", "--beam-width", "2", "--n", "2")
    assert bad.returncode == 1 and bad.stderr.startswith("error: --beam-width: ")


def test_chat_logprobs_after_each_reply():
    r = run("chat", "--seed", "1", "--max-tokens", "5", "--ignore-eos", "--logprobs", "2",
            stdin="once there was a dog.\nwhat did it do?\n")
    assert r.returncode == 0, r.stderr
    heads = re.findall(r"^\[logprobs\] 5 tokens, cumulative (-\d+\.\d+)$", r.stderr, re.M)
    assert len(heads) == 2 and len(re.findall(r" rank \d+ +top: ", r.stderr)) == 10
