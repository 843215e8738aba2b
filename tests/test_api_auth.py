"""CDS Hooks JWT authentication through the HTTP API, with real keys and real signatures.

The app is built the way production builds it: ``create_app`` reads a trusted-issuers YAML file
(inline JWKS of freshly generated EC P-384 and RSA keys) and keeps its replay cache in SQLite.
Every failure must be a ``401`` with one fixed JSON body and ``WWW-Authenticate`` on all three
authenticated endpoints (discovery, service call, feedback); the ``aud`` must be exactly the URL
invoked (``public_base_url`` + path: ``http://localhost`` here unless a test sets another); CORS
preflights need no token; and the ``Authorization`` header never reaches a log line.

Attack tokens (HS256 with the public key as the secret, alg ``none``) are assembled by hand,
because PyJWT rightly refuses to produce them.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.auth import AuthConfigError
from tests.support.jwt_tools import b64, forged, public_jwk

from .conftest import CheckedClient, load_example, make_settings

ISS = "https://ehr.test/cds-client"
BASE = "http://localhost"
PUBLIC = "https://cds.example.org"
EC_KID = "ec-p384-1"
RSA_KID = "rsa-2048-1"
DISCOVERY = "/cds-services"
SERVICE = "/cds-services/order-sign"
FEEDBACK = "/cds-services/order-sign/feedback"
ENDPOINTS = [DISCOVERY, SERVICE, FEEDBACK]
KETAMINE_LOGGERS = ("cds_service", "ketamine_cds")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# -- keys, tokens ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def other_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def claims(aud: Any, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {"iss": ISS, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    c.update(overrides)
    return {k: v for k, v in c.items() if v is not None}


def make_token(
    key: PrivateKey,
    aud: Any,
    *,
    kid: str = EC_KID,
    alg: str = "ES384",
    typ: str | None = "JWT",
    **overrides: Any,
) -> str:
    """A genuinely signed CDS Hooks JWT; claim overrides of None leave the claim out."""
    return jwt.encode(claims(aud, **overrides), key, algorithm=alg, headers={"kid": kid, "typ": typ})


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- the app --------------------------------------------------------------------------------------------
def write_issuers(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    return path


@pytest.fixture
def issuers_file(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey) -> Path:
    return write_issuers(
        tmp_path / "trusted-issuers.yaml",
        [{"iss": ISS, "jwks": {"keys": [public_jwk(ec_key, EC_KID), public_jwk(rsa_key, RSA_KID)]}}],
    )


def build(tmp_path: Path, **overrides: Any) -> Flask:
    settings = {"insecure_no_auth": False, "log_level": "DEBUG", "public_base_url": BASE, **overrides}
    app = create_app(make_settings(tmp_path, **settings))
    app.test_client_class = CheckedClient
    return app


@pytest.fixture
def app(tmp_path: Path, issuers_file: Path) -> Iterator[Flask]:
    app = build(tmp_path, trusted_issuers=issuers_file)
    yield app
    close(app)


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as c:
        yield c


def close(app: Flask) -> None:
    state = app.extensions["ketamine_cds"]
    state.store.close()
    cache = getattr(state.authenticator, "_jti_cache", None)  # the SQLite replay cache, if any
    if hasattr(cache, "close"):
        cache.close()


def feedback_body() -> dict[str, Any]:
    return {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-05-04T10:00:00Z",
                "overrideReason": {
                    "reason": {"code": "already-addressed", "system": "https://ketamine-cds.github.io/x"}
                },
            }
        ]
    }


def call(client: FlaskClient, path: str, authorization: str | None, **headers: str) -> Any:
    """Call an endpoint the way a CDS Client does, with a valid body for it."""
    if authorization is not None:
        headers["Authorization"] = authorization
    if path == DISCOVERY:
        return client.get(path, headers=headers)
    body = load_example("v01-clear-trd-eligible") if path == SERVICE else feedback_body()
    return client.post(path, data=json.dumps(body), content_type="application/json", headers=headers)


def assert_refused(resp: Any) -> None:
    """401 with a fixed JSON body (never the reason, which only the log gets) and WWW-Authenticate."""
    assert resp.status_code == 401, (resp.status_code, resp.data[:300])
    assert resp.get_json() == {"status": 401, "error": "authentication required"}
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="ketamine-cds"')


# -- refusals -------------------------------------------------------------------------------------------
def bad_headers(path: str, ec_key: PrivateKey, other: PrivateKey) -> dict[str, str | None]:
    aud = BASE + path
    other_endpoint = DISCOVERY if path != DISCOVERY else SERVICE
    now = int(time.time())
    return {
        "no token": None,
        "empty header": "",
        "bearer without token": "Bearer ",
        "basic scheme": "Basic dXNlcjpwYXNz",
        "bad signature": f"Bearer {make_token(other, aud)}",
        "tampered payload": "Bearer " + _tamper(make_token(ec_key, aud)),
        "wrong aud": f"Bearer {make_token(ec_key, BASE + '/cds-services/patient-view-x')}",
        "aud of another endpoint": f"Bearer {make_token(ec_key, BASE + other_endpoint)}",
        "placeholder aud": f"Bearer {make_token(ec_key, 'https://sandbox-services.cds-hooks.org/cds-services')}",
        "expired": f"Bearer {make_token(ec_key, aud, exp=now - 600, iat=now - 900)}",
        "issued in the future": f"Bearer {make_token(ec_key, aud, iat=now + 600, exp=now + 900)}",
        "nbf in the future": f"Bearer {make_token(ec_key, aud, nbf=now + 600)}",
        "untrusted issuer": f"Bearer {make_token(ec_key, aud, iss='https://evil.test')}",
        "unknown kid": f"Bearer {make_token(ec_key, aud, kid='nope')}",
        "no jti": f"Bearer {make_token(ec_key, aud, jti=None)}",
        "no exp": f"Bearer {make_token(ec_key, aud, exp=None)}",
        "lifetime beyond the replay window": f"Bearer {make_token(ec_key, aud, exp=now + 7 * 86400)}",
        "typ at+jwt": f"Bearer {make_token(ec_key, aud, typ='at+jwt')}",
        "HS256 with the public key as secret": "Bearer "
        + forged({"alg": "HS256", "kid": EC_KID, "typ": "JWT"}, claims(aud), public_pem(ec_key)),
        "alg none": "Bearer " + forged({"alg": "none", "kid": EC_KID, "typ": "JWT"}, claims(aud), None),
        "alg None": "Bearer " + forged({"alg": "None", "kid": EC_KID, "typ": "JWT"}, claims(aud), None),
        "alg none with a signature": "Bearer "
        + forged({"alg": "none", "kid": EC_KID, "typ": "JWT"}, claims(aud), None)
        + b64(b"not-a-signature"),
        "oversized header": "Bearer " + "a" * 9000 + ".b.c",
    }


def _tamper(token: str) -> str:
    header, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["iss"] = ISS
    data["exp"] = data["exp"] + 3000
    return f"{header}.{b64(json.dumps(data).encode())}.{sig}"


# each refusal, and the reason category the server log must give for it (docs/security.md)
BAD_CASES = {
    "no token": "missing authorization header",
    "empty header": "missing authorization header",
    "bearer without token": "malformed token",
    "basic scheme": "not a bearer token",
    "bad signature": "bad signature",
    "tampered payload": "bad signature",
    "wrong aud": "audience mismatch",
    "aud of another endpoint": "audience mismatch",
    "placeholder aud": "audience mismatch",
    "expired": "token expired",
    "issued in the future": "token not yet valid (iat or nbf in the future)",
    "nbf in the future": "token not yet valid (iat or nbf in the future)",
    "untrusted issuer": "untrusted issuer",
    "unknown kid": "unknown key id",
    "no jti": "missing jti",
    "no exp": "missing exp",
    "lifetime beyond the replay window": "token lifetime exceeds replay window",
    "typ at+jwt": "typ is not JWT",
    "HS256 with the public key as secret": "algorithm not allowed",
    "alg none": "malformed token",  # an empty signature segment is refused before alg is read
    "alg None": "malformed token",
    "alg none with a signature": "algorithm not allowed",
    "oversized header": "authorization header too long",
}


def refusal_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    prefix = "authentication failed: "
    return [
        r.getMessage().removeprefix(prefix)
        for r in caplog.records
        if r.name == "cds_service.api" and r.getMessage().startswith(prefix)
    ]


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("path", ENDPOINTS)
def test_refused_tokens_get_a_401(
    client: FlaskClient,
    ec_key: ec.EllipticCurvePrivateKey,
    other_ec_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
    path: str,
    case: str,
) -> None:
    headers = bad_headers(path, ec_key, other_ec_key)
    assert sorted(headers) == sorted(BAD_CASES)
    caplog.set_level(logging.INFO)
    assert_refused(call(client, path, headers[case]))
    assert refusal_reasons(caplog) == [BAD_CASES[case]], "refused, and for the reason the case is about"


@pytest.mark.parametrize("path", ENDPOINTS)
def test_replayed_jti_is_refused(
    client: FlaskClient, ec_key: ec.EllipticCurvePrivateKey, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    caplog.set_level(logging.INFO)
    header = f"Bearer {make_token(ec_key, BASE + path)}"
    assert call(client, path, header).status_code == 200
    assert_refused(call(client, path, header))
    assert refusal_reasons(caplog) == ["replayed jti"]


def test_refusal_comes_before_the_body_is_read(client: FlaskClient) -> None:
    """Without a valid token, a malformed body is not even parsed: 401, not 400/415."""
    for data, ctype in ((b"{not json", "application/json"), (b"x" * 100, "text/plain")):
        resp = client.post(SERVICE, data=data, content_type=ctype)
        assert_refused(resp)
        resp = client.post(FEEDBACK, data=data, content_type=ctype)
        assert_refused(resp)


# -- acceptance -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ENDPOINTS)
def test_valid_es384_token_with_exact_audience(
    client: FlaskClient, ec_key: ec.EllipticCurvePrivateKey, path: str
) -> None:
    resp = call(client, path, f"Bearer {make_token(ec_key, BASE + path)}")
    assert resp.status_code == 200, resp.data[:300]
    body = resp.get_json()
    if path == DISCOVERY:
        assert {s["id"] for s in body["services"]} == {"patient-view", "order-select", "order-sign"}
    elif path == SERVICE:
        assert body["cards"], "the service answered (and CheckedClient validated the response)"
    else:
        assert body["stored"] == 1


@pytest.mark.parametrize("path", ENDPOINTS)
def test_valid_rs384_token(client: FlaskClient, rsa_key: rsa.RSAPrivateKey, path: str) -> None:
    resp = call(client, path, f"Bearer {make_token(rsa_key, BASE + path, kid=RSA_KID, alg='RS384')}")
    assert resp.status_code == 200, resp.data[:300]


@pytest.mark.parametrize(
    "aud",
    [BASE + SERVICE + "/", [BASE + SERVICE], ["https://other.test/x", BASE + SERVICE]],
    ids=["trailing-slash", "array", "array-with-other"],
)
def test_audience_forms_accepted(client: FlaskClient, ec_key: ec.EllipticCurvePrivateKey, aud: Any) -> None:
    assert call(client, SERVICE, f"Bearer {make_token(ec_key, aud)}").status_code == 200


@pytest.mark.parametrize(
    "aud",
    [
        "https://localhost/cds-services/order-sign",  # scheme differs
        "http://localhost:80/cds-services/order-sign",  # explicit port is a different string
        "http://localhost/cds-services/order-sign?x=1",
        "http://localhost/cds-services/ORDER-SIGN",
        "http://localhost/cds-services",
        ["https://other.test/x"],
        [],  # PyJWT reads an empty list as no aud at all
    ],
)
def test_near_miss_audiences_refused(
    client: FlaskClient, ec_key: ec.EllipticCurvePrivateKey, caplog: pytest.LogCaptureFixture, aud: Any
) -> None:
    caplog.set_level(logging.INFO)
    assert_refused(call(client, SERVICE, f"Bearer {make_token(ec_key, aud)}"))
    assert refusal_reasons(caplog) == ["audience mismatch" if aud != [] else "missing aud"]


def test_extra_claims_tolerated(client: FlaskClient, ec_key: ec.EllipticCurvePrivateKey) -> None:
    now = int(time.time())
    token = make_token(
        ec_key,
        BASE + SERVICE,
        sub="Practitioner/123",
        nbf=now - 10,
        tenant="some-health-system",
        fhirUser="Practitioner/123",
        scope="openid",
        nested={"a": [1, 2]},
    )
    assert call(client, SERVICE, f"Bearer {token}").status_code == 200


def test_missing_typ_and_lowercase_bearer_accepted(
    client: FlaskClient, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = make_token(ec_key, BASE + SERVICE, typ=None)
    assert "typ" not in jwt.get_unverified_header(token)
    assert call(client, SERVICE, f"bearer {token}").status_code == 200


def test_tenant_pinned_by_the_issuer_entry(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    path = write_issuers(
        tmp_path / "issuers.yaml",
        [{"iss": ISS, "jwks": {"keys": [public_jwk(ec_key, EC_KID)]}, "tenant": "north"}],
    )
    app = build(tmp_path, trusted_issuers=path)
    try:
        with app.test_client() as c:
            aud = BASE + DISCOVERY
            assert_refused(call(c, DISCOVERY, f"Bearer {make_token(ec_key, aud)}"))
            assert_refused(call(c, DISCOVERY, f"Bearer {make_token(ec_key, aud, tenant='south')}"))
            assert call(c, DISCOVERY, f"Bearer {make_token(ec_key, aud, tenant='north')}").status_code == 200
    finally:
        close(app)


# -- public_base_url -------------------------------------------------------------------------------------
@pytest.fixture
def public_client(tmp_path: Path, issuers_file: Path) -> Iterator[FlaskClient]:
    app = build(tmp_path, trusted_issuers=issuers_file, public_base_url=PUBLIC)
    with app.test_client() as c:
        yield c
    close(app)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_public_base_url_is_the_audience(
    public_client: FlaskClient,
    ec_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    caplog.set_level(logging.INFO)
    assert_refused(call(public_client, path, f"Bearer {make_token(ec_key, BASE + path)}"))
    assert refusal_reasons(caplog) == ["audience mismatch"]
    resp = call(public_client, path, f"Bearer {make_token(ec_key, PUBLIC + path)}")
    assert resp.status_code == 200, resp.data[:300]


def test_public_base_url_with_a_path_prefix(
    tmp_path: Path, issuers_file: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    app = build(tmp_path, trusted_issuers=issuers_file, public_base_url="https://example.org/cds/")
    try:
        with app.test_client() as c:
            ok = make_token(ec_key, "https://example.org/cds/cds-services/order-sign")
            assert call(c, SERVICE, f"Bearer {ok}").status_code == 200
            bare = make_token(ec_key, "https://example.org/cds-services/order-sign")
            assert_refused(call(c, SERVICE, f"Bearer {bare}"))
    finally:
        close(app)


def test_spoofed_host_does_not_change_the_audience_when_public_base_url_is_set(
    public_client: FlaskClient, ec_key: ec.EllipticCurvePrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    token = make_token(ec_key, "http://evil.example/cds-services/order-sign")
    resp = call(public_client, SERVICE, f"Bearer {token}", Host="evil.example")
    assert_refused(resp)
    assert refusal_reasons(caplog) == ["audience mismatch"]


def test_forwarded_headers_are_not_trusted_for_the_audience(
    client: FlaskClient, ec_key: ec.EllipticCurvePrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    token = make_token(ec_key, PUBLIC + SERVICE)
    resp = call(
        client,
        SERVICE,
        f"Bearer {token}",
        **{
            "X-Forwarded-Host": "cds.example.org",
            "X-Forwarded-Proto": "https",
            "Forwarded": "host=cds.example.org;proto=https",
        },
    )
    assert_refused(resp)
    assert refusal_reasons(caplog) == ["audience mismatch"]


# -- CORS ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ENDPOINTS)
def test_preflight_needs_no_token_and_carries_cors_headers(client: FlaskClient, path: str) -> None:
    resp = client.options(
        path,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "GET" if path == DISCOVERY else "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert resp.status_code in (200, 204), resp.status_code
    assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
    methods = resp.headers["Access-Control-Allow-Methods"].upper()
    assert "POST" in methods and "GET" in methods
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_401_still_carries_cors_headers(client: FlaskClient, path: str) -> None:
    """So a browser-based CDS Client can see that it was refused, not a network error."""
    resp = call(client, path, None, Origin="https://sandbox.cds-hooks.org")
    assert_refused(resp)
    assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")


# -- logging ---------------------------------------------------------------------------------------------
def test_authorization_header_never_logged(
    tmp_path: Path,
    issuers_file: Path,
    ec_key: ec.EllipticCurvePrivateKey,
    other_ec_key: ec.EllipticCurvePrivateKey,
    json_stderr: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build(tmp_path, trusted_issuers=issuers_file)  # logs go to capsys's stderr, as JSON
    caplog.set_level(logging.DEBUG)
    headers: list[str] = []
    try:
        with app.test_client() as client:
            for path in ENDPOINTS:
                good = f"Bearer {make_token(ec_key, BASE + path, sub='Practitioner/secret-sub-4821')}"
                assert call(client, path, good).status_code == 200
                assert_refused(call(client, path, good))  # replay
                headers.append(good)
                for header in bad_headers(path, ec_key, other_ec_key).values():
                    if header:
                        assert_refused(call(client, path, header))
                    if header and header.partition(" ")[2]:
                        headers.append(header)
    finally:
        close(app)
    err = json_stderr.readouterr().err
    lines = err.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("authentication failed" in r.get("msg", "") for r in records), "refusals are logged"
    assert any(r.get("logger") == "ketamine_cds.calls" for r in records), "calls are logged"
    logged = "\n".join([err, caplog.text, *(repr(r.args) + repr(r.__dict__) for r in caplog.records)])
    for header in headers:
        token = header.partition(" ")[2]
        assert header not in logged
        assert token not in logged
        for part in token.split("."):
            if len(part) > 8:
                assert part not in logged, "no segment of a token is logged"
    assert "secret-sub-4821" not in logged, "claim values are not logged"
    assert "evil.test" not in logged, "unverified claim values are not logged"


# -- startup ---------------------------------------------------------------------------------------------
def test_refuses_to_start_without_issuers_or_insecure_flag(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        create_app(make_settings(tmp_path, insecure_no_auth=False, trusted_issuers=None))
    message = str(exc.value.code)
    assert "trusted" in message and "issuers" in message
    assert "--insecure-no-auth" in message and "docs/security.md" in message


def test_refuses_to_start_with_an_empty_issuers_file(tmp_path: Path) -> None:
    empty = tmp_path / "issuers.yaml"
    empty.write_text("# nobody yet\n")
    with pytest.raises(SystemExit) as exc:
        create_app(make_settings(tmp_path, insecure_no_auth=False, trusted_issuers=empty))
    assert "no trusted issuers" in str(exc.value.code)


@pytest.mark.parametrize(
    "entry",
    [
        {"iss": ISS, "jwks_url": "https://ehr.test/jwks", "algorithms": ["HS256"]},
        {"iss": ISS, "jwks_url": "http://ehr.test/jwks"},
        {"iss": ISS, "jwks_url": "https://ehr.test/jwks", "tennant": "x"},
    ],
    ids=["hmac", "plain-http", "typo"],
)
def test_unsafe_issuers_file_refused_at_startup(tmp_path: Path, entry: dict[str, Any]) -> None:
    path = write_issuers(tmp_path / "issuers.yaml", [entry])
    with pytest.raises(AuthConfigError):
        create_app(make_settings(tmp_path, insecure_no_auth=False, trusted_issuers=path))


def test_insecure_no_auth_logs_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cds_service.app")
    app = create_app(make_settings(tmp_path, insecure_no_auth=True))
    try:
        warnings = [r for r in caplog.records if r.name == "cds_service.app" and r.levelno >= logging.WARNING]
        assert warnings and "AUTHENTICATION DISABLED" in warnings[0].getMessage()
        with app.test_client() as c:
            assert c.get(DISCOVERY).status_code == 200, "and then no token is needed"
    finally:
        close(app)


def test_no_warning_when_authentication_is_configured(
    tmp_path: Path, issuers_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    close(build(tmp_path, trusted_issuers=issuers_file))
    assert not [r for r in caplog.records if "AUTHENTICATION DISABLED" in r.getMessage()]
