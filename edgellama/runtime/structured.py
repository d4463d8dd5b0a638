"""Structured outputs: vLLM's StructuredOutputsParams, compiled to the C core's DFA.

    from edgellama.sampling_params import SamplingParams, StructuredOutputsParams
    params = SamplingParams(structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))

Exactly one of the kinds is given; each becomes a regular language over bytes
(automaton.py) that the C core applies as a logit mask (el_constraint.h), so the same
constraint holds in the host library, on Linux boards and on bare metal.

- choice: one of the strings, exactly.
- regex: automaton.py's syntax (Python's, without backreferences or lookaround).
- json: a JSON schema (a dict or its text), in this subset: "type" object (properties,
  required, additionalProperties false is the only behaviour; properties come in the
  schema's order, optional ones may be left out), string (enum, const, minLength,
  maxLength, pattern), integer and number (minimum, maximum; a bounded number is
  written without an exponent), boolean, null, array (items, minItems, maxItems),
  enum and const of any JSON value, anyOf, and $ref to "#/$defs/..." or
  "#/definitions/..." that do not recurse. Anything else is refused by name.
- json_object: any JSON object, nested at most JSON_OBJECT_DEPTH deep (a DFA counts
  only so far).
- grammar: a GBNF subset: rules `name ::= ...` with "literals", [classes], rule names,
  ( ) groups, | and the quantifiers * + ? {m,n}; the start rule is `root`. Rules may not
  refer to themselves, directly or not: the language must be regular.

JSON is written compactly: no whitespace but one optional space after `,` and `:` (a
tiny model keeps to it more easily than to free whitespace), or none at all with
disable_any_whitespace. The output must be whole: where max_tokens ends it first, the
request finishes with "length" and `structured_complete(text)` says it is unfinished.
"""

import json
from dataclasses import dataclass

from edgellama.runtime import automaton as A

JSON_OBJECT_DEPTH = 3


@dataclass
class StructuredOutputsParams:
    """vLLM's fields; exactly one of json, regex, choice, grammar, json_object is set."""
    json: str | dict | None = None
    regex: str | None = None
    choice: list | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    def __post_init__(self):
        given = [name for name in ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
                 if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise ValueError("structured_outputs: give exactly one of json, regex, choice, grammar, json_object "
                             f"(got {', '.join(given) or 'none'})")
        if self.structural_tag is not None:
            raise ValueError("structured_outputs: structural_tag is not supported here")
        if self.whitespace_pattern is not None:
            raise ValueError("structured_outputs: whitespace_pattern is not supported (see disable_any_whitespace)")
        if self.choice is not None and (not isinstance(self.choice, (list, tuple)) or not self.choice or
                                        not all(isinstance(c, str) and c for c in self.choice)):
            raise ValueError("structured_outputs.choice must be a non-empty list of non-empty strings")

    compiled = None  # the DFA's bytes, set when a SamplingParams takes these (compile_constraint)

    def kind(self) -> str:
        return next(name for name in ("json", "regex", "choice", "grammar", "json_object")
                    if getattr(self, name) not in (None, False))


def to_tree(params: StructuredOutputsParams) -> tuple:
    """The constraint's language as an automaton.py tree (ValueError naming the problem)."""
    kind = params.kind()
    if kind == "choice":
        return A.alt(*[A.lit(c) for c in params.choice])
    if kind == "regex":
        return A.parse_regex(params.regex)
    if kind == "grammar":
        return grammar_tree(params.grammar)
    ws = A.EMPTY if params.disable_any_whitespace else A.rep(A.lit(" "), 0, 1)
    if kind == "json_object":
        return _Json(ws, {}).any_object(JSON_OBJECT_DEPTH)
    schema = params.json
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"structured_outputs.json: not valid JSON ({e})") from None
    if not isinstance(schema, dict):
        raise ValueError("structured_outputs.json must be a JSON schema object")
    return _Json(ws, schema).value(schema, "#")


_cache = {}


def compile_constraint(params: StructuredOutputsParams, max_states: int = A.MAX_STATES) -> bytes:
    """The bytes the C core takes (el_constraint.h), cached by the params' contents."""
    key = (repr(params), max_states)
    if key not in _cache:
        if len(_cache) > 64:
            _cache.clear()
        _cache[key] = A.compile_ast(to_tree(params), max_states).to_bytes()
    return _cache[key]


def structured_complete(params: StructuredOutputsParams, text: str) -> bool:
    """Whether text is a whole word of the constraint's language (not cut short)."""
    return A.compile_ast(to_tree(params)).fullmatch(text.encode("utf-8"))


# ---------------------------------------------------------------- JSON schema

_JSON_CHAR = A.alt(A.utf8_char_except(frozenset(b'"\\') | frozenset(range(32))),
                   A.cat(A.lit("\\"), A.alt(A.byteset(b'"\\/bfnrt'),
                                            A.cat(A.lit("u"), A.rep(A.byteset(b"0123456789abcdefABCDEF"), 4, 4)))))
_DIGIT, _DIGIT19 = A.byteset(b"0123456789"), A.byteset(b"123456789")
_INTEGER = A.cat(A.rep(A.lit("-"), 0, 1), A.alt(A.lit("0"), A.cat(_DIGIT19, A.rep(_DIGIT, 0, None))))
_FRACTION = A.cat(A.lit("."), A.rep(_DIGIT, 1, None))
_EXPONENT = A.cat(A.byteset(b"eE"), A.rep(A.byteset(b"+-"), 0, 1), A.rep(_DIGIT, 1, None))
_NUMBER = A.cat(_INTEGER, A.rep(_FRACTION, 0, 1), A.rep(_EXPONENT, 0, 1))


def _string(low=0, high=None) -> tuple:
    return A.cat(A.lit('"'), A.rep(_JSON_CHAR, low, high), A.lit('"'))


def _digits_range(low: str, high: str) -> tuple:
    """Digit strings of equal length from low to high inclusive (the classic split)."""
    if not low:
        return A.EMPTY
    if low[0] == high[0]:
        return A.cat(A.lit(low[0]), _digits_range(low[1:], high[1:]))
    n = len(low) - 1
    parts = [A.cat(A.lit(low[0]), _digits_range(low[1:], "9" * n))]
    if int(high[0]) - int(low[0]) > 1:
        parts.append(A.cat(A.byteset(range(ord(low[0]) + 1, ord(high[0]))), A.rep(_DIGIT, n, n)))
    parts.append(A.cat(A.lit(high[0]), _digits_range("0" * n, high[1:])))
    return A.alt(*parts)


def _natural_range(low: int, high: int) -> tuple:
    """Decimal numerals (no leading zeros) of the integers low..high, 0 <= low <= high."""
    parts = []
    for width in range(len(str(low)), len(str(high)) + 1):
        lo = max(low, 0 if width == 1 else 10 ** (width - 1))
        hi = min(high, 10 ** width - 1)
        if lo <= hi:
            parts.append(_digits_range(str(lo), str(hi)))
    return A.alt(*parts)


def _integer_range(low, high) -> tuple:
    """The integers in [low, high] as JSON numerals (either bound may be None)."""
    if low is None and high is None:
        return _INTEGER
    if low is not None and high is None:  # [low, inf)
        if low <= 0:
            return A.alt(_integer_range(low, -1), _natural_from(0)) if low < 0 else _natural_from(0)
        return _natural_from(low)
    if low is None:  # (-inf, high]
        if high >= 0:
            return A.alt(A.cat(A.lit("-"), _natural_from(1)), _natural_range(0, high))
        return A.cat(A.lit("-"), _natural_from(-high))
    if low > high:
        raise ValueError(f"minimum {low} is above maximum {high}")
    parts = []
    if low < 0:
        parts.append(A.cat(A.lit("-"), _natural_range(max(1, -min(high, -1)), -low)))
    if high >= 0:
        parts.append(_natural_range(max(low, 0), high))
    return A.alt(*parts)


def _natural_from(low: int) -> tuple:
    """Numerals of the integers >= low (low >= 0): up to low's width by range, then any longer."""
    width = len(str(low))
    return A.alt(_natural_range(low, 10 ** width - 1), A.cat(_DIGIT19, A.rep(_DIGIT, width, None)))


def _bound(value, name) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    return value


class _Json:
    def __init__(self, ws, root: dict):
        self.ws, self.root, self.refs = ws, root, []

    def fail(self, where, what):
        raise ValueError(f"structured_outputs.json: {where}: {what}")

    def value(self, schema, where) -> tuple:
        if schema is True or schema == {}:
            return self.any_value(JSON_OBJECT_DEPTH - 1)
        if not isinstance(schema, dict):
            self.fail(where, "a schema must be an object")
        if "$ref" in schema:
            return self.ref(schema["$ref"], where)
        if "const" in schema:
            return A.lit(json.dumps(schema["const"], separators=(",", ":")))
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                self.fail(where, "enum must be a non-empty list")
            return A.alt(*[A.lit(json.dumps(v, separators=(",", ":"))) for v in schema["enum"]])
        if "anyOf" in schema or "oneOf" in schema:
            options = schema.get("anyOf", schema.get("oneOf"))
            return A.alt(*[self.value(s, f"{where}/anyOf/{i}") for i, s in enumerate(options)])
        kind = schema.get("type")
        if isinstance(kind, list):
            return A.alt(*[self.value({**schema, "type": k}, where) for k in kind])
        if kind == "object":
            return self.object(schema, where)
        if kind == "array":
            return self.array(schema, where)
        if kind == "string":
            return self.string(schema, where)
        if kind == "integer":
            return _integer_range(self.int_bound(schema, "minimum", where), self.int_bound(schema, "maximum", where))
        if kind == "number":
            return self.number(schema, where)
        if kind == "boolean":
            return A.alt(A.lit("true"), A.lit("false"))
        if kind == "null":
            return A.lit("null")
        if kind is None:
            return self.any_value(JSON_OBJECT_DEPTH - 1)
        self.fail(where, f"type {kind!r} is not supported")

    def ref(self, ref, where):
        prefix = next((p for p in ("#/$defs/", "#/definitions/") if isinstance(ref, str) and ref.startswith(p)), None)
        if prefix is None:
            self.fail(where, f"$ref {ref!r}: only #/$defs/NAME and #/definitions/NAME are supported")
        name = ref[len(prefix):]
        table = self.root.get(prefix[2:-1], {})
        if name not in table:
            self.fail(where, f"$ref {ref!r} names no definition")
        if ref in self.refs:
            self.fail(where, f"$ref {ref!r} refers to itself: recursive schemas are not regular")
        self.refs.append(ref)
        try:
            return self.value(table[name], ref)
        finally:
            self.refs.pop()

    def int_bound(self, schema, name, where):
        value = _bound(schema.get(name), f"{where}: {name}")
        if value is None:
            return None
        return int(-(-value // 1)) if name == "minimum" else int(value // 1)

    def number(self, schema, where):
        low = _bound(schema.get("minimum"), f"{where}: minimum")
        high = _bound(schema.get("maximum"), f"{where}: maximum")
        if low is None and high is None:
            return _NUMBER
        # A numeral with integer part I (written with its sign) and a fraction lies in
        # [I, I + 1) when I >= 0 and in (I - 1, I] when written negative: fractions go
        # with the integer parts whose whole interval stays within the bounds.
        lo = None if low is None else int(-(-low // 1))
        hi = None if high is None else int(high // 1)
        whole = _integer_range(lo, hi)
        parts = [whole]
        pos_lo = max(0, lo) if lo is not None else 0
        pos_hi = None if hi is None else hi - 1
        if pos_hi is None or pos_lo <= pos_hi:
            parts.append(A.cat(_integer_range(pos_lo, pos_hi), _FRACTION))
        neg_hi = -1 if hi is None else min(-1, hi)  # written -k with k >= 1: value in (-k-1, -k]
        neg_lo = None if lo is None else lo + 1
        if neg_lo is None or neg_lo <= neg_hi:
            parts.append(A.cat(_integer_range(neg_lo, neg_hi), _FRACTION))
        return A.alt(*parts)

    def string(self, schema, where):
        if "pattern" in schema:
            inner = A.parse_regex(schema["pattern"])  # the value's characters, escaped as JSON needs
            return A.cat(A.lit('"'), inner, A.lit('"'))
        if "format" in schema:
            self.fail(where, f"string format {schema['format']!r} is not supported (use pattern)")
        low = schema.get("minLength", 0)
        high = schema.get("maxLength")
        for name, v in (("minLength", low), ("maxLength", high)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                self.fail(where, f"{name} must be a non-negative integer")
        return _string(low, high)

    def array(self, schema, where):
        items = self.value(schema.get("items", {}), f"{where}/items")
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        sep = A.cat(A.lit(","), self.ws)
        if high == 0:
            return A.lit("[]")
        rest_high = None if high is None else high - 1
        body = A.cat(items, A.rep(A.cat(sep, items), max(low - 1, 0), rest_high))
        return A.cat(A.lit("["), body if low > 0 else A.rep(body, 0, 1), A.lit("]"))

    def object(self, schema, where):
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            self.fail(where, "properties must be an object")
        required = set(schema.get("required", []))
        unknown = required - set(props)
        if unknown:
            self.fail(where, f"required names properties that are not defined: {sorted(unknown)}")
        if not props:
            return self.any_object(JSON_OBJECT_DEPTH - 1) if schema.get("additionalProperties", True) not in (
                False,) else A.lit("{}")
        members = [(name in required, A.cat(A.lit(json.dumps(name)), A.lit(":"), self.ws,
                                            self.value(sub, f"{where}/properties/{name}")))
                   for name, sub in props.items()]
        return A.cat(A.lit("{"), self.members(members), A.lit("}"))

    def members(self, members) -> tuple:
        """The members in order, optional ones possibly left out, commas only between."""
        sep = A.cat(A.lit(","), self.ws)
        # after(i, first): members i.. where `first` says no member has been written yet
        memo = {}

        def after(i, first):
            if i == len(members):
                return A.EMPTY
            if (i, first) in memo:
                return memo[(i, first)]
            needed, member = members[i]
            this = member if first else A.cat(sep, member)
            taken = A.cat(this, after(i + 1, False))
            out = taken if needed else A.alt(taken, after(i + 1, first))
            memo[(i, first)] = out
            return out

        return after(0, True)

    def any_value(self, depth) -> tuple:
        options = [_string(), _NUMBER, A.lit("true"), A.lit("false"), A.lit("null")]
        if depth > 0:
            options += [self.any_object(depth - 1), self.any_array(depth - 1)]
        return A.alt(*options)

    def any_object(self, depth) -> tuple:
        sep = A.cat(A.lit(","), self.ws)
        member = A.cat(_string(), A.lit(":"), self.ws, self.any_value(depth))
        return A.cat(A.lit("{"), A.rep(A.cat(member, A.rep(A.cat(sep, member), 0, None)), 0, 1), A.lit("}"))

    def any_array(self, depth) -> tuple:
        sep = A.cat(A.lit(","), self.ws)
        item = self.any_value(depth)
        return A.cat(A.lit("["), A.rep(A.cat(item, A.rep(A.cat(sep, item), 0, None)), 0, 1), A.lit("]"))


# ---------------------------------------------------------------- GBNF subset

def grammar_tree(text: str) -> tuple:
    """The `root` rule of a GBNF grammar (the subset in the module docstring) as a tree."""
    rules = {}
    for name, body in _grammar_rules(text):
        if name in rules:
            raise ValueError(f"grammar: rule {name!r} is defined twice")
        rules[name] = body
    if "root" not in rules:
        raise ValueError("grammar: no root rule (the start rule is named root)")
    return _GrammarParser(rules).rule("root", ())


def _grammar_rules(text: str):
    """(name, body) for each `name ::= body`; a body runs to the next rule's start."""
    import re
    text = "\n".join(_without_comment(line) for line in text.splitlines())
    heads = list(re.finditer(r"(?m)^\s*([A-Za-z][A-Za-z0-9_-]*)\s*::=", text))
    if not heads:
        raise ValueError("grammar: no rules (write them as name ::= ...)")
    if text[:heads[0].start()].strip():
        raise ValueError("grammar: text before the first rule")
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        yield m.group(1), text[m.end():end]


def _without_comment(line: str) -> str:
    """The line up to a '#' that is outside any "literal" or [class]."""
    closing, i = None, 0
    while i < len(line):
        c = line[i]
        if closing:
            if c == "\\":
                i += 1
            elif c == closing:
                closing = None
        elif c in "\"[":
            closing = '"' if c == '"' else "]"
        elif c == "#":
            return line[:i]
        i += 1
    return line


class _GrammarParser:
    def __init__(self, rules):
        self.rules = rules

    def rule(self, name, stack):
        if name not in self.rules:
            raise ValueError(f"grammar: rule {name!r} is used but not defined")
        if name in stack:
            raise ValueError(f"grammar: rule {name!r} refers to itself ({' -> '.join(stack + (name,))}); "
                             "recursive rules are not supported, the language must be regular")
        self.text, self.i, saved = self.rules[name], 0, (getattr(self, "text", None), getattr(self, "i", 0))
        self.stack = stack + (name,)
        tree = self.alternation()
        self.skip()
        if self.i != len(self.text):
            raise ValueError(f"grammar: rule {name!r}: unexpected {self.text[self.i]!r}")
        self.text, self.i = saved
        return tree

    def skip(self):
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def peek(self):
        self.skip()
        return self.text[self.i] if self.i < len(self.text) else None

    def alternation(self):
        items = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            items.append(self.sequence())
        return A.alt(*items)

    def sequence(self):
        items = []
        while self.peek() not in (None, "|", ")"):
            items.append(self.quantified(self.atom()))
        return A.cat(*items) if items else A.EMPTY

    def quantified(self, item):
        c = self.peek()
        if c in ("*", "+", "?"):
            self.i += 1
            return A.rep(item, {"*": 0, "+": 1, "?": 0}[c], {"*": None, "+": None, "?": 1}[c])
        if c == "{":
            end = self.text.index("}", self.i)
            parts = self.text[self.i + 1:end].split(",")
            self.i = end + 1
            low = int(parts[0] or 0)
            high = low if len(parts) == 1 else (int(parts[1]) if parts[1].strip() else None)
            return A.rep(item, low, high)
        return item

    def atom(self):
        c = self.peek()
        if c == "(":
            self.i += 1
            tree = self.alternation()
            if self.peek() != ")":
                raise ValueError(f"grammar: rule {self.stack[-1]!r}: missing )")
            self.i += 1
            return tree
        if c == '"':
            end, out = self.i + 1, []
            while end < len(self.text) and self.text[end] != '"':
                if self.text[end] == "\\":
                    out.append(self.text[end:end + 2])
                    end += 2
                else:
                    out.append(self.text[end])
                    end += 1
            if end >= len(self.text):
                raise ValueError(f"grammar: rule {self.stack[-1]!r}: unterminated string")
            self.i = end + 1
            return A.parse_regex("".join(ch if ch.startswith("\\") else _regex_escape(ch) for ch in out) or "()")
        if c == "[":
            start, end = self.i, self.i + 1
            if end < len(self.text) and self.text[end] == "^":
                end += 1
            if end < len(self.text) and self.text[end] == "]":  # a leading ] is a member
                end += 1
            while end < len(self.text) and self.text[end] != "]":
                end += 2 if self.text[end] == "\\" else 1
            if end >= len(self.text):
                raise ValueError(f"grammar: rule {self.stack[-1]!r}: unterminated class")
            self.i = end + 1
            return A.parse_regex(self.text[start:end + 1])
        if c == ".":
            self.i += 1
            return A.utf8_char_except(frozenset())
        name_end = self.i
        while name_end < len(self.text) and (self.text[name_end].isalnum() or self.text[name_end] in "_-"):
            name_end += 1
        if name_end == self.i:
            raise ValueError(f"grammar: rule {self.stack[-1]!r}: unexpected {c!r}")
        name = self.text[self.i:name_end]
        self.i = name_end
        text, i, stack = self.text, self.i, self.stack
        tree = self.rule(name, stack)
        self.text, self.i, self.stack = text, i, stack
        return tree


def _regex_escape(ch: str) -> str:
    return "\\" + ch if ch in "\\.^$|?*+()[]{}" else ch
