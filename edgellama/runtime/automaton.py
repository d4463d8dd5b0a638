"""Regular expressions over bytes, compiled to the DFA the C core masks with.

    dfa = compile_regex(r"(yes|no)")       # or compile_ast(...) from structured.py's builders
    dfa.fullmatch(b"yes"), len(dfa.to_bytes())

The pipeline is the textbook one, kept small: parse the pattern into a tree over byte
sets (a non-ASCII character is its UTF-8 bytes in a row), build a Thompson NFA, split
the 256 byte values into the classes the NFA tells apart, run the subset construction
over those classes, drop the states from which no accepting state can be reached,
and merge equivalent states (Moore's partition refinement). The bytes it writes are
the format el_constraint.h describes.

Regex syntax: literals, `.`, classes `[a-z0-9_]` and `[^...]` (negated classes and `.`
match any UTF-8 character not listed, the newline excepted for `.`), escapes `\\d \\w
\\s \\D \\W \\S \\n \\t \\r \\xHH \\uHHHH` (the classes are ASCII, as with Python's
re.ASCII) and escaped punctuation, groups `(...)` and
`(?:...)`, alternation, and the quantifiers `* + ? {n} {n,} {n,m}` (a trailing `?` for
laziness is accepted and means nothing here). The whole output must match: `^` at the
start and `$` at the end are allowed and change nothing. Not supported (refused with a
message): backreferences, lookaround, non-ASCII ranges in classes.
"""

from dataclasses import dataclass

DEAD = 0xFFFF
MAX_STATES = 4096   # the default limit of a compiled constraint (a board may allow fewer)
MAX_REPEAT = 1000   # {n,m} bounds above this are refused

ANY_BYTE = frozenset(range(256))
DIGITS = frozenset(b"0123456789")
WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
SPACE = frozenset(b" \t\n\r\f\v")


class RegexError(ValueError):
    pass


# ---------------------------------------------------------------- the tree

def lit(data) -> tuple:
    """A literal string (str: its UTF-8 bytes) as a tree."""
    data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return cat(*[("set", frozenset([b])) for b in data])


def byteset(values) -> tuple:
    return ("set", frozenset(values))


def cat(*items) -> tuple:
    return items[0] if len(items) == 1 else ("cat", tuple(items))


def alt(*items) -> tuple:
    return items[0] if len(items) == 1 else ("alt", tuple(items))


def rep(item, low: int, high) -> tuple:
    """item repeated low..high times (high None: no bound)."""
    if high is not None and (high < low or high > MAX_REPEAT) or low > MAX_REPEAT:
        raise RegexError(f"repetition {{{low},{'' if high is None else high}}} is out of range "
                         f"(at most {MAX_REPEAT})")
    return ("rep", item, low, high)


EMPTY = ("cat", ())


def utf8_char_except(excluded_ascii: frozenset, newline=True) -> tuple:
    """Any one UTF-8 character but the excluded ASCII bytes (and the newline unless newline)."""
    ascii_ok = frozenset(range(128)) - excluded_ascii - (frozenset() if newline else frozenset(b"\n"))
    tail = byteset(range(0x80, 0xC0))
    return alt(byteset(ascii_ok), cat(byteset(range(0xC2, 0xE0)), tail),
               cat(byteset(range(0xE0, 0xF0)), tail, tail), cat(byteset(range(0xF0, 0xF5)), tail, tail, tail))


# ---------------------------------------------------------------- parsing

class _Parser:
    def __init__(self, pattern: str):
        self.p, self.i = pattern, 0

    def fail(self, what: str):
        raise RegexError(f"regex: {what} at position {self.i} of {self.p!r}")

    def peek(self):
        return self.p[self.i] if self.i < len(self.p) else None

    def take(self):
        c = self.peek()
        self.i += 1
        return c

    def parse(self) -> tuple:
        if self.peek() == "^":
            self.i += 1
        tree = self.alternation()
        if self.peek() == "$" and self.i == len(self.p) - 1:
            self.i += 1
        if self.i != len(self.p):
            self.fail(f"unexpected {self.peek()!r}")
        return tree

    def alternation(self):
        items = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            items.append(self.sequence())
        return alt(*items)

    def sequence(self):
        items = []
        while self.peek() is not None and self.peek() not in "|)":
            if self.peek() == "$" and self.i == len(self.p) - 1:
                break
            items.append(self.quantified(self.atom()))
        return cat(*items) if items else EMPTY

    def quantified(self, item):
        while True:
            c = self.peek()
            if c == "*":
                self.i += 1
                item = rep(item, 0, None)
            elif c == "+":
                self.i += 1
                item = rep(item, 1, None)
            elif c == "?":
                self.i += 1
                item = rep(item, 0, 1)
            elif c == "{" and self._counted(consume=False):
                low, high = self._counted()
                item = rep(item, low, high)
            else:
                return item
            if self.peek() == "?":  # lazy: the same language
                self.i += 1

    def _counted(self, consume=True):
        """{n}, {n,} or {n,m} at the cursor (consumed), or None when it is a literal brace."""
        end = self.p.find("}", self.i)
        body = self.p[self.i + 1:end] if end > 0 else ""
        parts = body.split(",")
        if end < 0 or len(parts) > 2 or not (parts[0].isdigit() or len(parts) == 2 and parts[0] == "") or (
                len(parts) == 2 and parts[1] and not parts[1].isdigit()):
            return None
        if consume:
            self.i = end + 1
        low = int(parts[0] or 0)  # {,m}: from zero, as Python reads it
        high = low if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
        return low, high

    def atom(self):
        c = self.take()
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                self.fail("lookaround and group flags are not supported")
            tree = self.alternation()
            if self.take() != ")":
                self.fail("missing )")
            return tree
        if c == "[":
            return self.char_class()
        if c == ".":
            return utf8_char_except(frozenset(), newline=False)
        if c == "\\":
            return self.escape(in_class=False)
        if c in "*+?":
            self.fail(f"nothing to repeat before {c!r}")
        return lit(c)

    def escape(self, in_class: bool):
        c = self.take()
        if c is None:
            self.fail("a trailing backslash")
        sets = {"d": DIGITS, "w": WORD, "s": SPACE}
        if c in sets:
            return byteset(sets[c])
        if c in "DWS":
            return utf8_char_except(sets[c.lower()])
        if c in "ntrfv0":
            return lit({"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}[c])
        if c in "xu":
            width = 2 if c == "x" else 4
            digits = self.p[self.i:self.i + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                self.fail(f"\\{c} needs {width} hex digits")
            self.i += width
            return lit(chr(int(digits, 16)))
        if c.isalnum():
            self.fail(f"unsupported escape \\{c} (backreferences and anchors other than ^ $ are not)")
        return lit(c)

    def char_class(self):
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        members, wide = set(), []
        first = True
        while True:
            c = self.take()
            if c is None:
                self.fail("missing ]")
            if c == "]" and not first:
                break
            first = False
            if c == "\\":
                item = self.escape(in_class=True)
                if item[0] == "set":
                    members |= item[1]
                    continue
                if item[0] == "cat" and all(x[0] == "set" and len(x[1]) == 1 for x in item[1]):
                    wide.append(item)  # a non-ASCII character from \u
                    continue
                self.fail("\\D, \\W and \\S are not supported inside a class")
            low = c
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                self.i += 1
                high = self.take()
                if high == "\\":
                    high_item = self.escape(in_class=True)
                    if high_item[0] != "set" or len(high_item[1]) != 1:
                        self.fail("a range must end in one character")
                    high = chr(next(iter(high_item[1])))
                if ord(low) > 127 or ord(high) > 127:
                    self.fail("ranges of non-ASCII characters are not supported")
                if ord(high) < ord(low):
                    self.fail(f"range {low}-{high} is backwards")
                members |= set(range(ord(low), ord(high) + 1))
            elif ord(c) > 127:
                wide.append(lit(c))
            else:
                members.add(ord(c))
        if negate:
            if wide:
                self.fail("a negated class may list only ASCII characters")
            return utf8_char_except(frozenset(members))
        return alt(*([byteset(members)] if members else []), *wide) if members or wide else self.fail("empty class")


def parse_regex(pattern: str) -> tuple:
    return _Parser(pattern).parse()


# ---------------------------------------------------------------- NFA

class _Nfa:
    """States are ints; eps[s] the epsilon moves, moves[s] a list of (byteset, target).

    A subtree built again towards the same end state is not built twice: its fragment
    (entered only at its start, left only at that end) is shared through an epsilon
    move. A JSON object's optional members make such trees: each suffix of the member
    list follows several prefixes, and without sharing the automaton would double with
    every optional member."""

    def __init__(self):
        self.eps, self.moves = [], []
        self.built = {}  # (id of a subtree, end state) -> the start of its fragment

    def state(self) -> int:
        self.eps.append([])
        self.moves.append([])
        return len(self.eps) - 1

    def build(self, tree, start: int, end: int):
        if tree[0] != "set":
            key = (id(tree), end)
            if key not in self.built:
                self.built[key] = self.state()
                self._build(tree, self.built[key], end)
            self.eps[start].append(self.built[key])
            return
        self._build(tree, start, end)

    def _build(self, tree, start: int, end: int):
        kind = tree[0]
        if kind == "set":
            self.moves[start].append((tree[1], end))
        elif kind == "cat":
            at = start
            for i, item in enumerate(tree[1]):
                nxt = end if i == len(tree[1]) - 1 else self.state()
                self.build(item, at, nxt)
                at = nxt
            if not tree[1]:
                self.eps[start].append(end)
        elif kind == "alt":
            for item in tree[1]:
                self.build(item, start, end)
        elif kind == "rep":
            _, item, low, high = tree
            at = start
            for _ in range(low):
                nxt = self.state()
                self.build(item, at, nxt)
                at = nxt
            if high is None:
                loop = self.state()
                self.eps[at].append(loop)
                body_end = self.state()
                self.build(item, loop, body_end)
                self.eps[body_end].append(loop)
                self.eps[loop].append(end)
            else:
                for _ in range(high - low):
                    nxt = self.state()
                    self.eps[at].append(end)
                    self.build(item, at, nxt)
                    at = nxt
                self.eps[at].append(end)
        else:
            raise ValueError(f"unknown tree node {kind!r}")

    def closure(self, states) -> frozenset:
        seen, todo = set(states), list(states)
        while todo:
            for t in self.eps[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)


def _byte_classes(sets) -> list:
    """class id per byte: bytes that every set treats alike share a class."""
    signature = {b: [] for b in range(256)}
    for i, s in enumerate(sets):
        for b in s:
            signature[b].append(i)
    ids, out = {}, []
    for b in range(256):
        out.append(ids.setdefault(tuple(signature[b]), len(ids)))
    return out


# ---------------------------------------------------------------- DFA

@dataclass
class Dfa:
    classes: list     # 256 class ids
    accepting: list   # per state, bool
    next: list        # per state, a list of n_classes targets (DEAD for none)

    @property
    def n_states(self) -> int:
        return len(self.accepting)

    @property
    def n_classes(self) -> int:
        return max(self.classes) + 1

    def walk(self, data: bytes, state: int = 0) -> int:
        """The state after data, or -1 once it leaves the language."""
        for b in data:
            state = self.next[state][self.classes[b]]
            if state == DEAD:
                return -1
        return state

    def fullmatch(self, data: bytes) -> bool:
        s = self.walk(data)
        return s >= 0 and self.accepting[s]

    def to_bytes(self) -> bytes:
        """The format of el_constraint.h."""
        out = bytearray(b"ELD1")
        out += self.n_states.to_bytes(2, "little") + self.n_classes.to_bytes(2, "little")
        out += bytes(self.classes) + bytes(int(a) for a in self.accepting)
        for row in self.next:
            for t in row:
                out += t.to_bytes(2, "little")
        return bytes(out)


def compile_ast(tree, max_states: int = MAX_STATES) -> Dfa:
    """The minimal DFA of a tree, live states only; RegexError when it is empty or too large."""
    nfa = _Nfa()
    start, end = nfa.state(), nfa.state()
    nfa.build(tree, start, end)
    all_sets = {s for moves in nfa.moves for s, _ in moves}
    classes = _byte_classes(list(all_sets))
    n_classes = max(classes) + 1
    members = [[] for _ in range(n_classes)]
    for b, c in enumerate(classes):
        members[c].append(b)
    first = nfa.closure([start])
    index, subsets, rows = {first: 0}, [first], []
    while len(rows) < len(subsets):
        subset = subsets[len(rows)]
        row = []
        for c in range(n_classes):
            b = members[c][0]
            targets = [t for s in subset for bs, t in nfa.moves[s] if b in bs]
            if not targets:
                row.append(DEAD)
                continue
            nxt = nfa.closure(targets)
            if nxt not in index:
                if len(subsets) >= 8 * max_states:
                    raise RegexError(f"the constraint needs more than {max_states} automaton states; simplify it")
                index[nxt] = len(subsets)
                subsets.append(nxt)
            row.append(index[nxt])
        rows.append(row)
    accepting = [end in s for s in subsets]
    return _minimize(_live_only(Dfa(classes, accepting, rows)), max_states)


def _live_only(dfa: Dfa) -> Dfa:
    """Drop the states from which no accepting state can be reached (their moves become DEAD)."""
    back = [[] for _ in range(dfa.n_states)]
    for s, row in enumerate(dfa.next):
        for t in row:
            if t != DEAD:
                back[t].append(s)
    live = {s for s in range(dfa.n_states) if dfa.accepting[s]}
    todo = list(live)
    while todo:
        for s in back[todo.pop()]:
            if s not in live:
                live.add(s)
                todo.append(s)
    if 0 not in live:
        raise RegexError("the constraint's language is empty: no output can satisfy it")
    order = sorted(live)
    renumber = {s: i for i, s in enumerate(order)}
    rows = [[renumber.get(t, DEAD) if t != DEAD else DEAD for t in dfa.next[s]] for s in order]
    return Dfa(dfa.classes, [dfa.accepting[s] for s in order], rows)


def _minimize(dfa: Dfa, max_states: int) -> Dfa:
    """Moore's refinement: states alike in acceptance and in the blocks their moves reach merge."""
    block = [int(a) for a in dfa.accepting]
    while True:
        keys, new = {}, []
        for s in range(dfa.n_states):
            key = (block[s], tuple(block[t] if t != DEAD else -1 for t in dfa.next[s]))
            new.append(keys.setdefault(key, len(keys)))
        if len(keys) == len(set(block)):
            break
        block = new
    # number the blocks in order of first appearance from the start state (state 0 first)
    order, seen = [], {}
    for s in range(dfa.n_states):
        if block[s] not in seen:
            seen[block[s]] = len(order)
            order.append(s)
    if len(order) > max_states:
        raise RegexError(f"the constraint needs {len(order)} automaton states, more than the {max_states} allowed; "
                         "simplify it")
    rows = [[seen[block[t]] if t != DEAD else DEAD for t in dfa.next[s]] for s in order]
    return _compact_classes(Dfa(dfa.classes, [dfa.accepting[s] for s in order], rows))


def _compact_classes(dfa: Dfa) -> Dfa:
    """Merge byte classes whose columns are now the same."""
    columns, remap = {}, []
    for c in range(dfa.n_classes):
        column = tuple(row[c] for row in dfa.next)
        remap.append(columns.setdefault(column, len(columns)))
    rows = [[column[s] for column in columns] for s in range(dfa.n_states)]
    return Dfa([remap[c] for c in dfa.classes], dfa.accepting, rows)


def compile_regex(pattern: str, max_states: int = MAX_STATES) -> Dfa:
    return compile_ast(parse_regex(pattern), max_states)
