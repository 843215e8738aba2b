"""CDS Hooks 2.0.1 JWT verification: trusted issuers, a JWKS cache and a ``jti`` replay cache.

The CDS Client signs a JWT per call; we accept it only from an allowlisted ``iss``, signed with an
asymmetric key we obtained out of band (inline JWKS or a configured ``jwks_url``) or from a ``jku``
the issuer's entry explicitly allowlists. All JWS/JWT parsing and cryptography is PyJWT's; this
module decides *which* key and *which* algorithm may be used, which is where JWT bugs usually live.

Failures raise :class:`AuthError` whose message is a fixed reason category: safe to log, never the
token or any value taken from it. The API layer turns it into a bare ``401``.

Split by job: :mod:`.issuers` (configuration), :mod:`.keys` (JWKS), :mod:`.replay` (the jti cache),
:mod:`.verify` (:class:`Authenticator`) and :mod:`.common` (algorithms, limits, errors). Everything
is importable from here, as before.
"""

from __future__ import annotations

from ..storage.sqlite import SqliteJtiCache  # moved to cds_service.storage; old import path
from .common import (
    DEFAULT_ALGORITHMS,
    MAX_AUTHORIZATION_LENGTH,
    MAX_JTI_LENGTH,
    MAX_JWKS_BYTES,
    MAX_JWKS_KEYS,
    MAX_KID_LENGTH,
    MIN_RSA_BITS,
    REQUIRED_CLAIMS,
    SUPPORTED_ALGORITHMS,
    AuthConfigError,
    AuthError,
    JwksError,
)
from .issuers import TrustedIssuer, load_trusted_issuers, parse_trusted_issuers
from .keys import fetch_jwks
from .replay import JtiCache, MemoryJtiCache, ReplayCacheFull
from .verify import Authenticator, Claims

__all__ = [
    "AuthConfigError",
    "AuthError",
    "Authenticator",
    "Claims",
    "DEFAULT_ALGORITHMS",
    "JtiCache",
    "JwksError",
    "MAX_AUTHORIZATION_LENGTH",
    "MAX_JTI_LENGTH",
    "MAX_JWKS_BYTES",
    "MAX_JWKS_KEYS",
    "MAX_KID_LENGTH",
    "MIN_RSA_BITS",
    "MemoryJtiCache",
    "REQUIRED_CLAIMS",
    "ReplayCacheFull",
    "SUPPORTED_ALGORITHMS",
    "SqliteJtiCache",
    "TrustedIssuer",
    "fetch_jwks",
    "load_trusted_issuers",
    "parse_trusted_issuers",
]
