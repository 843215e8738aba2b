"""What the verifier's parts share: the algorithms allowed, the size limits, the errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

log = logging.getLogger(__package__)  # "cds_service.auth", as docs/security.md says


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
