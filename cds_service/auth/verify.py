"""Verifying a CDS Hooks client's JWT: the bearer header, the token, its claims, its key."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .common import (
    _TOKEN_RE,
    _TYPS,
    MAX_AUTHORIZATION_LENGTH,
    MAX_JTI_LENGTH,
    MAX_KID_LENGTH,
    REQUIRED_CLAIMS,
    SUPPORTED_ALGORITHMS,
    AuthConfigError,
    AuthError,
    Fetch,
    JwksError,
)
from .issuers import TrustedIssuer, load_trusted_issuers
from .keys import _Key, _KeySource, _parse_jwks, fetch_jwks
from .replay import JtiCache, MemoryJtiCache, ReplayCacheFull

log = logging.getLogger(__package__)  # "cds_service.auth", as docs/security.md says


# -- verification ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claims:
    """The verified claims of a CDS Hooks JWT (``raw`` holds all of them, extras included)."""

    iss: str
    jti: str
    exp: int
    iat: int
    kid: str
    tenant: str | None
    sub: str | None
    raw: Mapping[str, Any]
    fhir_origins: tuple[str, ...] | None = None  # the issuer's fhir_servers allowlist


_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid (iat or nbf in the future)"),
    (jwt.InvalidAudienceError, "audience mismatch"),
    (jwt.InvalidIssuerError, "issuer mismatch"),
    (jwt.InvalidIssuedAtError, "invalid iat"),
    (jwt.DecodeError, "malformed token"),
)


class Authenticator:
    """Verifies the ``Authorization: Bearer <JWT>`` of each CDS Hooks call.

    Keys fetched from URLs are cached per (issuer, URL). A kid we do not know triggers one refetch,
    but a URL is fetched at most once per ``refresh_interval_seconds`` so forged tokens with random
    kids cannot turn us into a fetch amplifier; a cached JWKS older than ``jwks_max_age_seconds``
    is refetched (same rate limit) so keys an issuer withdraws stop being accepted.
    """

    def __init__(
        self,
        issuers: Sequence[TrustedIssuer],
        *,
        clock_skew_seconds: float = 60,
        jti_ttl_seconds: float = 3600,
        http_timeout: tuple[float, float] = (2, 3),
        fetch: Fetch = fetch_jwks,
        jti_cache: JtiCache | None = None,
        refresh_interval_seconds: float = 30,
        jwks_max_age_seconds: float = 3600,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if clock_skew_seconds < 0 or jti_ttl_seconds <= 0:
            raise AuthConfigError("clock_skew_seconds must be >= 0 and jti_ttl_seconds > 0")
        self._issuers: dict[str, TrustedIssuer] = {}
        for i in issuers:
            if i.iss in self._issuers:
                raise AuthConfigError(f"issuer {i.iss} listed twice")
            self._issuers[i.iss] = i
        self.clock_skew_seconds = clock_skew_seconds
        self.jti_ttl_seconds = jti_ttl_seconds
        self.http_timeout = http_timeout
        self.refresh_interval_seconds = refresh_interval_seconds
        self.jwks_max_age_seconds = jwks_max_age_seconds
        self._fetch = fetch
        self._monotonic = monotonic
        self._jti_cache: JtiCache = jti_cache if jti_cache is not None else MemoryJtiCache()
        self._sources: dict[tuple[str, str | None], _KeySource] = {}
        for i in self._issuers.values():
            if i.jwks is not None:
                self._sources[(i.iss, None)] = _KeySource(None, i.inline_keys)
            if i.jwks_url is not None:
                self._sources[(i.iss, i.jwks_url)] = _KeySource(i.jwks_url)
            for url in i.jku_allowlist:
                self._sources.setdefault((i.iss, url), _KeySource(url))

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Authenticator:
        """Build from a trusted-issuers YAML file; ``kwargs`` go to ``__init__``."""
        return cls(load_trusted_issuers(path), **kwargs)

    @property
    def issuers(self) -> list[str]:
        return list(self._issuers)

    def verify(self, authorization_header: str | None, audience_url: str) -> Claims:
        """Verify the header of a call to ``audience_url`` (the exact URL invoked), or raise.

        Any unexpected exception is turned into AuthError too: authentication fails closed.
        """
        try:
            return self._verify(authorization_header, audience_url)
        except AuthError as exc:
            log.info("JWT rejected: %s", exc.reason)
            raise
        except Exception as exc:  # noqa: BLE001 - fail closed, but never log the exception text
            log.error("JWT verification error: %s", type(exc).__name__)
            raise AuthError("verification error") from None

    # The steps below follow the CDS Hooks best-practice order: cheap structural checks, then the
    # issuer allowlist (from unverified claims), then the key, then PyJWT's signature and claims
    # validation, and only for a verified token the replay cache and tenant.
    def _verify(self, authorization_header: str | None, audience_url: str) -> Claims:
        if not audience_url:
            raise AuthError("no audience URL")
        token = _bearer_token(authorization_header)
        header = _unverified_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
            raise AuthError("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            raise AuthError("missing or invalid kid")

        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise AuthError("missing iss")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise AuthError("untrusted issuer")
        if alg not in issuer.algorithms:
            raise AuthError("algorithm not allowed for issuer")

        keys = [k for k in self._keys_for(issuer, header.get("jku"), kid) if k.fits(alg)]
        if not keys:
            raise AuthError("unknown key id")
        claims = self._decode(token, keys, alg, iss, audience_url)

        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise AuthError("invalid jti")
        exp = int(claims["exp"])
        if exp - time.time() > self.jti_ttl_seconds + self.clock_skew_seconds:
            # A token outliving the replay window could be replayed after its jti is forgotten.
            raise AuthError("token lifetime exceeds replay window")
        try:
            fresh = self._jti_cache.add(iss, jti, exp + self.clock_skew_seconds)
        except ReplayCacheFull:
            log.error("JWT replay cache full; refusing tokens until entries expire")
            raise AuthError("replay cache full") from None
        if not fresh:
            raise AuthError("replayed jti")

        if issuer.tenant is not None and claims.get("tenant") != issuer.tenant:
            raise AuthError("tenant mismatch")
        tenant, sub = claims.get("tenant"), claims.get("sub")
        return Claims(
            iss=iss,
            jti=jti,
            exp=exp,
            iat=int(claims["iat"]),
            kid=kid,
            tenant=tenant if isinstance(tenant, str) else None,
            sub=sub if isinstance(sub, str) else None,
            raw=claims,
            fhir_origins=issuer.fhir_servers,
        )

    def _decode(self, token: str, keys: list[_Key], alg: str, iss: str, audience_url: str) -> dict[str, Any]:
        base = audience_url.rstrip("/")
        audiences = [base, base + "/"]  # a trailing slash is the only tolerated difference
        for k in keys:
            try:
                return jwt.decode(
                    token,
                    k.key,
                    algorithms=[alg],
                    audience=audiences,
                    issuer=iss,
                    leeway=self.clock_skew_seconds,
                    options={"require": list(REQUIRED_CLAIMS)},
                )
            except jwt.InvalidSignatureError:
                continue  # several keys may share a kid during rotation
            except jwt.MissingRequiredClaimError as exc:
                claim = exc.claim if exc.claim in REQUIRED_CLAIMS else "required claim"
                raise AuthError(f"missing {claim}") from None
            except jwt.PyJWTError as exc:
                for cls, reason in _PYJWT_REASONS:
                    if isinstance(exc, cls):
                        raise AuthError(reason) from None
                raise AuthError("invalid token") from None
        raise AuthError("bad signature")

    def _keys_for(self, issuer: TrustedIssuer, jku: Any, kid: str) -> list[_Key]:
        """Keys with this kid from the token's jku if the issuer allowlists it, else from the
        configured JWKS. A jku that is not allowlisted is ignored, never fetched."""
        if isinstance(jku, str) and jku in issuer.jku_allowlist:
            source = self._sources[(issuer.iss, jku)]
        else:
            configured = issuer.jwks_url if issuer.jwks is None else None
            source = self._sources.get((issuer.iss, configured))
            if source is None:  # issuer has only a jku allowlist and the token named none of it
                return []
        if source.url is None:
            return source.keys.get(kid, [])
        with source.lock:
            now = self._monotonic()
            stale = (
                source.fetched_at is None
                or kid not in source.keys
                or now - source.fetched_at > self.jwks_max_age_seconds
            )
            may_fetch = (
                source.attempted_at is None or now - source.attempted_at >= self.refresh_interval_seconds
            )
            inflight = source.inflight
            fetcher = stale and may_fetch and inflight is None
            if fetcher:
                source.attempted_at = now
                inflight = source.inflight = threading.Event()
            elif kid in source.keys or inflight is None:
                return source.keys.get(kid, [])
        if not fetcher:  # another request is fetching: wait for it, never longer than its deadline
            inflight.wait(timeout=sum(self.http_timeout) + 0.5)  # type: ignore[union-attr]
            return source.keys.get(kid, [])
        keys: dict[str, list[_Key]] | None = None
        try:
            keys = _parse_jwks(self._fetch(source.url, self.http_timeout), strict=False)
        except JwksError as exc:
            log.warning("JWKS fetch failed for issuer %s: %s", issuer.iss, exc)
        except Exception as exc:  # noqa: BLE001 - a custom fetch must not break auth
            log.warning("JWKS fetch failed for issuer %s: %s", issuer.iss, type(exc).__name__)
        finally:
            with source.lock:
                if keys is not None:
                    source.keys = keys
                    source.fetched_at = now
                source.inflight = None
            inflight.set()  # type: ignore[union-attr]
        return source.keys.get(kid, [])


def _bearer_token(authorization_header: str | None) -> str:
    """The compact JWS from ``Bearer <token>``; shape-checked before any decoding."""
    if not authorization_header:
        raise AuthError("missing authorization header")
    if not isinstance(authorization_header, str):
        raise AuthError("malformed authorization header")
    if len(authorization_header) > MAX_AUTHORIZATION_LENGTH:
        raise AuthError("authorization header too long")
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("not a bearer token")
    token = token.strip()
    if not _TOKEN_RE.fullmatch(token):
        raise AuthError("malformed token")
    return token


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read before verification only to choose issuer, algorithm and key."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("malformed token") from None
    if not isinstance(header, dict):
        raise AuthError("malformed token")
    typ = header.get("typ")
    # CDS Hooks makes typ REQUIRED ("JWT"); some clients omit it, so absence is tolerated, but a
    # present typ must say JWT (RFC 7515 §4.1.9 allows the "application/" prefix).
    if "typ" in header and (not isinstance(typ, str) or typ.lower() not in _TYPS):
        raise AuthError("typ is not JWT")
    if "crit" in header or "b64" in header:
        raise AuthError("unsupported critical header")
    return header
