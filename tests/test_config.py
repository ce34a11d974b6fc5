"""trio_esper.config (Config.from_env) and trio_esper.cli.parse_config."""

from __future__ import annotations

import dataclasses

import pytest

from trio_esper.cli import EXIT_USAGE, parse_config
from trio_esper.config import (
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_PORT,
    Config,
    ConfigError,
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
        {"ESPER_PORT": "70000"}, {}, r"port must be 0\.\.65535, got 70000", id="port-big"
    ),
    pytest.param({"ESPER_PORT": "-1"}, {}, r"port must be 0\.\.65535", id="port-negative"),
    pytest.param(
        {"ESPER_HEARTBEAT_SECONDS": "soon"},
        {},
        r"ESPER_HEARTBEAT_SECONDS='soon' is not a number",
        id="heartbeat-word",
    ),
    pytest.param(
        {"ESPER_HEARTBEAT_SECONDS": "0"}, {}, r"heartbeat_seconds must be positive", id="hb-0"
    ),
    pytest.param(
        {"ESPER_HEARTBEAT_SECONDS": "nan"}, {}, r"heartbeat_seconds must be positive", id="hb-nan"
    ),
    pytest.param({"ESPER_MAX_BODY_BYTES": "0"}, {}, r"max_body_bytes", id="max-body-0"),
    pytest.param({"ESPER_QUEUE_EVENTS": "0"}, {}, r"queue_events", id="queue-0"),
    pytest.param({"ESPER_KEEP_ALIVE_SECONDS": "0"}, {}, r"keep_alive_seconds", id="ka-0"),
    pytest.param(
        {"ESPER_FAST_LANE": "maybe"}, {}, r"ESPER_FAST_LANE='maybe' is not a boolean", id="fl"
    ),
    pytest.param({"ESPER_THREADS": "2"}, {}, r"--threads > 1", id="threads-2"),
    pytest.param({}, {"threads": 4}, r"--threads > 1", id="threads-override"),
    pytest.param({"ESPER_THREADS": "0"}, {}, r"threads must be at least 1", id="threads-0"),
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
    pytest.param({"ESPER_LOG_LEVEL": "verbose"}, {}, r"log level must be one of", id="log"),
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
    pytest.param(["--port", "70000"], {}, "port must be 0..65535", id="port-range"),
    pytest.param(["--threads", "2"], {}, "--threads > 1", id="threads"),
    pytest.param(["--log-level", "verbose"], {}, "--log-level", id="log-level-choice"),
    pytest.param(["--heartbeat", "0"], {}, "heartbeat_seconds must be positive", id="heartbeat"),
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


def _variable_value(field: dataclasses.Field[object]) -> tuple[str, object]:
    """A value other than the default for ``field``, as its variable and as parsed."""
    kind = str(field.type)
    if kind in ("int", "int | None"):
        return "7", 7
    if kind == "float":
        return "7.5", 7.5
    if kind == "bool":
        return "0", False
    if kind.startswith("tuple"):
        return "HS384,HS512", ("HS384", "HS512")
    values = {
        "history": "memory",
        "history_sync": "normal",
        "log_level": "debug",
        "log_format": "json",
        "api_token": "an-api-token-of-32-characters-xx",
        "backplane": "redis://127.0.0.1:6379/0",
        "metrics_token": "a-metrics-token-of-32-characters",
    }
    text = values.get(field.name, "127.0.0.2")
    return text, text


@pytest.mark.parametrize(
    "field",
    [
        f
        for f in dataclasses.fields(Config)
        if f.name
        not in (
            "subscriber_secret",
            "publisher_secret",
            "subscriber_keys",
            "publisher_keys",
            "threads",
        )
    ],
    ids=lambda f: f.name,
)
def test_every_variable_is_read_with_its_type(field: dataclasses.Field[object]) -> None:
    # ESPER_HISTORY_EVENTS and three more once stayed strings and ended the broker.
    raw, expected = _variable_value(field)
    config = Config.from_env({f"ESPER_{field.name.upper()}": raw})
    assert getattr(config, field.name) == expected
