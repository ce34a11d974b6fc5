"""trio_esper.sse: one table drives encode and parse, as h11's tests/test_io.py does."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_esper.errors import InvalidEvent
from trio_esper.sse import MAX_ID_BYTES, MAX_RETRY, Event, check_resumable_id, encode, parse_body

# (event, canonical bytes): encode(event) == bytes and parse_body(bytes) == [event].
SIMPLE_CASES = [
    pytest.param(Event("hello"), b"data: hello\n\n", id="plain"),
    pytest.param(Event("a\nb\nc"), b"data: a\ndata: b\ndata: c\n\n", id="multi-line"),
    pytest.param(Event("a\n\nb"), b"data: a\ndata:\ndata: b\n\n", id="blank-middle-line"),
    pytest.param(Event("a\n"), b"data: a\ndata:\n\n", id="trailing-newline"),
    pytest.param(Event(""), b"data:\n\n", id="empty-data"),
    pytest.param(Event(" x"), b"data:  x\n\n", id="data-leading-space"),
    pytest.param(
        Event("id: 5\nevent: x"), b"data: id: 5\ndata: event: x\n\n", id="data-like-field"
    ),
    pytest.param(Event("nul\0ok"), b"data: nul\0ok\n\n", id="nul-in-data"),
    pytest.param(
        Event("h\u00e9 \u2713", id="\u00fc"),
        "id: \u00fc\ndata: h\u00e9 \u2713\n\n".encode(),
        id="utf-8",
    ),
    pytest.param(Event("x", event="update"), b"event: update\ndata: x\n\n", id="event-type"),
    pytest.param(Event("x", event=""), b"event:\ndata: x\n\n", id="empty-event-type"),
    pytest.param(Event("x", id="42"), b"id: 42\ndata: x\n\n", id="id"),
    pytest.param(Event("x", id=""), b"id:\ndata: x\n\n", id="empty-id"),
    pytest.param(Event("x", id=" 1"), b"id:  1\ndata: x\n\n", id="id-leading-space"),
    pytest.param(Event("x", retry=3000), b"retry: 3000\ndata: x\n\n", id="retry"),
    pytest.param(Event("x", retry=0), b"retry: 0\ndata: x\n\n", id="retry-zero"),
    pytest.param(
        Event("a\nb", event="e", id="7", retry=10),
        b"id: 7\nevent: e\nretry: 10\ndata: a\ndata: b\n\n",
        id="all-fields",
    ),
]


@pytest.mark.parametrize(("event", "wire"), SIMPLE_CASES)
def test_encode(event: Event, wire: bytes) -> None:
    assert encode(event) == wire


@pytest.mark.parametrize(("event", "wire"), SIMPLE_CASES)
def test_parse_canonical(event: Event, wire: bytes) -> None:
    assert parse_body(wire) == [event]


# Bodies a publisher may send that are not what encode() produces.
LENIENT_CASES = [
    pytest.param(b"id: 1\r\ndata: a\r\ndata: b\r\n\r\n", [Event("a\nb", id="1")], id="crlf"),
    pytest.param(b"id: 1\rdata: a\rdata: b\r\r", [Event("a\nb", id="1")], id="lone-cr"),
    pytest.param(b"data: a\r\ndata: b\rdata: c\n", [Event("a\nb\nc")], id="mixed-line-ends"),
    pytest.param(b"data: a\n", [Event("a")], id="lf-no-blank-line"),
    pytest.param(b"data: a", [Event("a")], id="no-trailing-newline"),
    pytest.param(b"event:x\nid:1\ndata:y\n\n", [Event("y", event="x", id="1")], id="no-space"),
    pytest.param(b"data:  y\n", [Event(" y")], id="only-one-space-stripped"),
    pytest.param(b"data\n", [Event("")], id="field-without-colon"),
    pytest.param(b": hi\ndata: a\n:\ndata: b\n: bye\n\n", [Event("a\nb")], id="comments"),
    pytest.param(b"\xef\xbb\xbfdata: a\n\n", [Event("a")], id="leading-bom"),
    pytest.param(b"\n\n\ndata: a", [Event("a")], id="leading-blank-lines"),
    pytest.param(b"data: x\nid: 3\n", [Event("x", id="3")], id="field-after-data"),
    pytest.param(b"retry: 007\ndata: x", [Event("x", retry=7)], id="retry-leading-zeros"),
    pytest.param(
        b"data: a\n\nid: 2\ndata: b\n\n",
        [Event("a"), Event("b", id="2")],
        id="two-events",
    ),
    pytest.param(b"data: a\n\n\n\ndata: b", [Event("a"), Event("b")], id="extra-blank-lines"),
    pytest.param(
        b"id: 1\nevent: e\nretry: 5\ndata: a\n\ndata: b\n\n",
        [Event("a", event="e", id="1", retry=5), Event("b")],
        id="fields-do-not-carry-over",
    ),
    pytest.param(
        b"event: a\nid: 1\nevent: b\nid: 2\ndata: x\n",
        [Event("x", event="b", id="2")],
        id="repeated-fields-last-wins",
    ),
]


@pytest.mark.parametrize(("body", "events"), LENIENT_CASES)
def test_parse_lenient(body: bytes, events: list[Event]) -> None:
    assert parse_body(body) == events


# Bodies refused with InvalidEvent, and a fragment of the reason.
BAD_BODIES = [
    pytest.param(b"", "no event", id="empty-body"),
    pytest.param(b"\n\n\n", "no event", id="blank-lines-only"),
    pytest.param(b": just a comment\n\n", "no event", id="only-comments"),
    pytest.param(b"id: 1\nretry: 5\n\n", "no data field", id="no-data-field"),
    pytest.param(b"event: x\n\n", "no data field", id="event-only-block"),
    pytest.param(b"event: x\n\ndata: y\n\n", "no data field", id="event-block-before-data"),
    pytest.param(b"data: \xff\n", "UTF-8 (byte 6)", id="non-utf-8"),
    pytest.param(b"data: \xc3(\n", "UTF-8", id="truncated-utf-8"),
    pytest.param(b"id: a\0b\ndata: x\n", "NUL", id="nul-in-id"),
    pytest.param(b"event: a\0b\ndata: x\n", "NUL", id="nul-in-event"),
    pytest.param(b"foo: bar\ndata: x\n", "unknown field 'foo'", id="unknown-field"),
    pytest.param(b"Data: x\n", "unknown field 'Data'", id="field-names-case-sensitive"),
    pytest.param(b" data: x\n", "unknown field ' data'", id="leading-space-in-name"),
    pytest.param(
        b"a\xe2\x80\xa8b\xc2\x85: x\ndata: y\n", "unknown field", id="unicode-breaks-in-name"
    ),
    pytest.param(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n", "unknown field", id="second-bom"),
    pytest.param(b"retry: soon\ndata: x\n", "retry", id="retry-word"),
    pytest.param(b"retry: -1\ndata: x\n", "retry", id="retry-negative"),
    pytest.param(b"retry: 1.5\ndata: x\n", "retry", id="retry-decimal"),
    pytest.param(b"retry:\ndata: x\n", "retry", id="retry-empty"),
    pytest.param("retry: \u0661\ndata: x\n".encode(), "retry", id="retry-non-ascii-digit"),
    pytest.param(b"retry: " + b"9" * 5000 + b"\ndata: x\n", "retry", id="retry-5000-digits"),
]


@pytest.mark.parametrize(("body", "reason"), BAD_BODIES)
def test_parse_rejects(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as excinfo:
        parse_body(body)
    message = str(excinfo.value)
    assert reason in message
    assert message == excinfo.value.reason
    assert len(message.splitlines()) == 1, "the reason goes in a one-line HTTP response"
    assert excinfo.value.status == 400


BAD_EVENTS = [
    pytest.param({"id": "a\nb"}, "id", id="lf-in-id"),
    pytest.param({"id": "a\rb"}, "id", id="cr-in-id"),
    pytest.param({"id": "a\0b"}, "id", id="nul-in-id"),
    pytest.param({"event": "a\nb"}, "event", id="lf-in-event"),
    pytest.param({"event": "a\rb"}, "event", id="cr-in-event"),
    pytest.param({"event": "a\0b"}, "event", id="nul-in-event"),
    pytest.param({"data": "a\rb"}, "data", id="cr-in-data"),
    pytest.param({"data": "a\r\nb"}, "data", id="crlf-in-data"),
    pytest.param({"retry": -1}, "retry", id="negative-retry"),
]


@pytest.mark.parametrize(("fields", "reason"), BAD_EVENTS)
def test_event_rejects(fields: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidEvent, match=rf"^{reason} ") as excinfo:
        Event(**{"data": "x", **fields})  # type: ignore[arg-type]
    assert excinfo.value.status == 400


_SINGLE_LINE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"))
EVENTS = st.builds(
    Event,
    data=st.text(st.characters(codec="utf-8", exclude_characters="\r")),
    event=st.none() | _SINGLE_LINE,
    id=st.none() | _SINGLE_LINE,
    retry=st.none() | st.integers(min_value=0, max_value=MAX_RETRY),
)


@settings(max_examples=200)
@given(EVENTS)
def test_round_trip(event: Event) -> None:
    assert parse_body(encode(event)) == [event]


@settings(max_examples=100)
@given(st.lists(EVENTS, min_size=1, max_size=5))
def test_round_trip_concatenated(events: list[Event]) -> None:
    assert parse_body(b"".join(encode(e) for e in events)) == events


# Bodies built from plausible lines, so the fuzzer reaches past the UTF-8 check.
_LINES = st.lists(
    st.tuples(
        st.sampled_from(["data", "id", "event", "retry", "", ":", "x", "Data"]),
        st.sampled_from([":", ": ", ""]),
        st.text(max_size=8) | st.from_regex(r"[0-9]{1,6}", fullmatch=True),
        st.sampled_from(["\n", "\r", "\r\n", "\n\n"]),
    ),
    max_size=12,
)


@settings(max_examples=200)
@given(st.binary(max_size=64) | _LINES.map(lambda ls: "".join("".join(t) for t in ls).encode()))
def test_parse_raises_only_invalid_event(body: bytes) -> None:
    try:
        events = parse_body(body)
    except InvalidEvent as exc:
        reason = str(exc)
    else:
        assert events
        return
    assert len(reason.splitlines()) == 1


def _whatwg_reading(body: bytes) -> list[Event] | str:
    """The reference: WHATWG's "Interpreting an event stream" step by step
    (split on CRLF, CR or LF; a blank line dispatches; the end of the body
    does too), with this broker's refusals, as the first reason met."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not valid UTF-8"
    text = text.removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", text)
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    events: list[Event] = []
    fields: dict[str, str] = {}
    data: list[str] = []
    has_data = False
    for line in [*lines, ""]:
        if not line:
            if has_data:
                retry = fields.get("retry")
                try:
                    event = Event(
                        "\n".join(data),
                        fields.get("event"),
                        fields.get("id"),
                        None if retry is None else int(retry),
                    )
                except InvalidEvent as exc:
                    return str(exc)
                events.append(event)
            elif fields:
                return "event has no data field"
            fields, data, has_data = {}, [], False
        elif not line.startswith(":"):
            name, colon, value = line.partition(":")
            value = value[1:] if colon and value.startswith(" ") else value
            if name == "data":
                data.append(value)
                has_data = True
            elif name not in ("event", "id", "retry"):
                return "unknown field"
            elif name == "retry" and not re.fullmatch("[0-9]+", value):
                return "retry must be ASCII digits"
            else:
                fields[name] = value
    return events or "body holds no event"


@settings(max_examples=300)
@given(st.binary(max_size=64) | _LINES.map(lambda ls: "".join("".join(t) for t in ls).encode()))
def test_parse_reads_as_whatwg_does(body: bytes) -> None:
    expected = _whatwg_reading(body)
    try:
        read: list[Event] | str = parse_body(body)
    except InvalidEvent as exc:
        read = str(exc)
    if isinstance(read, str):
        assert isinstance(expected, str), f"refused {body!r}: {read}"
        assert read.startswith(expected)
    else:
        assert read == expected


# The id grammar at publish: what survives Last-Event-ID and ?lastEventId=.
RESUMABLE_IDS = ["1", "a b", "événement-1", "事件-2", "x" * MAX_ID_BYTES, "%FF", "é" * 128]
UNRESUMABLE_IDS = [
    pytest.param("", "empty", id="empty"),
    pytest.param(" 1", "space", id="leading-space"),
    pytest.param("1 ", "space", id="trailing-space"),
    pytest.param("a\tb", "control", id="tab"),
    pytest.param("a\x01b", "control", id="control"),
    pytest.param("a\x7fb", "control", id="del"),
    pytest.param("x" * (MAX_ID_BYTES + 1), "bytes", id="too-long"),
    pytest.param("é" * 129, "bytes", id="too-long-in-utf-8"),
]


@pytest.mark.parametrize("id", RESUMABLE_IDS)
def test_resumable_ids_are_accepted(id: str) -> None:
    check_resumable_id(id)


@pytest.mark.parametrize(("id", "reason"), UNRESUMABLE_IDS)
def test_unresumable_ids_are_refused(id: str, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        check_resumable_id(id)
