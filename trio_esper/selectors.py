"""Topic selectors, matched as the Mercure reference hub matches them (pure).

A topic selector (draft-dunglas-mercure, "Topic Selectors") is ``*``, which
matches every topic; any string, which matches the identical topic (topics are
IRIs: the comparison is case-sensitive); or an RFC 6570 URI template, which
matches a topic when the template's regular expression matches all of it.

dunglas/mercure v0.24.2 decides it in ``TopicSelectorStore.match``
(topicselector.go:52-80): ``*`` or equality first; then, only for a selector
that contains ``{`` (topicselector.go:85), it parses the selector with
github.com/yosida95/uritemplate v3.0.2 and matches ``Template.Regexp()``; a
selector that does not parse "is a raw string" (topicselector.go:95) and
matches only itself. This module rebuilds that regular expression from the
same parse (uritemplate's parse.go, expression.go, escape.go) and decides it
with an automaton: a Thompson NFA whose state sets become DFA states as topics
need them, within a bounded cache. Go's regexp runs in time linear in the
topic; so does this, where Python's backtracking ``re`` would not (``{x*}``
against a long run of commas followed by a ``/`` takes exponential time).

Where this differs from Mercure, on purpose:

- a template longer than a matcher's ``max_template_length`` (default
  :data:`MAX_TEMPLATE_CHARS`) is not compiled and matches only itself, which
  bounds the work one subscriber's selector can cost a publisher;
- a template whose expression lists more than :data:`GO_MAX_REPEAT` + 1
  variables makes Go's ``regexp.MustCompile`` panic (repeat count over 1000)
  inside Mercure's dispatch; here it matches only itself.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

#: The selector that matches every topic (draft-dunglas-mercure, "Topic Selectors", step 1).
ANY_TOPIC: Final = "*"
#: Default bound on the entries of each of a :class:`SelectorMatcher`'s caches.
DEFAULT_CACHE_ENTRIES: Final = 10_000
#: Default bound on the characters of all compiled templates a matcher keeps:
#: a compiled template costs memory in proportion to its length.
DEFAULT_CACHED_TEMPLATE_CHARS: Final = 500_000
#: Default bound on the characters of the (selector, topic) pairs whose result
#: a matcher keeps; a pair longer than this is decided again each time.
DEFAULT_CACHED_RESULT_CHARS: Final = 4_000_000
#: Longest template compiled by default. A selector arrives in a query string
#: or a JWT claim, both inside an HTTP head, which servers bound at 8 to 16 KiB.
MAX_TEMPLATE_CHARS: Final = 8192
#: Go's regexp/syntax refuses ``x{0,n}`` for n over 1000 (ErrInvalidRepeatSize).
GO_MAX_REPEAT: Final = 1000

# -- The grammar, as uritemplate v3.0.2 reads it -----------------------------

_ALPHA = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGIT = "0123456789"
#: RFC 3986 section 2.3: unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
UNRESERVED: Final = frozenset(_ALPHA + _DIGIT + "-._~")
#: RFC 3986 section 2.2: reserved = gen-delims / sub-delims
#: (uritemplate's escape.go reReserved: \x21\x23\x24\x26-\x2c\x2f\x3a\x3b\x3d\x3f\x40\x5b\x5d).
RESERVED: Final = frozenset(":/?#[]@" + "!$&'()*+,;=")
#: RE2's ``[[:xdigit:]]``.
_HEXDIG = frozenset("0123456789ABCDEFabcdef")
#: RFC 6570 section 2.3: varchar = ALPHA / DIGIT / "_" / pct-encoded (pct-encoded apart).
_VARCHAR = frozenset(_ALPHA + _DIGIT + "_")
#: RFC 6570 section 2.1 ``literals`` as parse.go's rangeLiterals has it: the
#: RFC's ranges plus "'" (erratum 6937), without "%" (a pct-encoded triplet is
#: read apart) and without "{" (it opens an expression).
_LITERAL_RUN = re.compile(
    r"[\x21\x23-\x24\x26-\x3b\x3d\x3f-\x5b\x5d\x5f\x61-\x7a\x7e"
    r"\u00a0-\ud7ff\ue000-\uf8ff\uf900-\ufdcf\ufdf0-\uffef"
    r"\U00010000-\U0001fffd\U00020000-\U0002fffd\U00030000-\U0003fffd"
    r"\U00040000-\U0004fffd\U00050000-\U0005fffd\U00060000-\U0006fffd"
    r"\U00070000-\U0007fffd\U00080000-\U0008fffd\U00090000-\U0009fffd"
    r"\U000a0000-\U000afffd\U000b0000-\U000bfffd\U000c0000-\U000cfffd"
    r"\U000d0000-\U000dfffd\U000e1000-\U000efffd\U000f0000-\U000ffffd"
    r"\U00100000-\U0010fffd]+"
)
#: Go reads the template as UTF-8 and stops at utf8.RuneError, which an
#: encoded U+FFFD also decodes to (parse.go:122-134); a lone surrogate is what
#: a Python str holds where Go would see invalid UTF-8.
_NOT_UTF8 = re.compile(r"[\ud800-\udfff\ufffd]")


@dataclass(frozen=True, slots=True)
class _Operator:
    """One RFC 6570 operator, as uritemplate's ``expression.init`` sets it up."""

    #: What an expansion starts with ("" for the simple and reserved operators).
    first: str
    #: What separates the values of an expansion.
    separator: str
    #: Values come as ``name=value`` (RFC 6570 section 3.2.7 to 3.2.9).
    named: bool
    #: Reserved characters pass unencoded (``+`` and ``#``, sections 3.2.3, 3.2.4).
    reserved: bool


#: RFC 6570 section 2.2, table of appendix A; ``=,!@|`` are op-reserved and refused.
_OPERATORS: Final = {
    "": _Operator("", ",", named=False, reserved=False),
    "+": _Operator("", ",", named=False, reserved=True),
    "#": _Operator("#", ",", named=False, reserved=True),
    ".": _Operator(".", ".", named=False, reserved=False),
    "/": _Operator("/", "/", named=False, reserved=False),
    ";": _Operator(";", ";", named=True, reserved=False),
    "?": _Operator("?", "&", named=True, reserved=False),
    "&": _Operator("&", "&", named=True, reserved=False),
}
_OP_RESERVED = frozenset("=,!@|")


class TemplateError(ValueError):
    """A selector is not a URI template uritemplate v3.0.2 accepts; one-line reason."""


@dataclass(frozen=True, slots=True)
class Variable:
    """A varspec: ``name``, ``name:prefix`` or ``name*`` (RFC 6570 section 2.4)."""

    name: str
    #: The ``:n`` modifier (1 to 9999); the regular expression ignores it, as uritemplate's does.
    prefix: int | None = None
    explode: bool = False


@dataclass(frozen=True, slots=True)
class Expression:
    """``{`` operator variable-list ``}``; ``operator`` is "" for a simple expression."""

    operator: str
    variables: tuple[Variable, ...]


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed URI template: literal runs (``str``) and expressions, in order."""

    raw: str
    parts: tuple[str | Expression, ...]

    def regexp_source(self) -> str:
        """The regular expression ``Template.Regexp()`` builds, in Go's syntax,
        character for character (uritemplate.go:100-116, expression.go:27-31
        and 121-173). For tests and explanations; matching does not use it."""
        out = ["^"]
        for part in self.parts:
            if isinstance(part, str):
                out.append(f"(?:{_go_quote_meta(part)})")
            else:
                out.append(_expression_source(part))
        out.append("$")
        return "".join(out)


def parse_template(raw: str) -> Template:
    """Parse ``raw`` exactly as uritemplate v3.0.2's ``New`` does (parse.go:114-277).

    Raises:
        TemplateError: where ``New`` returns an error (its reason, without the
            position).
    """
    if _NOT_UTF8.search(raw):
        raise TemplateError("invalid UTF-8 sequence")
    parts: list[str | Expression] = []
    literal_start = i = 0
    end = len(raw)
    while i < end:
        char = raw[i]
        if char == "{":
            if i > literal_start:
                parts.append(raw[literal_start:i])
            i, expression = _parse_expression(raw, i + 1)
            parts.append(expression)
            literal_start = i
        elif char == "%":
            _consume_triplet(raw, i)
            i += 3
        else:
            run = _LITERAL_RUN.match(raw, i)
            if run is None:
                raise TemplateError("unacceptable character (hint: use %XX encoding)")
            i = run.end()
    if literal_start < end:
        parts.append(raw[literal_start:])
    return Template(raw, tuple(parts))


def _consume_triplet(raw: str, i: int) -> None:
    # parse.go:271-277: pct-encoded = "%" HEXDIG HEXDIG
    if i + 3 > len(raw) or raw[i + 1] not in _HEXDIG or raw[i + 2] not in _HEXDIG:
        raise TemplateError("incomplete pct-encoded")


def _valid_varname(name: str) -> bool:
    # parse.go:256-269: varname = varchar *( ["."] varchar )
    return bool(name) and name[0] != "." and name[-1] != "." and ".." not in name


def _parse_expression(raw: str, i: int) -> tuple[int, Expression]:
    """The expression whose ``{`` is just before ``i``: (index after its ``}``, it)."""
    end = len(raw)
    # parseStateOperator
    if i >= end:
        raise TemplateError("incomplete expression")
    if raw[i] in _OP_RESERVED:
        raise TemplateError("unimplemented operator (op-reserved)")
    operator = raw[i] if raw[i] in _OPERATORS else ""
    i += len(operator)
    variables: list[Variable] = []
    while True:
        # parseStateVarName: varname, up to its modifier or the list's next token
        start = i
        while i < end and raw[i] not in ",}:*":
            char = raw[i]
            if char == "%":
                _consume_triplet(raw, i)
                i += 3
            elif char == "." and (i == start or raw[i - 1] == "."):
                raise TemplateError("unacceptable variable name")
            elif char == "." or char in _VARCHAR:
                i += 1
            else:
                raise TemplateError("unacceptable variable name")
        if i >= end:
            raise TemplateError("incomplete expression")
        name = raw[start:i]
        if not _valid_varname(name):
            raise TemplateError("unacceptable variable name")
        modifier = raw[i] if raw[i] in ":*" else ""
        i += len(modifier)
        prefix = None
        if modifier == ":":
            # parseStatePrefix: max-length = %x31-39 0*3DIGIT (1 to 9999)
            digits = i
            while i < end and raw[i] in _DIGIT:
                if raw[digits] == "0" or i - digits == 4:
                    raise TemplateError("max-length must be (0, 9999]")
                i += 1
            if i == digits:
                raise TemplateError("max-length must be (0, 9999]")
            prefix = int(raw[digits:i])
        variables.append(Variable(name, prefix, explode=modifier == "*"))
        # parseStateVarList
        if i >= end:
            raise TemplateError("incomplete expression")
        if raw[i] == "}":
            return i + 1, Expression(operator, tuple(variables))
        if raw[i] != ",":
            raise TemplateError("unrecognized value modifier")
        i += 1


# -- The regular expression, as uritemplate v3.0.2 builds it ------------------

_GO_META = frozenset("\\.+*?()|[]{}^$")
_RE_UNRESERVED = r"\x2d\x2e\x30-\x39\x41-\x5a\x5f\x61-\x7a\x7e"
_RE_RESERVED = r"\x21\x23\x24\x26-\x2c\x2f\x3a\x3b\x3d\x3f\x40\x5b\x5d"


def _go_quote_meta(text: str) -> str:
    """Go's ``regexp.QuoteMeta``."""
    return "".join("\\" + c if c in _GO_META else c for c in text)


def _class_source(reserved: bool, named: bool) -> str:
    # expression.go:156-173
    chars = (
        (_RE_UNRESERVED + _RE_RESERVED)
        if reserved
        else (r"\x2c" + (r"\x3d" if named else "") + _RE_UNRESERVED)
    )
    return f"(?:(?:[{chars}]|%[[:xdigit:]][[:xdigit:]])*)"


def _repeat_bound(expression: Expression) -> int:
    """The ``n`` of ``(?:sep value){0,n}``; -1 for ``*`` (an exploded variable)."""
    if any(v.explode for v in expression.variables):
        return -1
    return len(expression.variables) - 1


def _expression_source(expression: Expression) -> str:
    # expression.go:121-154
    op = _OPERATORS[expression.operator]
    first_named = op.named or expression.variables[0].explode
    out = [f"(?:{_go_quote_meta(op.first)}" if op.first else "", "("]
    out.append(_class_source(op.reserved, first_named))
    if len(expression.variables) > 1 or expression.variables[0].explode:
        bound = _repeat_bound(expression)
        out.append(f"(?:{_go_quote_meta(op.separator)}")
        out.append(_class_source(op.reserved, op.named or bound < 0))
        out.append(f"){{0,{bound}}}" if bound > 0 else ")*")
    out.append(")")
    if op.first:
        out.append(")")
    out.append("?")
    return "".join(out)


#: The characters ``_class_source(reserved, named)`` lists between brackets.
_CLASS_CHARS: Final = {
    (True, False): UNRESERVED | RESERVED,
    (True, True): UNRESERVED | RESERVED,
    (False, False): UNRESERVED | {","},
    (False, True): UNRESERVED | {",", "="},
}


# -- The automaton -------------------------------------------------------------


class CompiledTemplate:
    """Whether a topic matches a template's regular expression, in linear time.

    The expression's language is built as a Thompson NFA (consuming states
    carry a set of characters; split states carry epsilon moves), and run as
    a DFA whose states (sets of NFA states) are made when a topic first needs
    them. The literal run a template starts or ends with is compared directly.
    The DFA cache is bounded, as RE2's is: past twice as many entries (NFA
    states in DFA states, and moves) as the NFA has states, plus 256, it is
    dropped and rebuilt as topics need it.
    """

    __slots__ = (
        "_accept",
        "_accepting",
        "_budget",
        "_chars",
        "_ids",
        "_moves",
        "_out",
        "_prefix",
        "_sets",
        "_splits",
        "_start_set",
        "_suffix",
        "_used",
        "size",
    )

    def __init__(self, template: Template) -> None:
        parts = list(template.parts)
        # Literal runs are never empty, and a template has an expression.
        head, tail = parts[0], parts[-1]
        self._prefix = head if isinstance(head, str) else ""
        self._suffix = tail if isinstance(tail, str) and len(parts) > 1 else ""
        parts = parts[bool(self._prefix) : len(parts) - bool(self._suffix)]
        # Per NFA state: the characters it consumes (None: split or accept;
        # a str is one character), where it goes after one, its epsilon moves.
        self._chars: list[str | frozenset[str] | None] = []
        self._out: list[int] = []
        self._splits: list[tuple[int, ...]] = []
        self._accept = self._state(None, -1)
        start = self._accept
        for part in reversed(parts):
            if isinstance(part, str):
                for char in reversed(part):
                    start = self._state(char, start)
            else:
                start = self._expression(part, start)
        self.size = len(self._chars)
        self._budget = 2 * self.size + 256
        self._ids: dict[frozenset[int], int] = {}
        self._sets: list[frozenset[int]] = []
        self._accepting: list[bool] = []
        self._moves: list[dict[str, int]] = []
        self._used = 0
        self._start_set = self._closure((start,))
        self._intern(self._start_set)

    def _state(
        self, chars: str | frozenset[str] | None, out: int, splits: tuple[int, ...] = ()
    ) -> int:
        self._chars.append(chars)
        self._out.append(out)
        self._splits.append(splits)
        return len(self._chars) - 1

    def _split(self, *outs: int) -> int:
        return self._state(None, -1, outs)

    def _value(self, chars: frozenset[str], then: int) -> int:
        """``(?:[chars]|%HEXDIG HEXDIG)*`` followed by ``then``."""
        loop = self._split()
        one = self._state(chars, loop)
        percent = self._state("%", self._state(_HEXDIG, self._state(_HEXDIG, loop)))
        self._splits[loop] = (one, percent, then)
        return loop

    def _expression(self, expression: Expression, then: int) -> int:
        op = _OPERATORS[expression.operator]
        body = then
        if len(expression.variables) > 1 or expression.variables[0].explode:
            bound = _repeat_bound(expression)
            rest = _CLASS_CHARS[op.reserved, op.named or bound < 0]
            separator = op.separator
            if bound < 0:  # (?:sep value)*
                loop = self._split()
                self._splits[loop] = (self._state(separator, self._value(rest, loop)), then)
                body = loop
            else:  # (?:sep value){0,bound}, nested: (sep value (sep value (...)?)?)?
                for _ in range(bound):
                    body = self._split(self._state(separator, self._value(rest, body)), then)
        body = self._value(
            _CLASS_CHARS[op.reserved, op.named or expression.variables[0].explode], body
        )
        if op.first:
            body = self._state(op.first, body)
        return self._split(body, then)

    def _closure(self, states: Iterable[int]) -> frozenset[int]:
        """The consuming (and accepting) states reachable by epsilon moves."""
        splits = self._splits
        found: set[int] = set()
        seen: set[int] = set()
        stack = list(states)
        while stack:
            state = stack.pop()
            if state in seen:
                continue
            seen.add(state)
            if splits[state]:
                stack.extend(splits[state])
            else:
                found.add(state)
        return frozenset(found)

    def _intern(self, states: frozenset[int]) -> int:
        self._ids[states] = len(self._sets)
        self._sets.append(states)
        self._accepting.append(self._accept in states)
        self._moves.append({})
        self._used += len(states) + 1
        return len(self._sets) - 1

    def _move(self, dstate: int, char: str) -> int:
        """The DFA state after ``char`` from ``dstate`` (-1: no match possible)."""
        chars, out = self._chars, self._out
        targets = [out[s] for s in self._sets[dstate] if (c := chars[s]) is not None and char in c]
        if not targets:
            target = -1
        else:
            states = self._closure(targets)
            known = self._ids.get(states)
            if known is not None:
                target = known
            elif self._used + len(states) + 1 > self._budget:
                # Start over: the move from the forgotten ``dstate`` is not kept.
                self._ids, self._sets, self._accepting, self._moves = {}, [], [], []
                self._used = 0
                self._intern(self._start_set)
                known = self._ids.get(states)
                return self._intern(states) if known is None else known
            else:
                target = self._intern(states)
        self._moves[dstate][char] = target
        self._used += 1
        return target

    def fullmatch(self, topic: str) -> bool:
        """Whether the whole of ``topic`` matches."""
        prefix, suffix = self._prefix, self._suffix
        stop = len(topic) - len(suffix)
        if stop < len(prefix) or not topic.startswith(prefix) or not topic.endswith(suffix):
            return False
        dstate = 0
        for i in range(len(prefix), stop):
            char = topic[i]
            target = self._moves[dstate].get(char)
            if target is None:
                target = self._move(dstate, char)
            if target < 0:
                return False
            dstate = target
        return self._accepting[dstate]


def compile_template(
    selector: str, *, max_chars: int = MAX_TEMPLATE_CHARS
) -> CompiledTemplate | None:
    """The automaton of ``selector`` as a URI template, or ``None`` where Mercure
    would match it only by equality: no ``{``, not a template, longer than
    ``max_chars``, or a repeat count Go's regexp refuses."""
    if "{" not in selector or len(selector) > max_chars:
        return None
    try:
        template = parse_template(selector)
    except TemplateError:
        return None
    for part in template.parts:
        if isinstance(part, Expression) and _repeat_bound(part) > GO_MAX_REPEAT:
            return None
    return CompiledTemplate(template)


def match(selector: str, topic: str) -> bool:
    """Whether ``selector`` matches ``topic``, uncached (a :class:`SelectorMatcher`
    caches); topicselector.go:52-80. Never raises."""
    if selector in (ANY_TOPIC, topic):
        return True
    automaton = compile_template(selector)
    return automaton is not None and automaton.fullmatch(topic)


# -- The cached matcher --------------------------------------------------------

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _LRU(Generic[_K, _V]):
    """At most ``max_entries`` entries and ``max_weight`` total weight, least
    recently used out first; an entry heavier than ``max_weight`` is not kept."""

    __slots__ = ("_entries", "_max_entries", "_max_weight", "weight")

    def __init__(self, max_entries: int, max_weight: int) -> None:
        self._entries: OrderedDict[_K, tuple[_V, int]] = OrderedDict()
        self._max_entries = max_entries
        self._max_weight = max_weight
        self.weight = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: _K) -> tuple[_V, int] | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: _K, value: _V, weight: int) -> None:
        if weight > self._max_weight or self._max_entries <= 0:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.weight -= old[1]
        self._entries[key] = (value, weight)
        self.weight += weight
        while len(self._entries) > self._max_entries or self.weight > self._max_weight:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.weight -= dropped


@dataclass(frozen=True, slots=True)
class MatcherStatistics:
    """What a :class:`SelectorMatcher` holds and how often its caches answered."""

    #: Compiled templates kept (selectors that are not templates included).
    templates: int
    #: Characters of the selectors those are.
    template_chars: int
    #: (selector, topic) results kept.
    results: int
    #: Characters of those pairs.
    result_chars: int
    #: Template matches answered from the result cache.
    hits: int
    #: Template matches decided by an automaton.
    misses: int


class SelectorMatcher:
    """Topic selectors matched as Mercure matches them, with bounded caches.

    Mercure keeps the same two caches (topicselector.go:11-50: compiled
    templates, and results per (selector, topic) pair, bounded by entries).
    Here each holds at most ``max_templates`` / ``max_results`` entries and,
    since one client can send long selectors and topics, at most
    ``max_cached_template_chars`` / ``max_cached_result_chars`` characters of
    keys; an entry over that alone is not cached. Least recently used entries
    go first. A compiled template costs memory in proportion to its length
    (its NFA, and a DFA cache bounded to about twice its NFA's states), so
    those character counts bound the memory of both caches. A selector longer
    than ``max_template_length`` is not compiled (it matches only itself).
    ``*`` and equal strings are answered without a cache, as Mercure does.

    Not thread-safe: one per hub, used from its one thread (trio's).
    """

    __slots__ = ("_hits", "_max_template_length", "_misses", "_results", "_templates")

    def __init__(
        self,
        *,
        max_templates: int = DEFAULT_CACHE_ENTRIES,
        max_results: int = DEFAULT_CACHE_ENTRIES,
        max_cached_template_chars: int = DEFAULT_CACHED_TEMPLATE_CHARS,
        max_cached_result_chars: int = DEFAULT_CACHED_RESULT_CHARS,
        max_template_length: int = MAX_TEMPLATE_CHARS,
    ) -> None:
        self._templates: _LRU[str, CompiledTemplate | None] = _LRU(
            max_templates, max_cached_template_chars
        )
        self._results: _LRU[tuple[str, str], bool] = _LRU(max_results, max_cached_result_chars)
        self._max_template_length = max_template_length
        self._hits = 0
        self._misses = 0

    def match(self, selector: str, topic: str) -> bool:
        """Whether ``selector`` matches ``topic``. Never raises."""
        if selector in (ANY_TOPIC, topic):
            return True
        if "{" not in selector:
            return False
        key = (selector, topic)
        cached = self._results.get(key)
        if cached is not None:
            self._hits += 1
            return cached[0]
        self._misses += 1
        automaton = self._automaton(selector)
        result = automaton is not None and automaton.fullmatch(topic)
        self._results.put(key, result, len(selector) + len(topic))
        return result

    def matches_any(self, selectors: Sequence[str], topics: Sequence[str]) -> bool:
        """Whether any of ``selectors`` matches any of ``topics`` (Mercure's
        ``canReceive``, authorization.go:167-177)."""
        return any(self.match(selector, topic) for topic in topics for selector in selectors)

    def _automaton(self, selector: str) -> CompiledTemplate | None:
        cached = self._templates.get(selector)
        if cached is not None:
            return cached[0]
        automaton = compile_template(selector, max_chars=self._max_template_length)
        self._templates.put(selector, automaton, len(selector))
        return automaton

    def statistics(self) -> MatcherStatistics:
        return MatcherStatistics(
            templates=len(self._templates),
            template_chars=self._templates.weight,
            results=len(self._results),
            result_chars=self._results.weight,
            hits=self._hits,
            misses=self._misses,
        )
