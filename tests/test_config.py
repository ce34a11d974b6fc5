"""trio_esper.config (Config.from_env, the settings' declaration) and trio_esper.cli
(parse_config, --help): every setting is tested from its declaration (SETTINGS)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trio_esper.auth import PublicKeys
from trio_esper.cli import EXIT_USAGE, build_parser, parse_config
from trio_esper.config import (
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_PORT,
    SETTINGS,
    SETTINGS_START,
    Config,
    ConfigError,
    Setting,
    settings_table,
    start_up_warnings,
    with_settings_table,
)

SECRETS = {"ESPER_SUBSCRIBER_SECRET": "sub-secret", "ESPER_PUBLISHER_SECRET": "pub-secret"}


def test_defaults_from_empty_environ() -> None:
    config = Config.from_env({})
    assert config == Config()
    assert config.port == DEFAULT_PORT
    assert config.heartbeat_seconds == DEFAULT_HEARTBEAT_SECONDS
    assert not config.subscriber_auth
    assert not config.publisher_auth


# (environ, overrides, attribute, expected value)
FROM_ENV = [
    pytest.param({"ESPER_PORT": "8080"}, {}, "port", 8080, id="port"),
    pytest.param({"ESPER_PORT": "0"}, {}, "port", 0, id="port-zero"),
    pytest.param({"ESPER_BIND": "0.0.0.0"}, {}, "bind", "0.0.0.0", id="bind"),
    pytest.param({"ESPER_HEARTBEAT_SECONDS": "2.5"}, {}, "heartbeat_seconds", 2.5, id="heartbeat"),
    pytest.param(
        {"ESPER_CORS_ORIGINS": "https://a.example, https://b.example,,"},
        {},
        "cors_origins",
        ("https://a.example", "https://b.example"),
        id="cors-comma-separated",
    ),
    pytest.param({"ESPER_CORS_ORIGINS": "*"}, {}, "cors_origins", ("*",), id="cors-any"),
    pytest.param(
        {"ESPER_JWT_ALGORITHMS": "HS256,HS512"},
        {},
        "jwt_algorithms",
        ("HS256", "HS512"),
        id="algorithms",
    ),
    pytest.param({"ESPER_LOG_LEVEL": "debug"}, {}, "log_level", "debug", id="log-level"),
    pytest.param({"ESPER_MAX_BODY_BYTES": "10"}, {}, "max_body_bytes", 10, id="max-body"),
    pytest.param({"ESPER_QUEUE_EVENTS": "5"}, {}, "queue_events", 5, id="queue"),
    pytest.param({"ESPER_KEEP_ALIVE_SECONDS": "0.5"}, {}, "keep_alive_seconds", 0.5, id="ka"),
    pytest.param({"ESPER_FAST_LANE": "0"}, {}, "fast_lane", False, id="fast-lane-off"),
    pytest.param({"ESPER_FAST_LANE": "yes"}, {}, "fast_lane", True, id="fast-lane-on"),
    pytest.param({}, {"fast_lane": False}, "fast_lane", False, id="no-fast-lane-flag"),
    pytest.param({"ESPER_PORT": "8080"}, {"port": 9090}, "port", 9090, id="override-wins"),
    pytest.param({"ESPER_PORT": "8080"}, {"port": None}, "port", 8080, id="none-override-unset"),
    pytest.param(SECRETS, {}, "subscriber_secret", "sub-secret", id="subscriber-secret"),
    pytest.param(SECRETS, {}, "publisher_secret", "pub-secret", id="publisher-secret"),
    pytest.param(
        {**SECRETS, "ESPER_SUBSCRIBER_SECRET": ""},
        {},
        "subscriber_secret",
        None,
        id="empty-secret-is-open",
    ),
    pytest.param(
        {**SECRETS, "ESPER_NO_AUTH": "1"}, {}, "subscriber_secret", None, id="no-auth-env"
    ),
    pytest.param(
        {**SECRETS, "ESPER_NO_AUTH": "true"}, {}, "publisher_secret", None, id="no-auth-true"
    ),
    pytest.param(
        {**SECRETS, "ESPER_NO_AUTH": "0"},
        {},
        "publisher_secret",
        "pub-secret",
        id="no-auth-env-off",
    ),
    pytest.param(SECRETS, {"no_auth": True}, "publisher_secret", None, id="no-auth-override"),
    pytest.param(
        {**SECRETS, "ESPER_NO_AUTH": "1"},
        {"no_auth": False},
        "subscriber_secret",
        "sub-secret",
        id="no-auth-override-false-beats-env",
    ),
]


@pytest.mark.parametrize(("environ", "overrides", "attribute", "expected"), FROM_ENV)
def test_from_env(
    environ: dict[str, str], overrides: dict[str, object], attribute: str, expected: object
) -> None:
    config = Config.from_env(environ, **overrides)
    assert getattr(config, attribute) == expected


def test_auth_properties_follow_secrets() -> None:
    config = Config.from_env({"ESPER_PUBLISHER_SECRET": "p"})
    assert config.publisher_auth
    assert not config.subscriber_auth


def test_secrets_not_in_repr() -> None:
    text = repr(Config.from_env(SECRETS))
    assert "sub-secret" not in text
    assert "pub-secret" not in text


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().port = 1  # type: ignore[misc]


# (environ, overrides, regex the ConfigError message must contain)
BAD_CONFIG = [
    pytest.param({"ESPER_PORT": "http"}, {}, r"ESPER_PORT='http' is not a number", id="port-nan"),
    pytest.param({"ESPER_PORT": "80.5"}, {}, r"ESPER_PORT=.* not a number", id="port-float"),
    pytest.param(
        {"ESPER_PORT": "70000"}, {}, r"^ESPER_PORT must be 0\.\.65535, got 70000$", id="port-big"
    ),
    pytest.param({"ESPER_PORT": "-1"}, {}, r"^ESPER_PORT must be 0\.\.65535", id="port-negative"),
    pytest.param(
        {"ESPER_HEARTBEAT_SECONDS": "soon"},
        {},
        r"ESPER_HEARTBEAT_SECONDS='soon' is not a number",
        id="heartbeat-word",
    ),
    pytest.param(
        {"ESPER_HEARTBEAT_SECONDS": "0"},
        {},
        r"^ESPER_HEARTBEAT_SECONDS must be positive$",
        id="hb-0",
    ),
    pytest.param(
        {"ESPER_HEARTBEAT_SECONDS": "nan"},
        {},
        r"^ESPER_HEARTBEAT_SECONDS must be positive$",
        id="hb-nan",
    ),
    pytest.param(
        {"ESPER_MAX_BODY_BYTES": "0"}, {}, r"^ESPER_MAX_BODY_BYTES must be at least 1$", id="mb-0"
    ),
    pytest.param(
        {"ESPER_QUEUE_EVENTS": "0"}, {}, r"^ESPER_QUEUE_EVENTS must be at least 1$", id="queue-0"
    ),
    pytest.param({}, {"queue_events": 0}, r"^--queue must be at least 1$", id="queue-flag-0"),
    pytest.param(
        {"ESPER_KEEP_ALIVE_SECONDS": "0"},
        {},
        r"^ESPER_KEEP_ALIVE_SECONDS must be positive$",
        id="ka-0",
    ),
    pytest.param(
        {"ESPER_FAST_LANE": "maybe"}, {}, r"ESPER_FAST_LANE='maybe' is not a boolean", id="fl"
    ),
    pytest.param(
        {"ESPER_THREADS": "2"},
        {},
        r"^ESPER_THREADS above 1 runs worker processes .* give --backplane",
        id="threads-2",
    ),
    pytest.param({}, {"threads": 4}, r"^--threads above 1 runs", id="threads-override"),
    pytest.param(
        {"ESPER_THREADS": "0"}, {}, r"^ESPER_THREADS must be at least 1, got 0$", id="threads-0"
    ),
    pytest.param(
        {"ESPER_BACKPLANE": "http://redis:6379"},
        {},
        r"redis://, rediss:// or unix://",
        id="backplane-url",
    ),
    pytest.param(
        {"ESPER_BACKPLANE": "redis://r:6379", "ESPER_HISTORY": "sqlite:x.db"},
        {},
        r"with a backplane, Redis keeps the history",
        id="backplane-and-sqlite",
    ),
    pytest.param(
        {"ESPER_HISTORY_MAX_AGE_SECONDS": "3600"},
        {},
        r"^ESPER_HISTORY_MAX_AGE_SECONDS applies to SQLite history only \(sqlite:FILE\): "
        r"memory history would keep events past it$",
        id="max-age-memory",
    ),
    pytest.param(
        {"ESPER_BACKPLANE": "redis://r:6379", "ESPER_HISTORY_MAX_AGE_SECONDS": "60"},
        {},
        r"^ESPER_HISTORY_MAX_AGE_SECONDS applies to SQLite history only \(sqlite:FILE\): "
        r"the Redis backplane would keep events past it$",
        id="max-age-backplane",
    ),
    pytest.param(
        {"ESPER_LOG_LEVEL": "verbose"}, {}, r"^ESPER_LOG_LEVEL must be one of debug, ", id="log"
    ),
    pytest.param({"ESPER_JWT_ALGORITHMS": "none"}, {}, r"'none'", id="alg-none"),
    pytest.param({"ESPER_JWT_ALGORITHMS": "HS256,NoNe"}, {}, r"'none'", id="alg-none-mixed"),
    pytest.param({"ESPER_JWT_ALGORITHMS": ", ,"}, {}, r"non-empty", id="alg-empty"),
    pytest.param(
        {"ESPER_NO_AUTH": "maybe"}, {}, r"ESPER_NO_AUTH='maybe' is not a boolean", id="nb"
    ),
    pytest.param({}, {"colour": "blue"}, r"colour", id="unknown-override"),
]


@pytest.mark.parametrize(("environ", "overrides", "message"), BAD_CONFIG)
def test_from_env_rejects(
    environ: dict[str, str], overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as excinfo:
        Config.from_env(environ, **overrides)
    assert len(str(excinfo.value).splitlines()) == 1


# (argv, environ, attribute, expected value)
CLI = [
    pytest.param([], {"ESPER_PORT": "8000"}, "port", 8000, id="env-when-no-flag"),
    pytest.param(["--port", "9000"], {"ESPER_PORT": "8000"}, "port", 9000, id="flag-wins"),
    pytest.param(["--bind", "::1"], {"ESPER_BIND": "0.0.0.0"}, "bind", "::1", id="bind"),
    pytest.param(
        ["--heartbeat", "1.5"],
        {"ESPER_HEARTBEAT_SECONDS": "30"},
        "heartbeat_seconds",
        1.5,
        id="heartbeat",
    ),
    pytest.param(
        ["--cors-origin", "https://a.example", "--cors-origin", "https://b.example"],
        {"ESPER_CORS_ORIGINS": "https://c.example"},
        "cors_origins",
        ("https://a.example", "https://b.example"),
        id="cors-repeatable-and-wins",
    ),
    pytest.param(
        [],
        {"ESPER_CORS_ORIGINS": "https://c.example"},
        "cors_origins",
        ("https://c.example",),
        id="cors-from-env",
    ),
    pytest.param(["--max-body", "100"], {}, "max_body_bytes", 100, id="max-body"),
    pytest.param(["--queue", "7"], {}, "queue_events", 7, id="queue"),
    pytest.param(["--shutdown-grace", "2"], {}, "shutdown_grace_seconds", 2.0, id="grace"),
    pytest.param(
        ["--log-level", "error"],
        {"ESPER_LOG_LEVEL": "debug"},
        "log_level",
        "error",
        id="log-level",
    ),
    pytest.param(["--no-auth"], SECRETS, "subscriber_secret", None, id="no-auth-flag"),
    pytest.param(["--no-fast-lane"], {}, "fast_lane", False, id="no-fast-lane"),
    pytest.param([], {}, "fast_lane", True, id="fast-lane-default"),
    pytest.param(["--keep-alive", "9"], {}, "keep_alive_seconds", 9.0, id="keep-alive"),
    pytest.param([], SECRETS, "subscriber_secret", "sub-secret", id="secret-from-env"),
]


@pytest.mark.parametrize(("argv", "environ", "attribute", "expected"), CLI)
def test_parse_config(
    argv: list[str], environ: dict[str, str], attribute: str, expected: object
) -> None:
    assert getattr(parse_config(argv, environ), attribute) == expected


# (argv, environ, fragment of the message on stderr)
BAD_CLI = [
    pytest.param(["--bogus"], {}, "unrecognized arguments", id="unknown-flag"),
    pytest.param(["--port", "abc"], {}, "--port", id="port-not-int"),
    pytest.param(["--port", "70000"], {}, ": --port must be 0..65535", id="port-range"),
    pytest.param(["--threads", "2"], {}, ": --threads above 1", id="threads"),
    pytest.param(["--workers", "2"], {}, ": --workers above 1", id="workers-as-typed"),
    pytest.param(["--workers=0"], {}, ": --workers must be at least 1", id="workers-equals"),
    pytest.param(["--log-level", "verbose"], {}, "--log-level", id="log-level-choice"),
    pytest.param(["--heartbeat", "0"], {}, ": --heartbeat must be positive\n", id="heartbeat"),
    pytest.param(["--queue", "0"], {}, ": --queue must be at least 1\n", id="queue"),
    pytest.param(
        [],
        {"ESPER_QUEUE_EVENTS": "0"},
        ": ESPER_QUEUE_EVENTS must be at least 1\n",
        id="queue-env",
    ),
    pytest.param([], {"ESPER_PORT": "x"}, "ESPER_PORT='x' is not a number", id="bad-env"),
]


@pytest.mark.parametrize("name", ["ESPER_API_TOKEN", "ESPER_METRICS_TOKEN"])
def test_static_tokens_are_long_enough_and_empty_is_unset(name: str) -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        Config.from_env({name: "short"})
    field = name.removeprefix("ESPER_").lower()
    assert getattr(Config.from_env({name: ""}), field) is None
    assert getattr(Config.from_env({name: "x" * 16, "ESPER_NO_AUTH": "1"}), field) is None
    assert "x" * 16 not in repr(Config.from_env({name: "x" * 16}))


@pytest.mark.parametrize(("argv", "environ", "message"), BAD_CLI)
def test_parse_config_exits_2(
    argv: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_config(argv, environ)
    assert excinfo.value.code == EXIT_USAGE == 2
    assert message in capsys.readouterr().err


# --- every setting, from its declaration (SETTINGS) ----------------------------

#: Settings whose text must be particular to be accepted.
_TEXTS = {
    "history": ("sqlite:/var/lib/esper/history.db", "memory"),
    "backplane": ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/1"),
    "jwt_algorithms": ("HS384,HS512", "HS256"),
    "acme_domains": ("a.example, b.example", "c.example"),
    "acme_directory": ("https://acme.example/directory", "https://acme.example/other"),
}
#: What some settings need beside them to be accepted.
_CONTEXT = {
    "threads": {"ESPER_BACKPLANE": "redis://127.0.0.1:6379/0"},
    "subscriber_keys": {"ESPER_JWT_ALGORITHMS": "ES256"},
    "publisher_keys": {"ESPER_JWT_ALGORITHMS": "ES256"},
    "no_auth": {"ESPER_SUBSCRIBER_SECRET": "a-subscriber-secret-of-40-characters-xxx"},
    "history_max_age_seconds": {"ESPER_HISTORY": "sqlite:history.db"},
}


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two PEM files, each with one EC public key."""
    paths = []
    for n in (1, 2):
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        path = tmp_path_factory.mktemp("keys") / f"key{n}.pem"
        path.write_bytes(
            key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        paths.append(str(path))
    return paths[0], paths[1]


def _texts(s: Setting, key_files: tuple[str, str]) -> tuple[str, str]:
    """Two texts of ``s``'s variable, both accepted, neither its default."""
    if s.field in _TEXTS:
        return _TEXTS[s.field]
    if s.choices:
        # Upper case: a word is read lower-cased.
        return s.choices[-1].upper(), s.choices[-2].upper()
    return {
        "int": ("7", "9"),
        "float": ("2.5", "3.5"),
        "bool": ("0", "1") if s.default else ("1", "0"),
        "list": ("https://a.example, https://b.example", "https://c.example"),
        "path": key_files,
    }.get(s.kind, ("a-text-of-32-characters-or-more!", "another-text-of-32-characters-xx"))


def _observed(config: Config, s: Setting) -> object:
    """What ``config`` holds of ``s``, comparable with :func:`_expected`."""
    if not s.field:  # ESPER_NO_AUTH: whether auth is off
        return not config.subscriber_auth
    value = getattr(config, s.field)
    if s.kind == "path":  # the keys read from the file
        return value.source if isinstance(value, PublicKeys) else value
    return value


def _expected(s: Setting, text: str) -> object:
    if s.kind == "path":
        return text
    return s.read(text)


def _argv(s: Setting, flag: str, text: str) -> list[str]:
    """``text`` given to ``s`` through ``flag``."""
    if s.switch is not None:
        return [flag] if s.read(text) == s.switch else []
    if s.kind == "list":
        return [a for item in text.split(",") for a in (flag, item.strip())]
    return [flag, text]


def _ids(s: Setting) -> str:
    return s.variable


def test_the_declaration_covers_every_field() -> None:
    declared = [s.field for s in SETTINGS if s.field]
    assert declared == [f.name for f in dataclasses.fields(Config)]
    assert len({s.variable for s in SETTINGS}) == len(SETTINGS)
    flags = [f for s in SETTINGS for f in s.flags]
    assert len(set(flags)) == len(flags)
    # A credential is never a flag: its value would show in `ps`.
    for s in SETTINGS:
        if s.secret:
            assert not s.flags, s


@pytest.mark.parametrize("setting", SETTINGS, ids=_ids)
def test_every_variable_reads_as_its_kind(setting: Setting, key_files: tuple[str, str]) -> None:
    # ESPER_HISTORY_EVENTS and three more once stayed strings and ended the broker.
    text, _ = _texts(setting, key_files)
    context = _CONTEXT.get(setting.field or setting.name, {})
    config = Config.from_env({**context, setting.variable: text})
    assert _observed(config, setting) == _expected(setting, text)
    assert _observed(config, setting) != _observed(Config.from_env(context), setting)


FLAGGED = [pytest.param(s, f, id=f) for s in SETTINGS for f in s.flags]


@pytest.mark.parametrize(("setting", "flag"), FLAGGED)
def test_every_flag_reads_as_its_variable(
    setting: Setting, flag: str, key_files: tuple[str, str]
) -> None:
    text, _ = _texts(setting, key_files)
    environ = _CONTEXT.get(setting.field or setting.name, {})
    config = parse_config(_argv(setting, flag, text), environ)
    assert _observed(config, setting) == _expected(setting, text)


@pytest.mark.parametrize(("setting", "flag"), FLAGGED)
def test_the_flag_wins_over_the_variable(
    setting: Setting, flag: str, key_files: tuple[str, str]
) -> None:
    text, other = _texts(setting, key_files)
    environ = {**_CONTEXT.get(setting.field or setting.name, {}), setting.variable: other}
    config = parse_config(_argv(setting, flag, text), environ)
    assert _observed(config, setting) == _expected(setting, text)


#: Settings whose text can be unreadable (not a number, not a word it takes).
READ = [s for s in SETTINGS if s.kind in ("int", "float", "bool") or s.choices]
#: A value each setting refuses, and what the message says.
_REFUSED = {
    "port": "70000",
    "threads": "0",
    "history": "mysql:x",
    "history_sync": "fast",
    "log_level": "verbose",
    "log_format": "xml",
    "jwt_algorithms": "none",
    "api_token": "short",
    "metrics_token": "short",
    "backplane": "http://127.0.0.1",
    "certfile": "",
    "keyfile": "",
}


@pytest.mark.parametrize("setting", READ, ids=_ids)
def test_an_unreadable_variable_exits_2_naming_it(
    setting: Setting, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_config([], {setting.variable: "many"})
    assert excinfo.value.code == EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("trio-esper: error: ")
    assert setting.variable in line


@pytest.mark.parametrize(
    ("setting", "flag"), [p for p in FLAGGED if p.values[0] in READ and p.values[0].switch is None]
)
def test_an_unreadable_flag_exits_2_naming_it(
    setting: Setting, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_config([flag, "many"], {})
    assert excinfo.value.code == EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"trio-esper: error: argument {setting.flags[0]}")


def _refusable() -> list[Any]:
    cases = []
    for s in SETTINGS:
        text = _REFUSED.get(s.field) or {"int": "-1", "float": "-1"}.get(s.kind)
        if text is not None and s.kind != "bool":
            cases.append(pytest.param(s, text, id=s.variable))
    return cases


@pytest.mark.parametrize(("setting", "text"), _refusable())
def test_a_refused_value_exits_2_naming_its_variable_or_flag(
    setting: Setting, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Named as the user gave it, never as the field (unless the two are spelt alike).
    field = re.compile(rf"(?<![-\w]){setting.field}\b")
    with pytest.raises(SystemExit) as excinfo:
        parse_config([], {setting.variable: text})
    assert excinfo.value.code == EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"trio-esper: error: {setting.variable} "), line
    assert not field.search(line), line
    if setting.flags and setting.switch is None and setting.kind != "list":
        with pytest.raises(SystemExit) as excinfo:
            parse_config([setting.flags[0], text], {})
        [line] = capsys.readouterr().err.splitlines()
        # argparse's own refusal (a word it does not take) says "argument FLAG:".
        named = (f"{setting.flags[0]} ", f"argument {setting.flags[0]}: ")
        assert line.startswith(tuple(f"trio-esper: error: {n}" for n in named)), line
        assert not field.search(line), line


def test_a_config_built_in_python_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^queue_events must be at least 1$") as excinfo:
        Config(queue_events=0)
    assert excinfo.value.field == "queue_events"


def test_help_lists_every_flag_and_every_variable() -> None:
    text = build_parser().format_help()
    for s in SETTINGS:
        assert s.variable in text, s
        for flag in s.flags:
            assert flag in text, s
    only = text[text.index("environment only") :]
    for s in SETTINGS:
        assert (s.variable in only) == (not s.flags), s
    assert "trio-esper token" in text


def test_help_is_fast_and_shows_no_secret_value() -> None:
    secrets = {s.variable: f"value-of-{s.variable}-0123456789" for s in SETTINGS if s.secret}
    script = (
        "import sys\n"
        "from trio_esper.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'quart' not in sys.modules, 'trio-esper --help imported quart'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **secrets},
        capture_output=True,
        text=True,
        check=True,
    )
    for variable, value in secrets.items():
        assert variable in result.stdout
        assert value not in result.stdout + result.stderr


def test_the_settings_table_is_the_declarations() -> None:
    readme = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert SETTINGS_START in readme
    assert with_settings_table(readme) == readme, (
        "docs/configuration.md's settings table differs from the declaration: "
        "run python3 noxfile.py -s docs"
    )
    for s in SETTINGS:
        assert f"`{s.variable}" in settings_table(), s


def test_help_says_nothing_it_does_not_show() -> None:
    text = build_parser().format_help()
    # "(see below)" pointed at nothing: --help has no "below".
    assert "below" not in text
    for s in SETTINGS:
        # A link to a section becomes "TITLE in the documentation" in --help:
        # never in a possessive ("the topic API in the documentation's routes").
        assert not re.search(r"\]\(#[a-z0-9-]+\)'s", s.help), s
    [api] = [line for line in text.splitlines() if line.lstrip().startswith("ESPER_API_TOKEN")]
    assert "management routes of the topic API" in api
    assert "monitoring routes" in api
    assert "16 characters or more; empty is unset" in api


# --- --cors-origin: a value a browser's Origin can equal --------------------------

#: (value, the hint after it): none can ever equal the Origin header a browser sends.
REFUSED_ORIGINS = [
    pytest.param(
        "http://host:8000/", "an origin has no path; did you mean 'http://host:8000'?", id="slash"
    ),
    pytest.param(
        "https://example.com/app",
        "an origin has no path; did you mean 'https://example.com'?",
        id="path",
    ),
    pytest.param(
        "host:8000",
        "an origin starts with its scheme; did you mean 'https://host:8000' or "
        "'http://host:8000'?",
        id="no-scheme",
    ),
    pytest.param(
        "HTTPS://Example.COM",
        "browsers send an origin in lower case; did you mean 'https://example.com'?",
        id="upper-case",
    ),
    pytest.param("", "an origin is scheme://host[:port], e.g. 'https://example.com'", id="empty"),
    pytest.param(
        "https://example.com:443",
        "browsers leave out the default port (443 for https); did you mean 'https://example.com'?",
        id="default-port",
    ),
    pytest.param(
        "https://user@example.com",
        "an origin has no user name or password; did you mean 'https://example.com'?",
        id="user",
    ),
    pytest.param(
        "https://example.com?x=1",
        "an origin has no query or fragment; did you mean 'https://example.com'?",
        id="query",
    ),
    pytest.param(
        "https://b\u00fccher.example",
        "browsers send a host in its ASCII (punycode) form; did you mean "
        "'https://xn--bcher-kva.example'?",
        id="unicode-host",
    ),
    pytest.param(
        "http://[0:0::1]:8000",
        "browsers write it otherwise; did you mean 'http://[::1]:8000'?",
        id="ipv6-long",
    ),
    pytest.param(
        "file:///srv/page.html",
        "a page opened from a file sends the origin 'null'; did you mean 'null'?",
        id="file",
    ),
    pytest.param("https://a b", "an origin has no spaces", id="space"),
    pytest.param(
        "NULL", "an opaque origin is written in lower case; did you mean 'null'?", id="null"
    ),
    pytest.param(
        "http:/example.com", "an origin is scheme://host[:port], two slashes after the scheme"
    ),
    pytest.param("https://example.com:99999", "not scheme://host[:port] (Port out of range"),
]
#: Values a browser's Origin can equal, kept as they are.
ACCEPTED_ORIGINS = [
    "*",
    "null",
    "https://example.com",
    "http://localhost:8000",
    "http://127.0.0.1:3000",
    "http://[::1]:8000",
    "https://xn--bcher-kva.example",
    "chrome-extension://abcdefghijklmnop",
]


@pytest.mark.parametrize(("origin", "hint"), REFUSED_ORIGINS)
def test_a_cors_origin_no_browser_sends_exits_2_with_a_hint(
    origin: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_config(["--cors-origin", "https://ok.example", "--cors-origin", origin], {})
    assert excinfo.value.code == EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"trio-esper: error: --cors-origin {origin!r}: {hint}"), line
    if origin.strip() == origin and "," not in origin and origin:
        with pytest.raises(SystemExit) as excinfo:
            parse_config([], {"ESPER_CORS_ORIGINS": f"https://ok.example,{origin}"})
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"trio-esper: error: ESPER_CORS_ORIGINS {origin!r}: {hint}"), line


@pytest.mark.parametrize("origin", ACCEPTED_ORIGINS)
def test_a_cors_origin_a_browser_sends_is_kept(origin: str) -> None:
    assert parse_config(["--cors-origin", origin], {}).cors_origins == (origin,)
    assert Config.from_env({"ESPER_CORS_ORIGINS": origin}).cors_origins == (origin,)


# --- start-up warnings (what the broker logs is tested in test_startup.py) ---------


def test_no_variable_of_ours_is_warned_about() -> None:
    every = {s.variable: "" for s in SETTINGS}
    assert start_up_warnings(Config(), every) == []
    # Every ESPER_* name the package reads, wherever it reads it, is declared.
    package = Path(__file__).parent.parent / "trio_esper"
    read = {
        name
        for path in package.rglob("*.py")
        for name in re.findall(r"(?<![A-Z_])ESPER_[A-Z0-9_]*[A-Z0-9]", path.read_text())
    }
    assert read, "the scan found no ESPER_ name"
    assert read <= set(every), sorted(read - set(every))


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("ESPER_PROT", "ESPER_PORT"),
        ("ESPER_HEARTBEAT", "ESPER_HEARTBEAT_SECONDS"),
        ("ESPER_SUBSCRIBER_KEY", "ESPER_SUBSCRIBER_KEY_FILE"),
        ("esper_port", "ESPER_PORT"),
        ("ESPER_UNRELATED", None),
    ],
)
def test_a_variable_not_ours_is_warned_about_with_the_closest_name(
    name: str, suggested: str | None
) -> None:
    [(variable, message)] = start_up_warnings(Config(), {name: "a-value", "HOME": "/"})
    assert variable == name
    hint = "" if suggested is None else f"; did you mean {suggested}?"
    assert message == f"{name} is not a trio-esper setting: ignored{hint}"
    assert "a-value" not in message


# (jwt algorithms, secret bytes, the warning's tail, or None: long enough)
SECRET_SIZES = [
    pytest.param("HS256", 31, "HS256 needs 32 or more", id="hs256-short"),
    pytest.param("HS256", 32, None, id="hs256-enough"),
    pytest.param("HS384", 47, "HS384 needs 48 or more", id="hs384-short"),
    pytest.param("HS384", 48, None, id="hs384-enough"),
    pytest.param("HS512", 63, "HS512 needs 64 or more", id="hs512-short"),
    pytest.param("HS256,HS512", 40, "HS512 needs 64 or more", id="the-longest-counts"),
    pytest.param("HS512", 64, None, id="hs512-enough"),
    pytest.param("HS256,ES256", 31, "HS256 needs 32 or more", id="with-a-key-algorithm"),
]


@pytest.mark.parametrize(("algorithms", "size", "needs"), SECRET_SIZES)
def test_a_secret_shorter_than_its_algorithm_needs_is_warned_about(
    algorithms: str, size: int, needs: str | None
) -> None:
    subscriber = "s" * size
    publisher = "\u00e9" * 32  # 64 bytes in UTF-8: what PyJWT signs with
    config = Config.from_env(
        {
            "ESPER_SUBSCRIBER_SECRET": subscriber,
            "ESPER_PUBLISHER_SECRET": publisher,
            "ESPER_JWT_ALGORITHMS": algorithms,
        }
    )
    found = start_up_warnings(config, {})
    if needs is None:
        assert found == []
        return
    assert found == [
        (
            "ESPER_SUBSCRIBER_SECRET",
            f"ESPER_SUBSCRIBER_SECRET is {size} bytes: {needs} (RFC 7518 section 3.2); "
            "a shorter secret is easier to guess",
        )
    ]


def test_equal_secrets_are_warned_about() -> None:
    secret = "e" * 64
    config = Config.from_env({"ESPER_SUBSCRIBER_SECRET": secret, "ESPER_PUBLISHER_SECRET": secret})
    assert start_up_warnings(config, {}) == [
        (
            "ESPER_PUBLISHER_SECRET",
            "subscriber and publisher secrets are equal: any subscriber token can publish",
        )
    ]
