"""Structured outputs: the regex/JSON-schema/grammar compiler against Python's own
matchers, the C core's token mask against a Python walk of the same DFA over the real
vocabulary, and seeded samples of the real model that must all satisfy their constraint."""

import json
import random
import re

import pytest
from conftest import require_board

from edgellama.runtime import automaton as A
from edgellama.runtime.structured import StructuredOutputsParams as S
from edgellama.runtime.structured import structured_complete, to_tree
from edgellama.sampling_params import SamplingParams

PATTERNS = [r"(yes|no)", r"[a-z]+@[a-z]+\.com", r"\d{3}-\d{4}", r"(ab|a)*b?", r'"[^"\\]*"', r"x{2,5}y",
            r"caf\u00e9|é+", r".{0,3}", r"(a|b){2,}c", r"\w+\s\W", r"[\]a-]+", r"a{,2}", r"^(?:on|off)$"]
ALPHABET = 'abcyesno@.com-0123459xy"{},\\ é\n]'


@pytest.mark.parametrize("pattern", PATTERNS)
def test_regex_dfa_matches_as_python_re_does(pattern):
    dfa = A.compile_regex(pattern)
    rx = re.compile(pattern, re.ASCII)  # \d \w \s are ASCII classes here, as with re.ASCII
    rnd = random.Random(pattern)
    words = ["yes", "no", "ab", "a@b.com", "123-4567", "xxy", "café", "abc", '"ok"', "on", "off"]
    for _ in range(3000):
        text = "".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(0, 7))) if rnd.random() < 0.7 else \
            rnd.choice(words) + "".join(rnd.choice("abcy") for _ in range(rnd.randint(0, 2)))
        assert dfa.fullmatch(text.encode()) == (rx.fullmatch(text) is not None), (pattern, text)


def test_the_dfa_is_minimal_and_its_bytes_are_the_c_format():
    dfa = A.compile_regex(r"(yes|yea)h?")
    assert dfa.n_states == 5  # start, y, ye, yes/yea (one state), ...h
    data = dfa.to_bytes()
    assert data[:4] == b"ELD1" and int.from_bytes(data[4:6], "little") == dfa.n_states
    assert len(data) == 264 + dfa.n_states + 2 * dfa.n_states * dfa.n_classes


@pytest.mark.parametrize("pattern, message", [
    (r"(a|b)*a(a|b){12}", "automaton states"), (r"a{2000}", "out of range"), (r"(?=a)", "lookaround"),
    (r"(a)\1", "unsupported escape"), (r"[é-ü]", "non-ASCII"), (r"*a", "nothing to repeat"), (r"(ab", "missing")])
def test_bad_or_too_large_regexes_are_refused_by_name(pattern, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(structured_outputs=S(regex=pattern))


def test_exactly_one_kind():
    with pytest.raises(ValueError, match="exactly one"):
        S(choice=["a"], regex="b")
    with pytest.raises(ValueError, match="exactly one"):
        S()
    with pytest.raises(ValueError, match="non-empty"):
        S(choice=[])


@pytest.mark.parametrize("low, high", [(0, 9), (5, 120), (-15, 7), (-120, -3), (None, 12), (-7, None), (0, 0),
                                       (99, 100)])
def test_integer_bounds_are_exact(low, high):
    schema = {"type": "integer"}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    dfa = A.compile_ast(to_tree(S(json=schema)))
    for n in range(-300, 301):
        ok = (low is None or n >= low) and (high is None or n <= high)
        assert dfa.fullmatch(str(n).encode()) == ok, (schema, n)
    for bad in ("01", "-0", "+3", "1.0", "", "-"):
        assert not dfa.fullmatch(bad.encode()) or bad == "-0" and low is None


def test_bounded_numbers_stay_in_bounds():
    dfa = A.compile_ast(to_tree(S(json={"type": "number", "minimum": -2.5, "maximum": 10})))
    rnd = random.Random(3)
    accepted = 0
    for _ in range(5000):
        text = rnd.choice(["", "-"]) + str(rnd.randint(0, 12)) + rnd.choice(["", "." + str(rnd.randint(0, 999))])
        if dfa.fullmatch(text.encode()):
            accepted += 1
            assert -2.5 <= float(text) <= 10, text
    assert accepted > 1000
    for text in ("10", "9.75", "0.5", "-2", "-1.5"):
        assert dfa.fullmatch(text.encode()), text


PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "pet": {"enum": ["dog", "cat", None]},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "maxItems": 2},
    "home": {"$ref": "#/$defs/place"}},
    "required": ["name", "age"], "$defs": {"place": {"type": "object", "properties": {
        "town": {"type": "string"}}, "required": ["town"]}}}


def validate_person(value):
    assert set(value) <= set(PERSON["properties"]) and {"name", "age"} <= set(value)
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 120
    assert value.get("pet", "dog") in ("dog", "cat", None)
    assert all(t in ("a", "b") for t in value.get("tags", [])) and len(value.get("tags", [])) <= 2
    assert isinstance(value.get("home", {"town": ""})["town"], str)


def test_json_schema_accepts_valid_documents_and_refuses_others():
    dfa = A.compile_ast(to_tree(S(json=PERSON)))
    good = ['{"name":"bo","age":7}', '{"name": "bo", "age": 120, "pet": null}',
            '{"name":"é\\n\\"x","age":0,"tags":["a","b"],"home":{"town":"oslo"}}']
    bad = ['{"name":"bo","age":121}', '{"age":7}', '{"name":"bo","age":7,"x":1}', '{"age":7,"name":"bo"}',
           '{"name":"thirteen char","age":1}', '{"name":"bo","age":7,"tags":["a","b","a"]}', '{"name":"bo",}']
    for text in good:
        assert dfa.fullmatch(text.encode()), text
        validate_person(json.loads(text))
    for text in bad:
        assert not dfa.fullmatch(text.encode()), text


def test_optional_members_grow_the_automaton_linearly():
    sizes = []
    for n in (4, 8, 16):
        props = {f"p{i}": {"type": "integer", "minimum": 0, "maximum": 9} for i in range(n)}
        dfa = A.compile_ast(to_tree(S(json={"type": "object", "properties": props})))
        sizes.append(dfa.n_states)
        assert dfa.fullmatch(b'{"p1":3, "p3":0}') and dfa.fullmatch(b"{}") and not dfa.fullmatch(b'{"p3":1,"p1":2}')
    assert sizes[1] <= 2.5 * sizes[0] and sizes[2] <= 2.5 * sizes[1]  # twice the members, about twice the states


@pytest.mark.parametrize("schema, message", [
    ({"type": "integer", "minimum": 5, "maximum": 3}, "above maximum"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"$ref": "#/$defs/a"}}},
     "recursive"),
    ({"type": "string", "format": "email"}, "format"), ({"type": "tuple"}, "not supported"),
    ({"type": "object", "properties": {}, "required": ["x"]}, "not defined")])
def test_unsupported_or_impossible_schemas_are_refused(schema, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(structured_outputs=S(json=schema))


GRAMMAR = '''
# a greeting
root ::= greeting " " name ("!" | "?")?
greeting ::= "hello" | "hi"   # the short one too
name ::= [A-Z] [a-z]{1,8}
'''


def test_gbnf_subset():
    dfa = A.compile_ast(to_tree(S(grammar=GRAMMAR)))
    for text, ok in [("hello Bob", True), ("hi Al!", True), ("hi al", False), ("hey Bob", False), ("hi A", False)]:
        assert dfa.fullmatch(text.encode()) == ok, text
    with pytest.raises(ValueError, match="recursive"):
        SamplingParams(structured_outputs=S(grammar='root ::= "(" root ")" | "x"'))
    with pytest.raises(ValueError, match="not defined"):
        SamplingParams(structured_outputs=S(grammar="root ::= missing"))


# ---------------------------------------------------------------- the C mask and real samples

@pytest.fixture(scope="module")
def llm():
    from edgellama import LLM
    return LLM()


def python_allowed(llm, dfa, state, previous):
    """The mask's rule, in Python: a token's bytes must stay in the language; EOS/BOS only where it may end."""
    rt = llm._rt
    bos, eos = 1, 2  # the default model's (llama2.c's)
    out = []
    for token in range(rt.vocab_size):
        if token in (eos, bos):
            out.append(int(dfa.accepting[state]))
            continue
        data = rt.token_bytes(previous, token)
        out.append(int(bool(data) and dfa.walk(data, state) >= 0))
    return out


def test_the_c_mask_is_the_python_rule_on_the_real_vocabulary(llm):
    for params in (S(choice=["yes", "no", "maybe"]), S(json=PERSON), S(regex=r"[a-z ]+\.")):
        dfa = A.compile_ast(to_tree(params))
        data = dfa.to_bytes()
        rnd = random.Random(7)
        for state in sorted({0, *rnd.sample(range(dfa.n_states), min(5, dfa.n_states))}):
            for previous in (1, 29, 300):
                allowed = llm._rt.allowed_tokens(data, state, previous)
                assert allowed == python_allowed(llm, dfa, state, previous), (params.kind(), state, previous)
                assert sum(allowed) > 0
    with pytest.raises(ValueError, match="ELD1"):
        llm._rt.allowed_tokens(b"nonsense" * 40, 0, 1)


def test_malformed_automata_are_refused_whole(llm):
    good = bytearray(A.compile_regex(r"(yes|no)").to_bytes())
    n_states, n_classes = good[4], good[6]
    cases = {"its length does not match": good[:-1],
             "a byte's class is out of range": good[:8] + bytes([n_classes]) + good[9:],
             "a transition leads to no state": good[:-2] + bytes([n_states, 0]),
             "state or class count out of range": good[:4] + b"\0\0" + good[6:]}
    for message, data in cases.items():
        with pytest.raises(ValueError, match=message):
            llm._rt.allowed_tokens(bytes(data), 0, 1)
    request = SamplingParams(structured_outputs=S(choice=["yes", "no"]))
    request.structured_outputs.compiled = bytes(cases["a transition leads to no state"])
    with pytest.raises(Exception, match="a transition leads to no state"):
        llm.generate("x", request, use_tqdm=False)


@pytest.mark.parametrize("params, check", [
    (S(choice=["yes", "no", "maybe"]), lambda t: t in ("yes", "no", "maybe")),
    (S(regex=r"[a-z]+ is \d{1,2} years old\."), lambda t: re.fullmatch(r"[a-z]+ is \d{1,2} years old\.", t)),
    (S(json=PERSON), lambda t: validate_person(json.loads(t)) is None),
    (S(grammar=GRAMMAR), lambda t: re.fullmatch(r"(hello|hi) [A-Z][a-z]{1,8}[!?]?", t)),
    (S(json_object=True), lambda t: isinstance(json.loads(t), dict))])
def test_seeded_samples_all_satisfy_their_constraint(llm, params, check):
    whole = 0
    for seed in range(12):
        out = llm.generate("the answer is", SamplingParams(temperature=1.0, seed=seed, max_tokens=120,
                                                           structured_outputs=params), use_tqdm=False)[0].outputs[0]
        if out.finish_reason == "stop":
            whole += 1
            assert check(out.text), out.text
            assert structured_complete(params, out.text)
        else:  # cut by max_tokens: still a prefix of the language
            assert out.finish_reason == "length" and not structured_complete(params, out.text)
            assert A.compile_ast(to_tree(params)).walk(out.text.encode()) >= 0
    assert whole >= (6 if params.kind() != "json_object" else 0)


def test_greedy_constrained_output_is_repeatable_and_n_samples_fork(llm):
    bounded = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                                "age": {"type": "integer", "minimum": 1, "maximum": 99}},
               "required": ["name", "age"]}  # bounded: greedy finishes it well within 60 tokens
    params = SamplingParams(temperature=0, max_tokens=60, structured_outputs=S(json=bounded))
    a = llm.generate("once upon a time", params, use_tqdm=False)[0].outputs[0]
    b = llm.generate("once upon a time", params, use_tqdm=False)[0].outputs[0]
    assert a.text == b.text and a.finish_reason == "stop"
    value = json.loads(a.text)
    assert set(value) == {"name", "age"} and len(value["name"]) <= 8 and 1 <= value["age"] <= 99
    forked = llm.generate("once upon a time", SamplingParams(n=3, seed=5, max_tokens=60, structured_outputs=S(
        choice=["red", "green", "blue"])), use_tqdm=False)[0].outputs
    assert len(forked) == 3 and all(o.text in ("red", "green", "blue") for o in forked)


def test_a_constraint_cut_by_max_tokens_ends_with_length(llm):
    params = S(regex=r"(a|b){40}")
    out = llm.generate("x", SamplingParams(max_tokens=5, seed=1, structured_outputs=params),
                       use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "length" and not structured_complete(params, out.text)
    assert re.fullmatch(r"[ab]*", out.text)


def test_the_constraint_decides_where_the_text_ends_even_with_min_tokens(llm):
    out = llm.generate("x", SamplingParams(min_tokens=10, max_tokens=20, seed=2, ignore_eos=True,
                                           structured_outputs=S(choice=["ok"])), use_tqdm=False)[0].outputs[0]
    assert out.text == "ok" and out.finish_reason == "stop"


# ---------------------------------------------------------------- over the serial protocol

CONSTRAINTS = [S(json=PERSON), S(choice=["yes", "no", "maybe"]), S(grammar=GRAMMAR)]


def same_tokens_as_host(dev, host, prompts=("the answer is", "once upon a time")):
    """Seeded constrained samples on the device give the host's text, and greedy too."""
    for params in CONSTRAINTS:
        for prompt in prompts:
            for seed in (0, 1):
                sp = SamplingParams(temperature=1.0 if seed else 0.0, seed=seed, max_tokens=60,
                                    structured_outputs=params)
                want = host.generate(prompt, sp, use_tqdm=False)[0].outputs[0]
                assert "".join(dev.generate(prompt, sp)) == want.text, (params.kind(), prompt, seed)
                assert dev.last_stats.finish_reason == want.finish_reason


def test_the_planner_counts_the_constraint_buffer():
    from edgellama.boards import planner
    from edgellama.boards.catalog import MCU_CONSTRAINT_BYTES, get_board, protocol_constraint_bytes
    assert get_board("rpi4").constraint_bytes == protocol_constraint_bytes() == 16384
    pico = get_board("rpi-pico2")
    assert pico.constraint_bytes == MCU_CONSTRAINT_BYTES
    assert "automaton is at most 8,192 bytes" in planner.format_plan(planner.plan(pico, quant="q8_0", kv_dtype="int8"))
    # the buffer is RAM the arena cannot have: a bigger one leaves a smaller budget
    import dataclasses
    small = planner.plan(dataclasses.replace(pico, arena=0), quant="q8_0")
    big = planner.plan(dataclasses.replace(pico, arena=0, constraint_bytes=64 << 10), quant="q8_0")
    assert small.arena_budget - big.arena_budget == (64 << 10) - MCU_CONSTRAINT_BYTES


def test_the_posix_program_takes_constraints_over_the_protocol(llm):
    from edgellama.devices import protocol as P
    from edgellama.devices.protocol_device import ProtocolDevice
    from edgellama.devices.streams import ProcessStream
    from edgellama.errors import EdgeLlamaError
    from edgellama.runtime import build as runtime_build
    dev = ProtocolDevice(ProcessStream([runtime_build.host_program(), llm.model, "serve"], "edgellama-run serve"),
                         timeout=30)
    try:
        assert dev.info()["constraint_bytes"] == 16384
        same_tokens_as_host(dev, llm)
        # an automaton past the device's buffer is refused before anything is sent, with the numbers
        with pytest.raises(EdgeLlamaError, match=r"automaton is 36,980 bytes and this device holds 16,384"):
            list(dev.generate("x", SamplingParams(structured_outputs=S(json_object=True))))
        # the device checks that what GENERATE names is what it holds
        dev._constraint_held = SamplingParams(structured_outputs=S(choice=["a", "b"])).constraint
        with pytest.raises(EdgeLlamaError, match="holds a different constraint"):
            list(dev.generate("x", SamplingParams(structured_outputs=S(choice=["a", "b"]))))
        assert "".join(dev.generate("x", SamplingParams(structured_outputs=S(choice=["a", "b"])))) in ("a", "b")
        with pytest.raises(EdgeLlamaError, match="out of order"):
            dev._request(P.CONSTRAINT, b"\x10\x00\x00\x00abc", P.OK)
        # past the device's buffer: refused, and the buffer is empty again
        chunks = P.constraint_chunks(bytes(16384 + 1))
        with pytest.raises(EdgeLlamaError, match="more than this device's 16384 bytes"):
            for chunk in chunks:
                dev._request(P.CONSTRAINT, chunk, P.OK)
        dev._constraint_held = None
        assert dev.ping(b"still here") == b"still here"
    finally:
        dev.close()


@pytest.mark.emulated
def test_constraints_on_an_emulated_bare_metal_board_give_the_hosts_tokens(board_builds):
    from edgellama import LLM
    from edgellama.devices.opener import open_device
    require_board("mps2-an386")
    out_dir = board_builds("mps2-an386", "q8_0").out_dir
    host = LLM(str(out_dir / "model.gguf"))
    with open_device(board="mps2-an386", output=out_dir, timeout=120) as dev:
        assert dev.info()["constraint_bytes"] == 32 << 10  # its board file's
        same_tokens_as_host(dev, host, prompts=("the answer is",))


# ---------------------------------------------------------------- the command line

def run_cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "edgellama", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_generate_and_chat_take_the_constraint_flags(tmp_path):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    grammar = tmp_path / "greeting.gbnf"
    grammar.write_text(GRAMMAR)
    r = run_cli("generate", "the answer is", "--json-schema", schema, "--seed", "3", "--max-tokens", "120")
    assert r.returncode == 0, r.stderr
    text = r.stdout.rstrip("\n")[len("the answer is"):]
    assert validate_person(json.loads(text)) is None
    r = run_cli("generate", "hi", "--choice", "yes", "--choice", "no", "--temperature", "0")
    assert r.returncode == 0 and r.stdout.strip() in ("hiyes", "hino")
    r = run_cli("generate", "hi", "--grammar", grammar, "--n", "3")
    samples = [line for line in r.stdout.splitlines() if not line.startswith("---")]
    assert r.returncode == 0 and len(samples) == 3
    assert all(re.fullmatch(r"hi(hello|hi) [A-Z][a-z]{1,8}[!?]?", s) for s in samples), samples
    r = run_cli("generate", "x", "--regex", "(ab){30}", "--max-tokens", "5")
    assert r.returncode == 0 and "before its regex constraint was complete" in r.stderr
    r = subprocess_chat("give me a name\n/quit\n", "--regex", "[A-Z][a-z]{2,6}\\.", "--seed", "1")
    assert re.search(r"^> [A-Z][a-z]{2,6}\.$", r.stdout, re.M), r.stdout


def subprocess_chat(lines, *args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "edgellama", "chat", *args], input=lines, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args, needles", [
    (["--regex", "a(b"], ["--regex", "missing )"]),
    (["--choice", "a", "--regex", "b"], ["--choice and --regex", "one structured-output constraint"]),
    (["--json-schema", "MISSING.json"], ["--json-schema", "MISSING.json", "cannot read"]),
    (["--grammar", "RECURSIVE"], ["--grammar", "recursive"]),
    (["--regex", "(a|b)*a(a|b){12}"], ["--regex", "automaton states"])])
def test_a_bad_constraint_flag_is_one_line_naming_it(tmp_path, args, needles):
    recursive = tmp_path / "r.gbnf"
    recursive.write_text('root ::= "(" root ")" | "x"')
    args = [str(recursive) if a == "RECURSIVE" else str(tmp_path / a) if a.endswith(".json") else a for a in args]
    r = run_cli("generate", "x", *args)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and all(n in lines[0] for n in needles), lines[0]


# ---------------------------------------------------------------- the OpenAI server

@pytest.fixture(scope="module")
def server():
    import threading

    from edgellama.devices import serve
    from edgellama.devices.opener import open_device
    device = open_device(local=True)
    server = serve.make_server(device, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
    device.close()


def test_response_format_and_vllms_fields_through_the_openai_client(server, client, model):
    import openai
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "age": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["name", "age"]}
    for seed in range(3):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "who is the girl?"}], seed=seed, max_tokens=60,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
        value = json.loads(r.choices[0].message.content)
        assert set(value) == {"name", "age"} and 1 <= value["age"] <= 9 and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model=model, prompt="the color is", max_tokens=10, n=3, seed=1,
                                  extra_body={"structured_outputs": {"choice": ["red", "green", "blue"]}})
    assert all(c.text in ("red", "green", "blue") for c in r.choices)
    r = client.completions.create(model=model, prompt="age:", max_tokens=10, extra_body={"guided_regex": r"\d{2}"})
    assert re.fullmatch(r"\d{2}", r.choices[0].text)
    chunks = client.completions.create(model=model, prompt="x", max_tokens=40, stream=True, seed=2,
                                       extra_body={"response_format": {"type": "json_object"}})
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert A.compile_ast(to_tree(S(json_object=True))).walk(text.encode()) >= 0
    for extra, field, needle in [
            ({"guided_regex": "a(b"}, "guided_regex", "missing )"),
            ({"response_format": {"type": "xml"}}, "response_format", "json_schema"),
            ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
            ({"structured_outputs": {"choice": ["a"], "regex": "b"}}, "structured_outputs", "exactly one"),
            ({"structured_outputs": {"colour": "red"}}, "structured_outputs", "colour"),
            ({"guided_choice": ["a"], "guided_regex": "b"}, "guided_choice", "one structured-output constraint"),
            ({"guided_choice": ["a"], "use_beam_search": True, "n": 2}, "use_beam_search", "constraint")]:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=model, prompt="x", max_tokens=4, extra_body=extra)
        error = e.value.body
        assert error["param"] == field and needle in error["message"], error
    assert client.completions.create(model=model, prompt="x", max_tokens=2).choices[0].text is not None


@pytest.mark.emulated
def test_serve_on_an_emulated_linux_board_takes_response_format(board_builds):
    import threading

    import openai

    from edgellama import LLM
    from edgellama.devices import serve
    from edgellama.devices.opener import open_device
    require_board("qemu-aarch64")
    out_dir = board_builds("qemu-aarch64", "q8_0").out_dir
    device = open_device(board="qemu-aarch64", output=str(out_dir), timeout=60)
    server = serve.make_server(device, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        r = client.completions.create(model=model, prompt="the answer is", max_tokens=60, temperature=0,
                                      extra_body={"response_format": {"type": "json_schema",
                                                                      "json_schema": {"schema": PERSON}}})
        host = LLM(str(out_dir / "model.gguf"))
        want = host.generate("the answer is", SamplingParams(temperature=0, max_tokens=60,
                                                             structured_outputs=S(json=PERSON)), use_tqdm=False)
        assert r.choices[0].text == want[0].outputs[0].text
        with pytest.raises(openai.BadRequestError, match=r"response_format: the constraint's automaton is 36,980 "
                                                         r"bytes and this device holds 16,384"):
            client.completions.create(model=model, prompt="x", max_tokens=4,
                                      extra_body={"response_format": {"type": "json_object"}})
    finally:
        server.shutdown()
        server.server_close()
        device.close()
