"""Server-Sent Events, sans I/O: the :class:`Event` value, its wire encoding,
and the parser for bodies that publishers POST.

Nothing here imports trio or quart. Parsing follows the WHATWG HTML standard,
section 9.2.6 "Interpreting an event stream"; where that algorithm would
silently ignore a malformed field we reject it instead, because a publisher is
better served by a 400 than by an event that quietly lost its id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import InvalidEvent

# WHATWG: "Lines must be separated by either a U+000D CARRIAGE RETURN U+000A
# LINE FEED (CRLF) character pair, a single U+000A LINE FEED (LF) character,
# or a single U+000D CARRIAGE RETURN (CR) character."
_LINE_END = re.compile(r"\r\n|\r|\n")
_DIGITS = re.compile(r"[0-9]+")
_BOM = "\ufeff"

#: The comment line a stream starts with, so clients know the subscription is live.
SUBSCRIBED_FRAME = b": subscribed\n\n"
#: The comment line sent on idle streams so proxies and dead peers are noticed.
HEARTBEAT_FRAME = b": heartbeat\n\n"

#: Fields a published body may carry; anything else is a publisher bug.
KNOWN_FIELDS = frozenset({"data", "event", "id", "retry"})


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event, validated on construction.

    Attributes:
        data: the payload; lines are separated by LF. May be empty.
        event: the event type, or ``None`` for the default ``message``.
        id: the event id, or ``None``.
        retry: the reconnection delay hint in milliseconds, or ``None``.

    Raises:
        InvalidEvent: if a field could change the meaning of the stream.
    """

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    def __post_init__(self) -> None:
        # WHATWG splits the stream on CR, LF and CRLF, so a CR or LF inside a
        # single-line field would end that field and start a new, attacker-
        # chosen one (event-stream injection). For "id", the standard also
        # says: "If the field value does not contain U+0000 NULL, then set the
        # last event ID buffer to the field value. Otherwise, ignore the
        # field." -- a NUL would silently drop the id, so refuse it.
        if self.event is not None or self.id is not None:
            for name, value in (("event", self.event), ("id", self.id)):
                if value is not None and ("\r" in value or "\n" in value or "\0" in value):
                    raise InvalidEvent(f"{name} must not contain CR, LF or NUL")
        if "\r" in self.data:
            raise InvalidEvent("data must not contain CR (lines are separated by LF)")
        if self.retry is not None and not 0 <= self.retry <= MAX_RETRY:
            raise InvalidEvent(f"retry must be an integer from 0 to {MAX_RETRY}")


#: Largest ``retry`` a publisher may give, in milliseconds: what a signed
#: 64-bit integer holds (SQLite's INTEGER, and most clients' integers).
MAX_RETRY: Final = 2**63 - 1

#: Longest id a publisher may give, in UTF-8 bytes: it comes back in every
#: reconnect's Last-Event-ID header (and query string).
MAX_ID_BYTES = 256
# RFC 9110, section 5.5: a field value holds no CTL but HTAB, and "a field
# value does not include leading or trailing whitespace" (OWS is stripped).
# WHATWG (EventSource): the last event ID is sent back as the Last-Event-ID
# header, UTF-8; an empty id field resets the client's last event ID to "",
# which is then not sent at all.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_resumable_id(id: str) -> None:
    """Refuse a publisher-given id that a client could not send back intact
    in ``Last-Event-ID`` (or ``?lastEventId=``): it must be 1 to
    :data:`MAX_ID_BYTES` bytes of UTF-8, without control characters (tab
    included) and without leading or trailing spaces.

    Raises:
        InvalidEvent: with the rule the id breaks.
    """
    if not id:
        raise InvalidEvent(
            "id must not be empty: an empty id clears the client's last event id, "
            "so its next reconnect cannot resume"
        )
    if len(id.encode()) > MAX_ID_BYTES:
        raise InvalidEvent(f"id must be at most {MAX_ID_BYTES} bytes of UTF-8")
    if _CONTROL.search(id):
        raise InvalidEvent("id must not contain control characters (tab included)")
    if id != id.strip(" "):
        raise InvalidEvent(
            "id must not start or end with a space: HTTP strips it from Last-Event-ID"
        )


def _field(name: str, value: str) -> str:
    # One space after the colon: the parser strips exactly one, so a value
    # that itself starts with a space survives the round trip.
    return f"{name}: {value}\n" if value else f"{name}:\n"


def encode(event: Event) -> bytes:
    """Encode ``event`` canonically: ``id``, ``event``, ``retry``, then one
    ``data`` line per line of data, then a blank line."""
    text = "" if event.id is None else _field("id", event.id)
    if event.event is not None:
        text += _field("event", event.event)
    if event.retry is not None:
        text += f"retry: {event.retry}\n"
    data = event.data
    if "\n" in data:
        text += "".join([_field("data", line) for line in data.split("\n")])
    else:
        text += _field("data", data)
    return (text + "\n").encode()


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"body is not valid UTF-8 (byte {exc.start})") from None


def _split_lines(text: str) -> list[str]:
    # Without a CR, every line end is an LF: str.split is a tenth of the regex.
    lines = _LINE_END.split(text) if "\r" in text else text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()  # the final line end does not start another line
    return lines


def parse_body(body: bytes) -> list[Event]:
    """Parse a published body of SSE fields into one or more events.

    Events are separated by blank lines; the end of the body ends the last
    event (a publisher need not send a trailing blank line).

    Raises:
        InvalidEvent: if the body is not UTF-8, holds no event, an event has
            no ``data`` field, a field is unknown, or ``retry`` is not digits.
    """
    text = _decode(body)
    if text.startswith(_BOM):  # WHATWG: "One leading U+FEFF BYTE ORDER MARK ... is ignored"
        text = text[1:]

    events: list[Event] = []
    fields: dict[str, str] = {}
    data: list[str] | None = None
    # One pass over the lines; the empty line after the last one ends the
    # last event, as the end of the body does.
    for line in [*_split_lines(text), ""]:
        if line == "":
            if data is not None:
                events.append(_event(data, fields))
                fields, data = {}, None
            elif fields:
                raise InvalidEvent("event has no data field")
            continue
        if line[0] == ":":
            continue  # WHATWG: a line starting with a colon is a comment
        # WHATWG: "Collect the characters on the line before the first U+003A
        # COLON character (:) ... If value starts with a U+0020 SPACE
        # character, remove it from value."
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            if data is None:
                data = [value]
            else:
                data.append(value)
        elif name in KNOWN_FIELDS:
            if name == "retry" and not _DIGITS.fullmatch(value):
                raise InvalidEvent("retry must be ASCII digits (milliseconds)")
            fields[name] = value
        else:
            raise InvalidEvent(f"unknown field {name[:32]!r}")
    if not events:
        raise InvalidEvent("body holds no event (at least one data: line is required)")
    return events


def _event(data: list[str], fields: dict[str, str]) -> Event:
    """The event a blank line dispatches (WHATWG: "Dispatch the event")."""
    retry = fields.get("retry")
    try:
        retry_ms = None if retry is None else int(retry)
    except ValueError:  # more digits than sys.get_int_max_str_digits() (4300)
        raise InvalidEvent("retry has too many digits") from None
    return Event(
        data="\n".join(data),
        event=fields.get("event"),
        id=fields.get("id"),
        retry=retry_ms,
    )


def parse_plain(body: bytes, *, event: str | None = None, id: str | None = None) -> Event:
    """Build one event from a plain-text body: each line becomes a data line
    (eventsource-hub's publishing style); ``event`` and ``id`` come from the
    caller (query parameters).

    Raises:
        InvalidEvent: the body is not UTF-8, or ``event``/``id`` hold CR, LF or NUL.
    """
    lines = _split_lines(_decode(body))
    return Event("\n".join(lines), event=event or None, id=id or None)
