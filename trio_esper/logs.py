"""Log output: one line per event, as text or as JSON objects (``--log-format``).

Pure: no trio, no quart. The broker logs on ``trio_esper`` (Hypercorn's lines
on ``trio_esper.hypercorn``); a line about an event of interest passes its
facts as ``extra=`` fields, which the JSON format writes as members of the
line's object and the text format leaves to the message, which says them too:

========================  =========  ==========================================
``event``                 level      fields
========================  =========  ==========================================
``config_warning``        warning    ``variable`` (before ``start``)
``start``                 info       ``address``, ``subscriber_auth``,
                                     ``publisher_auth``, ``history``
``signal``                info       ``signal``
``stop``                  info       ``connections`` (open when shutdown began)
``stop_forced``           warning    ``connections`` (still open after the grace)
``subscriber_dropped``    info       ``client``, ``topic``
``auth_failed``           debug      ``client``, ``topic``, ``status``, ``reason``
``connection_refused``    debug      ``client`` (its connection limit)
``connection_failed``     warning    ``client``, ``error``
``stream_failed``         warning    ``client``, ``topic``, ``reason``
``accept_failed``         warning    ``error``
``store_error``           error      ``kind`` (of store operation), and
                                     ``left_out`` on the count at closing
``store_recovered``       info       ``kind``
``acme_loaded``           info       ``serial`` (the certificate now served)
``acme_order``            info       ``names`` (ordering, and why: the message)
``acme_issued``           info       ``names``, ``serial``
``acme_failed``           error      ``names``, ``problem`` (the ACME server's
                                     problem document, or null),
                                     ``retry_seconds``
``acme_http_unavailable`` warning    ``port`` (``--acme-http-port`` not bound)
========================  =========  ==========================================

``client`` is the peer's IP address; ``topic`` the normalised topic id. No
line carries a token, a secret or a query string: auth failures log the
reason the client is answered, never the credential.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from .config import Config, start_up_warnings
from .errors import EsperError, InvalidTopic
from .topics import normalise_topic

log = logging.getLogger("trio_esper")

#: The text format: what ``logging.basicConfig`` would write, with the time.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every ``LogRecord`` has: anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

#: Everything ``str.splitlines`` breaks a line at, escaped, so that a message
#: quoting a client's bytes stays one line of the text format.
_LINE_BREAKS = str.maketrans(
    {c: repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"},
)


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The ``extra=`` fields of ``record``."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}


def rfc3339(created: float) -> str:
    """``created`` (seconds since the epoch) as RFC 3339 UTC, to the millisecond."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339, UTC), ``level``,
    ``logger``, ``message``, the record's ``extra=`` fields, and
    ``exception`` (the traceback, as one string) if it has one. ASCII only:
    a line never holds a character a reader could take for a line break."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, with line breaks inside the message escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return super().formatMessage(record).translate(_LINE_BREAKS)


def configure(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Log at ``level`` and above to ``stream`` (standard error) in
    ``log_format`` (one of :data:`~trio_esper.config.LOG_FORMATS`), as ``logging.basicConfig``
    would: only if the root logger has no handler yet."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def auth_failed(error: EsperError, *, client: str | None, topic: str | None) -> None:
    """Log ``error`` at debug level if it refuses a credential (401, 403):
    the client, the topic (if ``topic`` is a topic id) and the reason the
    client is answered; never the credential. Called by both front ends
    where an error becomes an answer (app.py's error handler, the edge's
    fast forms); other errors are not logged here.
    """
    if error.status not in (401, 403) or not log.isEnabledFor(logging.DEBUG):
        return
    try:
        topic = None if topic is None else normalise_topic(topic)
    except InvalidTopic:
        topic = None
    log.debug(
        "auth failed (%d) for %s on %s: %s",
        error.status,
        client or "?",
        topic or "-",
        error.reason,
        extra={
            "event": "auth_failed",
            "client": client or None,
            "topic": topic,
            "status": error.status,
            "reason": error.reason,
        },
    )


def config_warnings(config: Config, environ: Mapping[str, str]) -> None:
    """Log a warning line for each of
    :func:`~trio_esper.config.start_up_warnings` (a variable not ours, a
    short secret): once per broker, before it starts."""
    for variable, message in start_up_warnings(config, environ):
        log.warning("%s", message, extra={"event": "config_warning", "variable": variable})


def url(host: str, port: int, *, tls: bool) -> str:
    """The URL of the broker listening on ``host`` and ``port``, for the
    start line: an IPv6 address in brackets (RFC 3986 section 3.2.2)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def started(config: Config, address: str) -> None:
    """Log the start line: where the broker listens, how each side checks
    tokens (``open``, ``secret`` or ``public keys``), and its history."""
    subscribers = _auth_mode(config.subscriber_secret, config.subscriber_keys)
    publishers = _auth_mode(config.publisher_secret, config.publisher_keys)
    # The backplane's URL may hold a password: only its kind is logged.
    history = config.history if config.backplane is None else "redis backplane"
    log.info(
        "listening on %s (subscribers: %s, publishers: %s, history: %s)",
        address,
        subscribers,
        publishers,
        history,
        extra={
            "event": "start",
            "address": address,
            "subscriber_auth": subscribers,
            "publisher_auth": publishers,
            "history": history,
        },
    )


def _auth_mode(secret: str | None, keys: object) -> str:
    if keys is not None:
        return "public keys"
    return "open" if secret is None else "secret"
