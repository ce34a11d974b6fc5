"""Public-key auth (RS256, ES256, EdDSA keys from a PEM or a JWKS file), ``nbf`` and
``aud``, as a client sees them: a real broker on 127.0.0.1 and httpx.

The keys are made here with ``cryptography`` (RSA 2048, EC P-256, Ed25519) and
written to ``tmp_path``; the tokens are signed with their private halves, as a
publisher holding the private key would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_esper.auth import KeyFileError, PublicKeys, load_public_keys
from trio_esper.cli import EXIT_USAGE, parse_config
from trio_esper.config import Config, ConfigError

from .authclient import (
    PUB_SECRET,
    SUB_SECRET,
    Attempt,
    assert_one_line_reason,
    attempt_publish,
    attempt_stats,
    attempt_subscribe,
)
from .conftest import STEP_SECONDS, TOPIC, Broker, make_token, start_from_config

#: kind -> the algorithm its tokens are signed with here.
ALGORITHM = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}
ALL_PUBLIC = "RS256,ES256,EdDSA"
AUDIENCE = "esper-broker"


def _generate(kind: str) -> Any:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """The issuer's private keys, by kind, and an attacker's (``other-<kind>``)."""
    made = {kind: _generate(kind) for kind in ALGORITHM}
    made.update({f"other-{kind}": _generate(kind) for kind in ALGORITHM})
    return made


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as c:
        yield c


# -- helpers ----------------------------------------------------------------------------------


def public_pem(private_key: Any) -> bytes:
    return bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_pem(tmp_path: Path, *private_keys: Any, name: str = "keys.pem") -> str:
    path = tmp_path / name
    path.write_bytes(b"".join(public_pem(k) for k in private_keys))
    return str(path)


def public_jwk(private_key: Any, kind: str, **extra: Any) -> dict[str, Any]:
    """The public JWK, by PyJWT's own serialiser, with ``extra`` members (``kid``, ...)."""
    algorithm = jwt.get_algorithm_by_name(ALGORITHM[kind])
    return {**algorithm.to_jwk(private_key.public_key(), as_dict=True), **extra}


def write_jwks(tmp_path: Path, *jwks: dict[str, Any], name: str = "keys.jwks") -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"keys": list(jwks)}))
    return str(path)


def sign(
    private_key: Any,
    alg: str,
    *,
    sub: str = TOPIC,
    exp_in: int = 60,
    kid: str | None = None,
    **claims: Any,
) -> str:
    """A token as an issuer holding ``private_key`` signs it."""
    payload = {"sub": sub, "exp": int(time.time()) + exp_in, **claims}
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, private_key, algorithm=alg, headers=headers)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with(secret: bytes, **claims: Any) -> str:
    """An HS256 token made by hand with any bytes as the secret (PyJWT refuses
    to sign with a PEM as an HMAC secret; an attacker would not)."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = {"sub": TOPIC, "exp": int(time.time()) + 60, **claims}
    signing_input = f"{header}.{_b64url(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


async def start_from_env(
    nursery: trio.Nursery, environ: dict[str, str], **overrides: Any
) -> Broker:
    return await start_from_config(nursery, Config.from_env(environ, **overrides))


async def attempt(
    side: str, client: httpx.AsyncClient, broker: Broker, token: str | None
) -> Attempt:
    """Subscribe or publish with ``token`` in the Authorization header."""
    if side == "subscribe":
        return await attempt_subscribe(client, broker, token, "header")
    return await attempt_publish(client, broker, token, "header")


def assert_refused(result: Attempt, reason: str) -> None:
    assert_one_line_reason(result.response, result.body, 403)
    assert result.body.decode().strip() == reason


SIDES = [
    pytest.param("subscribe", "ESPER_SUBSCRIBER_KEY_FILE", id="subscribe"),
    pytest.param("publish", "ESPER_PUBLISHER_KEY_FILE", id="publish"),
]


# -- a PEM file of one public key, each kind, each side ---------------------------------------


@pytest.mark.parametrize(("side", "variable"), SIDES)
@pytest.mark.parametrize("kind", list(ALGORITHM))
async def test_pem_public_key_verifies_its_tokens(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    tmp_path: Path,
    keys: dict[str, Any],
    side: str,
    variable: str,
    kind: str,
) -> None:
    alg = ALGORITHM[kind]
    environ = {variable: write_pem(tmp_path, keys[kind]), "ESPER_JWT_ALGORITHMS": alg}
    broker = await start_from_env(nursery, environ)
    accepted = await attempt(side, client, broker, sign(keys[kind], alg))
    assert accepted.status == 200, accepted.body
    forged = await attempt(side, client, broker, sign(keys[f"other-{kind}"], alg))
    assert_refused(forged, "token signature does not verify")
    anonymous = await attempt(side, client, broker, None)
    assert_one_line_reason(anonymous.response, anonymous.body, 401)
    if side == "publish":
        stats = await attempt_stats(client, broker, sign(keys[kind], alg, sub="dashboard"))
        assert stats.status == 200, stats.body
    await broker.stop()


# -- a JWKS: the key is picked by kid ---------------------------------------------------------


@pytest.mark.parametrize(("side", "variable"), SIDES)
async def test_jwks_picks_the_key_by_kid(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    tmp_path: Path,
    keys: dict[str, Any],
    side: str,
    variable: str,
) -> None:
    jwks = write_jwks(
        tmp_path,
        public_jwk(keys["rsa"], "rsa", kid="r1", use="sig"),
        public_jwk(keys["ec"], "ec", kid="e1"),
        public_jwk(keys["ed25519"], "ed25519", kid="d1"),
        # Not for signatures (RFC 7517 section 4.2): never tried.
        public_jwk(keys["other-ec"], "ec", kid="x1", use="enc"),
    )
    broker = await start_from_env(nursery, {variable: jwks, "ESPER_JWT_ALGORITHMS": ALL_PUBLIC})
    for kind, kid in (("rsa", "r1"), ("ec", "e1"), ("ed25519", "d1")):
        alg = ALGORITHM[kind]
        by_kid = await attempt(side, client, broker, sign(keys[kind], alg, kid=kid))
        assert by_kid.status == 200, (kind, by_kid.body)
        # Without a kid, every key that verifies the algorithm is tried.
        no_kid = await attempt(side, client, broker, sign(keys[kind], alg))
        assert no_kid.status == 200, (kind, no_kid.body)
        # The kid names the issuer's key; an attacker's signature under it fails.
        forged = await attempt(side, client, broker, sign(keys[f"other-{kind}"], alg, kid=kid))
        assert_refused(forged, "token signature does not verify")
    # An ES256 token naming the RSA key's kid is not checked against the EC key.
    crossed = await attempt(side, client, broker, sign(keys["ec"], "ES256", kid="r1"))
    assert_refused(crossed, "token algorithm is not accepted for its key (kid)")
    unknown = await attempt(side, client, broker, sign(keys["ec"], "ES256", kid="nope"))
    assert_refused(unknown, "no key has the token's kid")
    encryption_key = await attempt(side, client, broker, sign(keys["other-ec"], "ES256", kid="x1"))
    assert_refused(encryption_key, "no key has the token's kid")
    await broker.stop()


async def test_rsa_key_verifies_each_configured_rsa_algorithm_and_only_those(
    nursery: trio.Nursery, client: httpx.AsyncClient, tmp_path: Path, keys: dict[str, Any]
) -> None:
    environ = {
        "ESPER_SUBSCRIBER_KEY_FILE": write_pem(tmp_path, keys["rsa"]),
        "ESPER_JWT_ALGORITHMS": "RS256,PS256,RS512",
    }
    broker = await start_from_env(nursery, environ)
    for alg in ("RS256", "PS256", "RS512"):
        result = await attempt("subscribe", client, broker, sign(keys["rsa"], alg))
        assert result.status == 200, (alg, result.body)
    refused = await attempt("subscribe", client, broker, sign(keys["rsa"], "RS384"))
    assert_refused(refused, "token algorithm is not accepted")
    await broker.stop()


async def test_jwk_alg_member_narrows_what_the_key_verifies(
    nursery: trio.Nursery, client: httpx.AsyncClient, tmp_path: Path, keys: dict[str, Any]
) -> None:
    jwks = write_jwks(tmp_path, public_jwk(keys["rsa"], "rsa", kid="r1", alg="RS256"))
    environ = {"ESPER_SUBSCRIBER_KEY_FILE": jwks, "ESPER_JWT_ALGORITHMS": "RS256,PS256"}
    broker = await start_from_env(nursery, environ)
    assert (await attempt("subscribe", client, broker, sign(keys["rsa"], "RS256"))).status == 200
    ps256 = await attempt("subscribe", client, broker, sign(keys["rsa"], "PS256", kid="r1"))
    assert_refused(ps256, "token algorithm is not accepted")
    await broker.stop()


# -- algorithm confusion ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ALGORITHM))
async def test_hs256_token_signed_with_the_public_key_text_is_refused(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    tmp_path: Path,
    keys: dict[str, Any],
    kind: str,
) -> None:
    # HS256 is accepted (the publisher side has a secret), so only keeping
    # each side to its own kind of key stops the classic confusion: an HMAC
    # token whose "secret" is the public key everyone may read.
    pem_path = write_pem(tmp_path, keys[kind])
    jwks_path = write_jwks(tmp_path, public_jwk(keys[kind], kind, kid="k1"))
    for path in (pem_path, jwks_path):
        config = Config.from_env(
            {
                "ESPER_SUBSCRIBER_KEY_FILE": path,
                "ESPER_PUBLISHER_SECRET": PUB_SECRET,
                "ESPER_JWT_ALGORITHMS": f"HS256,{ALGORITHM[kind]}",
            }
        )
        broker = await start_from_config(nursery, config)
        file_text = Path(path).read_bytes()
        for secret in (file_text, public_pem(keys[kind]), str(config.subscriber_keys).encode()):
            confused = await attempt("subscribe", client, broker, hs256_with(secret))
            assert_refused(confused, "token algorithm is not accepted")
        genuine = sign(keys[kind], ALGORITHM[kind])
        assert (await attempt("subscribe", client, broker, genuine)).status == 200
        await broker.stop()


def test_key_file_keys_are_never_an_hmac_secret(tmp_path: Path, keys: dict[str, Any]) -> None:
    config = Config.from_env(
        {
            "ESPER_SUBSCRIBER_KEY_FILE": write_pem(tmp_path, keys["rsa"]),
            "ESPER_JWT_ALGORITHMS": "RS256",
        }
    )
    keys_for_side = config.subscriber_keys
    assert isinstance(keys_for_side, PublicKeys)
    assert config.subscriber_auth
    assert not config.publisher_auth
    # The side's value reads as PEM, which PyJWT refuses as an HMAC secret.
    with pytest.raises(jwt.InvalidKeyError):
        jwt.encode({"sub": TOPIC}, keys_for_side, algorithm="HS256")
    assert "BEGIN" not in repr(config)


async def test_each_side_keeps_to_its_own_kind_of_key(
    nursery: trio.Nursery, client: httpx.AsyncClient, tmp_path: Path, keys: dict[str, Any]
) -> None:
    environ = {
        "ESPER_SUBSCRIBER_KEY_FILE": write_pem(tmp_path, keys["rsa"]),
        "ESPER_PUBLISHER_SECRET": PUB_SECRET,
        "ESPER_JWT_ALGORITHMS": "HS256,RS256",
    }
    broker = await start_from_env(nursery, environ)
    rs256 = sign(keys["rsa"], "RS256")
    hs256 = make_token(PUB_SECRET)
    assert (await attempt("subscribe", client, broker, rs256)).status == 200
    assert_refused(
        await attempt("subscribe", client, broker, hs256), "token algorithm is not accepted"
    )
    assert (await attempt("publish", client, broker, hs256)).status == 200
    # Before: PyJWT tried to load the publisher's secret as an RSA key (500).
    assert_refused(
        await attempt("publish", client, broker, rs256), "token algorithm is not accepted"
    )
    stats = await attempt_stats(client, broker, rs256, "header")
    assert_refused(stats, "token algorithm is not accepted")
    await broker.stop()


# -- start-up refusals ------------------------------------------------------------------------


def _bad_files(tmp_path: Path, keys: dict[str, Any]) -> dict[str, str]:
    """name -> path of a key file the broker must refuse."""
    weak_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private_pem = keys["ec"].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    rsa_jwk = public_jwk(keys["rsa"], "rsa")
    private_jwk = jwt.get_algorithm_by_name("ES256").to_jwk(keys["ec"], as_dict=True)
    contents: dict[str, bytes | str] = {
        "garbage": b"this is not a key\n",
        "binary": b"\x00\xff\xfe",
        "private-pem": private_pem,
        "truncated-pem": b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
        b"-----END PUBLIC KEY-----\n",
        "certificate-label": public_pem(keys["ec"]).replace(b"PUBLIC KEY", b"CERTIFICATE"),
        "weak-rsa": public_pem(weak_rsa),
        "bad-json": "{",
        "jwks-empty": json.dumps({"keys": []}),
        "jwks-oct": json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
        "jwks-private": json.dumps({"keys": [private_jwk]}),
        "jwks-hs-alg": json.dumps({"keys": [{**rsa_jwk, "alg": "HS256"}]}),
        "jwks-only-enc": json.dumps({"keys": [{**rsa_jwk, "use": "enc"}]}),
        "jwks-unknown-kty": json.dumps({"keys": [{"kty": "XYZ"}]}),
    }
    paths = {}
    for name, content in contents.items():
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        paths[name] = str(path)
    paths["missing"] = str(tmp_path / "no-such-file.pem")
    return paths


#: bad file -> what the one-line reason says.
BAD_FILES = {
    "garbage": "not a PEM or JWKS file",
    "binary": "not a PEM or JWKS file (not ASCII text)",
    "private-pem": "PEM block 1 (PRIVATE KEY) is a private key",
    "truncated-pem": "PEM block 1 (PUBLIC KEY) does not parse",
    "certificate-label": "PEM block 1 (CERTIFICATE) is not a public key",
    "weak-rsa": "the RSA key has 1024 bits; RS* and PS* need 2048 or more",
    "bad-json": "not valid JSON",
    "jwks-empty": "the JWKS has no keys",
    "jwks-oct": "JWK 1 is a symmetric (oct) key",
    "jwks-private": "JWK 1 is a private key ('d')",
    "jwks-hs-alg": "its 'alg' 'HS256' is not one of RS256, RS384, RS512, PS256",
    "jwks-only-enc": "the JWKS has no signature key",
    "jwks-unknown-kty": "unsupported key type 'XYZ'",
    "missing": "cannot read it: No such file or directory",
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_key_file_that_does_not_parse_is_a_config_error(
    tmp_path: Path, keys: dict[str, Any], name: str
) -> None:
    path = _bad_files(tmp_path, keys)[name]
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env({"ESPER_PUBLISHER_KEY_FILE": path, "ESPER_JWT_ALGORITHMS": ALL_PUBLIC})
    message = str(excinfo.value)
    assert message.startswith(f"publisher key file {path}: ")
    assert BAD_FILES[name] in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param(
            {"ESPER_SUBSCRIBER_KEY_FILE": "{pem}"},
            "holds public keys, but jwt algorithms (HS256) has only HMAC algorithms",
            id="key-file-with-only-hmac-algorithms",
        ),
        pytest.param(
            {"ESPER_SUBSCRIBER_KEY_FILE": "{pem}", "ESPER_JWT_ALGORITHMS": "RS256,HS512"},
            "has none of the algorithms its keys verify: accept one of ES256",
            id="ec-key-file-with-rsa-algorithms",
        ),
        pytest.param(
            {"ESPER_PUBLISHER_SECRET": PUB_SECRET, "ESPER_JWT_ALGORITHMS": "RS256,ES256"},
            "the publisher secret is an HMAC secret, but jwt algorithms (RS256, ES256) has no "
            "HMAC algorithm",
            id="secret-with-only-public-key-algorithms",
        ),
        pytest.param(
            {"ESPER_SUBSCRIBER_SECRET": "{pem-text}", "ESPER_JWT_ALGORITHMS": "HS256,ES256"},
            "the subscriber secret cannot be an HMAC secret",
            id="public-key-as-secret",
        ),
        pytest.param(
            {
                "ESPER_SUBSCRIBER_SECRET": SUB_SECRET,
                "ESPER_SUBSCRIBER_KEY_FILE": "{pem}",
                "ESPER_JWT_ALGORITHMS": "HS256,ES256",
            },
            "ESPER_SUBSCRIBER_SECRET and a subscriber key file are both set",
            id="secret-and-key-file",
        ),
        pytest.param(
            {"ESPER_JWT_ALGORITHMS": "HS256,HS257"},
            "ESPER_JWT_ALGORITHMS names 'HS257', which is unknown",
            id="typo",
        ),
        pytest.param(
            {"ESPER_JWT_ALGORITHMS": "es256"},
            "ESPER_JWT_ALGORITHMS names 'es256', which is unknown",
            id="lower-case",
        ),
    ],
)
def test_keys_and_algorithms_that_cannot_work_together_are_refused(
    tmp_path: Path, keys: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    pem = write_pem(tmp_path, keys["ec"])
    replace = {"{pem}": pem, "{pem-text}": Path(pem).read_text()}
    environ = {name: replace.get(value, value) for name, value in environ.items()}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_env(environ)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=5,
)
JWK_MEMBERS = ["kty", "crv", "alg", "use", "kid", "n", "e", "x", "y", "d", "k", "keys"]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_jwks_loads_or_is_a_one_line_key_file_error(
    tmp_path: Path, keys: dict[str, Any], data: st.DataObject
) -> None:
    # Real JWKs with members replaced, dropped or added: whatever the file
    # holds, start-up gets keys or a one-line reason, never a traceback.
    members = [
        public_jwk(keys["rsa"], "rsa", kid="r1"),
        public_jwk(keys["ec"], "ec"),
        public_jwk(keys["ed25519"], "ed25519", use="sig"),
    ]
    chosen = data.draw(st.lists(st.sampled_from(members), max_size=3))
    document: Any = {"keys": [dict(member) for member in chosen]}
    for member in document["keys"]:
        for name in data.draw(st.lists(st.sampled_from(JWK_MEMBERS), max_size=2)):
            if data.draw(st.booleans()):
                member[name] = data.draw(JSON_VALUES)
            else:
                member.pop(name, None)
    if data.draw(st.integers(0, 9)) == 0:
        document = data.draw(JSON_VALUES)
    path = tmp_path / "fuzzed.jwks"
    path.write_text(json.dumps(document))
    try:
        loaded: PublicKeys | KeyFileError = load_public_keys(str(path))
    except KeyFileError as exc:
        loaded = exc
    if isinstance(loaded, PublicKeys):
        assert loaded.keys
    else:
        assert str(loaded)
        assert "\n" not in str(loaded)


def test_cli_bad_key_file_exits_2_with_one_line(
    tmp_path: Path, keys: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bad_files(tmp_path, keys)["private-pem"]
    with pytest.raises(SystemExit) as excinfo:
        parse_config(["--subscriber-key-file", path], {"ESPER_JWT_ALGORITHMS": "ES256"})
    assert excinfo.value.code == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err == (
        f"trio-esper: error: subscriber key file {path}: PEM block 1 (PRIVATE KEY) is a "
        "private key: give the broker the public key only\n"
    )


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        pytest.param(["--publisher-key-file", "{bad}"], {}, id="flag"),
        pytest.param([], {"ESPER_PUBLISHER_KEY_FILE": "{bad}"}, id="variable"),
    ],
)
async def test_broker_refuses_to_start_on_a_bad_key_file(
    tmp_path: Path, keys: dict[str, Any], argv: list[str], environ: dict[str, str]
) -> None:
    bad = _bad_files(tmp_path, keys)["jwks-oct"]
    argv = [a.replace("{bad}", bad) for a in argv]
    env = {"ESPER_JWT_ALGORITHMS": "RS256", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update({k: v.replace("{bad}", bad) for k, v in environ.items()})
    # Before key files existed, this broker started (and never exited).
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "trio_esper", "--port", "0", *argv],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == EXIT_USAGE
    assert result.stderr.decode() == (
        f"trio-esper: error: publisher key file {bad}: JWK 1 is a symmetric (oct) key: a key "
        "file holds public keys; an HMAC secret goes in the side's secret variable\n"
    )


def test_no_auth_ignores_key_files() -> None:
    config = Config.from_env(
        {"ESPER_SUBSCRIBER_KEY_FILE": "/no/such/file", "ESPER_NO_AUTH": "1"},
        publisher_key_file="/nope",
    )
    assert not config.subscriber_auth
    assert not config.publisher_auth


def test_flags_name_key_files_and_audience(tmp_path: Path, keys: dict[str, Any]) -> None:
    sub_path = write_pem(tmp_path, keys["ec"], name="sub.pem")
    pub_path = write_jwks(tmp_path, public_jwk(keys["ed25519"], "ed25519", kid="d1"))
    environ = {
        # The flag wins over the variable.
        "ESPER_SUBSCRIBER_KEY_FILE": "/no/such/file",
        "ESPER_JWT_ALGORITHMS": "ES256,EdDSA",
        "ESPER_JWT_AUDIENCE": "from-the-environment",
    }
    argv = ["--subscriber-key-file", sub_path, "--publisher-key-file", pub_path]
    config = parse_config([*argv, "--jwt-audience", AUDIENCE], environ)
    assert isinstance(config.subscriber_keys, PublicKeys)
    assert config.subscriber_keys.source == sub_path
    assert config.subscriber_keys.algorithms == {"ES256"}
    assert isinstance(config.publisher_keys, PublicKeys)
    assert config.publisher_keys.algorithms == {"EdDSA"}
    assert config.jwt_audience == AUDIENCE
    assert parse_config(argv, environ).jwt_audience == "from-the-environment"
    assert parse_config(argv, {**environ, "ESPER_JWT_AUDIENCE": ""}).jwt_audience is None


# -- nbf ---------------------------------------------------------------------------------------


@pytest.fixture
async def mixed_broker(
    nursery: trio.Nursery, tmp_path: Path, keys: dict[str, Any]
) -> AsyncIterator[Broker]:
    """Subscribers verified with an Ed25519 public key, publishers with a secret."""
    environ = {
        "ESPER_SUBSCRIBER_KEY_FILE": write_pem(tmp_path, keys["ed25519"]),
        "ESPER_PUBLISHER_SECRET": PUB_SECRET,
        "ESPER_JWT_ALGORITHMS": "HS256,EdDSA",
    }
    broker = await start_from_env(nursery, environ)
    yield broker
    await broker.stop()


MIXED_SIDES = [
    pytest.param("subscribe", id="subscribe-public-key"),
    pytest.param("publish", id="publish-secret"),
]


def _mixed_token(side: str, keys: dict[str, Any], **claims: Any) -> str:
    if side == "subscribe":
        return sign(keys["ed25519"], "EdDSA", **claims)
    return sign(PUB_SECRET, "HS256", **claims)


@pytest.mark.parametrize("side", MIXED_SIDES)
async def test_nbf_in_the_future_is_refused(
    mixed_broker: Broker, client: httpx.AsyncClient, keys: dict[str, Any], side: str
) -> None:
    now = int(time.time())
    early = await attempt(side, client, mixed_broker, _mixed_token(side, keys, nbf=now + 60))
    assert_refused(early, "token is not valid yet (nbf)")
    garbled = await attempt(side, client, mixed_broker, _mixed_token(side, keys, nbf="soon"))
    assert_one_line_reason(garbled.response, garbled.body, 403)
    started = await attempt(side, client, mixed_broker, _mixed_token(side, keys, nbf=now - 5))
    assert started.status == 200, started.body


# -- aud ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", MIXED_SIDES)
async def test_without_a_configured_audience_a_token_naming_one_is_refused(
    mixed_broker: Broker, client: httpx.AsyncClient, keys: dict[str, Any], side: str
) -> None:
    named = await attempt(side, client, mixed_broker, _mixed_token(side, keys, aud=AUDIENCE))
    assert_refused(named, "token names an audience (aud) and none is accepted here")
    # An empty aud is an aud (RFC 7519, section 4.1.3): PyJWT took it for none.
    for empty in ([], ""):
        emptied = await attempt(side, client, mixed_broker, _mixed_token(side, keys, aud=empty))
        assert_refused(emptied, "token names an audience (aud) and none is accepted here")
    plain = await attempt(side, client, mixed_broker, _mixed_token(side, keys))
    assert plain.status == 200, plain.body


@pytest.mark.parametrize("side", MIXED_SIDES)
async def test_a_configured_audience_is_required(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    tmp_path: Path,
    keys: dict[str, Any],
    side: str,
) -> None:
    environ = {
        "ESPER_SUBSCRIBER_KEY_FILE": write_pem(tmp_path, keys["ed25519"]),
        "ESPER_PUBLISHER_SECRET": PUB_SECRET,
        "ESPER_JWT_ALGORITHMS": "HS256,EdDSA",
        "ESPER_JWT_AUDIENCE": AUDIENCE,
    }
    broker = await start_from_env(nursery, environ)
    for aud in (AUDIENCE, ["another-service", AUDIENCE]):
        result = await attempt(side, client, broker, _mixed_token(side, keys, aud=aud))
        assert result.status == 200, (aud, result.body)
    missing = await attempt(side, client, broker, _mixed_token(side, keys))
    assert_refused(missing, "token lacks the 'aud' claim")
    for aud in ("another-service", ["another-service"], AUDIENCE.upper()):
        other = await attempt(side, client, broker, _mixed_token(side, keys, aud=aud))
        assert_refused(other, "token is for another audience (aud)")
    garbled = await attempt(side, client, broker, _mixed_token(side, keys, aud=42))
    assert_one_line_reason(garbled.response, garbled.body, 403)
    await broker.stop()


def test_empty_audience_is_refused() -> None:
    with pytest.raises(ConfigError, match="jwt_audience must not be empty"):
        Config(jwt_audience="")
