"""The exceptions trio_esper raises, each carrying the HTTP status it maps to.

::

    EsperError                      (500) base; never raised itself
    ├── BadRequest                  (400)
    │   ├── InvalidTopic            (400) topic id breaks the naming rule
    │   └── InvalidEvent            (400) published body is not a valid event
    ├── NotFound                    (404) e.g. a history page after an unknown id
    ├── NotAcceptable               (406) history asked for in a format we do not serve
    ├── Unauthorized                (401) no token where one is required
    ├── Forbidden                   (403) token present but bad, expired or for another topic
    ├── Conflict                    (409) publisher-given id already in the topic's history
    ├── PayloadTooLarge             (413) published body over the size limit
    ├── ServiceUnavailable          (503) the broker is shutting down
    └── HistoryError                (503) the history store cannot be opened or written

The edge (``app.py``) turns any of these into ``status`` plus a one-line reason;
everything else is a bug and surfaces as a 500.
"""

from __future__ import annotations


class EsperError(Exception):
    """Base class; ``status`` is the HTTP status code the error maps to."""

    status: int = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(EsperError):
    status = 400


class InvalidTopic(BadRequest):
    pass


class InvalidEvent(BadRequest):
    pass


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


class ServiceUnavailable(EsperError):
    status = 503


class Conflict(EsperError):
    """A publisher-given event id is already in the topic's history."""

    status = 409


class HistoryError(EsperError):
    """The history store cannot be opened or written (start-up: exit status 3)."""

    status = 503
