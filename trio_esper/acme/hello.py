"""Read a TLS ClientHello's server name and ALPN protocols before the handshake. Pure.

TLS-ALPN-01 (RFC 8737) is answered on the TLS port itself, with a certificate
made for the challenge, to the one client that asks for it by offering the
ALPN protocol ``acme-tls/1`` alone. Python's :mod:`ssl` chooses the certificate
before it lets a program see the offered protocols (an ``sni_callback`` sees the
name only), so the edge peeks at the ClientHello first, while a challenge is
pending, and hands the handshake the context it needs.

The layout read, RFC 8446 section 4.1.2 (TLS 1.2's, RFC 5246 section 7.4.1.2,
is the same up to the extensions)::

    record:        type(1) = 22, legacy_version(2), length(2), fragment
    handshake:     msg_type(1) = 1, length(3), body
    ClientHello:   legacy_version(2), random(32), session_id<0..32>,
                   cipher_suites<2..2^16-2>, compression_methods<1..2^8-1>,
                   extensions<8..2^16-1>
    extension:     type(2), data<0..2^16-1>
    server_name (0, RFC 6066 section 3):  list<1..2^16-1> of (type(1) = 0, name<1..2^16-1>)
    ALPN (16, RFC 7301 section 3.1):      list<2..2^16-1> of name<1..2^8-1>
"""

from __future__ import annotations

from dataclasses import dataclass

#: RFC 8737, section 6.2: the protocol a TLS-ALPN-01 validation offers, alone.
ACME_TLS_ALPN = b"acme-tls/1"
#: Content type of a handshake record (RFC 8446, section 5.1).
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_ALPN = 16
#: Largest TLS record fragment (RFC 8446, section 5.1: 2^14 bytes): a
#: ClientHello is read from the first record only.
MAX_RECORD_BYTES = 5 + 2**14


@dataclass(frozen=True, slots=True)
class Hello:
    """What a ClientHello asks for."""

    server_name: str | None
    """The host name (SNI), lower case; ``None`` if not sent."""
    protocols: tuple[bytes, ...]
    """The ALPN protocols offered, in the client's order."""


#: Not a whole ClientHello yet: read more.
NEED_DATA = object()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, count: int) -> bytes:
        end = self._at + count
        if end > len(self._data):
            raise ValueError("truncated")
        piece = self._data[self._at : end]
        self._at = end
        return piece

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        return _Reader(self.take(self.number(length_size)))

    def take_rest(self) -> bytes:
        return self.take(len(self._data) - self._at)

    @property
    def done(self) -> bool:
        return self._at >= len(self._data)


def parse_client_hello(data: bytes) -> Hello | object | None:
    """The :class:`Hello` in ``data``, the first bytes a client sent;
    :data:`NEED_DATA` if they are the start of one; ``None`` if they are not
    a ClientHello (plain HTTP, a scanner) or one this reads no further (a
    hello split over several records, which no ACME validator sends)."""
    if len(data) < 5:
        return NEED_DATA if data[:1] in (b"", bytes([_HANDSHAKE])) else None
    if data[0] != _HANDSHAKE:
        return None
    length = int.from_bytes(data[3:5], "big")
    if len(data) < 5 + length:
        return NEED_DATA
    try:
        return _parse_handshake(_Reader(data[5 : 5 + length]))
    except ValueError:
        return None


def _parse_handshake(record: _Reader) -> Hello | None:
    if record.number(1) != _CLIENT_HELLO:
        return None
    hello = record.vector(3)
    hello.take(2 + 32)  # legacy_version, random
    hello.vector(1)  # legacy_session_id
    hello.vector(2)  # cipher_suites
    hello.vector(1)  # legacy_compression_methods
    server_name: str | None = None
    protocols: tuple[bytes, ...] = ()
    if hello.done:  # no extensions (TLS 1.2 allows it)
        return Hello(None, ())
    extensions = hello.vector(2)
    while not extensions.done:
        kind, body = extensions.number(2), extensions.vector(2)
        if kind == _SERVER_NAME:
            names = body.vector(2)
            while not names.done:
                name_type, name = names.number(1), names.vector(2).take_rest()
                if name_type == 0:
                    server_name = name.decode("ascii", "replace").lower()
        elif kind == _ALPN:
            listed = body.vector(2)
            found = []
            while not listed.done:
                found.append(listed.vector(1).take_rest())
            protocols = tuple(found)
    return Hello(server_name, protocols)
