"""Command line: parse arguments into a :class:`Config`, then run :func:`serve`.

Every flag has an ``ESPER_*`` environment variable; the flag wins.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence
from functools import partial

import trio

from . import __version__, logs, workers
from .config import (
    DEFAULT_ACCESS_TOKEN_TTL_SECONDS,
    DEFAULT_BIND,
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_HISTORY_EVENTS,
    DEFAULT_HISTORY_MAX_BYTES,
    DEFAULT_KEEP_ALIVE_SECONDS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PER_ADDRESS,
    DEFAULT_MAX_SUBSCRIBERS,
    DEFAULT_MAX_TOPICS,
    DEFAULT_PORT,
    DEFAULT_QUEUE_EVENTS,
    DEFAULT_REQUEST_BODY_MIN_RATE_BYTES,
    DEFAULT_REQUEST_BODY_TIMEOUT_SECONDS,
    DEFAULT_REQUEST_HEAD_TIMEOUT_SECONDS,
    DEFAULT_SHUTDOWN_GRACE_SECONDS,
    LOG_LEVELS,
    Config,
    ConfigError,
)
from .errors import HistoryError
from .logs import LOG_FORMATS

#: Generation-0 threshold while serving. CPython's default (700) runs a young
#: collection every few hundred allocations, which under fan-out cost ~45% of
#: server CPU in a prototype; the broker's garbage is short-lived and acyclic.
GC_GEN0_THRESHOLD = 50_000

#: How long the event loop may hold the GIL while a worker thread (the SQLite
#: writer) waits for it. CPython's 5 ms default makes every GIL hand-back in a
#: commit wait up to 5 ms behind a busy event loop.
GIL_SWITCH_SECONDS = 0.0005

EXIT_USAGE = 2
#: The history store could not be opened (corrupt, unwritable, a directory).
EXIT_HISTORY = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-esper",
        description="Server-Sent Events pub/sub broker (esper's API on Trio).",
        epilog="Each flag can also be set by the environment variable named in brackets.",
    )
    add = parser.add_argument
    add("--bind", help=f"address to listen on [ESPER_BIND] (default {DEFAULT_BIND})")
    add("--port", type=int, help=f"port, 0 for any free one [ESPER_PORT] (default {DEFAULT_PORT})")
    add(
        "--certfile",
        metavar="PATH",
        help="PEM certificate chain: with --keyfile, serve TLS only, HTTP/2 by ALPN "
        "[ESPER_CERTFILE] (default none: plaintext)",
    )
    add(
        "--keyfile",
        metavar="PATH",
        help="PEM private key of --certfile, unencrypted [ESPER_KEYFILE] (default none)",
    )
    add(
        "--threads",
        type=int,
        help="worker processes sharing the port [ESPER_THREADS] (default 1; more need "
        "--backplane)",
    )
    add(
        "--workers",
        type=int,
        dest="threads",
        help="the same as --threads",
    )
    add(
        "--backplane",
        metavar="URL",
        help="redis://[:password@]host:port/db the broker processes and nodes share "
        "[ESPER_BACKPLANE] (default: none, one process)",
    )
    add(
        "--no-auth",
        action="store_const",
        const=True,
        help="turn JWT checks off for both sides, whatever the secrets and key files say "
        "[ESPER_NO_AUTH]",
    )
    add(
        "--subscriber-key-file",
        metavar="PATH",
        help="PEM or JWKS file of the public keys subscriber tokens are signed with, instead "
        "of ESPER_SUBSCRIBER_SECRET [ESPER_SUBSCRIBER_KEY_FILE] (default none)",
    )
    add(
        "--publisher-key-file",
        metavar="PATH",
        help="PEM or JWKS file of the public keys publisher tokens are signed with, instead "
        "of ESPER_PUBLISHER_SECRET [ESPER_PUBLISHER_KEY_FILE] (default none)",
    )
    add(
        "--jwt-audience",
        metavar="AUD",
        help="the aud claim every token must carry [ESPER_JWT_AUDIENCE] "
        "(default none: a token that names an audience is refused)",
    )
    add(
        "--heartbeat",
        type=float,
        dest="heartbeat_seconds",
        metavar="SECONDS",
        help="comment sent on every stream this often [ESPER_HEARTBEAT_SECONDS] "
        f"(default {DEFAULT_HEARTBEAT_SECONDS:g})",
    )
    add(
        "--max-body",
        type=int,
        dest="max_body_bytes",
        metavar="BYTES",
        help="largest publish body accepted [ESPER_MAX_BODY_BYTES] "
        f"(default {DEFAULT_MAX_BODY_BYTES})",
    )
    add(
        "--queue",
        type=int,
        dest="queue_events",
        metavar="EVENTS",
        help="events buffered per subscriber before it is disconnected "
        f"[ESPER_QUEUE_EVENTS] (default {DEFAULT_QUEUE_EVENTS})",
    )
    add(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        metavar="ORIGIN",
        help="browser origin allowed to connect, repeatable, '*' for any "
        "[ESPER_CORS_ORIGINS, comma-separated] (default none)",
    )
    add(
        "--auth-cookie",
        metavar="NAME",
        help="cookie that may carry the JWT, for `new EventSource(url, {withCredentials: "
        "true})`; allowed origins (named exactly, not '*') get "
        "Access-Control-Allow-Credentials [ESPER_AUTH_COOKIE] (default none)",
    )
    add(
        "--shutdown-grace",
        type=float,
        dest="shutdown_grace_seconds",
        metavar="SECONDS",
        help="time open streams get to end on SIGINT/SIGTERM [ESPER_SHUTDOWN_GRACE_SECONDS] "
        f"(default {DEFAULT_SHUTDOWN_GRACE_SECONDS:g})",
    )
    add(
        "--history",
        metavar="memory|sqlite:PATH",
        help="where past events are kept for resume [ESPER_HISTORY] (default memory)",
    )
    add(
        "--history-events",
        type=int,
        metavar="N",
        help=f"events kept per topic [ESPER_HISTORY_EVENTS] (default {DEFAULT_HISTORY_EVENTS})",
    )
    add(
        "--history-max-age",
        type=float,
        dest="history_max_age_seconds",
        metavar="SECONDS",
        help="sqlite: drop events older than this [ESPER_HISTORY_MAX_AGE_SECONDS] "
        "(default 0: no age limit)",
    )
    add(
        "--history-max-bytes",
        type=int,
        metavar="BYTES",
        help="memory: total budget for all topics [ESPER_HISTORY_MAX_BYTES] "
        f"(default {DEFAULT_HISTORY_MAX_BYTES})",
    )
    add(
        "--history-sync",
        choices=("full", "normal"),
        help="sqlite: 'full' flushes every commit to disk (survives power loss); 'normal' "
        "survives the broker's crash only, and commits faster [ESPER_HISTORY_SYNC] "
        "(default full)",
    )
    add(
        "--retry",
        type=int,
        dest="retry_ms",
        metavar="MS",
        help="retry: (reconnection delay) hint sent when a stream opens [ESPER_RETRY_MS] "
        "(default none: the browser's own)",
    )
    add(
        "--keep-alive",
        type=float,
        dest="keep_alive_seconds",
        metavar="SECONDS",
        help="close a connection idle between requests after this long "
        f"[ESPER_KEEP_ALIVE_SECONDS] (default {DEFAULT_KEEP_ALIVE_SECONDS:g})",
    )
    add(
        "--request-head-timeout",
        type=float,
        dest="request_head_timeout_seconds",
        metavar="SECONDS",
        help="408 for a request head not complete this long after its first byte "
        "[ESPER_REQUEST_HEAD_TIMEOUT_SECONDS] "
        f"(default {DEFAULT_REQUEST_HEAD_TIMEOUT_SECONDS:g})",
    )
    add(
        "--request-body-timeout",
        type=float,
        dest="request_body_timeout_seconds",
        metavar="SECONDS",
        help="408 for a request body that stalls this long "
        "[ESPER_REQUEST_BODY_TIMEOUT_SECONDS] "
        f"(default {DEFAULT_REQUEST_BODY_TIMEOUT_SECONDS:g})",
    )
    add(
        "--request-body-min-rate",
        type=int,
        dest="request_body_min_rate_bytes",
        metavar="BYTES_PER_SECOND",
        help="a body must arrive within the body timeout plus its length at this rate, "
        "else 408 [ESPER_REQUEST_BODY_MIN_RATE_BYTES] "
        f"(default {DEFAULT_REQUEST_BODY_MIN_RATE_BYTES})",
    )
    add(
        "--max-topics",
        type=int,
        metavar="N",
        help="topics with subscribers held at once; a subscribe to another gets 503 "
        f"[ESPER_MAX_TOPICS] (default {DEFAULT_MAX_TOPICS})",
    )
    add(
        "--max-subscribers",
        type=int,
        metavar="N",
        help="subscriptions held at once, all topics; past it 503 [ESPER_MAX_SUBSCRIBERS] "
        f"(default {DEFAULT_MAX_SUBSCRIBERS})",
    )
    add(
        "--max-subscribers-per-topic",
        type=int,
        metavar="N",
        help="subscriptions to one topic; past it 503 [ESPER_MAX_SUBSCRIBERS_PER_TOPIC] "
        f"(default {DEFAULT_MAX_SUBSCRIBERS})",
    )
    add(
        "--max-connections-per-address",
        type=int,
        metavar="N",
        help="open connections from one client address; past it 503 and closed "
        f"[ESPER_MAX_CONNECTIONS_PER_ADDRESS] (default {DEFAULT_MAX_PER_ADDRESS})",
    )
    add(
        "--max-subscriptions-per-address",
        type=int,
        metavar="N",
        help="subscriptions from one client address; past it 503 "
        f"[ESPER_MAX_SUBSCRIPTIONS_PER_ADDRESS] (default {DEFAULT_MAX_PER_ADDRESS})",
    )
    add(
        "--publish-rate",
        type=float,
        dest="publish_rate_per_connection",
        metavar="PER_SECOND",
        help="publish requests a second on one connection (burst: one second's worth); "
        "past it 429 [ESPER_PUBLISH_RATE_PER_CONNECTION] (default 0: no limit)",
    )
    add(
        "--no-fast-lane",
        action="store_const",
        const=False,
        dest="fast_lane",
        help="serve every request through Quart-Trio, none through the edge's HTTP/1.1 "
        "fast forms [ESPER_FAST_LANE=0]",
    )
    add(
        "--access-token-ttl",
        type=float,
        dest="access_token_ttl_seconds",
        metavar="SECONDS",
        help="lifetime of the subscriber token POST /api/v1/pubsubs returns "
        f"[ESPER_ACCESS_TOKEN_TTL_SECONDS] (default {DEFAULT_ACCESS_TOKEN_TTL_SECONDS:g})",
    )
    add("--log-level", choices=LOG_LEVELS, help="[ESPER_LOG_LEVEL] (default info)")
    add(
        "--log-format",
        choices=LOG_FORMATS,
        help="text, or json: one object per line with time, level, logger, message and "
        "the event's fields [ESPER_LOG_FORMAT] (default text)",
    )
    add("--version", action="version", version=f"trio-esper {__version__}")
    return parser


def parse_config(argv: Sequence[str] | None, environ: dict[str, str]) -> Config:
    """Parse ``argv`` over ``environ``; exit with status 2 and a message on error."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    if args["cors_origins"] is not None:
        args["cors_origins"] = tuple(args["cors_origins"])
    try:
        return Config.from_env(environ, **args)
    except ConfigError as exc:
        parser.exit(EXIT_USAGE, f"trio-esper: error: {exc}\n")


async def _run(config: Config) -> None:
    # Imported here so `--help` and `--version` do not pay for quart.
    from .server import serve

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown)
        listeners = workers.inherited_listeners()
        await nursery.start(partial(serve, config, shutdown=shutdown, listeners=listeners))
        workers.report_ready()
        gc.freeze()  # start-up objects are permanent: keep them out of every collection
        await shutdown.wait()
    # serve() has returned once the nursery exits


async def _watch_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            logging.getLogger("trio_esper").info(
                "%s received, shutting down", name, extra={"event": "signal", "signal": name}
            )
            shutdown.set()
            return


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["token"]:  # `trio-esper token ...` mints a JWT (tokens.py)
        from .tokens import main as token_main

        sys.exit(token_main(args[1:]))
    config = parse_config(argv, dict(os.environ))
    logs.configure(config.log_level, config.log_format)
    if workers.is_worker():
        workers.become_worker()
    elif config.threads > 1:
        sys.exit(workers.supervise(config, args))
    if config.subscriber_auth and config.subscriber_key == config.publisher_key:
        logging.getLogger("trio_esper").warning(
            "subscriber and publisher secrets are equal: any subscriber token can publish"
        )
    _raise_open_files_limit()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    failure: str | None = None
    code = 0
    try:
        trio.run(_run, config)
    except* HistoryError as group:
        failure, code = _first_leaf(group).args[0], EXIT_HISTORY
    except* ConfigError as group:  # the TLS files (server.serve loads them first)
        failure, code = str(_first_leaf(group)), EXIT_USAGE
    except* OSError as group:
        bind = f"{config.bind}:{config.port}"
        failure, code = f"cannot listen on {bind}: {_first_leaf(group)}", EXIT_USAGE
    if failure is not None:
        print(f"trio-esper: error: {failure}", file=sys.stderr)
        sys.exit(code)


def _raise_open_files_limit() -> None:
    """Every subscriber is an open socket: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
