"""Mercure publish requests (pure): the form a publisher POSTs, and the update it makes.

draft-dunglas-mercure, "Publication": an ``application/x-www-form-urlencoded``
body of ``topic`` (repeatable: the first is canonical, the others alternates),
``data``, ``private``, ``id``, ``type`` and ``retry``. The reference hub,
dunglas/mercure v0.24.2, reads it with Go's ``Request.ParseForm``
(publish.go:159-221), whose rules this module follows:

- the media type is parsed as Go's ``mime.ParseMediaType`` parses it (case
  and parameters ignored); one that does not parse is a 400, and any other
  type than a form leaves the form empty (so: a 400 for the missing topic);
- the body and the request's query string are split as Go's
  ``url.ParseQuery`` splits them: on ``&`` only (a ``;`` anywhere in a pair is
  an error), ``+`` is a space, a ``%`` not followed by two hex digits is an
  error, empty pairs are skipped, a key without ``=`` has an empty value, and
  more than 10,000 pairs is an error; an error in either is a 400, even in a
  key the hub does not read;
- ``topic`` is every value, in order; ``data``, ``id``, ``type`` and
  ``retry`` are the first value (``Values.Get``); ``private`` is set by its
  presence, whatever its value, empty or ``off`` included (publish.go:192;
  the draft: "it CAN contain any value, including an empty string");
- an empty ``id`` asks the hub for one, an empty ``type`` is no type, and
  ``retry`` is empty or a decimal ``uint64`` (``strconv.ParseUint``); ``0``
  is no retry, since Mercure writes the field only when it is not zero
  (event.go:35);
- no topic is a 400 ('Missing "topic" parameter'), more than 1000 topics a
  400 (publish.go:31); then, after the caller's authorization, a topic that
  contains ``/.well-known/mercure`` is a 403 (the hub's own namespace), and
  a CR, LF or NUL in ``id`` or ``type`` a 400 (publish.go:43-78, which
  :class:`trio_esper.sse.Event` enforces here);
- ``data`` keeps its line breaks: Mercure writes each CR LF, CR or LF as the
  start of another ``data:`` line (event.go:9), so they become LF here.

Differences: a value the hub reads that is not UTF-8 once unescaped is a 400
here (Go passes the bytes through); the size of the body is the caller's to
bound (``max_body_bytes``), where Go's ``ParseForm`` refuses over 10 MiB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote_to_bytes

from ..errors import BadRequest, Forbidden
from ..sse import MAX_RETRY, Event

#: The one media type whose body ``ParseForm`` reads into the form.
FORM_MEDIA_TYPE: Final = "application/x-www-form-urlencoded"
#: Mercure's bound on the topics of one update (publish.go:31).
MAX_TOPICS: Final = 1000
#: Go's url.ParseQuery refuses more pairs than this (GODEBUG urlmaxqueryparams).
MAX_FORM_PAIRS: Final = 10_000
#: Topics the hub itself publishes on; publishers must not forge them (publish.go:20-23).
RESERVED_TOPIC_PART: Final = "/.well-known/mercure"

_DIGITS = re.compile(r"[0-9]+")
#: A '%' not followed by two hex digits: Go's url.unescape returns an EscapeError.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
#: What Go's unicode.IsSpace is among the characters a header decoded as Latin-1 holds.
_SPACE = "\t\n\v\f\r \x85\xa0"
#: RFC 2045 token, as Go's mime package checks it (grammar.go isTokenChar).
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]*")
#: RFC 2045 tspecials, which a backslash may escape in a quoted string (grammar.go).
_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')
_LINE_BREAK = re.compile(r"\r\n?")


@dataclass(frozen=True, slots=True)
class MercureUpdate:
    """One update to dispatch, validated on construction.

    Attributes:
        topics: the canonical topic first, then the alternates.
        data: the payload; lines are separated by LF.
        private: only subscribers whose claims allow one of the topics get it.
        id: the publisher's id, or ``None`` for one the hub assigns.
        type: the SSE ``event`` field, or ``None``.
        retry: the SSE ``retry`` field in milliseconds, or ``None``.
        event: the SSE event of those fields (built, and so validated, here).

    Raises:
        InvalidEvent: a CR, LF or NUL in ``id`` or ``type``, a CR in ``data``,
            or a negative ``retry`` (HTTP 400).
    """

    topics: tuple[str, ...]
    data: str
    private: bool = False
    id: str | None = None
    type: str | None = None
    retry: int | None = None
    event: Event = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        event = Event(self.data, event=self.type, id=self.id, retry=self.retry)
        object.__setattr__(self, "event", event)


@dataclass(frozen=True, slots=True)
class PublishForm:
    """What a publish request asks for, read but not yet validated as an update.

    Mercure checks the publisher's claims between reading the form and
    validating the update (publish.go:193-226); so does a caller: read the
    form, :func:`~trio_esper.mercure.claims.authorize_publish` its
    ``topics``, then :meth:`update`.
    """

    topics: tuple[str, ...]
    data: str
    private: bool
    id: str | None
    type: str | None
    retry: int | None

    def update(self) -> MercureUpdate:
        """The update this form publishes (Mercure's ``Update.Validate``).

        Raises:
            Forbidden: a topic is in the hub's own namespace (HTTP 403).
            InvalidEvent: a CR, LF or NUL in ``id`` or ``type`` (HTTP 400).
        """
        for topic in self.topics:
            if RESERVED_TOPIC_PART in topic:
                raise Forbidden(
                    f"{topic[:100]!r}: topic value references the reserved "
                    f'"{RESERVED_TOPIC_PART}" namespace'
                )
        return MercureUpdate(
            topics=self.topics,
            data=_LINE_BREAK.sub("\n", self.data),
            private=self.private,
            id=self.id,
            type=self.type,
            retry=self.retry,
        )


def read_publish_form(body: bytes, content_type: str | None, *, query: bytes = b"") -> PublishForm:
    """Read a publish request as Mercure's ``PublishHandler`` reads it
    (publish.go:159-192).

    Arguments:
        body: the whole body; bounding its size is the caller's.
        content_type: the ``Content-Type`` header (the first, if several), or ``None``.
        query: the request's raw query string, which ``ParseForm`` parses too.

    Raises:
        BadRequest: the media type, body or query string does not parse, no
            topic, more than :data:`MAX_TOPICS` topics, ``retry`` is not a
            decimal ``uint64``, or a value read is not UTF-8 (HTTP 400).
    """
    is_form = _media_type(content_type or "application/octet-stream") == FORM_MEDIA_TYPE
    form = _parse_query(body, "body") if is_form else {}
    _parse_query(query, "query string")
    topics = tuple(_text(t, "topic") for t in form.get(b"topic", ()))
    if not topics:
        hint = "" if is_form else f" (the body must be {FORM_MEDIA_TYPE})"
        raise BadRequest(f'Missing "topic" parameter{hint}')
    if len(topics) > MAX_TOPICS:
        raise BadRequest(f"too many topics in update (more than {MAX_TOPICS})")
    retry = _first(form, "retry")
    return PublishForm(
        topics=topics,
        data=_first(form, "data"),
        private=b"private" in form,
        id=_first(form, "id") or None,
        type=_first(form, "type") or None,
        retry=_retry(retry) if retry else None,
    )


def parse_update(body: bytes, content_type: str | None, *, query: bytes = b"") -> MercureUpdate:
    """:func:`read_publish_form` then :meth:`PublishForm.update`, for a caller
    that checks no claims in between.

    Raises:
        BadRequest, Forbidden: as those two raise them.
    """
    return read_publish_form(body, content_type, query=query).update()


def _first(form: dict[bytes, list[bytes]], key: str) -> str:
    values = form.get(key.encode())
    return _text(values[0], key) if values else ""


def _text(value: bytes, key: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f'"{key}" is not valid UTF-8') from None


def _retry(value: str) -> int | None:
    # As strconv.ParseUint(value, 10, 64): ASCII digits only, no sign; at most
    # MAX_RETRY, what the broker stores (Mercure takes up to 2**64 - 1).
    digits = value.lstrip("0")
    if not _DIGITS.fullmatch(value) or len(digits) > len(str(MAX_RETRY)):
        raise BadRequest('Invalid "retry" parameter')
    retry = int(digits or "0")
    if retry > MAX_RETRY:
        raise BadRequest('Invalid "retry" parameter')
    return retry or None


def read_query(raw: bytes) -> dict[str, list[str]]:
    """A subscribe request's query string as Go's ``URL.Query()`` reads it
    (net/url/url.go ParseQuery, errors ignored): the values of each key, in
    order; a pair with a ``;`` or a malformed escape is dropped, as Go drops
    it, rather than refused.

    Raises:
        BadRequest: more than :data:`MAX_FORM_PAIRS` pairs, or a key or value
            that is not UTF-8 once unescaped (Go passes the bytes through).
    """
    if raw.count(b"&") + 1 > MAX_FORM_PAIRS:
        raise BadRequest(f"the query string has more than {MAX_FORM_PAIRS} parameters")
    values: dict[str, list[str]] = {}
    for pair in raw.split(b"&"):
        if not pair or b";" in pair:
            continue
        key, _, value = pair.partition(b"=")
        try:
            name, text = _unescape(key, ""), _unescape(value, "")
        except BadRequest:
            continue
        try:
            values.setdefault(name.decode("utf-8"), []).append(text.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest("the query string is not valid percent-encoded UTF-8") from None
    return values


def _parse_query(raw: bytes, where: str) -> dict[bytes, list[bytes]]:
    """Go's ``url.ParseQuery`` (net/url/url.go parseQuery): the values of each
    unescaped key, in order. It reports the first error after reading every
    pair; the form is then refused whole, so the first error is raised here."""
    if raw.count(b"&") + 1 > MAX_FORM_PAIRS:
        raise BadRequest(f"the {where} has more than {MAX_FORM_PAIRS} parameters")
    values: dict[bytes, list[bytes]] = {}
    for pair in raw.split(b"&"):
        if b";" in pair:
            raise BadRequest(f"invalid semicolon separator in {where}")
        if not pair:
            continue
        key, _, value = pair.partition(b"=")
        values.setdefault(_unescape(key, where), []).append(_unescape(value, where))
    return values


def _unescape(raw: bytes, where: str) -> bytes:
    """Go's ``url.QueryUnescape``: ``+`` is a space, ``%XX`` a byte."""
    bad = _BAD_ESCAPE.search(raw)
    if bad is not None:
        escape = raw[bad.start() : bad.start() + 3].decode("ascii", "replace")
        raise BadRequest(f"invalid URL escape {escape!r} in {where}")
    raw = raw.replace(b"+", b" ")
    return unquote_to_bytes(raw) if b"%" in raw else raw


def _media_type(value: str) -> str:
    """The media type of a ``Content-Type``, as Go's ``mime.ParseMediaType``
    reads it (mime/mediatype.go): lower case, without parameters.

    Raises:
        BadRequest: where ``ParseMediaType`` returns an error (``ParseForm``
            then fails, so Mercure answers 400).
    """
    base = value.partition(";")[0]
    media_type = base.lower().strip(_SPACE)
    kind, slash, subtype = media_type.partition("/")
    if not kind or not _TOKEN.fullmatch(kind) or (slash and not subtype):
        raise BadRequest("invalid Content-Type")
    if not _TOKEN.fullmatch(subtype):
        raise BadRequest("invalid Content-Type")
    rest = value[len(base) :]
    params: dict[str, str] = {}
    while rest := rest.lstrip(_SPACE):
        param = _media_param(rest)
        if param is None:
            if rest.strip(_SPACE) == ";":
                break  # a trailing semicolon is allowed
            raise BadRequest("invalid Content-Type parameter")
        key, text, rest = param
        # Duplicate parameter names are an error unless the values are equal.
        if params.setdefault(key, text) != text:
            raise BadRequest("duplicate Content-Type parameter")
    return media_type


def _media_param(text: str) -> tuple[str, str, str] | None:
    """mediatype.go consumeMediaParam: (name, value, rest) of ``; name=value``."""
    if not text.startswith(";"):
        return None
    rest = text[1:].lstrip(_SPACE)
    name = _token(rest).lower()
    if not name:
        return None
    rest = rest[len(name) :].lstrip(_SPACE)
    if not rest.startswith("="):
        return None
    rest = rest[1:].lstrip(_SPACE)
    value, after = _media_value(rest)
    if value == "" and after == rest:
        return None
    return name, value, after


def _token(text: str) -> str:
    match = _TOKEN.match(text)
    return match[0] if match else ""


def _media_value(text: str) -> tuple[str, str]:
    """mediatype.go consumeValue: a token or a quoted string, and the rest."""
    if not text.startswith('"'):
        token = _token(text)
        return token, text[len(token) :]
    out: list[str] = []
    i = 1
    while i < len(text):
        char = text[i]
        if char == '"':
            return "".join(out), text[i + 1 :]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in _TSPECIALS:
            out.append(text[i + 1])
            i += 2
            continue
        if char in "\r\n":
            return "", text
        out.append(char)
        i += 1
    return "", text  # no closing quote
