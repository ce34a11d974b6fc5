"""trio_esper.mercure.forms: publish requests read as dunglas/mercure v0.24.2 reads them.

The expected answers are Mercure's: its PublishHandler's form handling
(publish.go, over Go's Request.ParseForm) gave the same fields or the same
status for each request (a Go program outside the repository ran them).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from trio_esper.errors import BadRequest, Forbidden, InvalidEvent
from trio_esper.mercure.forms import (
    MercureUpdate,
    PublishForm,
    parse_update,
    read_publish_form,
)
from trio_esper.sse import Event, encode

FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Refused:
    """An expected error: its HTTP status and a fragment of its reason."""

    status: int
    reason: str


def form(
    *topics: str,
    data: str = "",
    private: bool = False,
    id: str | None = None,
    type: str | None = None,
    retry: int | None = None,
) -> PublishForm:
    return PublishForm(topics, data, private, id, type, retry)


# (Content-Type, body, query string, the form Mercure read, or its refusal).
CASES = [
    pytest.param(FORM, b"topic=a&data=b", b"", form("a", data="b"), id="minimal"),
    pytest.param(
        FORM,
        b"topic=https://example.com/foo&data=the%20content",
        b"",
        form("https://example.com/foo", data="the content"),
        id="spec-example",
    ),
    pytest.param(
        FORM,
        b"topic=https://example.com/books/1&topic=https://example.com/users/foo/"
        b"?topic=https%3A%2F%2Fexample.com%2Fbooks%2F1&private=on",
        b"",
        form(
            "https://example.com/books/1",
            "https://example.com/users/foo/?topic=https://example.com/books/1",
            private=True,
        ),
        id="spec-private-alternate",
    ),
    pytest.param(
        FORM,
        b"topic=a&data=x&private=on&id=urn:1&type=t&retry=3000",
        b"",
        form("a", data="x", private=True, id="urn:1", type="t", retry=3000),
        id="every-field",
    ),
    # Repeated keys: every topic, the first of the others.
    pytest.param(
        FORM,
        b"topic=a&topic=b&topic=a&data=1&data=2&id=x&id=y&type=p&type=q&retry=1&retry=z",
        b"",
        form("a", "b", "a", data="1", id="x", type="p", retry=1),
        id="repeated",
    ),
    pytest.param(FORM, b"data=x&topic=a", b"", form("a", data="x"), id="order"),
    pytest.param(FORM, b"topic=", b"", form(""), id="empty-topic"),
    pytest.param(FORM, b"topic", b"", form(""), id="topic-without-equals"),
    pytest.param(FORM, b"topic=a&data", b"", form("a"), id="data-without-equals"),
    # private is set by its presence, whatever its value.
    pytest.param(FORM, b"topic=a&private=", b"", form("a", private=True), id="private-empty"),
    pytest.param(FORM, b"topic=a&private", b"", form("a", private=True), id="private-bare"),
    pytest.param(FORM, b"topic=a&private=off", b"", form("a", private=True), id="private-off"),
    pytest.param(FORM, b"topic=a&private=0", b"", form("a", private=True), id="private-0"),
    pytest.param(FORM, b"topic=a&Private=on", b"", form("a"), id="private-case"),
    pytest.param(FORM, b"topic=a", b"private=on", form("a"), id="private-in-query"),
    # An empty id or type is none; retry 0 is none (Mercure writes no "retry: 0").
    pytest.param(FORM, b"topic=a&id=&type=", b"", form("a"), id="empty-id-type"),
    pytest.param(FORM, b"topic=a&retry=", b"", form("a"), id="retry-empty"),
    pytest.param(FORM, b"topic=a&retry=0", b"", form("a"), id="retry-0"),
    pytest.param(FORM, b"topic=a&retry=007", b"", form("a", retry=7), id="retry-leading-zeros"),
    # Mercure takes up to 2**64 - 1; the broker stores up to sse.MAX_RETRY (2**63 - 1).
    pytest.param(
        FORM,
        b"topic=a&retry=9223372036854775807",
        b"",
        form("a", retry=2**63 - 1),
        id="retry-max",
    ),
    pytest.param(
        FORM, b"topic=a&retry=9223372036854775808", b"", Refused(400, "retry"), id="retry-2**63"
    ),
    pytest.param(
        FORM, b"topic=a&retry=18446744073709551616", b"", Refused(400, "retry"), id="retry-2**64"
    ),
    pytest.param(FORM, b"topic=a&retry=-1", b"", Refused(400, "retry"), id="retry-negative"),
    pytest.param(FORM, b"topic=a&retry=%2B1", b"", Refused(400, "retry"), id="retry-plus"),
    pytest.param(FORM, b"topic=a&retry=1.5", b"", Refused(400, "retry"), id="retry-float"),
    pytest.param(FORM, b"topic=a&retry=1+", b"", Refused(400, "retry"), id="retry-space"),
    pytest.param(FORM, b"topic=a&retry=invalid", b"", Refused(400, "retry"), id="retry-word"),
    pytest.param(
        FORM, b"topic=a&retry=" + b"0" * 5000 + b"5", b"", form("a", retry=5), id="retry-zeros"
    ),
    # Escapes: + is a space, %XX a byte, anything else after % an error.
    pytest.param(FORM, b"topic=a&data=1+2%2B3", b"", form("a", data="1 2+3"), id="plus"),
    pytest.param(FORM, b"%74opic=a", b"", form("a"), id="escaped-key"),
    pytest.param(FORM, b"topic=a&data=%C3%A9", b"", form("a", data="\u00e9"), id="utf8"),
    pytest.param(
        FORM, "topic=a&data=\u00e9".encode(), b"", form("a", data="\u00e9"), id="raw-utf8"
    ),
    pytest.param(FORM, b"topic=a&data=%zz", b"", Refused(400, "escape"), id="bad-escape"),
    pytest.param(FORM, b"topic=a&data=%4", b"", Refused(400, "escape"), id="short-escape"),
    pytest.param(FORM, b"topic=a&data=%", b"", Refused(400, "escape"), id="lone-percent"),
    pytest.param(FORM, b"topic=a&x%zz=1", b"", Refused(400, "escape"), id="bad-escape-unread"),
    pytest.param(FORM, b"topic=a&data=a;b", b"", Refused(400, "semicolon"), id="semicolon"),
    pytest.param(FORM, b"topic=a;data=b", b"", Refused(400, "semicolon"), id="semicolon-sep"),
    pytest.param(FORM, b"&&topic=a&&", b"", form("a"), id="empty-pairs"),
    pytest.param(FORM, b"topic=a&data=x=y", b"", form("a", data="x=y"), id="equals-in-value"),
    pytest.param(
        FORM, b"topic=a&data=%0D%0A", b"", form("a", data="\r\n"), id="crlf-data-read-as-is"
    ),
    # The query string is parsed too: an error there is a 400.
    pytest.param(FORM, b"topic=a", b"x=1&y=%zz", Refused(400, "escape"), id="query-escape"),
    pytest.param(FORM, b"topic=a", b"a;b", Refused(400, "semicolon"), id="query-semicolon"),
    pytest.param(FORM, b"data=x", b"topic=a", Refused(400, "topic"), id="topic-in-query"),
    # Pair and topic counts.
    pytest.param(FORM, b"topic=a" + b"&" * 9999, b"", form("a"), id="10000-pairs"),
    pytest.param(FORM, b"topic=a" + b"&" * 10000, b"", Refused(400, "10000"), id="10001-pairs"),
    pytest.param(FORM, b"&".join([b"topic=t"] * 1000), b"", form(*["t"] * 1000), id="1000-topics"),
    pytest.param(
        FORM, b"&".join([b"topic=t"] * 1001), b"", Refused(400, "too many"), id="1001-topics"
    ),
    # Media types, as Go's mime.ParseMediaType reads them.
    pytest.param(None, b"topic=a", b"", Refused(400, "topic"), id="no-content-type"),
    pytest.param("", b"topic=a", b"", Refused(400, "topic"), id="empty-content-type"),
    pytest.param("text/plain", b"topic=a", b"", Refused(400, "topic"), id="text-plain"),
    pytest.param("multipart/form-data", b"topic=a", b"", Refused(400, "topic"), id="multipart"),
    pytest.param("application/json", b'{"topic":"a"}', b"", Refused(400, "topic"), id="json"),
    pytest.param(
        "Application/X-WWW-Form-URLEncoded", b"topic=a", b"", form("a"), id="media-type-case"
    ),
    pytest.param(FORM + "; charset=UTF-8", b"topic=a", b"", form("a"), id="charset"),
    pytest.param(FORM + ";charset=latin1", b"topic=a", b"", form("a"), id="charset-ignored"),
    pytest.param(f" {FORM} ;", b"topic=a", b"", form("a"), id="spaces-trailing-semicolon"),
    pytest.param(FORM + '; a="x;y"', b"topic=a", b"", form("a"), id="quoted-param"),
    pytest.param(FORM + "; a=1; a=1", b"topic=a", b"", form("a"), id="same-param-twice"),
    pytest.param(
        FORM + "; a=1; a=2", b"topic=a", b"", Refused(400, "Content-Type"), id="param-conflict"
    ),
    pytest.param(
        FORM + "; charset", b"topic=a", b"", Refused(400, "Content-Type"), id="param-no-value"
    ),
    pytest.param(
        FORM + '; a="x', b"topic=a", b"", Refused(400, "Content-Type"), id="param-open-quote"
    ),
    pytest.param(
        "text/plain; boundary=", b"topic=a", b"", Refused(400, "Content-Type"), id="mercure-test"
    ),
    pytest.param("application/", b"topic=a", b"", Refused(400, "Content-Type"), id="no-subtype"),
    pytest.param(
        "application/x/y", b"topic=a", b"", Refused(400, "Content-Type"), id="two-slashes"
    ),
    pytest.param(
        "application /x-www-form-urlencoded",
        b"topic=a",
        b"",
        Refused(400, "Content-Type"),
        id="space-before-slash",
    ),
    pytest.param("\x1c" + FORM, b"topic=a", b"", Refused(400, "Content-Type"), id="not-a-space"),
    pytest.param(FORM, b"", b"", Refused(400, 'Missing "topic"'), id="empty-body"),
    pytest.param(FORM, b"data=x", b"", Refused(400, 'Missing "topic"'), id="no-topic"),
    # Not UTF-8 once unescaped, in a value the hub reads (Mercure passes the bytes on).
    pytest.param(FORM, b"topic=%FF", b"", Refused(400, "UTF-8"), id="topic-not-utf8"),
    pytest.param(FORM, b"topic=a&data=%FF", b"", Refused(400, "UTF-8"), id="data-not-utf8"),
    pytest.param(FORM, b"topic=a&other=%FF", b"", form("a"), id="unread-not-utf8"),
]


@pytest.mark.parametrize(("content_type", "body", "query", "expected"), CASES)
def test_read_publish_form(
    content_type: str | None, body: bytes, query: bytes, expected: PublishForm | Refused
) -> None:
    if isinstance(expected, Refused):
        with pytest.raises(BadRequest, match=expected.reason) as refused:
            read_publish_form(body, content_type, query=query)
        assert refused.value.status == expected.status
    else:
        assert read_publish_form(body, content_type, query=query) == expected


# (the form, after the claims are checked: the update, or why it is refused).
UPDATE_CASES = [
    pytest.param(
        form("a", "b", data="x", private=True, id="urn:1", type="t", retry=5),
        MercureUpdate(("a", "b"), "x", True, "urn:1", "t", 5),
        id="every-field",
    ),
    # Mercure turns each CR LF, CR or LF of data into the start of another data: line.
    pytest.param(
        form("a", data="several\nlines\rwith\r\neol"),
        MercureUpdate(("a",), "several\nlines\nwith\neol"),
        id="line-breaks",
    ),
    pytest.param(form("a", data="\r\n\r\n"), MercureUpdate(("a",), "\n\n"), id="only-breaks"),
    pytest.param(form("a", data="nul\0ok"), MercureUpdate(("a",), "nul\0ok"), id="nul-in-data"),
    # publish.go:43-78: CR, LF or NUL in id or type would inject SSE fields.
    pytest.param(form("a", id="foo\nevent: injected"), Refused(400, "id"), id="id-lf"),
    pytest.param(form("a", id="foo\revent: injected"), Refused(400, "id"), id="id-cr"),
    pytest.param(form("a", id="foo\x00bar"), Refused(400, "id"), id="id-nul"),
    pytest.param(form("a", type="foo\nid: injected"), Refused(400, "event"), id="type-lf"),
    pytest.param(form("a", type="foo\rdata: injected"), Refused(400, "event"), id="type-cr"),
    pytest.param(form("a", type="foo\x00bar"), Refused(400, "event"), id="type-nul"),
    # Mercure's TestPublishHandlerReservedTopicNamespace.
    pytest.param(
        form("/.well-known/mercure/subscriptions/foo"), Refused(403, "reserved"), id="reserved"
    ),
    pytest.param(
        form("a", "https://example.com/.well-known/mercure/subscriptions/foo"),
        Refused(403, "reserved"),
        id="reserved-alternate",
    ),
    pytest.param(form("foo/.well-known/mercure/bar"), Refused(403, "reserved"), id="reserved-in"),
    pytest.param(
        form("/.well-known/Mercure"), MercureUpdate(("/.well-known/Mercure",), ""), id="case"
    ),
]


@pytest.mark.parametrize(("published", "expected"), UPDATE_CASES)
def test_update(published: PublishForm, expected: MercureUpdate | Refused) -> None:
    if isinstance(expected, Refused):
        error = InvalidEvent if expected.status == 400 else Forbidden
        with pytest.raises(error, match=expected.reason) as refused:
            published.update()
        assert refused.value.status == expected.status
    else:
        update = published.update()
        assert update == expected
        assert update.event == Event(update.data, update.type, update.id, update.retry)


def test_parse_update_reads_then_validates() -> None:
    update = parse_update(b"topic=a&data=1%0D%0A2&type=t", FORM)
    assert update == MercureUpdate(("a",), "1\n2", type="t")
    assert encode(update.event) == b"event: t\ndata: 1\ndata: 2\n\n"
    with pytest.raises(Forbidden):
        parse_update(b"topic=/.well-known/mercure", FORM)
    with pytest.raises(BadRequest):
        parse_update(b"data=x", FORM)


def test_update_validates_on_construction() -> None:
    with pytest.raises(InvalidEvent):
        MercureUpdate(("a",), "x\ry")
    with pytest.raises(InvalidEvent):
        MercureUpdate(("a",), "x", id="a\nb")
    # The hub's own updates may use its namespace: only publishers may not.
    assert MercureUpdate(("/.well-known/mercure/subscriptions/a/b",), "{}").event == Event("{}")
