"""JWT authentication: real keys, real signatures, a real local JWKS server.

Attack tokens (HS256 with the public key as secret, alg none) are assembled by hand with the
standard library because PyJWT, rightly, refuses to produce them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from cds_service.auth import (
    AuthConfigError,
    Authenticator,
    AuthError,
    MemoryJtiCache,
    ReplayCacheFull,
    SqliteJtiCache,
    TrustedIssuer,
    load_trusted_issuers,
    parse_trusted_issuers,
)
from tests.support.jwt_tools import b64, forged
from tests.support.jwt_tools import public_jwk as jwk

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "trusted-issuers.example.yaml"
ISS = "https://ehr.test/cds-client"
AUD = "https://cds.test/cds-services/ketamine-order-sign"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_DROP = object()  # marks a claim or header to leave out


# -- keys and tokens --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def ec384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def ec384_b() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def ec256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "exp": now + 300,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    for k, v in overrides.items():
        if v is _DROP:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def token(
    key: PrivateKey,
    kid: str = "k1",
    alg: str = "ES384",
    headers: dict[str, Any] | None = None,
    **claim_overrides: Any,
) -> str:
    h: dict[str, Any] = {"kid": kid, "typ": "JWT"}
    h.update(headers or {})
    return jwt.encode(claims(**claim_overrides), key, algorithm=alg, headers=h)


def signed(
    header: dict[str, Any], payload: dict[str, Any], key: PrivateKey, sign_alg: str | None = None
) -> str:
    """A genuinely signed token with exactly this header (PyJWT's encoder normalises ``typ``);
    the signature itself is still computed by PyJWT's algorithm implementation."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    algorithm = jwt.algorithms.get_default_algorithms()[sign_alg or header["alg"]]
    return f"{signing_input}.{b64(algorithm.sign(signing_input.encode(), key))}"


def bearer(tok: str) -> str:
    return f"Bearer {tok}"


def reason(exc_info: pytest.ExceptionInfo[AuthError]) -> str:
    return exc_info.value.reason


def inline_issuer(key: PrivateKey, kid: str = "k1", **kw: Any) -> TrustedIssuer:
    return TrustedIssuer(iss=kw.pop("iss", ISS), jwks={"keys": [jwk(key, kid)]}, **kw)


# -- a local JWKS server ----------------------------------------------------------------------------
@dataclass
class JwksServer:
    base: str
    docs: dict[str, Any] = field(default_factory=dict)  # path -> JWKS (or raw bytes)
    hits: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    state = JwksServer(base="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            state.hits[self.path] = state.hits.get(self.path, 0) + 1
            doc = state.docs.get(self.path)
            if doc is None:
                self.send_response(404)
                self.end_headers()
                return
            body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


class FakeClock:
    """Stands in for time.monotonic so rate limits can be tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- valid tokens -----------------------------------------------------------------------------------
def test_valid_es384_accepted(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    c = auth.verify(bearer(token(ec384)), AUD)
    assert c.iss == ISS and c.kid == "k1" and c.raw["aud"] == AUD
    assert c.tenant is None and c.sub is None


def test_valid_rs384_accepted_via_jwks_url(rsa2048: rsa.RSAPrivateKey, jwks_server: JwksServer) -> None:
    jwks_server.docs["/jwks.json"] = {"keys": [jwk(rsa2048, "r1", "RS384")]}
    issuer = TrustedIssuer(iss=ISS, jwks_url=jwks_server.url("/jwks.json"), algorithms=("RS384",))
    auth = Authenticator([issuer])
    for _ in range(3):
        auth.verify(bearer(token(rsa2048, kid="r1", alg="RS384")), AUD)
    assert jwks_server.hits == {"/jwks.json": 1}  # cached after the first fetch


def test_bearer_scheme_is_case_insensitive(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    auth.verify("bearer " + token(ec384), AUD)
    auth.verify("BEARER  " + token(ec384) + " ", AUD)


def test_sub_nbf_and_extra_claims_tolerated(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    now = int(time.time())
    c = auth.verify(
        bearer(token(ec384, sub="Practitioner/1", nbf=now - 10, tenant="t1", extra={"a": 1})), AUD
    )
    assert c.sub == "Practitioner/1" and c.tenant == "t1" and c.raw["extra"] == {"a": 1}


def test_nbf_in_future_refused(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384, nbf=int(time.time()) + 600)), AUD)
    assert "not yet valid" in reason(e)


@pytest.mark.parametrize("typ", [_DROP, "JWT", "jwt", "application/jwt"])
def test_typ_absent_or_jwt_accepted(ec384: ec.EllipticCurvePrivateKey, typ: Any) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    h = {"alg": "ES384", "kid": "k1"} if typ is _DROP else {"alg": "ES384", "kid": "k1", "typ": typ}
    auth.verify(bearer(signed(h, claims(), ec384)), AUD)


@pytest.mark.parametrize("typ", ["at+jwt", "JWS", "", 1, None])
def test_typ_other_than_jwt_refused(ec384: ec.EllipticCurvePrivateKey, typ: Any) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    tok = signed({"alg": "ES384", "kid": "k1", "typ": typ}, claims(), ec384)
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(tok), AUD)
    assert reason(e) == "typ is not JWT"


# -- algorithms -------------------------------------------------------------------------------------
def test_es256_refused_unless_configured(ec256: ec.EllipticCurvePrivateKey) -> None:
    tok = token(ec256, alg="ES256")
    with pytest.raises(AuthError) as e:
        Authenticator([inline_issuer(ec256)]).verify(bearer(tok), AUD)
    assert reason(e) == "algorithm not allowed for issuer"
    ok = Authenticator([inline_issuer(ec256, algorithms=("ES256",))])
    ok.verify(bearer(tok), AUD)


def test_rs256_refused_unless_configured(rsa2048: rsa.RSAPrivateKey) -> None:
    tok = token(rsa2048, alg="RS256")
    with pytest.raises(AuthError):
        Authenticator([inline_issuer(rsa2048)]).verify(bearer(tok), AUD)
    Authenticator([inline_issuer(rsa2048, algorithms=("RS256",))]).verify(bearer(tok), AUD)


@pytest.mark.parametrize("as_secret", ["pem", "jwk"])
def test_hs256_key_confusion_refused(
    ec384: ec.EllipticCurvePrivateKey, rsa2048: rsa.RSAPrivateKey, as_secret: str
) -> None:
    auth = Authenticator([inline_issuer(rsa2048, algorithms=("RS384",))])
    pub = rsa2048.public_key()
    secret = (
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        if as_secret == "pem"
        else json.dumps(jwk(rsa2048, "k1")).encode()
    )
    tok = forged({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims(), secret)
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(tok), AUD)
    assert reason(e) == "algorithm not allowed"


def test_hmac_key_in_jwks_never_used(ec384: ec.EllipticCurvePrivateKey, jwks_server: JwksServer) -> None:
    """An 'oct' key in a fetched JWKS is skipped, so it cannot be abused as an HMAC secret."""
    oct_key = {"kty": "oct", "kid": "s1", "k": b64(b"secret"), "alg": "HS256"}
    jwks_server.docs["/j"] = {"keys": [oct_key, jwk(ec384, "k1")]}
    auth = Authenticator([TrustedIssuer(iss=ISS, jwks_url=jwks_server.url("/j"))])
    auth.verify(bearer(token(ec384)), AUD)  # the EC key still works
    tok = forged({"alg": "HS256", "typ": "JWT", "kid": "s1"}, claims(), b"secret")
    with pytest.raises(AuthError):
        auth.verify(bearer(tok), AUD)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_refused(ec384: ec.EllipticCurvePrivateKey, alg: str) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    unsigned = forged({"alg": alg, "typ": "JWT", "kid": "k1"}, claims(), None)
    with_sig = unsigned + b64(b"x" * 96)
    for tok in (unsigned, with_sig):
        with pytest.raises(AuthError) as e:
            auth.verify(bearer(tok), AUD)
        assert reason(e) in ("malformed token", "algorithm not allowed")


@pytest.mark.parametrize("alg", ["none", "HS256", "HS384", "HS512", "ES512", "PS384", "EdDSA"])
def test_forbidden_algorithms_are_config_errors(ec384: ec.EllipticCurvePrivateKey, alg: str) -> None:
    with pytest.raises(AuthConfigError):
        inline_issuer(ec384, algorithms=("ES384", alg))
    with pytest.raises(AuthConfigError):
        parse_trusted_issuers([{"iss": ISS, "jwks": {"keys": [jwk(ec384, "k1")]}, "algorithms": [alg]}])


def test_key_of_wrong_type_or_curve_not_used(
    ec256: ec.EllipticCurvePrivateKey,
    ec384: ec.EllipticCurvePrivateKey,
    rsa2048: rsa.RSAPrivateKey,
) -> None:
    """A P-256 key cannot verify ES384 and an RSA key cannot verify ES*: no cross-family use."""
    auth = Authenticator(
        [TrustedIssuer(iss=ISS, jwks={"keys": [jwk(ec256, "k1")]}, algorithms=("ES384", "ES256"))]
    )
    tok = signed({"alg": "ES384", "kid": "k1", "typ": "JWT"}, claims(), ec256, "ES256")
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(tok), AUD)
    assert reason(e) == "unknown key id"
    rsa_only = Authenticator([inline_issuer(rsa2048, algorithms=("RS384", "ES384"))])
    with pytest.raises(AuthError) as e:
        rsa_only.verify(bearer(token(ec384)), AUD)
    assert reason(e) == "unknown key id"


def test_jwk_alg_pins_algorithm(rsa2048: rsa.RSAPrivateKey) -> None:
    auth = Authenticator(
        [TrustedIssuer(iss=ISS, jwks={"keys": [jwk(rsa2048, "k1", "RS384")]}, algorithms=("RS384", "RS256"))]
    )
    auth.verify(bearer(token(rsa2048, alg="RS384")), AUD)
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(rsa2048, alg="RS256")), AUD)
    assert reason(e) == "unknown key id"


def test_bad_signature(ec384: ec.EllipticCurvePrivateKey, ec384_b: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384_b)), AUD)
    assert reason(e) == "bad signature"
    # a valid signature over a different payload
    good, other = token(ec384).split("."), token(ec384, sub="x").split(".")
    with pytest.raises(AuthError):
        auth.verify(bearer(f"{good[0]}.{other[1]}.{good[2]}"), AUD)


# -- issuer, audience, time -------------------------------------------------------------------------
def test_unknown_issuer(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    for iss in ("https://evil.test", ISS + "/", ISS.upper()):
        with pytest.raises(AuthError) as e:
            auth.verify(bearer(token(ec384, iss=iss)), AUD)
        assert reason(e) == "untrusted issuer"
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384, iss=_DROP)), AUD)
    assert reason(e) == "missing iss"


def test_key_of_one_issuer_cannot_sign_for_another(
    ec384: ec.EllipticCurvePrivateKey, ec384_b: ec.EllipticCurvePrivateKey
) -> None:
    auth = Authenticator([inline_issuer(ec384), inline_issuer(ec384_b, iss="https://other.test")])
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384_b, iss=ISS)), AUD)
    assert reason(e) == "bad signature"


@pytest.mark.parametrize(
    "aud",
    [
        "https://cds.test/cds-services/other",
        "https://cds.test/cds-services",
        "http://cds.test/cds-services/ketamine-order-sign",
        ["https://elsewhere.test"],
        [],
        "",
        42,
    ],
)
def test_wrong_aud(ec384: ec.EllipticCurvePrivateKey, aud: Any) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384, aud=aud)), AUD)
    assert reason(e) in ("audience mismatch", "missing aud")


@pytest.mark.parametrize("aud", [AUD, AUD + "/", [AUD], ["https://x.test", AUD]])
def test_aud_string_array_and_trailing_slash(ec384: ec.EllipticCurvePrivateKey, aud: Any) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    auth.verify(bearer(token(ec384, aud=aud)), AUD)
    auth.verify(bearer(token(ec384, aud=aud)), AUD + "/")


def test_expired(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)], clock_skew_seconds=60)
    now = int(time.time())
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384, iat=now - 600, exp=now - 120)), AUD)
    assert reason(e) == "token expired"
    auth.verify(bearer(token(ec384, iat=now - 600, exp=now - 30)), AUD)  # within the skew


def test_iat_in_future(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)], clock_skew_seconds=60)
    now = int(time.time())
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384, iat=now + 300, exp=now + 600)), AUD)
    assert "not yet valid" in reason(e)
    auth.verify(bearer(token(ec384, iat=now + 30)), AUD)  # within the skew


@pytest.mark.parametrize("claim", ["jti", "iat", "exp", "aud", "iss"])
def test_missing_required_claim(ec384: ec.EllipticCurvePrivateKey, claim: str) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384, **{claim: _DROP})), AUD)
    assert reason(e) == f"missing {claim}"


@pytest.mark.parametrize("jti", ["", 12345, "x" * 300])
def test_invalid_jti(ec384: ec.EllipticCurvePrivateKey, jti: Any) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    with pytest.raises(AuthError):
        auth.verify(bearer(token(ec384, jti=jti)), AUD)


def test_token_outliving_replay_window_refused(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)], jti_ttl_seconds=600)
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384, exp=int(time.time()) + 3600)), AUD)
    assert reason(e) == "token lifetime exceeds replay window"


def test_missing_kid_refused(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    tok = jwt.encode(claims(), ec384, algorithm="ES384", headers={"typ": "JWT"})
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(tok), AUD)
    assert reason(e) == "missing or invalid kid"


def test_crit_header_refused(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384, headers={"crit": ["exp"], "exp": 1})), AUD)
    assert reason(e) in ("unsupported critical header", "malformed token")


# -- replay -----------------------------------------------------------------------------------------
def test_replayed_jti(ec384: ec.EllipticCurvePrivateKey, ec384_b: ec.EllipticCurvePrivateKey) -> None:
    other = "https://other.test"
    auth = Authenticator([inline_issuer(ec384), inline_issuer(ec384_b, iss=other)])
    tok = token(ec384, jti="same")
    auth.verify(bearer(tok), AUD)
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(tok), AUD)
    assert reason(e) == "replayed jti"
    with pytest.raises(AuthError):  # a fresh token reusing the jti is a replay too
        auth.verify(bearer(token(ec384, jti="same")), AUD)
    auth.verify(bearer(token(ec384_b, iss=other, jti="same")), AUD)  # jti is per issuer


def test_failed_token_does_not_consume_jti(
    ec384: ec.EllipticCurvePrivateKey, ec384_b: ec.EllipticCurvePrivateKey
) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    with pytest.raises(AuthError):
        auth.verify(bearer(token(ec384_b, jti="j1")), AUD)  # forged: bad signature
    auth.verify(bearer(token(ec384, jti="j1")), AUD)


def test_replay_is_caught_under_concurrency(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    tok = bearer(token(ec384))
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def call() -> None:
        barrier.wait()
        try:
            auth.verify(tok, AUD)
            results.append(True)
        except AuthError:
            results.append(False)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1 and len(results) == 16


def test_memory_jti_cache_bounded_and_expiring() -> None:
    now = [1000.0]
    cache = MemoryJtiCache(max_entries=2, clock=lambda: now[0])
    assert cache.add("i", "a", 1100) and cache.add("i", "b", 1200)
    assert not cache.add("i", "a", 1100)
    with pytest.raises(ReplayCacheFull):
        cache.add("i", "c", 1100)  # full: refuse rather than forget a live jti
    now[0] = 1150  # "a" expired
    assert cache.add("i", "c", 1300) and len(cache) == 2
    assert not cache.add("i", "b", 1200)


def test_replay_cache_full_is_auth_error(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)], jti_cache=MemoryJtiCache(max_entries=1))
    auth.verify(bearer(token(ec384)), AUD)
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384)), AUD)
    assert reason(e) == "replay cache full"


def test_sqlite_jti_cache_shared_between_workers(ec384: ec.EllipticCurvePrivateKey, tmp_path: Path) -> None:
    db = tmp_path / "jti.sqlite3"
    worker1 = Authenticator([inline_issuer(ec384)], jti_cache=SqliteJtiCache(db))
    worker2 = Authenticator([inline_issuer(ec384)], jti_cache=SqliteJtiCache(db))
    tok = bearer(token(ec384))
    worker1.verify(tok, AUD)
    with pytest.raises(AuthError) as e:
        worker2.verify(tok, AUD)
    assert reason(e) == "replayed jti"


def test_sqlite_jti_cache_expiry(tmp_path: Path) -> None:
    now = [1000.0]
    cache = SqliteJtiCache(tmp_path / "j.sqlite3", clock=lambda: now[0])
    assert cache.add("i", "a", 1100)
    assert not cache.add("i", "a", 1100)
    assert cache.add("j", "a", 1100)
    now[0] = 1101
    assert cache.add("i", "a", 1200)
    cache.close()


# -- key fetching, rotation, jku --------------------------------------------------------------------
def test_unknown_kid_triggers_one_rate_limited_refresh(
    ec384: ec.EllipticCurvePrivateKey, ec384_b: ec.EllipticCurvePrivateKey, jwks_server: JwksServer
) -> None:
    clock = FakeClock()
    jwks_server.docs["/jwks"] = {"keys": [jwk(ec384, "k1")]}
    issuer = TrustedIssuer(iss=ISS, jwks_url=jwks_server.url("/jwks"))
    auth = Authenticator([issuer], monotonic=clock)
    auth.verify(bearer(token(ec384)), AUD)
    assert jwks_server.hits["/jwks"] == 1
    clock.now += 31
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384_b, kid="nope")), AUD)
    assert reason(e) == "unknown key id"
    assert jwks_server.hits["/jwks"] == 2  # exactly one refresh
    for i in range(20):  # a storm of unknown kids within 30 s: no further fetch
        clock.now += 1
        with pytest.raises(AuthError):
            auth.verify(bearer(token(ec384_b, kid=f"nope{i}")), AUD)
    assert jwks_server.hits["/jwks"] == 2
    auth.verify(bearer(token(ec384)), AUD)  # known keys keep working meanwhile
    assert jwks_server.hits["/jwks"] == 2


def test_key_rotation(
    ec384: ec.EllipticCurvePrivateKey, ec384_b: ec.EllipticCurvePrivateKey, jwks_server: JwksServer
) -> None:
    clock = FakeClock()
    jwks_server.docs["/jwks"] = {"keys": [jwk(ec384, "k1")]}
    auth = Authenticator([TrustedIssuer(iss=ISS, jwks_url=jwks_server.url("/jwks"))], monotonic=clock)
    auth.verify(bearer(token(ec384)), AUD)
    jwks_server.docs["/jwks"] = {"keys": [jwk(ec384, "k1"), jwk(ec384_b, "k2")]}
    clock.now += 60
    auth.verify(bearer(token(ec384_b, kid="k2")), AUD)
    assert jwks_server.hits["/jwks"] == 2
    auth.verify(bearer(token(ec384, kid="k1")), AUD)  # old key still published, still accepted
    assert jwks_server.hits["/jwks"] == 2


def test_withdrawn_key_dropped_after_max_age(
    ec384: ec.EllipticCurvePrivateKey, ec384_b: ec.EllipticCurvePrivateKey, jwks_server: JwksServer
) -> None:
    clock = FakeClock()
    jwks_server.docs["/jwks"] = {"keys": [jwk(ec384, "k1")]}
    auth = Authenticator(
        [TrustedIssuer(iss=ISS, jwks_url=jwks_server.url("/jwks"))],
        monotonic=clock,
        jwks_max_age_seconds=600,
    )
    auth.verify(bearer(token(ec384)), AUD)
    jwks_server.docs["/jwks"] = {"keys": [jwk(ec384_b, "k2")]}
    clock.now += 601
    with pytest.raises(AuthError):
        auth.verify(bearer(token(ec384)), AUD)
    assert jwks_server.hits["/jwks"] == 2


def test_jwks_server_down_is_auth_error(ec384: ec.EllipticCurvePrivateKey, jwks_server: JwksServer) -> None:
    auth = Authenticator([TrustedIssuer(iss=ISS, jwks_url=jwks_server.url("/missing"))])
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(token(ec384)), AUD)
    assert reason(e) == "unknown key id"
    dead = Authenticator([TrustedIssuer(iss=ISS, jwks_url="http://127.0.0.1:9/jwks")])
    with pytest.raises(AuthError):
        dead.verify(bearer(token(ec384)), AUD)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"keys": 1}', b"x" * (600 * 1024)])
def test_bad_jwks_documents(ec384: ec.EllipticCurvePrivateKey, jwks_server: JwksServer, body: bytes) -> None:
    jwks_server.docs["/jwks"] = body
    auth = Authenticator([TrustedIssuer(iss=ISS, jwks_url=jwks_server.url("/jwks"))])
    with pytest.raises(AuthError):
        auth.verify(bearer(token(ec384)), AUD)


def test_fetch_receives_timeouts(ec384: ec.EllipticCurvePrivateKey) -> None:
    calls: list[tuple[str, tuple[float, float]]] = []

    def fetch(url: str, timeout: tuple[float, float]) -> Any:
        calls.append((url, timeout))
        return {"keys": [jwk(ec384, "k1")]}

    url = "https://keys.test/jwks"
    auth = Authenticator([TrustedIssuer(iss=ISS, jwks_url=url)], http_timeout=(1.5, 2.5), fetch=fetch)
    auth.verify(bearer(token(ec384)), AUD)
    assert calls == [(url, (1.5, 2.5))]


def test_jku_not_in_allowlist_is_not_fetched(
    ec384: ec.EllipticCurvePrivateKey, ec384_b: ec.EllipticCurvePrivateKey, jwks_server: JwksServer
) -> None:
    jwks_server.docs["/evil"] = {"keys": [jwk(ec384_b, "attacker")]}
    jwks_server.docs["/good"] = {"keys": [jwk(ec384, "k1")]}
    auth = Authenticator([TrustedIssuer(iss=ISS, jwks_url=jwks_server.url("/good"))])
    evil = token(ec384_b, kid="attacker", headers={"jku": jwks_server.url("/evil")})
    with pytest.raises(AuthError) as e:
        auth.verify(bearer(evil), AUD)
    assert reason(e) == "unknown key id"
    assert "/evil" not in jwks_server.hits
    # a legitimate token whose jku is not allowlisted is verified with the configured keys
    auth.verify(bearer(token(ec384, headers={"jku": jwks_server.url("/evil")})), AUD)
    assert "/evil" not in jwks_server.hits


def test_jku_in_allowlist_is_fetched(
    ec384: ec.EllipticCurvePrivateKey, ec384_b: ec.EllipticCurvePrivateKey, jwks_server: JwksServer
) -> None:
    jwks_server.docs["/jku"] = {"keys": [jwk(ec384_b, "j1")]}
    issuer = TrustedIssuer(
        iss=ISS, jwks={"keys": [jwk(ec384, "k1")]}, jku_allowlist=(jwks_server.url("/jku"),)
    )
    auth = Authenticator([issuer])
    auth.verify(bearer(token(ec384_b, kid="j1", headers={"jku": jwks_server.url("/jku")})), AUD)
    auth.verify(bearer(token(ec384)), AUD)  # no jku: inline keys
    assert jwks_server.hits == {"/jku": 1}


def test_jku_only_issuer_needs_allowlisted_jku(
    ec384: ec.EllipticCurvePrivateKey, jwks_server: JwksServer
) -> None:
    jwks_server.docs["/jku"] = {"keys": [jwk(ec384, "k1")]}
    auth = Authenticator([TrustedIssuer(iss=ISS, jku_allowlist=(jwks_server.url("/jku"),))])
    with pytest.raises(AuthError):
        auth.verify(bearer(token(ec384)), AUD)
    auth.verify(bearer(token(ec384, headers={"jku": jwks_server.url("/jku")})), AUD)


def test_sandbox_shaped_token_with_inline_keys_needs_no_network(
    ec384: ec.EllipticCurvePrivateKey,
) -> None:
    """The Sandbox sends an internet jku; with inline keys and no allowlist nothing is fetched."""

    def no_fetch(url: str, timeout: tuple[float, float]) -> Any:
        raise AssertionError(f"fetched {url}")

    sandbox = "https://sandbox.cds-hooks.org"
    issuer = TrustedIssuer(
        iss=sandbox, jwks={"keys": [jwk(ec384, SANDBOX_KID, "ES384")]}, algorithms=("ES384",)
    )
    tok = token(
        ec384,
        kid=SANDBOX_KID,
        headers={"jku": sandbox + "/.well-known/jwks.json"},
        iss=sandbox,
    )
    Authenticator([issuer], fetch=no_fetch).verify(bearer(tok), AUD)


# -- tenant -----------------------------------------------------------------------------------------
def test_tenant(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384, tenant="hospital-a")])
    assert auth.verify(bearer(token(ec384, tenant="hospital-a")), AUD).tenant == "hospital-a"
    for bad in ("hospital-b", _DROP, ["hospital-a"]):
        with pytest.raises(AuthError) as e:
            auth.verify(bearer(token(ec384, tenant=bad)), AUD)
        assert reason(e) == "tenant mismatch"


# -- malformed input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic x",
        "Basic dXNlcjpwYXNz",
        "garbage",
        "Bearer a.b",
        "Bearer a.b.c",
        "Bearer ...",
        "Bearer a.b.c.d.e",
        "Bearer eyJhbGciOiJFUzM4NCJ9.e30.c2ln",  # valid JSON header but no kid, empty claims
        "Bearer e30.e30.c2ln",
        "Bearer W10.e30.c2ln",  # header is a JSON array
        "Bearer éé.éé.éé",
        "Bearer \x00.\x00.\x00",
        "x" * 10240,
        "Bearer " + "a" * 10240,
        "Bearer " + "a." * 3000 + "a",
    ],
)
def test_malformed_headers(ec384: ec.EllipticCurvePrivateKey, header: Any) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    with pytest.raises(AuthError):
        auth.verify(header, AUD)


def test_token_in_two_headers_or_with_prefix_refused(ec384: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator([inline_issuer(ec384)])
    tok = token(ec384)
    for header in (f"Bearer {tok}, Bearer {tok}", f"Token {tok}", tok, f"Bearer {tok} extra"):
        with pytest.raises(AuthError):
            auth.verify(header, AUD)


def test_empty_audience_url_refused(ec384: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(AuthError):
        Authenticator([inline_issuer(ec384)]).verify(bearer(token(ec384)), "")


# -- logging ----------------------------------------------------------------------------------------
def test_token_never_logged_or_in_error(
    ec384: ec.EllipticCurvePrivateKey,
    ec384_b: ec.EllipticCurvePrivateKey,
    jwks_server: JwksServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    jwks_server.docs["/jwks"] = {"keys": [jwk(ec384, "k1")]}
    auth = Authenticator([TrustedIssuer(iss=ISS, jwks_url=jwks_server.url("/jwks"))])
    now = int(time.time())
    tokens = [
        token(ec384),
        token(ec384_b),
        token(ec384, aud="https://wrong.test"),
        token(ec384, iss="https://evil.test/<script>"),
        token(ec384, exp=now - 500, iat=now - 900),
        token(ec384, kid="unknown"),
        token(ec384, jti=_DROP),
        forged({"alg": "HS256", "kid": "k1"}, claims(), b"k"),
    ]
    tokens.append(tokens[0])  # replay
    messages: list[str] = []
    for tok in tokens:
        try:
            auth.verify(bearer(tok), AUD)
        except AuthError as exc:
            messages.append(str(exc))
    assert len(messages) == len(tokens) - 1
    text = caplog.text + "\n".join(messages) + "\n".join(repr(r.args) for r in caplog.records)
    assert "JWT rejected" in caplog.text
    for tok in tokens:
        for part in tok.split("."):
            if len(part) > 8:
                assert part not in text
    assert "evil.test" not in text  # unverified claim values are not echoed either


# -- configuration ----------------------------------------------------------------------------------
def test_from_file(ec384: ec.EllipticCurvePrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "issuers.yaml"
    path.write_text(
        yaml.safe_dump(
            [{"iss": ISS, "jwks": {"keys": [jwk(ec384, "k1")]}, "algorithms": ["ES384"], "tenant": "t"}]
        )
    )
    auth = Authenticator.from_file(path, clock_skew_seconds=10)
    assert auth.issuers == [ISS] and auth.clock_skew_seconds == 10
    auth.verify(bearer(token(ec384, tenant="t")), AUD)


@pytest.mark.parametrize(
    "entry",
    [
        {"jwks_url": "https://k.test/j"},  # no iss
        {"iss": ISS},  # no key source
        {"iss": ISS, "jwks_url": "http://keys.example.org/j"},  # plain http, not loopback
        {"iss": ISS, "jwks_url": "ftp://k.test/j"},
        {"iss": ISS, "jwks_url": "https://k.test/j", "jwks": {"keys": []}},  # both
        {"iss": ISS, "jwks": {"keys": []}},  # no usable key
        {"iss": ISS, "jwks": {"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}},
        {"iss": ISS, "jwks_url": "https://k.test/j", "tennant": "x"},  # typo
        {"iss": ISS, "jwks_url": "https://k.test/j", "algorithms": "ES384"},
        {"iss": ISS, "jwks_url": "https://k.test/j", "algorithms": []},
        {"iss": ISS, "jku_allowlist": ["http://evil.test/j"]},
        {"iss": ISS, "jku_allowlist": "https://k.test/j"},
        {"iss": "", "jwks_url": "https://k.test/j"},
        {"iss": ISS, "jwks_url": "https://k.test/j", "tenant": ""},
    ],
)
def test_config_errors(entry: dict[str, Any]) -> None:
    with pytest.raises(AuthConfigError):
        parse_trusted_issuers([entry])


def test_config_rejects_private_key_and_duplicates(ec384: ec.EllipticCurvePrivateKey) -> None:
    private = json.loads(ECAlgorithm.to_jwk(ec384))
    private["kid"] = "k1"
    with pytest.raises(AuthConfigError, match="private"):
        parse_trusted_issuers([{"iss": ISS, "jwks": {"keys": [private]}}])
    entry = {"iss": ISS, "jwks": {"keys": [jwk(ec384, "k1")]}}
    with pytest.raises(AuthConfigError, match="twice"):
        parse_trusted_issuers([entry, entry])
    with pytest.raises(AuthConfigError):
        parse_trusted_issuers({"iss": ISS})
    with pytest.raises(AuthConfigError):
        Authenticator([inline_issuer(ec384), inline_issuer(ec384)])


def test_weak_rsa_key_refused_in_config() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(AuthConfigError):
        TrustedIssuer(iss=ISS, jwks={"keys": [jwk(weak, "w")]}, algorithms=("RS384",))


def test_example_config_loads_and_sandbox_block_is_valid() -> None:
    issuers = load_trusted_issuers(EXAMPLE)
    assert [i.algorithms for i in issuers] == [("RS384",)]
    text = EXAMPLE.read_text()
    begin, end = text.index("# --- BEGIN cds-hooks-sandbox"), text.index("# --- END cds-hooks-sandbox")
    block = [ln for ln in text[begin:end].splitlines()[1:] if ln.startswith("# -") or ln.startswith("#  ")]
    uncommented = "\n".join(ln[2:] for ln in block)
    sandbox = parse_trusted_issuers(yaml.safe_load(uncommented))
    assert sandbox[0].iss == "https://sandbox.cds-hooks.org"
    assert sandbox[0].algorithms == ("ES384",)
    (key,) = sandbox[0].inline_keys[SANDBOX_KID]
    assert isinstance(key.key, ec.EllipticCurvePublicKey) and key.key.curve.name == "secp384r1"


# -- a slow JWKS endpoint (issue 10 item 5) ---------------------------------------------------------
def test_slow_jwks_endpoint_does_not_stall_its_issuer(ec384: ec.EllipticCurvePrivateKey) -> None:
    """The JWKS server starts dripping its answer. The request that triggered the refetch gets its
    answer within the JWKS deadline; requests with a known kid never wait for it; a burst with
    the unknown kid shares the one fetch instead of queueing and refetching each."""
    from tests.support.fault_fhir import FaultFhirServer

    with FaultFhirServer() as srv:
        srv.route("/jwks.json", mode="drip", interval=0.2, body={"keys": [jwk(ec384, "k1")]})
        srv.ok("/jwks.json", {"keys": [jwk(ec384, "k1")]}, times=1)  # newest first: this one once
        issuer = TrustedIssuer(iss=ISS, jwks_url=srv.url("/jwks.json"))
        auth = Authenticator([issuer], http_timeout=(0.5, 1.0), refresh_interval_seconds=0)
        auth.verify(bearer(token(ec384)), AUD)  # the first fetch caches k1

        results: dict[str, tuple[float, str]] = {}

        def verify(name: str, kid: str) -> None:
            started = time.monotonic()
            try:
                auth.verify(bearer(token(ec384, kid=kid)), AUD)
                outcome = "ok"
            except AuthError as exc:
                outcome = exc.reason
            results[name] = (time.monotonic() - started, outcome)

        unknown = [threading.Thread(target=verify, args=(f"unknown-{i}", "k2")) for i in range(5)]
        for t in unknown:
            t.start()
        time.sleep(0.3)  # the refetch is under way, dripping
        known = [threading.Thread(target=verify, args=(f"known-{i}", "k1")) for i in range(6)]
        for t in known:
            t.start()
        for t in known + unknown:
            t.join(timeout=10)
        fetches = len(srv.requests_to("/jwks.json"))
    for i in range(6):
        elapsed, outcome = results[f"known-{i}"]
        assert outcome == "ok" and elapsed < 0.5, f"a known kid waited {elapsed:.2f} s behind the fetch"
    for i in range(5):
        elapsed, outcome = results[f"unknown-{i}"]
        assert outcome == "unknown key id"
        assert elapsed < 1.5 + 0.5 + 0.3, f"the unknown kid got its answer after {elapsed:.2f} s"
    assert fetches == 2, f"{fetches} JWKS fetches: one at start, one shared by the burst"
