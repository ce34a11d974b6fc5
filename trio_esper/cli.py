"""Command line: parse arguments into a :class:`Config`, then run :func:`serve`.

The flags, their ``--help`` and the variables listed there are derived from
the settings' declaration (:data:`~trio_esper.config.SETTINGS`); the flag
wins over its ``ESPER_*`` variable.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import NoReturn

import trio
from jwt.warnings import InsecureKeyLengthWarning

from . import logs, workers
from .config import SETTINGS, Config, ConfigError, Setting
from .errors import HistoryError
from .version import __version__

#: Generation-0 threshold while serving. CPython's default (700) runs a young
#: collection every few hundred allocations, and fan-out allocates for every
#: subscriber of every event; the broker's garbage is short-lived and
#: acyclic, so collecting it young buys nothing.
GC_GEN0_THRESHOLD = 50_000

#: How long the event loop may hold the GIL while a worker thread (the SQLite
#: writer) waits for it. CPython's 5 ms default makes every GIL hand-back in a
#: commit wait up to 5 ms behind a busy event loop.
GIL_SWITCH_SECONDS = 0.0005

PROG = "trio-esper"
EXIT_USAGE = 2
#: The history store could not be opened (corrupt, unwritable, a directory).
EXIT_HISTORY = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the usage, then the error: one line is the contract.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line, derived from :data:`~trio_esper.config.SETTINGS`:
    a flag per setting that has one, its help saying its variable and its
    default; the epilog lists the variables that have no flag."""
    parser = _Parser(
        prog=PROG,
        description="Server-Sent Events pub/sub broker (esper's API on Trio).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for s in SETTINGS:
        if not s.flags:
            continue
        # argparse %-formats help texts.
        help_text = s.flag_help.replace("%", "%%")
        if s.switch is not None:
            parser.add_argument(
                *s.flags, dest=s.name, action="store_const", const=s.switch, help=help_text
            )
        else:
            parser.add_argument(
                *s.flags,
                dest=s.name,
                metavar=s.metavar,
                type=_reader(s),
                choices=s.choices or None,
                action="append" if s.kind == "list" else "store",
                help=help_text,
            )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def _reader(setting: Setting) -> Callable[[str], object]:
    """A flag's argument read as its variable would be (one item of a list)."""

    def read(text: str) -> object:
        if setting.kind in ("list", "path"):
            return text
        try:
            return setting.read(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None

    return read


def _epilog() -> str:
    only = [s for s in SETTINGS if not s.flags]
    width = max(len(s.variable) for s in only) + 2
    lines = [
        "Each flag can also be set by the environment variable in brackets; the flag wins.",
        "",
        "environment only (a credential has no flag: a flag's value shows in ps):",
    ]
    for s in only:
        default = "" if s.secret else f" (default {s.shown_default})"
        lines.append(f"  {s.variable:<{width}}{s.plain_help}{default}")
    lines += [
        "",
        "other commands:",
        f"  {PROG} token --topic TOPIC (--publisher | --subscriber) [--ttl SECONDS]",
        "      print a JWT for one topic, signed with the secret in the environment "
        f"({PROG} token --help)",
    ]
    return "\n".join(lines)


def parse_config(argv: Sequence[str] | None, environ: dict[str, str]) -> Config:
    """Parse ``argv`` over ``environ``; exit with status 2 and one line on
    error, which names the setting refused as the user gave it: the flag as
    typed, or the variable."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    for s in SETTINGS:
        if s.kind == "list" and args.get(s.name) is not None:
            args[s.name] = tuple(args[s.name])
    try:
        return Config.from_env(environ, **args)
    except ConfigError as exc:
        typed = _typed_flag(sys.argv[1:] if argv is None else argv, exc.field)
        error = exc if typed is None else exc.named(typed)
        parser.exit(EXIT_USAGE, f"{PROG}: error: {error}\n")


def _typed_flag(argv: Sequence[str], field: str) -> str | None:
    """Which of ``field``'s flags ``argv`` gives it with, as typed
    (``--workers`` for ``--threads``): the last, which argparse keeps."""
    flags = next((s.flags for s in SETTINGS if s.field == field), ())
    for arg in reversed(argv):
        if arg.partition("=")[0] in flags:
            return arg.partition("=")[0]
    return None


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
    # Said once, in the log's format: PyJWT would say it again, in Python's
    # (two lines on stderr), when a short secret first verifies a token.
    warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
    if workers.is_worker():
        workers.become_worker()
    else:  # the supervisor of --threads, or the one process
        logs.config_warnings(config, os.environ)
        if config.threads > 1:
            _check_tls_files(config)
            sys.exit(workers.supervise(config, args))
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


def _check_tls_files(config: Config) -> None:
    """Exit with status 2 and one line if the TLS files cannot serve: checked
    once here, before worker processes start (each loads them again)."""
    from .edge import load_tls_context

    try:
        load_tls_context(config)
    except ConfigError as exc:
        print(f"trio-esper: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _raise_open_files_limit() -> None:
    """Every subscriber is an open socket: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
