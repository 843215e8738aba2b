"""Keys and tokens for the JWT tests: real keys, real signatures, and the forgeries PyJWT won't make."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def public_jwk(key: PrivateKey, kid: str, alg: str | None = None) -> dict[str, Any]:
    """The public JWK of a private key (what an issuer publishes)."""
    pub = key.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        d = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        d = RSAAlgorithm.to_jwk(pub, as_dict=True)
    d.update({"kid": kid, "use": "sig"})
    if alg:
        d["alg"] = alg
    return d


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token PyJWT would refuse to make: HMAC with an arbitrary secret, or an unsigned one."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"
