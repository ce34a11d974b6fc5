"""The HTTP/1.1 answers the edge writes itself: response heads with their
``Date``, and a stream's head and opening chunk.

Owns: the Date of this second and the stream heads made this second. The
bytes are :mod:`..h1`'s framing of what :mod:`..endpoints` decides, the
same functions the Quart routes' answers come from, so both front ends
answer alike (tests/test_differential.py compares them).
"""

from __future__ import annotations

import time
from wsgiref.handlers import format_date_time

from .. import endpoints, h1
from ..config import Config


def encode_headers(headers: endpoints.Headers) -> list[tuple[bytes, bytes]]:
    return [(name.encode("ascii"), value.encode("latin-1")) for name, value in headers]


def closes(answer: endpoints.Answer) -> bool:
    """Whether ``answer`` ends its connection."""
    return ("connection", "close") in answer.headers


#: Answer heads kept for the current second at most (see :meth:`Answers.head`).
MAX_CACHED_HEADS = 256


class Answers:
    """Response heads for one edge."""

    def __init__(self, config: Config) -> None:
        self._date = (0, b"")
        #: Answer heads made this second (see :meth:`head`), and that second's Date.
        self._heads: dict[tuple[object, ...], bytes] = {}
        self._heads_date = b""
        #: Stream heads made this second (see :meth:`stream_head`), and that second's Date.
        self._stream_heads: dict[tuple[object, ...], bytes] = {}
        self._stream_heads_date = b""
        # The same for every stream: encoded once.
        self._stream_fields = encode_headers(endpoints.STREAM_HEADERS)
        self._opening_chunk = h1.chunk(endpoints.opening_frame(config))

    def head(self, answer: endpoints.Answer, *, close: bool) -> bytes:
        """``answer``'s response head (its body follows, with its length).
        Publishers get the same few heads over and over (the same fields and
        a body of much the same length): each is made once a second, at
        most :data:`MAX_CACHED_HEADS` of them."""
        date = self.http_date()
        if date is not self._heads_date:
            self._heads = {}
            self._heads_date = date
        key = (answer.status, close, len(answer.body), *answer.headers)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= MAX_CACHED_HEADS:
                self._heads.clear()
            headers = [*answer.headers, ("content-length", str(len(answer.body)))]
            head = self._heads[key] = h1.response_head(
                answer.status, encode_headers(headers), date=date, close=close
            )
        return head

    def stream_head(self, cors: endpoints.Headers, close: bool) -> bytes:
        """A stream's response head and opening chunk. Every subscriber with
        the same CORS fields and ``close`` gets the same bytes within a
        second (its Date), so each is made once a second; the CORS fields
        take one value per allowed origin, plus none, which bounds the cache."""
        date = self.http_date()
        if date is not self._stream_heads_date:
            self._stream_heads = {}
            self._stream_heads_date = date
        key = (close, *cors)
        head = self._stream_heads.get(key)
        if head is None:
            head = self._stream_heads[key] = (
                h1.response_head(
                    200,
                    self._stream_fields + encode_headers(cors),
                    date=date,
                    close=close,
                    chunked=True,
                )
                + self._opening_chunk
            )
        return head

    def any_stream_head(self, headers: endpoints.Headers, close: bool) -> bytes:
        """The response head and opening chunk of a stream whose header
        fields are ``headers`` (made each time: for the rarer streams)."""
        return (
            h1.response_head(
                200, encode_headers(headers), date=self.http_date(), close=close, chunked=True
            )
            + self._opening_chunk
        )

    def http_date(self) -> bytes:
        # RFC 9110, section 6.6.1: an origin server with a clock MUST send Date.
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, format_date_time(now).encode("ascii"))
        return self._date[1]
