"""trio_esper.mercure.selectors: topic selectors matched as dunglas/mercure v0.24.2 matches them.

Every expected answer in these tables is what Mercure's own code says: its
``TopicSelectorStore.match`` (topicselector.go) over github.com/yosida95/uritemplate
v3.0.2, run on the same pairs (a Go program outside the repository printed them).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_esper.selectors import (
    ANY_TOPIC,
    GO_MAX_REPEAT,
    MatcherStatistics,
    SelectorMatcher,
    TemplateError,
    compile_template,
    match,
    parse_template,
)

# The RFC 6570 examples uritemplate's own tests expand (uritemplate_test.go,
# testTemplateCases): TestTemplateRegexp requires each template's Regexp() to
# match its expansion, so each is a (selector, topic, True) case here.
RFC_6570_EXPANSIONS = [
    ("'{count}'", "'one,two,three'"),
    ("{count}", "one,two,three"),
    ("{count*}", "one,two,three"),
    ("{/count}", "/one,two,three"),
    ("{/count*}", "/one/two/three"),
    ("{;count}", ";count=one,two,three"),
    ("{;count*}", ";count=one;count=two;count=three"),
    ("{?count}", "?count=one,two,three"),
    ("{?count*}", "?count=one&count=two&count=three"),
    ("{&count*}", "&count=one&count=two&count=three"),
    ("{var}", "value"),
    ("{hello}", "Hello%20World%21"),
    ("{half}", "50%25"),
    ("O{empty}X", "OX"),
    ("O{undef}X", "OX"),
    ("{x,y}", "1024,768"),
    ("{x,hello,y}", "1024,Hello%20World%21,768"),
    ("?{x,empty}", "?1024,"),
    ("?{x,undef}", "?1024"),
    ("?{undef,y}", "?768"),
    ("{var:3}", "val"),
    ("{var:30}", "value"),
    ("{list}", "red,green,blue"),
    ("{list*}", "red,green,blue"),
    ("{keys}", "semi,%3B,dot,.,comma,%2C"),
    ("{keys*}", "semi=%3B,dot=.,comma=%2C"),
    ("{+var}", "value"),
    ("{+hello}", "Hello%20World!"),
    ("{+half}", "50%25"),
    ("{base}index", "http%3A%2F%2Fexample.com%2Fhome%2Findex"),
    ("{+base}index", "http://example.com/home/index"),
    ("O{+empty}X", "OX"),
    ("O{+undef}X", "OX"),
    ("{+path}/here", "/foo/bar/here"),
    ("here?ref={+path}", "here?ref=/foo/bar"),
    ("up{+path}{var}/here", "up/foo/barvalue/here"),
    ("{+x,hello,y}", "1024,Hello%20World!,768"),
    ("{+path,x}/here", "/foo/bar,1024/here"),
    ("{+path:6}/here", "/foo/b/here"),
    ("{+list}", "red,green,blue"),
    ("{+list*}", "red,green,blue"),
    ("{+keys}", "semi,;,dot,.,comma,,"),
    ("{+keys*}", "semi=;,dot=.,comma=,"),
    ("{#var}", "#value"),
    ("{#hello}", "#Hello%20World!"),
    ("{#half}", "#50%25"),
    ("foo{#empty}", "foo#"),
    ("foo{#undef}", "foo"),
    ("{#x,hello,y}", "#1024,Hello%20World!,768"),
    ("{#path,x}/here", "#/foo/bar,1024/here"),
    ("{#path:6}/here", "#/foo/b/here"),
    ("{#list}", "#red,green,blue"),
    ("{#list*}", "#red,green,blue"),
    ("{#keys}", "#semi,;,dot,.,comma,,"),
    ("{#keys*}", "#semi=;,dot=.,comma=,"),
    ("{.who}", ".fred"),
    ("{.who,who}", ".fred.fred"),
    ("{.half,who}", ".50%25.fred"),
    ("www{.dom*}", "www.example.com"),
    ("X{.var}", "X.value"),
    ("X{.empty}", "X."),
    ("X{.undef}", "X"),
    ("X{.var:3}", "X.val"),
    ("X{.list}", "X.red,green,blue"),
    ("X{.list*}", "X.red.green.blue"),
    ("X{.keys}", "X.semi,%3B,dot,.,comma,%2C"),
    ("X{.keys*}", "X.semi=%3B.dot=..comma=%2C"),
    ("X{.empty_keys}", "X"),
    ("X{.empty_keys*}", "X"),
    ("{/who}", "/fred"),
    ("{/who,who}", "/fred/fred"),
    ("{/half,who}", "/50%25/fred"),
    ("{/who,dub}", "/fred/me%2Ftoo"),
    ("{/var}", "/value"),
    ("{/var,empty}", "/value/"),
    ("{/var,undef}", "/value"),
    ("{/var,x}/here", "/value/1024/here"),
    ("{/var:1,var}", "/v/value"),
    ("{/list}", "/red,green,blue"),
    ("{/list*}", "/red/green/blue"),
    ("{/list*,path:4}", "/red/green/blue/%2Ffoo"),
    ("{/keys}", "/semi,%3B,dot,.,comma,%2C"),
    ("{/keys*}", "/semi=%3B/dot=./comma=%2C"),
    ("{;who}", ";who=fred"),
    ("{;half}", ";half=50%25"),
    ("{;empty}", ";empty"),
    ("{;v,empty,who}", ";v=6;empty;who=fred"),
    ("{;v,bar,who}", ";v=6;who=fred"),
    ("{;x,y}", ";x=1024;y=768"),
    ("{;x,y,empty}", ";x=1024;y=768;empty"),
    ("{;x,y,undef}", ";x=1024;y=768"),
    ("{;hello:5}", ";hello=Hello"),
    ("{;list}", ";list=red,green,blue"),
    ("{;list*}", ";list=red;list=green;list=blue"),
    ("{;keys}", ";keys=semi,%3B,dot,.,comma,%2C"),
    ("{;keys*}", ";semi=%3B;dot=.;comma=%2C"),
    ("{?who}", "?who=fred"),
    ("{?half}", "?half=50%25"),
    ("{?x,y}", "?x=1024&y=768"),
    ("{?x,y,empty}", "?x=1024&y=768&empty="),
    ("{?x,y,undef}", "?x=1024&y=768"),
    ("{?var:3}", "?var=val"),
    ("{?list}", "?list=red,green,blue"),
    ("{?list*}", "?list=red&list=green&list=blue"),
    ("{?keys}", "?keys=semi,%3B,dot,.,comma,%2C"),
    ("{?keys*}", "?semi=%3B&dot=.&comma=%2C"),
    ("{&who}", "&who=fred"),
    ("{&half}", "&half=50%25"),
    ("?fixed=yes{&x}", "?fixed=yes&x=1024"),
    ("{&x,y,empty}", "&x=1024&y=768&empty="),
    ("{&x,y,undef}", "&x=1024&y=768"),
    ("{&var:3}", "&var=val"),
    ("{&list}", "&list=red,green,blue"),
    ("{&list*}", "&list=red&list=green&list=blue"),
    ("{&keys}", "&keys=semi,%3B,dot,.,comma,%2C"),
    ("{&keys*}", "&semi=%3B&dot=.&comma=%2C"),
    ("{special_chars}", "2001%3Adb8%3A%3A35"),
]

# (selector, topic, whether Mercure's hub says the selector matches the topic).
MATCH_CASES = [
    *(pytest.param(s, t, True, id=f"rfc6570:{s}") for s, t in RFC_6570_EXPANSIONS),
    # Mercure's topicselector_test.go (TestMatchCache, TestMatchCacheKeyNoCollision).
    pytest.param("bar", "foo", False, id="mercure:different"),
    pytest.param(
        "https://example.com/{foo}/bar", "https://example.com/foo/bar", True, id="mercure:tpl"
    ),
    pytest.param(
        "https://example.com/{foo}/bar",
        "https://example.com/foo/bar/baz",
        False,
        id="mercure:tpl-longer",
    ),
    pytest.param(
        "https://example.com/{fistname}/{lastname}",
        "https://example.com/kevin/dunglas",
        True,
        id="mercure:two-vars",
    ),
    pytest.param("*", "https://example.com/foo/bar", True, id="mercure:any"),
    pytest.param(
        "https://example.com/foo/bar", "https://example.com/foo/bar", True, id="mercure:exact"
    ),
    pytest.param("foo", "foo", True, id="mercure:exact-short"),
    pytest.param("https://example.com/{x}", "https://example.com/a", True, id="mercure:x"),
    pytest.param("https://example.com/{x}", "https://other.com/a", False, id="mercure:host"),
    # The specification's examples (spec/mercure.md, "Subscription", "Subscribers").
    pytest.param("https://example.com/bar/{id}", "https://example.com/bar/1", True, id="spec:id"),
    pytest.param(
        "https://example.com/books/{id}", "https://example.com/books/1", True, id="spec:b"
    ),
    pytest.param(
        "https://example.com/users/foo/{?topic}",
        "https://example.com/users/foo/?topic=https%3A%2F%2Fexample.com%2Fbooks%2F1",
        True,
        id="spec:alternate-topic",
    ),
    pytest.param(
        "https://example.com/users/foo/{?topic}",
        "https://example.com/books/1",
        False,
        id="spec:canonical-not-in-claim",
    ),
    pytest.param(
        "/.well-known/mercure/subscriptions/{topic}/{subscriber}",
        "/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2Fa/urn%3Auuid%3A1",
        True,
        id="spec:subscriptions",
    ),
    # uritemplate's TestTemplateRegexp_NotMatch.
    pytest.param(
        "https://example.com/foo{?bar}", "https://example.com/foobaz", False, id="yosida95:not"
    ),
    # A simple expression takes unreserved characters, "," and pct-encoded triplets only.
    pytest.param("https://example.com/{x}", "https://example.com/a/b", False, id="slash"),
    pytest.param("https://example.com/{x}", "https://example.com/a%2Fb", True, id="pct"),
    pytest.param("https://example.com/{x}", "https://example.com/a,b", True, id="comma"),
    pytest.param("https://example.com/{x}", "https://example.com/a=b", False, id="equals"),
    pytest.param("https://example.com/{x*}", "https://example.com/a=b", True, id="explode-eq"),
    pytest.param("https://example.com/{x}", "https://example.com/", True, id="empty-value"),
    pytest.param("https://example.com/{x}", "https://example.com/%zz", False, id="bad-pct"),
    pytest.param("https://example.com/{x}", "https://example.com/%4", False, id="short-pct"),
    pytest.param("https://example.com/{x}", "https://example.com/%C3%A9", True, id="pct-utf8"),
    pytest.param("https://example.com/{x}", "https://example.com/\u00e9", False, id="raw-utf8"),
    pytest.param("https://example.com/{+x}", "https://example.com/a/b?c#d", True, id="reserved"),
    pytest.param("https://example.com/{x:2}", "https://example.com/abcdef", True, id="prefix"),
    pytest.param("{/a,b}", "/x/y", True, id="path-two"),
    pytest.param("{/a,b}", "/x/y/z", False, id="path-three-of-two"),
    pytest.param("{/a*}", "/x/y/z", True, id="path-explode"),
    pytest.param("{?a,b}", "?a=1&b=2&c=3", False, id="query-three-of-two"),
    pytest.param("{x}", "", True, id="empty-topic"),
    # Case matters: topics are IRIs, and the comparison is exact.
    pytest.param("https://example.com/Foo", "https://example.com/foo", False, id="case-exact"),
    pytest.param("https://EXAMPLE.com/{x}", "https://example.com/a", False, id="case-tpl"),
    pytest.param("*", "", True, id="any-empty"),
    pytest.param("", "", True, id="empty-exact"),
    pytest.param("**", "x", False, id="double-star"),
    # Regular-expression metacharacters are plain characters, in selectors and topics.
    pytest.param("a.b", "axb", False, id="meta-dot"),
    pytest.param("a+", "aa", False, id="meta-plus"),
    pytest.param("(a|b)", "a", False, id="meta-alt"),
    pytest.param(".*", "anything", False, id="meta-star"),
    pytest.param("[a-z]", "b", False, id="meta-class"),
    pytest.param("^$", "", False, id="meta-anchors"),
    pytest.param("a.{x}", "abc", False, id="meta-dot-in-template"),
    pytest.param("a.{x}", "a.c", True, id="dot-literal-in-template"),
    pytest.param("$(x){y}", "$(x)z", True, id="meta-literal-in-template"),
    pytest.param("{x}", ".*", False, id="meta-in-topic"),
    pytest.param("{x}", "abc\n", False, id="trailing-newline"),
    pytest.param("a{x}", "a\nb", False, id="inner-newline"),
    # A selector that is not a template matches itself only.
    pytest.param("https://example.com/{id", "https://example.com/{id", True, id="open-self"),
    pytest.param("https://example.com/{id", "https://example.com/1", False, id="open"),
    pytest.param("https://example.com/id}", "https://example.com/id}", True, id="close-self"),
    pytest.param("{{x}}", "{{x}}", True, id="double-braces-self"),
    pytest.param("{{x}}", "{a}", False, id="double-braces"),
    pytest.param("{a b}", "{a b}", True, id="space-self"),
    pytest.param("a b/{x}", "a b/c", False, id="space-literal"),
    pytest.param("{}", "", False, id="empty-expression"),
    pytest.param("{=x}", "x", False, id="op-reserved"),
    pytest.param("{x:0}", "x", False, id="prefix-zero"),
    pytest.param("{x:10000}", "x", False, id="prefix-too-long"),
    pytest.param(
        "https://example.com/\ufffd/{x}", "https://example.com/\ufffd/1", False, id="fffd"
    ),
    pytest.param("https://example.com/\u00e9/{x}", "https://example.com/\u00e9/1", True, id="iri"),
    pytest.param("{x}\U0010fffd", "a\U0010fffd", True, id="iprivate"),
]


@pytest.mark.parametrize(("selector", "topic", "expected"), MATCH_CASES)
def test_match(selector: str, topic: str, expected: bool) -> None:
    assert match(selector, topic) is expected


@pytest.mark.parametrize(("selector", "topic", "expected"), MATCH_CASES)
def test_matcher_cold_and_cached(selector: str, topic: str, expected: bool) -> None:
    matcher = SelectorMatcher()
    assert matcher.match(selector, topic) is expected
    assert matcher.match(selector, topic) is expected
    assert matcher.matches_any([selector], [topic]) is expected


def test_one_matcher_for_every_case() -> None:
    # One matcher across all pairs: cached templates and results never leak
    # from one pair into another, and a cache of two entries gives the same answers.
    for matcher in (SelectorMatcher(), SelectorMatcher(max_templates=2, max_results=2)):
        for _ in range(2):
            for case in MATCH_CASES:
                selector, topic, expected = case.values
                assert matcher.match(selector, topic) is expected, case.id


# (template, what uritemplate's Regexp().String() is, as Go printed it).
REGEXP_CASES = [
    (
        "https://example.net/foo/{random}",
        r"^(?:https://example\.net/foo/)((?:(?:[\x2c\x2d\x2e\x30-\x39\x41-\x5a\x5f\x61-\x7a\x7e]"
        r"|%[[:xdigit:]][[:xdigit:]])*))?$",
    ),
    (
        "https://example.com/users/foo/{?topic}",
        r"^(?:https://example\.com/users/foo/)(?:\?((?:(?:[\x2c\x3d\x2d\x2e\x30-\x39\x41-\x5a"
        r"\x5f\x61-\x7a\x7e]|%[[:xdigit:]][[:xdigit:]])*)))?$",
    ),
    (
        "https://example.com/{+path}",
        r"^(?:https://example\.com/)((?:(?:[\x2d\x2e\x30-\x39\x41-\x5a\x5f\x61-\x7a\x7e\x21\x23"
        r"\x24\x26-\x2c\x2f\x3a\x3b\x3d\x3f\x40\x5b\x5d]|%[[:xdigit:]][[:xdigit:]])*))?$",
    ),
    (
        "{a,b,c}",
        r"^((?:(?:[\x2c\x2d\x2e\x30-\x39\x41-\x5a\x5f\x61-\x7a\x7e]|%[[:xdigit:]][[:xdigit:]])*)"
        r"(?:,(?:(?:[\x2c\x2d\x2e\x30-\x39\x41-\x5a\x5f\x61-\x7a\x7e]|%[[:xdigit:]][[:xdigit:]])"
        r"*)){0,2})?$",
    ),
    (
        "x{/a*,b}",
        r"^(?:x)(?:/((?:(?:[\x2c\x3d\x2d\x2e\x30-\x39\x41-\x5a\x5f\x61-\x7a\x7e]|%[[:xdigit:]]"
        r"[[:xdigit:]])*)(?:/(?:(?:[\x2c\x3d\x2d\x2e\x30-\x39\x41-\x5a\x5f\x61-\x7a\x7e]|%"
        r"[[:xdigit:]][[:xdigit:]])*))*))?$",
    ),
    (
        "{#a}.+*?()[]$",
        r"^(?:#((?:(?:[\x2d\x2e\x30-\x39\x41-\x5a\x5f\x61-\x7a\x7e\x21\x23\x24\x26-\x2c\x2f\x3a"
        r"\x3b\x3d\x3f\x40\x5b\x5d]|%[[:xdigit:]][[:xdigit:]])*)))?(?:\.\+\*\?\(\)\[\]\$)$",
    ),
]


@pytest.mark.parametrize(("template", "source"), REGEXP_CASES)
def test_regexp_source_is_uritemplates(template: str, source: str) -> None:
    assert parse_template(template).regexp_source() == source


# (selector, uritemplate's reason for refusing it): Mercure matches it by equality only.
INVALID_TEMPLATES = [
    ("{", "incomplete expression"),
    ("{a", "incomplete expression"),
    ("a}", "unacceptable character"),
    ("{a}}", "unacceptable character"),
    ("{{a}}", "unacceptable variable name"),
    ("{}", "unacceptable variable name"),
    ("{a,}", "unacceptable variable name"),
    ("{.a.}", "unacceptable variable name"),
    ("{a..b}", "unacceptable variable name"),
    ("{a-b}", "unacceptable variable name"),
    ("{=a}", "op-reserved"),
    ("{|a}", "op-reserved"),
    ("{a*:3}", "unrecognized value modifier"),
    ("{a:}", "max-length"),
    ("{a:0}", "max-length"),
    ("{a:01}", "max-length"),
    ("{a:10000}", "max-length"),
    ("{a%4}", "incomplete pct-encoded"),
    ("%zz{a}", "incomplete pct-encoded"),
    ("a b{a}", "unacceptable character"),
    ('"{a}"', "unacceptable character"),
    ("<{a}>", "unacceptable character"),
    ("{a}|^", "unacceptable character"),
    ("\\{a}", "unacceptable character"),
    ("\x7f{a}", "unacceptable character"),
    ("\ufff0{a}", "unacceptable character"),
    ("\U000e0001{a}", "unacceptable character"),
    ("\ufffd{a}", "invalid UTF-8"),
    ("\udcff{a}", "invalid UTF-8"),
]


@pytest.mark.parametrize(("selector", "reason"), INVALID_TEMPLATES)
def test_invalid_template_matches_itself_only(selector: str, reason: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(reason)):
        parse_template(selector)
    assert compile_template(selector) is None
    assert match(selector, selector)
    assert not match(selector, "a")
    assert not match(selector, "")


def _variables(count: int) -> str:
    return "{/" + ",".join(f"v{n}" for n in range(count)) + "}"


def test_go_repeat_limit() -> None:
    # Regexp() of an expression of n variables holds {0,n-1}; Go's regexp
    # refuses a count over 1000 (and MustCompile panics inside Mercure).
    assert match(_variables(GO_MAX_REPEAT + 1), "/a/b")
    assert not match(_variables(GO_MAX_REPEAT + 2), "/a/b")
    assert match(_variables(GO_MAX_REPEAT + 2), _variables(GO_MAX_REPEAT + 2))


def test_template_over_the_length_bound_matches_itself_only() -> None:
    selector = "https://example.com/" + "a" * 100 + "/{id}"
    assert SelectorMatcher().match(selector, selector[:-4] + "1")
    short = SelectorMatcher(max_template_length=len(selector) - 1)
    assert not short.match(selector, selector[:-4] + "1")
    assert short.match(selector, selector)


@pytest.mark.parametrize(
    ("selector", "topic", "expected"),
    [
        # Backtracking would try every split of the commas between the exploded
        # values (2**n); an automaton reads each character once.
        pytest.param("{x*}", "," * 100_000 + "/", False, id="explode-commas"),
        pytest.param("{x*}", "," * 100_000, True, id="explode-commas-match"),
        pytest.param("{a}{b}{c}{d}{e}{f}{g}{h}", "a" * 50_000 + "/", False, id="adjacent"),
        pytest.param("{/a*}{/b*}{/c*}", "/a" * 30_000 + "?", False, id="adjacent-explode"),
        pytest.param("".join(f"{{v{n}}}" for n in range(1300)), "a," * 5000, True, id="8k-tpl"),
        pytest.param(_variables(1000), "/a" * 999 + "/", True, id="1000-variables"),
        pytest.param(_variables(1000), "/a" * 1001, False, id="1000-variables-over"),
        pytest.param("{x}/" * 2000, "ab/" * 3000, False, id="8k-tpl-thrash"),
    ],
)
def test_hostile_inputs_take_linear_time(selector: str, topic: str, expected: bool) -> None:
    # The suite's faulthandler_timeout is the bound; each finishes in milliseconds.
    matcher = SelectorMatcher()
    assert matcher.match(selector, topic) is expected


# Mercure's TestCanReceive (authorization_test.go): any selector matching any topic.
MATCHES_ANY_CASES = [
    (["foo", "bar"], ["foo", "bar"], True),
    (["bar"], ["foo", "bar"], True),
    (["*"], ["foo", "bar"], True),
    ([], ["foo", "bar"], False),
    (["baz"], ["foo", "bar"], False),
    (["baz", "bat"], ["foo", "bar"], False),
    (["*"], [], False),
    (["https://example.com/{id}"], ["urn:a", "https://example.com/1"], True),
]


@pytest.mark.parametrize(("selectors", "topics", "expected"), MATCHES_ANY_CASES)
def test_matches_any(selectors: list[str], topics: list[str], expected: bool) -> None:
    assert SelectorMatcher().matches_any(selectors, topics) is expected


def test_caches_are_bounded_by_entries() -> None:
    matcher = SelectorMatcher(max_templates=3, max_results=5)
    for n in range(100):
        assert matcher.match(f"https://example.com/{n}/{{id}}", f"https://example.com/{n}/x")
        assert not matcher.match(f"https://example.com/{n}/{{id}}", "urn:other")
    stats = matcher.statistics()
    assert (stats.templates, stats.results) == (3, 5)
    assert (stats.hits, stats.misses) == (0, 200)


def test_caches_are_bounded_by_characters() -> None:
    matcher = SelectorMatcher(max_cached_template_chars=100, max_cached_result_chars=100)
    long_topic = "https://example.com/" + "a" * 200
    assert matcher.match("https://example.com/{+x}", long_topic)
    assert matcher.statistics().results == 0  # a pair over the bound alone is not kept
    for n in range(10):
        assert matcher.match(f"urn:{n}:{{x}}", f"urn:{n}:y")
    stats = matcher.statistics()
    assert stats.template_chars <= 100
    assert stats.result_chars <= 100
    assert stats.results < 10


def test_least_recently_used_goes_first() -> None:
    matcher = SelectorMatcher(max_results=2)
    matcher.match("a{x}", "ab")
    matcher.match("c{x}", "cd")
    matcher.match("a{x}", "ab")  # a hit: now the most recent
    matcher.match("e{x}", "ef")  # pushes out c{x}
    before = matcher.statistics()
    matcher.match("a{x}", "ab")
    matcher.match("c{x}", "cd")
    after = matcher.statistics()
    assert (before.hits, after.hits - before.hits) == (1, 1)
    assert after.misses - before.misses == 1


def test_exact_and_any_use_no_cache() -> None:
    matcher = SelectorMatcher()
    assert matcher.match(ANY_TOPIC, "urn:x")
    assert matcher.match("urn:x", "urn:x")
    assert not matcher.match("urn:y", "urn:x")
    assert matcher.statistics() == MatcherStatistics(0, 0, 0, 0, 0, 0)


# -- The automaton against Python's re on the same regular expression --------
# Go's regexp and Python's re agree on these expressions over short strings
# (no backtracking blow-up at this size): the automaton must too.

_VARNAMES = st.sampled_from(["a", "b1", "x.y", "%41"])
_VARSPEC = st.tuples(_VARNAMES, st.sampled_from(["", "", "*", ":2"])).map("".join)
_EXPRESSION = st.tuples(
    st.sampled_from(["", "+", "#", ".", "/", ";", "?", "&"]),
    st.lists(_VARSPEC, min_size=1, max_size=3).map(",".join),
).map(lambda t: "{" + t[0] + t[1] + "}")
_LITERAL = st.text(alphabet="ab/.:-?#=,&;2F", min_size=1, max_size=3) | st.just("%2F")
_PARTS = st.lists(_LITERAL | _EXPRESSION, min_size=1, max_size=4).filter(
    lambda parts: any(p.startswith("{") for p in parts)
)
_VALUE = st.text(alphabet="ab1/.:-?#=,&;%2F*!é", max_size=4)


@st.composite
def _topic_like(draw: st.DrawFn, parts: list[str]) -> str:
    """A string shaped like an expansion of the template: its literals kept,
    each expression replaced by what it might expand to, or by anything."""
    out = []
    for part in parts:
        if not part.startswith("{"):
            out.append(part)
            continue
        operator = part[1] if part[1] in "+#./;?&" else ""
        first = "" if operator in "+" else operator
        separator = {"?": "&", ";": ";", "/": "/", ".": "."}.get(operator, ",")
        values = draw(st.lists(_VALUE, max_size=3))
        out.append(draw(st.sampled_from([first, ""])) + separator.join(values))
    return "".join(out)


def _python_regexp(template: str) -> re.Pattern[str]:
    source = parse_template(template).regexp_source()
    return re.compile(source[1:-1].replace("[[:xdigit:]]", "[0-9A-Fa-f]"))


@settings(max_examples=400, deadline=None)
@given(data=st.data(), parts=_PARTS)
def test_automaton_agrees_with_the_regular_expression(
    data: st.DataObject, parts: list[str]
) -> None:
    template = "".join(parts)
    topics = data.draw(st.lists(_topic_like(parts) | _VALUE, min_size=1, max_size=6))
    compiled = compile_template(template)
    assert compiled is not None
    pattern = _python_regexp(template)
    for topic in topics:
        assert compiled.fullmatch(topic) is (pattern.fullmatch(topic) is not None), topic
