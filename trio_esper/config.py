"""Settings: one frozen dataclass, filled from the environment and the command line.

Pure: no trio, no quart. Every setting has a command-line flag and an
``ESPER_*`` environment variable; the flag wins. Units are in the names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from .auth import (
    DEFAULT_ALGORITHMS,
    HMAC_ALGORITHMS,
    PUBLIC_KEY_ALGORITHMS,
    KeyFileError,
    PublicKeys,
    hmac_secret_problem,
    load_public_keys,
)
from .history.spec import parse_history_spec
from .logs import LOG_FORMATS

#: esper's defaults.
DEFAULT_BIND = "127.0.0.1"
DEFAULT_PORT = 3000
#: Often enough that proxies with a 30-60 s idle timeout keep the stream open.
DEFAULT_HEARTBEAT_SECONDS = 15.0
#: A published event is a notification, not a file upload.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
#: Per-subscriber queue; a subscriber this far behind is disconnected (it can resume).
DEFAULT_QUEUE_EVENTS = 1000
#: How long open streams get to finish on SIGINT/SIGTERM before sockets are closed.
DEFAULT_SHUTDOWN_GRACE_SECONDS = 5.0
#: Unacknowledged bytes older than this abort the connection (TCP_USER_TIMEOUT),
#: so a peer that stopped reading cannot hold a write, or shutdown, forever.
DEFAULT_WRITE_TIMEOUT_SECONDS = 10.0

#: Per topic; what a reconnecting subscriber can catch up on.
DEFAULT_HISTORY_EVENTS = 1000
#: Bounds the memory history whatever the number of topics (10k topics x 1000
#: events of 100 bytes would otherwise take gigabytes).
DEFAULT_HISTORY_MAX_BYTES = 256 * 1024 * 1024

#: Hypercorn's default: long enough for a publisher between bursts.
DEFAULT_KEEP_ALIVE_SECONDS = 5.0
#: A request head still incomplete this long after its first byte gets 408:
#: a head is a few hundred bytes, sent at once.
DEFAULT_REQUEST_HEAD_TIMEOUT_SECONDS = 10.0
#: A request body that stalls (no byte arrives) this long gets 408.
DEFAULT_REQUEST_BODY_TIMEOUT_SECONDS = 10.0
#: Slowest body accepted, on average, after that grace: a 64 KiB body trickled
#: at a byte a second would otherwise hold a connection for 18 hours.
DEFAULT_REQUEST_BODY_MIN_RATE_BYTES = 1024

#: Limits that keep what unauthenticated traffic can make the broker hold
#: bounded, each well above what one broker process serves (about 10 KB per
#: subscriber: 100,000 subscribers is a gigabyte).
DEFAULT_MAX_TOPICS = 100_000
DEFAULT_MAX_SUBSCRIBERS = 100_000
#: A browser needs a handful; a proxy or NAT in front of many users, more.
DEFAULT_MAX_PER_ADDRESS = 16_384

#: The topic API's subscriber tokens: a day, then the client asks again.
DEFAULT_ACCESS_TOKEN_TTL_SECONDS = 86_400.0

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A setting has a value the broker cannot run with."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the broker can be told. Build with :meth:`from_env` or directly."""

    bind: str = DEFAULT_BIND
    port: int = DEFAULT_PORT
    #: PEM certificate chain (the server's certificate first): with
    #: ``keyfile``, the listener speaks TLS only, HTTP/2 by ALPN.
    certfile: str | None = None
    #: PEM private key of ``certfile``'s certificate, unencrypted.
    keyfile: str | None = None
    #: esper's worker-thread count: worker processes sharing the port (and
    #: the backplane, which more than one needs).
    threads: int = 1
    #: ``redis://[:password@]host:port/db`` (or ``rediss://``): the Redis
    #: every broker process and node shares; ``None``: one process, alone.
    backplane: str | None = field(default=None, repr=False)
    #: HMAC secret for subscribers; with no keys either, subscribing is open.
    subscriber_secret: str | None = field(default=None, repr=False)
    #: HMAC secret for publishers and /stats; with no keys either, they are open.
    publisher_secret: str | None = field(default=None, repr=False)
    #: Public keys subscriber tokens are verified with instead of a secret
    #: (read from ``ESPER_SUBSCRIBER_KEY_FILE``).
    subscriber_keys: PublicKeys | None = field(default=None, repr=False)
    #: The same for publishers and /stats (``ESPER_PUBLISHER_KEY_FILE``).
    publisher_keys: PublicKeys | None = field(default=None, repr=False)
    #: Accepted ``alg`` values: a secret side uses the HMAC ones, a key-file
    #: side the public-key ones.
    jwt_algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    #: The ``aud`` every token must carry; ``None``: tokens naming any
    #: audience are refused (they were minted for another service).
    jwt_audience: str | None = None
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    queue_events: int = DEFAULT_QUEUE_EVENTS
    #: Origins allowed to subscribe/publish from a browser; ``("*",)`` for any.
    cors_origins: tuple[str, ...] = ()
    #: Name of a cookie that may carry the JWT (besides ``Authorization`` and
    #: ``?token=``); allowed origins then get ``Access-Control-Allow-Credentials``.
    auth_cookie: str | None = None
    log_level: str = "info"
    #: ``text``, or ``json``: one object per line (see logs.py).
    log_format: str = "text"
    shutdown_grace_seconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS
    write_timeout_seconds: float = DEFAULT_WRITE_TIMEOUT_SECONDS
    #: ``memory`` or ``sqlite:PATH``.
    history: str = "memory"
    #: Events retained per topic.
    history_events: int = DEFAULT_HISTORY_EVENTS
    #: Events older than this are dropped from history; 0 keeps them (count only).
    history_max_age_seconds: float = 0.0
    #: Memory history's total budget, all topics together.
    history_max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    #: sqlite: ``full`` (flush every commit) or ``normal`` (WAL, no flush per commit).
    history_sync: str = "full"
    #: ``retry:`` hint (reconnection delay) sent when a stream opens; None sends none.
    retry_ms: int | None = None
    #: An idle keep-alive connection is closed after this long.
    keep_alive_seconds: float = DEFAULT_KEEP_ALIVE_SECONDS
    #: A request head not complete this long after its first byte: 408, closed.
    request_head_timeout_seconds: float = DEFAULT_REQUEST_HEAD_TIMEOUT_SECONDS
    #: A request body with no byte for this long: 408, closed.
    request_body_timeout_seconds: float = DEFAULT_REQUEST_BODY_TIMEOUT_SECONDS
    #: A request body must arrive within ``request_body_timeout_seconds`` plus
    #: its length over this rate (bytes per second), else 408.
    request_body_min_rate_bytes: int = DEFAULT_REQUEST_BODY_MIN_RATE_BYTES
    #: Topics with subscribers held at once; a subscribe to another: 503.
    max_topics: int = DEFAULT_MAX_TOPICS
    #: Subscriptions held at once, all topics; past it: 503.
    max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS
    #: Subscriptions to one topic; past it: 503.
    max_subscribers_per_topic: int = DEFAULT_MAX_SUBSCRIBERS
    #: Open connections from one client address; past it: 503, closed.
    max_connections_per_address: int = DEFAULT_MAX_PER_ADDRESS
    #: Subscriptions from one client address; past it: 503.
    max_subscriptions_per_address: int = DEFAULT_MAX_PER_ADDRESS
    #: Publish requests per second on one connection (burst: one second's
    #: worth); past it: 429. 0: no limit.
    publish_rate_per_connection: float = 0.0
    #: Serve plain HTTP/1.1 publishes and subscribes without Hypercorn and
    #: Quart (see edge.py).
    fast_lane: bool = True
    #: Bearer token for the topic API's management routes (and /metrics,
    #: /stats); ``None``: only publisher JWTs with ``"admin": true`` (or
    #: nothing, if the publisher side is open). From ``ESPER_API_TOKEN``.
    api_token: str | None = field(default=None, repr=False)
    #: Bearer token for /metrics (and /stats, the dashboard); ``None``: the
    #: API credential, or open if there is none. From ``ESPER_METRICS_TOKEN``.
    metrics_token: str | None = field(default=None, repr=False)
    #: Lifetime of the subscriber token ``POST /api/v1/pubsubs`` returns.
    access_token_ttl_seconds: float = DEFAULT_ACCESS_TOKEN_TTL_SECONDS

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        # That both are given, and name a certificate and its key, is checked
        # where the TLS context is built, first thing at start-up
        # (edge.load_tls_context): the files are read once, there.
        if self.certfile == "" or self.keyfile == "":
            raise ConfigError("certfile and keyfile must not be empty")
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.threads > 1 and self.backplane is None:
            raise ConfigError(
                "--threads > 1 runs worker processes that must share events through a "
                "backplane: give --backplane redis://HOST:PORT (or use --threads 1)"
            )
        if self.backplane is not None:
            if not self.backplane.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError(
                    "backplane must be a redis://, rediss:// or unix:// URL "
                    "(redis://[:password@]host:port/db)"
                )
            if self.history != "memory":
                raise ConfigError(
                    "with a backplane, Redis keeps the history: leave --history unset"
                )
        for name in _TYPES:
            # Every duration must be positive, but the age limit (0: none).
            # (`not > 0` refuses NaN too.)
            if (
                name.endswith("_seconds")
                and name != "history_max_age_seconds"
                and not getattr(self, name) > 0
            ):
                raise ConfigError(f"{name} must be positive")
        if self.max_body_bytes < 1:
            raise ConfigError("max_body_bytes must be positive")
        for name in (
            "max_topics",
            "max_subscribers",
            "max_subscribers_per_topic",
            "max_connections_per_address",
            "max_subscriptions_per_address",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive")
        if not self.publish_rate_per_connection >= 0:
            raise ConfigError("publish_rate_per_connection must not be negative")
        if self.request_body_min_rate_bytes < 1:
            raise ConfigError("request_body_min_rate_bytes must be positive")
        if self.queue_events < 1:
            raise ConfigError("queue_events must be positive")
        if self.history_events < 1 or self.history_max_bytes < 1:
            raise ConfigError("history_events and history_max_bytes must be positive")
        if self.history_max_age_seconds < 0:
            raise ConfigError("history_max_age_seconds must not be negative")
        if self.retry_ms is not None and self.retry_ms < 0:
            raise ConfigError("retry_ms must not be negative")
        if self.history_sync not in ("full", "normal"):
            raise ConfigError("history sync must be 'full' or 'normal'")
        try:
            parse_history_spec(self.history)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log format must be one of {', '.join(LOG_FORMATS)}")
        if not self.jwt_algorithms or "none" in (a.lower() for a in self.jwt_algorithms):
            raise ConfigError("jwt algorithms must be a non-empty list without 'none'")
        known = HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS
        for algorithm in self.jwt_algorithms:
            if algorithm not in known:
                raise ConfigError(
                    f"jwt algorithm {algorithm!r} is unknown; known: {', '.join(sorted(known))}"
                )
        if self.jwt_audience is not None and not self.jwt_audience:
            raise ConfigError("jwt audience must not be empty")
        for name in _BEARER_FIELDS:
            if getattr(self, name) is not None and len(getattr(self, name)) < MIN_BEARER_CHARS:
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()} must be at least {MIN_BEARER_CHARS} characters"
                )
        for side in ("subscriber", "publisher"):
            secret, keys = getattr(self, f"{side}_secret"), getattr(self, f"{side}_keys")
            if secret is not None and keys is not None:
                raise ConfigError(
                    f"{ENV_PREFIX}{side.upper()}_SECRET and a {side} key file are both set: "
                    "a side verifies with a secret or with public keys, not both"
                )
            self._check_key(side, secret if keys is None else keys)

    def _check_key(self, side: str, key: str | None) -> None:
        """A side's key must suit at least one configured algorithm: a key
        file's keys are never tried as HMAC secrets, nor a secret as a public key."""
        listed = ", ".join(self.jwt_algorithms)
        if isinstance(key, PublicKeys):
            if not key.algorithms.intersection(self.jwt_algorithms):
                what = "none of the algorithms its keys verify"
                if set(self.jwt_algorithms) <= HMAC_ALGORITHMS:
                    what = "only HMAC algorithms"
                raise ConfigError(
                    f"the {side} key file {key.source} holds public keys, but jwt algorithms "
                    f"({listed}) has {what}: accept one of {', '.join(sorted(key.algorithms))} "
                    "(ESPER_JWT_ALGORITHMS)"
                )
        elif key is not None:
            if not HMAC_ALGORITHMS.intersection(self.jwt_algorithms):
                raise ConfigError(
                    f"the {side} secret is an HMAC secret, but jwt algorithms ({listed}) has no "
                    "HMAC algorithm (HS256, HS384, HS512); for public keys use "
                    f"ESPER_{side.upper()}_KEY_FILE instead of a secret"
                )
            problem = hmac_secret_problem(key)
            if problem:
                raise ConfigError(
                    f"the {side} secret cannot be an HMAC secret ({problem}); for a public key "
                    f"use ESPER_{side.upper()}_KEY_FILE"
                )

    @property
    def subscriber_key(self) -> str | None:
        """What subscriber tokens are verified with: the public keys, else the
        secret; ``None`` if subscribing is open."""
        return self.subscriber_secret if self.subscriber_keys is None else self.subscriber_keys

    @property
    def publisher_key(self) -> str | None:
        """The same for publishers and /stats."""
        return self.publisher_secret if self.publisher_keys is None else self.publisher_keys

    @property
    def subscriber_auth(self) -> bool:
        return self.subscriber_key is not None

    @property
    def publisher_auth(self) -> bool:
        return self.publisher_key is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: object) -> Config:
        """Build from ``ESPER_*`` variables, then apply ``overrides`` (CLI flags).

        ``ESPER_SUBSCRIBER_SECRET`` / ``ESPER_PUBLISHER_SECRET`` unset or empty
        leave that side open, unless ``ESPER_SUBSCRIBER_KEY_FILE`` /
        ``ESPER_PUBLISHER_KEY_FILE`` (or the ``subscriber_key_file`` /
        ``publisher_key_file`` overrides) name a PEM or JWKS file of public
        keys, read here. ``ESPER_NO_AUTH`` (or ``no_auth=True``) turns both off.
        ``ESPER_JWT_AUDIENCE`` empty is unset.

        Raises:
            ConfigError: a variable does not parse or a value is out of range.
        """
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None or f.name in _AUTH_FIELDS:
                continue
            if f.name in ("jwt_audience", *_BEARER_FIELDS) and not raw:
                continue
            values[f.name] = _parse(f.name, raw)
        for side in ("subscriber", "publisher"):
            secret = environ.get(f"{ENV_PREFIX}{side.upper()}_SECRET")
            values[f"{side}_secret"] = secret or None
        no_auth = overrides.pop("no_auth", None)
        if no_auth is None:
            no_auth = _parse_bool("ESPER_NO_AUTH", environ.get("ESPER_NO_AUTH", "0"))
        key_files = {
            side: overrides.pop(f"{side}_key_file", None)
            or environ.get(f"{ENV_PREFIX}{side.upper()}_KEY_FILE")
            for side in ("subscriber", "publisher")
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if no_auth:
            for name in (*_AUTH_FIELDS, *_BEARER_FIELDS):
                values[name] = None
        else:
            for side, path in key_files.items():
                if path:
                    values[f"{side}_keys"] = _read_key_file(side, str(path))
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(str(exc)) from None


ENV_PREFIX = "ESPER_"
#: Static bearer tokens: set only from the environment, empty is unset.
_BEARER_FIELDS = ("api_token", "metrics_token")
#: A static token shorter than this is guessable.
MIN_BEARER_CHARS = 16
#: Fields read from variables of their own (``*_SECRET``, ``*_KEY_FILE``).
_AUTH_FIELDS = ("subscriber_secret", "publisher_secret", "subscriber_keys", "publisher_keys")
#: Each field's declared type, as written (``from __future__ import
#: annotations`` keeps annotations as strings): what its variable parses as.
_TYPES = {f.name: str(f.type) for f in fields(Config)}


def _parse(name: str, raw: str) -> object:
    env = ENV_PREFIX + name.upper()
    kind = _TYPES[name]
    try:
        if kind in ("int", "int | None"):
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{env}={raw!r} is not a number") from None
    if kind == "bool":
        return _parse_bool(env, raw)
    if name in ("log_level", "log_format"):
        return raw.strip().lower()
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _read_key_file(side: str, path: str) -> PublicKeys:
    """The public keys in ``path`` for ``side``."""
    try:
        return load_public_keys(path)
    except KeyFileError as exc:
        raise ConfigError(f"{side} key file {path}: {exc}") from None


def _parse_bool(env: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{env}={raw!r} is not a boolean")
