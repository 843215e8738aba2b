"""Issuers' public keys: JWKS fetched (bounded, guarded) and parsed into verification keys."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ..reading.fhir_client import CallBudget, FetchPolicy, guarded_session
from .common import (
    _CURVES,
    MAX_JWKS_BYTES,
    MAX_JWKS_KEYS,
    MAX_KID_LENGTH,
    MIN_RSA_BITS,
    SUPPORTED_ALGORITHMS,
    JwksError,
    PublicKey,
)


# -- keys ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Key:
    kid: str
    alg: str | None  # the JWK's own "alg", if it pins one
    key: PublicKey

    def fits(self, alg: str) -> bool:
        """A key may verify ``alg`` only if its type, curve and size match: prevents using an
        RSA key under ES*, a P-256 key under ES384, or a weak RSA key at all."""
        if self.alg is not None and self.alg != alg:
            return False
        if alg.startswith("ES"):
            return isinstance(self.key, ec.EllipticCurvePublicKey) and isinstance(
                self.key.curve, _CURVES[alg]
            )
        return isinstance(self.key, rsa.RSAPublicKey) and self.key.key_size >= MIN_RSA_BITS


def _parse_jwk(jwk: Any, *, strict: bool) -> _Key | None:
    """One JWK → a public verification key, or None if it is not one we may use.

    Symmetric (``oct``) keys are never usable. ``strict`` (inline config) turns skips into errors
    so a misconfiguration is seen at startup; a fetched JWKS may legitimately hold other keys.
    """

    def skip(why: str) -> None:
        if strict:
            raise JwksError(why)
        return None

    if not isinstance(jwk, Mapping):
        return skip("a key is not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
        return skip("every key needs a kid")
    if jwk.get("use", "sig") != "sig":
        return skip(f"key {kid}: use is not sig")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return skip(f"key {kid}: key_ops does not include verify")
    alg = jwk.get("alg")
    if alg is not None and alg not in SUPPORTED_ALGORITHMS:
        return skip(f"key {kid}: alg {alg!r} not supported")
    kty = jwk.get("kty")
    if strict and any(p in jwk for p in ("d", "p", "q", "dp", "dq", "qi")):
        raise JwksError(f"key {kid}: contains private key material; configure public keys only")
    try:
        if kty == "EC":
            key = ECAlgorithm.from_jwk(dict(jwk))
        elif kty == "RSA":
            key = RSAAlgorithm.from_jwk(dict(jwk))
        else:
            return skip(f"key {kid}: kty {kty!r} is not EC or RSA")
    except (jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return skip(f"key {kid}: not a valid {kty} key")
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        key = key.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return skip(f"key {kid}: RSA key shorter than {MIN_RSA_BITS} bits")
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
        return skip(f"key {kid}: curve {key.curve.name} not supported")
    return _Key(kid=kid, alg=alg, key=key)


def _parse_jwks(doc: Any, *, strict: bool) -> dict[str, list[_Key]]:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise JwksError('a JWKS must be an object with a "keys" list')
    if len(doc["keys"]) > MAX_JWKS_KEYS:
        raise JwksError(f"JWKS has more than {MAX_JWKS_KEYS} keys")
    keys: dict[str, list[_Key]] = {}
    for raw in doc["keys"]:
        k = _parse_jwk(raw, strict=strict)
        if k is not None:
            keys.setdefault(k.kid, []).append(k)
    return keys


def fetch_jwks(url: str, timeout: tuple[float, float]) -> Any:
    """GET a JWKS within a hard deadline (connect + read timeouts together) and a size cap.

    The deadline holds for every byte: when it passes the socket is shut down, so a server that
    drips its answer cannot hold the request. Redirects are not followed: the key source is
    exactly the URL an administrator allowlisted (checked when the configuration is loaded).
    """
    total = sum(timeout)
    budget = CallBudget(total, max_bytes=MAX_JWKS_BYTES)
    session = guarded_session(budget, FetchPolicy(allow_http=True, allow_loopback=True), timeout[0])
    timer = threading.Timer(total, budget.abort)
    timer.daemon = True
    timer.start()
    body = bytearray()
    try:
        with session.get(
            url,
            timeout=(min(timeout[0], total), min(timeout[1], total)),
            allow_redirects=False,
            stream=True,
            headers={"Accept": "application/jwk-set+json, application/json"},
        ) as resp:
            if resp.status_code != 200:
                raise JwksError(f"HTTP {resp.status_code}")
            for chunk in resp.raw.stream(16384, decode_content=True):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksError("JWKS too large")
                if budget.remaining() <= 0:
                    raise JwksError("JWKS download too slow")
    except JwksError:
        raise
    except Exception as exc:  # noqa: BLE001 - requests, urllib3, the deadline: all a failed fetch
        raise JwksError("JWKS download too slow" if budget.aborted else type(exc).__name__) from None
    finally:
        timer.cancel()
        session.close()
    try:
        return json.loads(bytes(body))
    except ValueError:
        raise JwksError("JWKS is not JSON") from None


class _KeySource:
    """The cached keys of one (issuer, URL) pair. Fetches are single-flight: a burst of requests
    with an unknown kid causes one fetch, the others wait for it (no longer than its deadline),
    and the network is never used under the lock, so requests with a known kid never wait."""

    def __init__(self, url: str | None, keys: dict[str, list[_Key]] | None = None) -> None:
        self.url = url
        self.keys: dict[str, list[_Key]] = keys or {}
        self.fetched_at: float | None = None
        self.attempted_at: float | None = None
        self.lock = threading.Lock()
        self.inflight: threading.Event | None = None
