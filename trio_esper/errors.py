"""The exceptions trio_esper raises, each carrying the HTTP status it maps to.

::

    EsperError                      (500) base; never raised itself
    ├── BadRequest                  (400)
    │   ├── InvalidTopic            (400) topic id breaks the naming rule
    │   ├── InvalidEvent            (400) published body is not a valid event
    │   └── AmbiguousFraming        (400) Content-Length with Transfer-Encoding: closes
    ├── NotFound                    (404) e.g. a history page after an unknown id
    ├── NotAcceptable               (406) history asked for in a format we do not serve
    ├── Unauthorized                (401) no token where one is required
    ├── Forbidden                   (403) token present but bad, expired or for another topic
    ├── Conflict                    (409) publisher-given id already in the topic's history
    ├── RequestTimeout              (408) request head or body too slow: closes
    ├── PayloadTooLarge             (413) published body over the size limit: closes
    ├── UnsupportedMediaType        (415) a body in a format the route does not take
    ├── TooManyRequests             (429) a connection publishes faster than allowed
    ├── ServiceUnavailable          (503) the broker is shutting down: closes
    │   └── LimitReached            (503) a limit on subscribers, topics or connections
    └── HistoryError                (503) the history store cannot be opened or written
        └── OutcomeUnknown          (504) the backplane never answered a publish: stored or not

An error whose ``close_connection`` is true ends its connection after the
answer: the rest of the request was not read, or cannot be trusted.

The edge (``app.py``, ``edge.py``) turns any of these into ``status`` plus a one-line reason;
everything else is a bug and surfaces as a 500.
"""

from __future__ import annotations


class EsperError(Exception):
    """Base class; ``status`` is the HTTP status code the error maps to."""

    status: int = 500
    #: The connection ends after the answer.
    close_connection: bool = False
    #: Sent as ``Retry-After`` (seconds) when set.
    retry_after_seconds: int | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(EsperError):
    status = 400


class InvalidTopic(BadRequest):
    pass


class InvalidEvent(BadRequest):
    pass


class AmbiguousFraming(BadRequest):
    """RFC 9112, section 6.1: a request with both Content-Length and
    Transfer-Encoding may be a smuggling attempt; the server MUST close the
    connection after responding."""

    close_connection = True


class RequestTimeout(EsperError):
    status = 408
    close_connection = True


class NotFound(EsperError):
    status = 404


class NotAcceptable(EsperError):
    status = 406


class Unauthorized(EsperError):
    status = 401


class Forbidden(EsperError):
    status = 403


class PayloadTooLarge(EsperError):
    status = 413
    close_connection = True


class UnsupportedMediaType(EsperError):
    status = 415


class ServiceUnavailable(EsperError):
    status = 503
    close_connection = True


class LimitReached(ServiceUnavailable):
    """A configured limit is reached; the client may retry later."""

    close_connection = False

    def __init__(self, reason: str, retry_after_seconds: int = 1) -> None:
        super().__init__(reason)
        self.retry_after_seconds = retry_after_seconds


class TooManyRequests(EsperError):
    status = 429

    def __init__(self, reason: str, retry_after_seconds: int) -> None:
        super().__init__(reason)
        self.retry_after_seconds = retry_after_seconds


class Conflict(EsperError):
    """A publisher-given event id is already in the topic's history."""

    status = 409


class HistoryError(EsperError):
    """The history store cannot be opened or written (start-up: exit status 3)."""

    status = 503


class OutcomeUnknown(HistoryError):
    """The backplane has not said whether it stored a publish (it stopped
    answering after it was sent): a retry with the same id is refused if it did."""

    status = 504
