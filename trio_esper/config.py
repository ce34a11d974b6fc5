"""Settings: one frozen dataclass, filled from the environment and the command line.

Pure: no trio, no quart. Each setting is declared once, on its field
(:func:`setting`): its flags, its ``ESPER_*`` variable, how its text reads,
its help. :meth:`Config.from_env`, the command line (cli.py), ``--help``, the
tests and the documentation's table (docs/configuration.md) are derived
from :data:`SETTINGS`. The flag
wins over the variable. Units are in the names.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TypeVar
from urllib.parse import urlsplit

from .auth import (
    DEFAULT_ALGORITHMS,
    HMAC_ALGORITHMS,
    HMAC_KEY_BYTES,
    PUBLIC_KEY_ALGORITHMS,
    KeyFileError,
    PublicKeys,
    hmac_secret_problem,
    load_public_keys,
)
from .history.spec import parse_history_spec

#: esper's defaults.
DEFAULT_BIND = "127.0.0.1"
DEFAULT_PORT = 3000
#: Often enough that proxies with a 30-60 s idle timeout keep the stream open.
DEFAULT_HEARTBEAT_SECONDS = 15.0
#: A published event is a notification, not a file upload.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
#: Per-subscriber queue; a subscriber this far behind is disconnected. Well
#: below DEFAULT_HISTORY_EVENTS, so the history still holds what a dropped
#: subscriber missed when it resumes (docs/behaviour.md states the rule).
DEFAULT_QUEUE_EVENTS = 100
#: The same bound in bytes: sixteen of the largest publishes (DEFAULT_MAX_BODY_BYTES).
DEFAULT_QUEUE_BYTES = 1024 * 1024
#: All subscribers' queues together, so that many stalled subscribers on
#: topics of large events cannot hold more than this between them.
DEFAULT_QUEUE_TOTAL_BYTES = 64 * 1024 * 1024
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

#: Hypercorn's default, and what browsers assume before a server says.
DEFAULT_H2_MAX_STREAMS = 100
#: Hypercorn's priority tree holds 1000 streams a connection; the streams
#: over the limit need room too (edge.bridge.h2_advertised_streams).
MAX_H2_STREAMS = 500

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
#: bounded, each well above what one broker process serves, and each a bound
#: on memory (BENCHMARKS.md gives what a subscriber takes).
DEFAULT_MAX_TOPICS = 100_000
DEFAULT_MAX_SUBSCRIBERS = 100_000
#: A browser needs a handful; a proxy or NAT in front of many users, more.
DEFAULT_MAX_PER_ADDRESS = 16_384

#: ACME (acme/): Let's Encrypt's production directory, and its staging one, whose
#: certificates no browser trusts but whose rate limits are generous.
LETSENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING_DIRECTORY = "https://acme-staging-v02.api.letsencrypt.org/directory"
#: Relative to the working directory (the container's is /data).
DEFAULT_ACME_STORAGE = "acme"
#: Where the broker listens with --acme-domain, unless told: where the ACME
#: server (and every client) comes to the name, port 443 of every interface.
ACME_BIND = "0.0.0.0"  # noqa: S104 (on purpose: a public name)
ACME_PORT = 443
#: Where an ACME server sends HTTP-01 validations: always port 80 (RFC 8555, section 8.3).
DEFAULT_ACME_HTTP_PORT = 80

#: The topic API's subscriber tokens: a day, then the client asks again.
DEFAULT_ACCESS_TOKEN_TTL_SECONDS = 86_400.0

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: ``--log-format``'s words: how logs.py writes a line.
LOG_FORMATS = ("text", "json")
#: A static bearer token shorter than this is guessable.
MIN_BEARER_CHARS = 16

#: Every variable's prefix.
ENV_PREFIX = "ESPER_"
#: Where the documentation's table of settings starts and ends (docs/configuration.md;
#: ``nox -s docs`` rewrites it).
SETTINGS_START = "<!-- settings:start -->"
SETTINGS_END = "<!-- settings:end -->"

_T = TypeVar("_T")
#: RFC 1123 host name labels, dot-separated, at least two, lower case; a wildcard
#: needs DNS-01, which the broker does not answer.
_DNS_NAME = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)
#: A Markdown link to a section of the documentation: ``[title](#anchor)``.
_SECTION_LINK = re.compile(r"\[([^\]]+)\]\(#[a-z0-9-]+\)")


class ConfigError(ValueError):
    """A setting has a value the broker cannot run with.

    Made by :meth:`about` when the refusal is about one :class:`Config`
    field: the message is the field's name, then :attr:`problem`, and
    :meth:`named` says it with the name the user gave instead (its flag or
    its variable): ``--queue must be at least 1``.
    """

    def __init__(self, message: str, *, field: str = "", problem: str = "") -> None:
        super().__init__(message)
        #: The field refused, or ``""`` if the refusal is about no one field.
        self.field = field
        #: What is wrong with it, after its name (``must be at least 1``).
        self.problem = problem

    @classmethod
    def about(cls, field: str, problem: str) -> ConfigError:
        """The refusal of ``field``'s value: ``problem``, said after its name."""
        return cls(f"{field} {problem}", field=field, problem=problem)

    def named(self, name: str) -> ConfigError:
        """The same refusal, naming the field ``name`` (a flag, a variable)."""
        return ConfigError(f"{name} {self.problem}", field=self.field, problem=self.problem)


@dataclass(frozen=True, slots=True)
class Setting:
    """How one setting is given, declared once, on its :class:`Config` field
    (:func:`setting`). :meth:`Config.from_env`, the command line and its
    ``--help`` (cli.py), the tests and the documentation's table are derived from
    these; :data:`SETTINGS` lists them all."""

    #: What it does, in one line: the documentation's "meaning" (Markdown:
    #: code spans, and links to a section by its anchor alone) and, as
    #: :attr:`plain_help`, ``--help``'s.
    help: str
    #: Its command-line flags, the first its name; none: environment only.
    flags: tuple[str, ...] = ()
    #: What ``--help`` calls the flag's argument; ``None`` for a switch.
    metavar: str | None = None
    #: A switch (a flag that takes no argument) sets this value.
    switch: bool | None = None
    #: The environment variable: ``ESPER_`` and the field's name in capitals,
    #: unless declared.
    variable: str = ""
    #: The words it takes, if it takes a few (lower-cased when read).
    choices: tuple[str, ...] = ()
    #: An empty variable leaves it unset.
    empty_is_unset: bool = False
    #: A credential: set from the environment only (a flag's value shows in
    #: ``ps``), never shown, and an empty variable leaves it unset.
    secret: bool = False
    #: The :class:`Config` field it sets; ``""`` for ``ESPER_NO_AUTH``,
    #: which decides others.
    field: str = ""
    #: How its text reads, from the field's type: ``int``, ``float``,
    #: ``bool``, ``list`` (comma-separated; the flag is repeatable), ``path``
    #: (a key file, read into the field) or ``str``.
    kind: str = "str"
    #: The field's default.
    default: object = None

    @property
    def name(self) -> str:
        """What :meth:`Config.from_env`'s overrides and the flag parser call
        it: the variable's name, lower-cased, without ``ESPER_``."""
        return self.variable.removeprefix(ENV_PREFIX).lower()

    def read(self, text: str) -> object:
        """``text`` (a variable's value, or a flag's argument) as a value.

        Raises:
            ValueError: it does not read as this setting's kind; the message
                says why, after the text (``is not a number``).
        """
        try:
            if self.kind == "int":
                return int(text)
            if self.kind == "float":
                return float(text)
        except ValueError:
            raise ValueError("is not a number") from None
        if self.kind == "bool":
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("", "0", "false", "no", "off"):
                return False
            raise ValueError("is not a boolean")
        if self.kind == "list":
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if self.choices:
            return text.strip().lower()
        return text

    def read_variable(self, text: str) -> object:
        """``text``, the variable's value, as a value.

        Raises:
            ConfigError: it does not read; the message names the variable.
        """
        try:
            return self.read(text)
        except ValueError as exc:
            raise ConfigError(f"{self.variable}={text!r} {exc}") from None

    @property
    def shown_default(self) -> str:
        """The default as ``--help`` and the documentation say it."""
        value = self.default
        if value is None or value == ():
            return "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    @property
    def shown_variable(self) -> str:
        """The variable as ``--help`` names it: with the value a switch
        stands for, and how a list is written."""
        if self.switch is not None:
            return f"{self.variable}={int(self.switch)}"
        if self.kind == "list":
            return f"{self.variable}, comma-separated"
        return self.variable

    @property
    def plain_help(self) -> str:
        """:attr:`help` as text: code spans unquoted, a link to a section of
        the documentation its title and "in the documentation"."""
        return _SECTION_LINK.sub(r"\1 in the documentation", self.help).replace("`", "")

    @property
    def flag_help(self) -> str:
        """The flag's ``--help`` line: what it does, its variable, its default."""
        if self.switch is not None:
            return f"{self.plain_help} [{self.shown_variable}]"
        return f"{self.plain_help} [{self.shown_variable}] (default {self.shown_default})"


def setting(
    default: _T,
    *flags: str,
    help: str,
    metavar: str | None = None,
    switch: bool | None = None,
    variable: str = "",
    choices: tuple[str, ...] = (),
    empty_is_unset: bool = False,
    secret: bool = False,
    repr: bool = True,
) -> _T:
    """A :class:`Config` field with ``default``, declared as a :class:`Setting`
    (see its attributes). A secret is never in the repr."""
    declared = Setting(
        help=help,
        flags=flags,
        metavar=metavar,
        switch=switch,
        variable=variable,
        choices=choices,
        empty_is_unset=empty_is_unset,
        secret=secret,
    )
    return field(default=default, repr=repr and not secret, metadata={"setting": declared})


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the broker can be told. Build with :meth:`from_env` or directly."""

    bind: str = setting(
        DEFAULT_BIND,
        "--bind",
        metavar="ADDR",
        help="address to listen on; `0.0.0.0` if not given, with `--acme-domain`",
    )
    port: int = setting(
        DEFAULT_PORT,
        "--port",
        metavar="N",
        help="port; `0` picks a free one; `443` if not given, with `--acme-domain`",
    )
    certfile: str | None = setting(
        None,
        "--certfile",
        metavar="PATH",
        help="PEM certificate chain, the server's certificate first: with `--keyfile`, the "
        "port speaks TLS only, HTTP/2 or HTTP/1.1 by ALPN (see [TLS and HTTP/2](#tls-and-http2))",
    )
    keyfile: str | None = setting(
        None, "--keyfile", metavar="PATH", help="the certificate's private key, PEM, unencrypted"
    )
    acme_domains: tuple[str, ...] = setting(
        (),
        "--acme-domain",
        metavar="NAME",
        variable="ESPER_ACME_DOMAINS",
        help="a name to get a certificate for from an ACME server (Let's Encrypt) and serve "
        "TLS with; repeatable, one certificate for all (see "
        "[HTTPS in one flag](#https-in-one-flag))",
    )
    acme_email: str | None = setting(
        None,
        "--acme-email",
        metavar="ADDRESS",
        empty_is_unset=True,
        help="contact address given to the ACME server with the account (expiry notices)",
    )
    acme_directory: str = setting(
        LETSENCRYPT_DIRECTORY,
        "--acme-directory",
        metavar="URL",
        help="the ACME server's directory; Let's Encrypt's staging one is "
        f"`{LETSENCRYPT_STAGING_DIRECTORY}`",
    )
    acme_ca_bundle: str | None = setting(
        None,
        "--acme-ca-bundle",
        metavar="PATH",
        empty_is_unset=True,
        help="PEM certificates to trust for the ACME server's own HTTPS (a private ACME "
        "server); unset: the system's",
    )
    acme_storage: str = setting(
        DEFAULT_ACME_STORAGE,
        "--acme-storage",
        metavar="DIR",
        help="where the ACME account key, the certificate and its key are kept (directory "
        "0700, files 0600)",
    )
    acme_http_port: int = setting(
        DEFAULT_ACME_HTTP_PORT,
        "--acme-http-port",
        metavar="N",
        help="with ACME: plain-HTTP port answering HTTP-01 challenges and redirecting every "
        "other request to `https://`; skipped if it cannot be bound; `0`: none",
    )
    threads: int = setting(
        1,
        "--threads",
        "--workers",
        metavar="N",
        help="worker processes on one port; more than 1 needs `--backplane` (see "
        "[Beyond one process](#beyond-one-process))",
    )
    backplane: str | None = setting(
        None,
        "--backplane",
        metavar="URL",
        help="`redis://[:password@]host:port/db` (or `rediss://`, `unix://`): the Redis every "
        "process and node shares ([Beyond one process](#beyond-one-process))",
        repr=False,
    )
    backplane_eviction: str = setting(
        "warn",
        "--backplane-eviction",
        metavar="WHAT",
        choices=("warn", "refuse"),
        help="when the backplane's `maxmemory-policy` can evict the broker's streams "
        "(`allkeys-*`): `warn`, or `refuse` publishes ([Beyond one process](#beyond-one-process))",
    )
    subscriber_secret: str | None = setting(
        None,
        help="HMAC secret for subscribers; unset or empty, and no key file: subscribing is open",
        secret=True,
    )
    publisher_secret: str | None = setting(
        None,
        help="HMAC secret for publishers and `/stats`; unset or empty, and no key file: open",
        secret=True,
    )
    subscriber_keys: PublicKeys | None = setting(  # noqa: RUF009 (a dataclasses.field)
        None,
        "--subscriber-key-file",
        metavar="PATH",
        variable="ESPER_SUBSCRIBER_KEY_FILE",
        empty_is_unset=True,
        help="PEM or JWKS file of the public keys subscriber tokens are verified with, "
        "instead of the secret",
        repr=False,
    )
    publisher_keys: PublicKeys | None = setting(  # noqa: RUF009 (a dataclasses.field)
        None,
        "--publisher-key-file",
        metavar="PATH",
        variable="ESPER_PUBLISHER_KEY_FILE",
        empty_is_unset=True,
        help="the same for publishers and `/stats`",
        repr=False,
    )
    jwt_algorithms: tuple[str, ...] = setting(
        DEFAULT_ALGORITHMS,
        help="accepted algorithms: `HS256` `HS384` `HS512` for secrets; `RS256` `RS384` "
        "`RS512` `PS256` `PS384` `PS512` `ES256` `ES384` `ES512` `ES256K` `EdDSA` for key "
        "files (`none` and unknown names are refused at start-up)",
    )
    jwt_audience: str | None = setting(
        None,
        "--jwt-audience",
        metavar="AUD",
        empty_is_unset=True,
        help="`aud` every token must carry; unset or empty: a token that carries an `aud` "
        "is refused",
    )
    heartbeat_seconds: float = setting(
        DEFAULT_HEARTBEAT_SECONDS,
        "--heartbeat",
        metavar="SECONDS",
        help="comment sent on idle streams this often",
    )
    max_body_bytes: int = setting(
        DEFAULT_MAX_BODY_BYTES, "--max-body", metavar="BYTES", help="largest publish body"
    )
    queue_events: int = setting(
        DEFAULT_QUEUE_EVENTS,
        "--queue",
        metavar="EVENTS",
        help="events buffered per subscriber; a subscriber this far behind is disconnected",
    )
    queue_bytes: int = setting(
        DEFAULT_QUEUE_BYTES,
        "--queue-bytes",
        metavar="BYTES",
        help="bytes buffered per subscriber (queued, or being written); a subscriber this "
        "far behind is disconnected",
    )
    queue_total_bytes: int = setting(
        DEFAULT_QUEUE_TOTAL_BYTES,
        "--queue-total-bytes",
        metavar="BYTES",
        help="bytes buffered for all subscribers together (a frame queued to many counts "
        "once); past it, the subscriber whose disconnection frees the most is disconnected",
    )
    cors_origins: tuple[str, ...] = setting(
        (),
        "--cors-origin",
        metavar="ORIGIN",
        help="browser origins allowed, each as a browser sends it in `Origin` "
        "(`https://example.com`, `http://localhost:8000`: no path, lower case); repeatable; "
        "`*` for any",
    )
    auth_cookie: str | None = setting(
        None,
        "--auth-cookie",
        metavar="NAME",
        help="a cookie that may carry the JWT; allowed origins then get "
        "`Access-Control-Allow-Credentials` (see [Auth](#auth))",
    )
    cookie_publish: bool = setting(
        False,
        "--cookie-publish",
        switch=True,
        help="let the `--auth-cookie` token publish and manage too; without it the cookie "
        "authorises subscribing only, since a cross-site page's form sends it with a "
        "`POST` (see [Auth](#auth))",
    )
    log_level: str = setting(
        "info",
        "--log-level",
        metavar="LEVEL",
        choices=LOG_LEVELS,
        help="`debug`, `info`, `warning`, `error`, `critical`",
    )
    log_format: str = setting(
        "text",
        "--log-format",
        metavar="FORMAT",
        choices=LOG_FORMATS,
        help="`text`, or `json`: one object per line (see [Logs](#logs))",
    )
    shutdown_grace_seconds: float = setting(
        DEFAULT_SHUTDOWN_GRACE_SECONDS,
        "--shutdown-grace",
        metavar="SECONDS",
        help="time open connections get to finish on SIGINT/SIGTERM",
    )
    write_timeout_seconds: float = setting(
        DEFAULT_WRITE_TIMEOUT_SECONDS,
        help="a connection whose sent data stays unacknowledged this long is aborted "
        "(`TCP_USER_TIMEOUT`)",
    )
    history: str = setting(
        "memory",
        "--history",
        metavar="SPEC",
        help="`memory` or `sqlite:PATH` (see [History and resume](#history-and-resume))",
    )
    history_events: int = setting(
        DEFAULT_HISTORY_EVENTS, "--history-events", metavar="N", help="events retained per topic"
    )
    history_max_age_seconds: float = setting(
        0.0,
        "--history-max-age",
        metavar="SECONDS",
        help="sqlite: drop older events; `0`: none (refused with memory history or a backplane)",
    )
    history_max_bytes: int = setting(
        DEFAULT_HISTORY_MAX_BYTES,
        "--history-max-bytes",
        metavar="BYTES",
        help="memory: budget for all topics",
    )
    history_sync: str = setting(
        "full",
        "--history-sync",
        metavar="MODE",
        choices=("full", "normal"),
        help="sqlite: `full` flushes every commit to disk (survives power loss); `normal` "
        "survives the broker's own crash (`kill -9`) only",
    )
    retry_ms: int | None = setting(
        None,
        "--retry",
        metavar="MS",
        help="`retry:` hint sent when a stream opens; none: the browser's own",
    )
    keep_alive_seconds: float = setting(
        DEFAULT_KEEP_ALIVE_SECONDS,
        "--keep-alive",
        metavar="SECONDS",
        help="a connection idle between requests is closed after this long",
    )
    request_head_timeout_seconds: float = setting(
        DEFAULT_REQUEST_HEAD_TIMEOUT_SECONDS,
        "--request-head-timeout",
        metavar="SECONDS",
        help="a request head not complete this long after its first byte: 408, closed",
    )
    request_body_timeout_seconds: float = setting(
        DEFAULT_REQUEST_BODY_TIMEOUT_SECONDS,
        "--request-body-timeout",
        metavar="SECONDS",
        help="a request body that stalls (no byte) this long: 408, closed",
    )
    request_body_min_rate_bytes: int = setting(
        DEFAULT_REQUEST_BODY_MIN_RATE_BYTES,
        "--request-body-min-rate",
        metavar="BYTES",
        help="a body must arrive within the body timeout plus its length at this many "
        "bytes/s: 408, closed",
    )
    max_topics: int = setting(
        DEFAULT_MAX_TOPICS,
        "--max-topics",
        metavar="N",
        help="topics with subscribers held at once; a subscribe to another: 503",
    )
    max_subscribers: int = setting(
        DEFAULT_MAX_SUBSCRIBERS,
        "--max-subscribers",
        metavar="N",
        help="subscriptions held at once, all topics: past it 503",
    )
    max_subscribers_per_topic: int = setting(
        DEFAULT_MAX_SUBSCRIBERS,
        "--max-subscribers-per-topic",
        metavar="N",
        help="subscriptions to one topic: past it 503",
    )
    max_connections_per_address: int = setting(
        DEFAULT_MAX_PER_ADDRESS,
        "--max-connections-per-address",
        metavar="N",
        help="open connections from one client address: past it 503 at once, and closed",
    )
    max_subscriptions_per_address: int = setting(
        DEFAULT_MAX_PER_ADDRESS,
        "--max-subscriptions-per-address",
        metavar="N",
        help="subscriptions from one client address: past it 503",
    )
    h2_max_streams: int = setting(
        DEFAULT_H2_MAX_STREAMS,
        "--h2-max-streams",
        metavar="N",
        help="streams served at once on one HTTP/2 connection (an `EventSource` holds one); "
        "another is refused with `REFUSED_STREAM`, which browsers retry, rather than left "
        f"waiting (at most {MAX_H2_STREAMS})",
    )
    publish_rate_per_connection: float = setting(
        0.0,
        "--publish-rate",
        metavar="PER_SECOND",
        help="publish requests a second on one connection (burst: one second's worth): past "
        "it 429; `0`: none",
    )
    fast_lane: bool = setting(
        True,
        "--no-fast-lane",
        switch=False,
        help="serve every request through Quart-Trio, none through the edge's fast forms "
        "(see [Design](#design))",
    )
    mercure_anonymous: bool = setting(
        False,
        "--mercure-anonymous",
        switch=True,
        help="let subscribers without a token receive the public updates of the "
        "[Mercure hub](#mercure) (its `anonymous` directive); without it they get 401 "
        "when a subscriber secret or key file is set",
    )
    mercure_subscriptions: bool = setting(
        False,
        "--mercure-subscriptions",
        switch=True,
        help="announce each [Mercure](#mercure) subscription as it opens and closes (private "
        "`Subscription` updates) and serve the subscriptions API under "
        "`/.well-known/mercure/subscriptions`",
    )
    api_token: str | None = setting(
        None,
        help="static bearer token for the management routes of the [topic API](#topic-api) "
        "(create, list, read and delete topics; publish) and for the monitoring routes; a "
        'publisher JWT with `"admin": true` is taken there too; with neither this token nor '
        "a publisher secret or key file, the management routes are open "
        f"({MIN_BEARER_CHARS} characters or more; empty is unset)",
        secret=True,
    )
    metrics_token: str | None = setting(
        None,
        help="static bearer token for the monitoring routes only: `/metrics`, `/stats`, "
        f"`/stats/stream` and the dashboard ({MIN_BEARER_CHARS} characters or more; empty "
        "is unset)",
        secret=True,
    )
    access_token_ttl_seconds: float = setting(
        DEFAULT_ACCESS_TOKEN_TTL_SECONDS,
        "--access-token-ttl",
        metavar="SECONDS",
        help="lifetime of the subscriber token `POST /api/v1/pubsubs` returns",
    )

    def __post_init__(self) -> None:
        """Refuse a value the broker cannot run with.

        Raises:
            ConfigError: the first value refused; :meth:`ConfigError.about`
                its field if the refusal is about one.
        """
        if not 0 <= self.port <= 65535:
            raise ConfigError.about("port", f"must be 0..65535, got {self.port}")
        # That both are given, and name a certificate and its key, is checked
        # where the TLS context is built, first thing at start-up
        # (edge.load_tls_context): the files are read once, there.
        for name in ("certfile", "keyfile"):
            if getattr(self, name) == "":
                raise ConfigError.about(name, "must not be empty")
        self._check_acme()
        if self.threads < 1:
            raise ConfigError.about("threads", f"must be at least 1, got {self.threads}")
        if self.threads > 1 and self.backplane is None:
            raise ConfigError.about(
                "threads",
                "above 1 runs worker processes that must share events through a backplane: "
                "give --backplane redis://HOST:PORT (ESPER_BACKPLANE), or run one process",
            )
        if self.backplane is not None:
            if not self.backplane.startswith(("redis://", "rediss://", "unix://")):
                # Never the value: a Redis URL may hold a password.
                raise ConfigError.about(
                    "backplane",
                    "must be a redis://, rediss:// or unix:// URL (redis://[:password@]host:port/db)",
                )
            if self.history != "memory":
                raise ConfigError(
                    "with a backplane, Redis keeps the history: leave the history setting unset"
                )
        for name in _TYPES:
            # Every duration must be positive, but the age limit (0: none).
            # (`not > 0` refuses NaN too.)
            if (
                name.endswith("_seconds")
                and name != "history_max_age_seconds"
                and not getattr(self, name) > 0
            ):
                raise ConfigError.about(name, "must be positive")
        for name in (
            "max_body_bytes",
            "queue_events",
            "queue_bytes",
            "queue_total_bytes",
            "history_events",
            "history_max_bytes",
            "request_body_min_rate_bytes",
            "max_topics",
            "max_subscribers",
            "max_subscribers_per_topic",
            "max_connections_per_address",
            "max_subscriptions_per_address",
            "h2_max_streams",
        ):
            if getattr(self, name) < 1:
                raise ConfigError.about(name, "must be at least 1")
        if self.h2_max_streams > MAX_H2_STREAMS:
            raise ConfigError.about("h2_max_streams", f"must be at most {MAX_H2_STREAMS}")
        for name in ("publish_rate_per_connection", "history_max_age_seconds", "retry_ms"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ConfigError.about(name, "must not be negative")
        for name, words in (
            ("history_sync", ("full", "normal")),
            ("backplane_eviction", ("warn", "refuse")),
            ("log_level", LOG_LEVELS),
            ("log_format", LOG_FORMATS),
        ):
            if getattr(self, name) not in words:
                raise ConfigError.about(name, f"must be one of {', '.join(words)}")
        try:
            history_kind = parse_history_spec(self.history)[0]
        except ValueError as exc:
            raise ConfigError.about("history", str(exc)) from None
        if self.history_max_age_seconds and (
            self.backplane is not None or history_kind != "sqlite"
        ):
            # Refused, not ignored: an age limit is often a promise to delete.
            keeper = "the Redis backplane" if self.backplane is not None else "memory history"
            raise ConfigError.about(
                "history_max_age_seconds",
                "applies to SQLite history only (sqlite:FILE): "
                f"{keeper} would keep events past it",
            )
        if not self.jwt_algorithms or "none" in (a.lower() for a in self.jwt_algorithms):
            raise ConfigError.about("jwt_algorithms", "must be a non-empty list without 'none'")
        known = HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS
        for algorithm in self.jwt_algorithms:
            if algorithm not in known:
                raise ConfigError.about(
                    "jwt_algorithms",
                    f"names {algorithm!r}, which is unknown; known: {', '.join(sorted(known))}",
                )
        if self.jwt_audience is not None and not self.jwt_audience:
            raise ConfigError.about("jwt_audience", "must not be empty")
        for origin in self.cors_origins:
            problem = _origin_problem(origin)
            if problem is not None:
                raise ConfigError.about("cors_origins", f"{origin!r}: {problem}")
        for name in _BEARER_FIELDS:
            if getattr(self, name) is not None and len(getattr(self, name)) < MIN_BEARER_CHARS:
                raise ConfigError.about(name, f"must be at least {MIN_BEARER_CHARS} characters")
        for side in ("subscriber", "publisher"):
            secret, keys = getattr(self, f"{side}_secret"), getattr(self, f"{side}_keys")
            if secret is not None and keys is not None:
                raise ConfigError(
                    f"{ENV_PREFIX}{side.upper()}_SECRET and a {side} key file are both set: "
                    "a side verifies with a secret or with public keys, not both"
                )
            self._check_key(side, secret if keys is None else keys)

    def _check_acme(self) -> None:
        """ACME names must be DNS names (RFC 8555, section 7.1.4: a "dns"
        identifier; Let's Encrypt issues no certificate for an IP address
        through this flow), and exclude a certificate file."""
        if not 0 <= self.acme_http_port <= 65535:
            raise ConfigError.about(
                "acme_http_port", f"must be 0..65535, got {self.acme_http_port}"
            )
        if not self.acme_domains:
            return
        if self.certfile is not None or self.keyfile is not None:
            raise ConfigError(
                "--acme-domain and --certfile/--keyfile are both set: the certificate comes "
                "from the ACME server or from the files, not both"
            )
        for name in self.acme_domains:
            if not _DNS_NAME.fullmatch(name) or len(name) > 253:
                raise ConfigError.about(
                    "acme_domains", f"{name!r} is not a DNS name (events.example.com)"
                )
        if not self.acme_directory.startswith(("https://", "http://")):
            raise ConfigError.about("acme_directory", "must be an https:// URL")

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
        """Build from ``ESPER_*`` variables (:data:`SETTINGS`), then apply
        ``overrides`` (CLI flags): keyword arguments named as
        :attr:`Setting.name` (``port``, ``no_auth``, ``subscriber_key_file``)
        or as a field; ``None`` is not given.

        ``ESPER_SUBSCRIBER_SECRET`` / ``ESPER_PUBLISHER_SECRET`` unset or empty
        leave that side open, unless ``ESPER_SUBSCRIBER_KEY_FILE`` /
        ``ESPER_PUBLISHER_KEY_FILE`` (or the ``subscriber_key_file`` /
        ``publisher_key_file`` overrides) name a PEM or JWKS file of public
        keys, read here. ``ESPER_NO_AUTH`` (or ``no_auth=True``) turns both off.
        ``ESPER_JWT_AUDIENCE`` empty is unset.

        Raises:
            ConfigError: a variable does not parse or a value is refused; the
                message names the setting as it was given (its variable, or its
                flag for an override).
        """
        values: dict[str, object] = {}
        key_files: dict[str, str] = {}
        #: Where each field's value came from: its variable, or its flag.
        sources: dict[str, str] = {}
        no_auth = False
        for s in SETTINGS:
            value = overrides.pop(s.name, None)
            source = s.flags[0] if s.flags else s.name
            if value is None or (value == "" and s.empty_is_unset):
                text = environ.get(s.variable)
                if text is None or (not text and (s.empty_is_unset or s.secret)):
                    continue
                value, source = s.read_variable(text), s.variable
            sources[s.field] = source
            if not s.field:
                no_auth = bool(value)
            elif s.kind == "path":
                key_files[s.field] = str(value)
            else:
                values[s.field] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("acme_domains"):
            # A public name's certificate is for a public port: HTTPS in one flag.
            values.setdefault("bind", ACME_BIND)
            values.setdefault("port", ACME_PORT)
        if no_auth:
            for name in (*_AUTH_FIELDS, *_BEARER_FIELDS):
                values[name] = None
        else:
            for name, path in key_files.items():
                values[name] = _read_key_file(name.removesuffix("_keys"), path)
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(str(exc)) from None
        except ConfigError as exc:
            if exc.field:  # named as the user gave it
                raise exc.named(sources.get(exc.field, exc.field)) from None
            # Name the variables (or flags) the refusal is about.
            named = [
                source
                for name, source in sources.items()
                if name and source not in str(exc) and _builds_without(cls, values, name)
            ]
            if not named:
                raise
            raise ConfigError(f"{exc} ({', '.join(named)})") from None


#: ``ESPER_NO_AUTH`` sets no field: it clears the secrets, keys and tokens.
NO_AUTH = Setting(
    "turn JWT checks off for both sides, whatever the secrets and key files say (key files "
    "are then not read)",
    ("--no-auth",),
    switch=True,
    variable=f"{ENV_PREFIX}NO_AUTH",
    kind="bool",
    default=False,
)
#: Static bearer tokens: at least :data:`MIN_BEARER_CHARS` long.
_BEARER_FIELDS = ("api_token", "metrics_token")
#: What ``ESPER_NO_AUTH`` clears.
_AUTH_FIELDS = ("subscriber_secret", "publisher_secret", "subscriber_keys", "publisher_keys")
#: Each field's declared type, as written (``from __future__ import
#: annotations`` keeps annotations as strings).
_TYPES = {f.name: str(f.type) for f in fields(Config)}
#: How a variable of each declared type reads (anything else: as text).
_KINDS = {
    "int": "int",
    "int | None": "int",
    "float": "float",
    "bool": "bool",
    "tuple[str, ...]": "list",
    "PublicKeys | None": "path",
}


def _declared() -> tuple[Setting, ...]:
    """Every field's :class:`Setting`, completed from the field, in the
    fields' order; :data:`NO_AUTH` before the secrets it clears."""
    declared: list[Setting] = []
    for f in fields(Config):
        if f.name == "subscriber_secret":
            declared.append(NO_AUTH)
        given: Setting = f.metadata["setting"]
        declared.append(
            replace(
                given,
                field=f.name,
                variable=given.variable or ENV_PREFIX + f.name.upper(),
                kind=_KINDS.get(_TYPES[f.name], "str"),
                default=f.default,
            )
        )
    return tuple(declared)


#: Every setting, in the order ``--help`` and the documentation list them.
SETTINGS = _declared()


def settings_table() -> str:
    """The documentation's table of settings (Markdown), from :data:`SETTINGS`."""
    rows = ["| flag | variable | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        flags = ", ".join(f"`{f} {s.metavar}`" if s.metavar else f"`{f}`" for f in s.flags)
        if s.kind == "list":
            variable = f"`{s.variable}` (comma-separated)"
        elif s.switch is not None:
            variable = f"`{s.variable}={int(s.switch)}`"
        else:
            variable = f"`{s.variable}`"
        default = s.shown_default
        if s.default is not None and s.default != () and not isinstance(s.default, bool):
            default = f"`{default}`"
        meaning = s.help.replace("|", "\\|")
        rows.append(f"| {flags} | {variable} | {default} | {meaning} |".replace("|  |", "| |"))
    rows.append("| `--version`, `--help` | | | |")
    return "\n".join(rows) + "\n"


def with_settings_table(page: str) -> str:
    """``page`` with its table of settings, between :data:`SETTINGS_START`
    and :data:`SETTINGS_END`, replaced by :func:`settings_table`.

    Raises:
        ValueError: the markers are missing.
    """
    head, start, rest = page.partition(SETTINGS_START)
    _, end, tail = rest.partition(SETTINGS_END)
    if not (start and end):
        raise ValueError(f"no {SETTINGS_START} ... {SETTINGS_END} in the page")
    return f"{head}{start}\n{settings_table()}{end}{tail}"


def _builds_without(cls: type[Config], values: dict[str, object], name: str) -> bool:
    """Whether ``values`` but ``name`` make a :class:`Config`: then a
    refusal of ``values`` is about ``name``."""
    try:
        cls(**{k: v for k, v in values.items() if k != name})  # type: ignore[arg-type]
    except (ConfigError, TypeError):
        return False
    return True


def _read_key_file(side: str, path: str) -> PublicKeys:
    """The public keys in ``path`` for ``side``."""
    try:
        return load_public_keys(path)
    except KeyFileError as exc:
        raise ConfigError(f"{side} key file {path}: {exc}") from None


#: The ports a browser leaves out of an origin (the scheme's default, RFC 6454 section 6.2).
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_problem(text: str) -> str | None:
    """Why ``text`` can never equal a browser's ``Origin`` header, and the
    origin it likely means; ``None`` if it can.

    A browser sends the ASCII serialisation of an origin (RFC 6454 section
    6.2; WHATWG HTML, "serialization of an origin"): ``scheme "://" host
    [ ":" port ]``, scheme and host in lower case, the host in its ASCII
    (punycode) form, an IPv6 address in brackets, no port when it is the
    scheme's default, and nothing after; or ``null`` for an opaque origin (a
    sandboxed frame, a ``file:`` page). ``*`` allows any origin.
    """
    if text in ("*", "null"):
        return None
    if text.strip().lower() == "null":
        return "an opaque origin is written in lower case; did you mean 'null'?"
    origin = text.strip()
    if not origin:
        return "an origin is scheme://host[:port], e.g. 'https://example.com'"
    if any(c.isspace() for c in origin):
        return "an origin has no spaces"
    problems = [] if origin == text else ["an origin has no spaces around it"]
    schemeless = "://" not in origin
    if schemeless and re.match(r"[a-z][a-z0-9+.-]*:/", origin, re.IGNORECASE):
        return "an origin is scheme://host[:port], two slashes after the scheme"
    if schemeless:
        problems.append("an origin starts with its scheme")
        origin = f"https://{origin}"
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError as exc:  # a port that is not a number 0..65535, a bad bracket
        return f"not scheme://host[:port] ({exc})"
    host = parts.hostname or ""
    if parts.scheme == "file":
        return "a page opened from a file sends the origin 'null'; did you mean 'null'?"
    if not host:
        return "an origin has a host: scheme://host[:port], e.g. 'https://example.com'"
    if parts.username is not None:
        problems.append("an origin has no user name or password")
    if parts.path or origin.endswith("/"):
        problems.append("an origin has no path")
    if parts.query or parts.fragment or origin.endswith(("?", "#")):
        problems.append("an origin has no query or fragment")
    if origin != origin.lower():
        problems.append("browsers send an origin in lower case")
    if port is not None and port == _DEFAULT_PORTS.get(parts.scheme):
        problems.append(f"browsers leave out the default port ({port} for {parts.scheme})")
    try:
        if ":" in host:
            host = f"[{ipaddress.IPv6Address(host)}]"
        elif not host.isascii():
            problems.append("browsers send a host in its ASCII (punycode) form")
            host = host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        return f"{host!r} is not a host name or an IP address"
    netloc = host if port is None or port == _DEFAULT_PORTS.get(parts.scheme) else f"{host}:{port}"
    meant = f"{parts.scheme}://{netloc}"
    if meant == origin and not problems:
        return None
    if not problems:  # another spelling of it (an IPv6 address not in its shortest form)
        problems.append("browsers write it otherwise")
    if schemeless:
        return f"{problems[0]}; did you mean {meant!r} or {'http' + meant[5:]!r}?"
    return f"{problems[0]}; did you mean {meant!r}?"


def start_up_warnings(config: Config, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """What the broker warns about as it starts, as (variable, message)
    pairs, one a line: ``ESPER_*`` variables it does not read (a typo in a
    name would otherwise be ignored), HMAC secrets shorter than an accepted
    algorithm needs, and a subscriber key equal to the publisher's. No
    message holds a value: a variable may hold a secret."""
    found = []
    known = [s.variable for s in SETTINGS]
    # Compared without the prefix, which every name shares.
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    for name in sorted(environ):
        if name.upper().startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name.upper()[len(ENV_PREFIX) :], suffixes, n=1)
            hint = f"; did you mean {suffixes[close[0]]}?" if close else ""
            found.append((name, f"{name} is not a trio-esper setting: ignored{hint}"))
    hmac = [a for a in config.jwt_algorithms if a in HMAC_KEY_BYTES]
    for side in ("subscriber", "publisher"):
        secret: str | None = getattr(config, f"{side}_secret")
        if secret is None or not hmac:
            continue
        # RFC 7518 section 3.2: "A key of the same size as the hash output
        # (for instance, 256 bits for "HS256") or larger MUST be used".
        algorithm = max(hmac, key=HMAC_KEY_BYTES.__getitem__)
        size = len(secret.encode())
        if size < HMAC_KEY_BYTES[algorithm]:
            variable = f"{ENV_PREFIX}{side.upper()}_SECRET"
            found.append(
                (
                    variable,
                    f"{variable} is {size} bytes: {algorithm} needs {HMAC_KEY_BYTES[algorithm]} "
                    "or more (RFC 7518 section 3.2); a shorter secret is easier to guess",
                )
            )
    if config.subscriber_auth and config.subscriber_key == config.publisher_key:
        secrets = config.publisher_keys is None
        what = "secrets are equal" if secrets else "key files hold the same keys"
        variable = f"{ENV_PREFIX}PUBLISHER_{'SECRET' if secrets else 'KEY_FILE'}"
        found.append(
            (variable, f"subscriber and publisher {what}: any subscriber token can publish")
        )
    return found
