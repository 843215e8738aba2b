"""CDS Hooks 2.0.1 JWT verification: trusted issuers, a JWKS cache and a ``jti`` replay cache.

The CDS Client signs a JWT per call; we accept it only from an allowlisted ``iss``, signed with an
asymmetric key we obtained out of band (inline JWKS or a configured ``jwks_url``) or from a ``jku``
the issuer's entry explicitly allowlists. All JWS/JWT parsing and cryptography is PyJWT's; this
module decides *which* key and *which* algorithm may be used, which is where JWT bugs usually live.

Failures raise :class:`AuthError` whose message is a fixed reason category: safe to log, never the
token or any value taken from it. The API layer turns it into a bare ``401``.
"""

from __future__ import annotations

import heapq
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from .reading.fhir_client import CallBudget, FetchPolicy, guarded_session, origins
from .storage.sqlite import SqliteJtiCache  # noqa: F401 - moved to cds_service.storage; old import path

log = logging.getLogger(__name__)

#: Every algorithm this service can ever accept. HMAC and ``none`` are absent on purpose: the spec
#: forbids them ("SHALL NOT"), and HMAC with a public key as secret is the classic confusion attack.
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset({"ES256", "ES384", "RS256", "RS384"})
#: The spec's RECOMMENDED pair; the weaker-hash variants must be opted into per issuer.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("ES384", "RS384")
REQUIRED_CLAIMS: tuple[str, ...] = ("iss", "aud", "exp", "iat", "jti")

MAX_AUTHORIZATION_LENGTH = 8192  # real CDS Hooks JWTs are < 2 kB; refuse before parsing anything
MAX_JWKS_BYTES = 512 * 1024
MAX_JWKS_KEYS = 100
MAX_KID_LENGTH = 256
MAX_JTI_LENGTH = 256
MIN_RSA_BITS = 2048
_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_TYPS = ("jwt", "application/jwt")
_ISSUER_FIELDS = frozenset(
    {"iss", "jwks_url", "jwks", "jku_allowlist", "algorithms", "tenant", "fhir_servers"}
)

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
Fetch = Callable[[str, tuple[float, float]], Any]


class AuthError(Exception):
    """A request's JWT was refused. ``str(exc)`` is a fixed reason category, safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthConfigError(ValueError):
    """The trusted-issuer configuration is unsafe or malformed: raised at load, not per request."""


class JwksError(Exception):
    """A JWKS could not be fetched or parsed (kept distinct so a fetch failure never leaks out)."""


# -- configuration ---------------------------------------------------------------------------------
def _check_key_url(url: Any, what: str) -> str:
    """Key URLs must be https (keys over plain http can be swapped); loopback http is for tests."""
    if not isinstance(url, str) or not url:
        raise AuthConfigError(f"{what} must be a non-empty URL string")
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return url
    raise AuthConfigError(f"{what} must be an https URL (http only for loopback hosts): {url}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TrustedIssuer:
    """One allowlisted CDS Client. Validated on construction so unsafe settings fail at startup."""

    iss: str
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = None
    jku_allowlist: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    tenant: str | None = None
    #: FHIR servers (https URLs; http only for loopback, for tests) this client's calls may name as
    #: ``fhirServer``; None: any the service's policy allows (docs/security.md, FHIR server policy).
    fhir_servers: tuple[str, ...] | None = None
    inline_keys: dict[str, list[_Key]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.iss, str) or not self.iss.strip():
            raise AuthConfigError("iss must be a non-empty string")
        name = f"issuer {self.iss}"
        if self.jwks_url is not None and self.jwks is not None:
            raise AuthConfigError(f"{name}: give jwks_url or jwks, not both")
        if self.jwks_url is not None:
            _check_key_url(self.jwks_url, f"{name}: jwks_url")
        if isinstance(self.jku_allowlist, str) or not isinstance(self.jku_allowlist, Iterable):
            raise AuthConfigError(f"{name}: jku_allowlist must be a list of URLs")
        allow = tuple(_check_key_url(u, f"{name}: jku_allowlist entry") for u in self.jku_allowlist)
        object.__setattr__(self, "jku_allowlist", allow)
        if self.jwks_url is None and self.jwks is None and not allow:
            raise AuthConfigError(f"{name}: needs jwks_url, jwks or jku_allowlist")
        algs = self.algorithms
        if isinstance(algs, str) or not isinstance(algs, Iterable) or not list(algs):
            raise AuthConfigError(f"{name}: algorithms must be a non-empty list")
        bad = [a for a in algs if a not in SUPPORTED_ALGORITHMS]
        if bad:
            raise AuthConfigError(
                f"{name}: algorithms {bad} refused; allowed: {sorted(SUPPORTED_ALGORITHMS)} "
                "(none and HMAC are forbidden by CDS Hooks)"
            )
        object.__setattr__(self, "algorithms", tuple(dict.fromkeys(algs)))
        if self.tenant is not None and (not isinstance(self.tenant, str) or not self.tenant):
            raise AuthConfigError(f"{name}: tenant must be a non-empty string")
        if self.fhir_servers is not None:
            servers = self.fhir_servers
            if isinstance(servers, str) or not isinstance(servers, Iterable) or not list(servers):
                raise AuthConfigError(f"{name}: fhir_servers must be a non-empty list of URLs")
            urls = tuple(_check_key_url(u, f"{name}: fhir_servers entry") for u in servers)
            if any(urlsplit(u).username or urlsplit(u).password for u in urls):
                raise AuthConfigError(f"{name}: fhir_servers entries must not contain credentials")
            object.__setattr__(self, "fhir_servers", origins(urls))
        inline: dict[str, list[_Key]] = {}
        if self.jwks is not None:
            try:
                inline = _parse_jwks(self.jwks, strict=True)
            except JwksError as exc:
                raise AuthConfigError(f"{name}: jwks: {exc}") from None
            if not inline:
                raise AuthConfigError(f"{name}: jwks has no usable signing key")
        object.__setattr__(self, "inline_keys", inline)

    @classmethod
    def from_mapping(cls, entry: Any) -> TrustedIssuer:
        """Build from one YAML entry; unknown fields are errors because a typo (``tennant``)
        would otherwise silently weaken the check."""
        if not isinstance(entry, Mapping):
            raise AuthConfigError("each trusted issuer must be a mapping")
        unknown = sorted(set(entry) - _ISSUER_FIELDS)
        if unknown:
            raise AuthConfigError(f"issuer {entry.get('iss')}: unknown fields {unknown}")
        if "iss" not in entry:
            raise AuthConfigError("trusted issuer entry without iss")
        algorithms = entry.get("algorithms", DEFAULT_ALGORITHMS)
        if isinstance(algorithms, str) or not isinstance(algorithms, Iterable):
            raise AuthConfigError(f"issuer {entry['iss']}: algorithms must be a list")
        jku = entry.get("jku_allowlist") or ()
        return cls(
            iss=entry["iss"],
            jwks_url=entry.get("jwks_url"),
            jwks=entry.get("jwks"),
            jku_allowlist=jku,
            algorithms=tuple(algorithms),
            tenant=entry.get("tenant"),
            fhir_servers=entry.get("fhir_servers"),
        )


def parse_trusted_issuers(data: Any) -> list[TrustedIssuer]:
    """Parse the YAML document: a list of issuer entries (an empty file means no issuers)."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise AuthConfigError("trusted issuers file must contain a YAML list of issuer entries")
    issuers = [TrustedIssuer.from_mapping(e) for e in data]
    seen: set[str] = set()
    for i in issuers:
        if i.iss in seen:
            raise AuthConfigError(f"issuer {i.iss} listed twice")
        seen.add(i.iss)
    return issuers


def load_trusted_issuers(path: str | Path) -> list[TrustedIssuer]:
    """Read and validate a trusted-issuers YAML file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise AuthConfigError(f"cannot read trusted issuers file {path}: {exc}") from None
    return parse_trusted_issuers(data)


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


# -- replay cache ----------------------------------------------------------------------------------
class JtiCache(Protocol):
    def add(self, iss: str, jti: str, expires_at: float) -> bool:
        """Remember (iss, jti) until ``expires_at`` (epoch seconds); False if already seen."""
        ...


class ReplayCacheFull(Exception):
    """The in-memory replay cache is at capacity; we refuse rather than forget a live jti."""


class MemoryJtiCache:
    """Per-process replay cache: thread-safe, bounded, entries dropped once the token has expired.

    Only catches replays to the same process; see ``cds_service.storage`` for caches shared by
    several workers (SQLite) and several instances (PostgreSQL).
    """

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._expiry: list[tuple[float, tuple[str, str]]] = []
        self._lock = threading.Lock()

    def add(self, iss: str, jti: str, expires_at: float) -> bool:
        key = (iss, jti)
        with self._lock:
            now = self._clock()
            while self._expiry and self._expiry[0][0] <= now:
                _, old = heapq.heappop(self._expiry)
                if self._seen.get(old, now + 1) <= now:
                    del self._seen[old]
            if key in self._seen:
                return False
            if len(self._seen) >= self.max_entries:
                raise ReplayCacheFull
            self._seen[key] = expires_at
            heapq.heappush(self._expiry, (expires_at, key))
            return True

    def __len__(self) -> int:
        return len(self._seen)


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
