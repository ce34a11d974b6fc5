"""A sans-IO reader for the hot HTTP/1.1 request forms, and the framing of
what the edge writes back. No networking code, no trio.

The edge (:mod:`.edge`) serves plain ``POST /publish/{topic}``,
``GET /subscribe/{topic}`` and ``GET`` and ``POST /.well-known/mercure``
requests itself; everything else goes to Hypercorn with the bytes already read.
:func:`read_request` therefore never judges a request: for any input it
either *declines* (:data:`DECLINE`: Hypercorn and h11 read it and answer,
errors included), asks for more bytes (:data:`NEED_DATA`), or returns exactly
what h11 would read from the same bytes (method, target, header fields, body
length). ``tests/test_h1.py`` checks that against h11 with a table and with
generated requests.

The grammar follows RFC 9112 and RFC 9110, with the pieces named as h11's
``_abnf.py`` names them; each check quotes its rule. The forms taken are a
subset of what h11 accepts: anything rarer (obs-fold, obs-text, HTTP/1.0,
Transfer-Encoding, Expect, Upgrade, a repeated header, percent-escapes in the
path) is declined rather than handled twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# RFC 9110, section 5.6.2: token = 1*tchar
# tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
#         / DIGIT / ALPHA
_token = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
# RFC 9110, section 5.5: field-value = *field-content;
# field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ];
# field-vchar = VCHAR / obs-text. obs-text (%x80-FF) is declined: h11 and the
# frameworks above it disagree on how to decode it.
_field_vchar = rb"\x21-\x7e"
# RFC 9112, section 5: field-line = field-name ":" OWS field-value OWS; OWS = *( SP / HTAB )
# field-content starts and ends with a field-vchar and OWS takes the SP and
# HTAB around it, so "OWS field-value OWS" is any run of SP, HTAB and
# field-vchar: one character class, which the regex engine runs through
# without backtracking. The value is that run with its OWS stripped.
_ows_field_value_ows = rb"[ \t%s]*" % _field_vchar
_field_line = rb"%s:%s" % (_token, _ows_field_value_ows)
# A head's field lines, each with its CRLF, checked with one match.
_field_block = re.compile(rb"(?:%s\r\n)*" % _field_line)
# RFC 9112, section 3: request-line = method SP request-target SP HTTP-version.
# request-target here is origin-form (section 3.2.1): absolute-path [ "?" query ],
# with the path one of the two routes and a topic of letters and digits, or
# the Mercure hub's path
# (anything else, percent-escapes included, is for the Quart route to refuse);
# query = *( pchar / "/" / "?" ), taken here as any VCHAR but "#" (a fragment
# is never sent, RFC 9110 section 7.1).
_request_line = re.compile(
    rb"(POST|GET) (/(?:(publish|subscribe)/([0-9A-Za-z]+)|\.well-known/(mercure))"
    rb"(?:\?([\x21\x22\x24-\x7e]*))?) HTTP/1\.1"
)
#: How each form's request line may start (to decline any other early).
_STARTS = (
    b"POST /publish/",
    b"GET /subscribe/",
    b"GET /.well-known/mercure",
    b"POST /.well-known/mercure",
)


def _has_bare_lf(data: bytes | bytearray) -> bool:
    """Whether ``data`` holds a line feed not preceded by a carriage return:
    h11 takes bare LF line ends (RFC 9112, section 2.2 allows it), this
    reader does not. Every CRLF holds one LF, and CRLFs cannot overlap, so
    any LF more than the CRLFs is bare (two C-level counts: cheaper than a regex)."""
    return data.count(b"\n") != data.count(b"\r\n")


#: Only ASCII digits: ``str.isdigit`` also takes "²".
_digits = re.compile(rb"[0-9]+")

#: A request head longer than this is declined (h11's own limit is 16 KiB too).
MAX_HEAD_BYTES: Final = 16 * 1024


class Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: More bytes are needed to read the request head.
NEED_DATA: Final = Sentinel("NEED_DATA")
#: Not a form the edge serves: hand the connection to Hypercorn.
DECLINE: Final = Sentinel("DECLINE")


# Not frozen: one is built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs more than the rest of building it.
@dataclass(slots=True)
class Request:
    """A request head read by :func:`read_request`."""

    method: str
    """``"POST"`` or ``"GET"``."""
    target: bytes
    """The request-target as sent."""
    route: str
    """``"publish"``, ``"subscribe"``, ``"mercure"`` (a Mercure subscribe) or
    ``"mercure-publish"``."""
    topic: str
    """The topic as written in the path (ASCII letters and digits); empty
    for ``"mercure"``, whose topics are in the query."""
    query: bytes
    """What follows ``?`` in the target (empty if nothing does)."""
    headers: dict[bytes, bytes]
    """Field names lower-cased, values without surrounding whitespace."""
    content_length: int
    """Body length (0 without ``Content-Length``)."""
    keep_alive: bool
    """False if the client sent ``Connection: close``."""
    head_bytes: int
    """Length of the head, its blank line included: where the body starts."""

    def header(self, name: bytes) -> str | None:
        """A header's value decoded as ISO-8859-1, as ASGI servers decode it."""
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")


def read_request(buffer: bytes | bytearray, max_body_bytes: int) -> Request | Sentinel:
    """Read the request head at the start of ``buffer``.

    Returns a :class:`Request`, :data:`NEED_DATA` (the head is incomplete and
    could still be a form the edge serves), or :data:`DECLINE`.
    """
    if not buffer:
        return NEED_DATA
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        # Decline as early as the bytes allow, so a head the reader will
        # never take is not left waiting for a blank line it may not send.
        if len(buffer) > MAX_HEAD_BYTES or _has_bare_lf(buffer):
            return DECLINE
        for prefix in _STARTS:
            if prefix.startswith(buffer[: len(prefix)]) or buffer.startswith(prefix):
                return NEED_DATA
        return DECLINE
    if end + 4 > MAX_HEAD_BYTES:
        return DECLINE
    head = bytes(buffer[:end])
    if _has_bare_lf(head):
        return DECLINE
    request_line, _, fields = head.partition(b"\r\n")
    match = _request_line.fullmatch(request_line)
    if match is None:
        return DECLINE
    method, target, route, topic, mercure, query = match.groups()
    if mercure:
        route, topic = (b"mercure" if method == b"GET" else b"mercure-publish"), b""
    elif (method == b"POST") != (route == b"publish"):
        return DECLINE  # the Quart route answers 405 with Allow
    if fields and _field_block.fullmatch(fields + b"\r\n") is None:
        return DECLINE  # obs-fold, obs-text, a control character, no colon...
    lines = fields.split(b"\r\n") if fields else []
    headers: dict[bytes, bytes] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.lower()] = value.strip(b" \t")
    if len(headers) != len(lines):
        return DECLINE  # h11 knows which repeats to join and which to refuse
    # RFC 9112, section 3.2: a client MUST send a Host header field in an
    # HTTP/1.1 request (h11 refuses one without it).
    if b"host" not in headers:
        return DECLINE
    # RFC 9112, section 6.1: Transfer-Encoding (with or without Content-Length,
    # a smuggling attempt the Quart route answers and closes); RFC 9110 10.1.1
    # Expect, 7.8 Upgrade: all left to Hypercorn.
    if b"transfer-encoding" in headers or b"expect" in headers or b"upgrade" in headers:
        return DECLINE
    # RFC 9110, section 8.6: Content-Length = 1*DIGIT.
    raw_length = headers.get(b"content-length")
    length = 0
    if raw_length is not None:
        if _digits.fullmatch(raw_length) is None:
            return DECLINE
        length = int(raw_length)
    if route == b"publish" or route == b"mercure-publish":
        if raw_length is None or length > max_body_bytes:
            return DECLINE  # the Quart route answers 411/413 and what follows
    elif length:
        return DECLINE  # a GET with a body
    # RFC 9112, section 9.3: "close" in Connection ends the connection after
    # the response. Connection = #connection-option, a comma-separated list.
    connection = headers.get(b"connection")
    options = {t.strip(b" \t") for t in connection.lower().split(b",")} if connection else ()
    return Request(
        method=method.decode("ascii"),
        target=target,
        route=route.decode("ascii"),
        topic=topic.decode("ascii"),
        query=query or b"",
        headers=headers,
        content_length=length,
        keep_alive=b"close" not in options,
        head_bytes=end + 4,
    )


#: RFC 9112, section 2.2: a head ends at an empty line; h11 takes CRLF or a
#: bare LF for each line end.
_head_end = re.compile(rb"\n\r?\n")


def head_complete(buffer: bytes | bytearray) -> bool:
    """Whether ``buffer`` holds a whole request head (by h11's reading, which
    also takes bare LF line ends), or more than a head may be."""
    return len(buffer) > MAX_HEAD_BYTES or _head_end.search(buffer) is not None


# --- What the edge writes ---------------------------------------------------

#: The last chunk of a chunked body (RFC 9112, section 7.1).
LAST_CHUNK: Final = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of the chunked transfer coding (RFC 9112, section 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def response_head(
    status: int,
    headers: list[tuple[bytes, bytes]],
    *,
    date: bytes,
    close: bool,
    chunked: bool = False,
) -> bytes:
    """A response head, byte for byte as Hypercorn (through h11) writes the
    same response: ``HTTP/1.1 <status> `` with an empty reason phrase, the
    application's header fields in order, ``date``, then the framing fields
    h11 adds (``Transfer-Encoding: chunked`` for a body of unknown length,
    ``Connection: close`` when the connection ends after it)."""
    lines = [b"HTTP/1.1 %d " % status]
    # h11 replaces a Connection field of the application's with its own.
    lines += [
        name + b": " + value for name, value in headers if not close or name != b"connection"
    ]
    lines.append(b"date: " + date)
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    if close:
        lines.append(b"Connection: close")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)
