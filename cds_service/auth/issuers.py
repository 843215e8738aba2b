"""Trusted issuers: the configuration of who may call, checked when it is loaded."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..reading.fhir_client import origins
from .common import _ISSUER_FIELDS, DEFAULT_ALGORITHMS, SUPPORTED_ALGORITHMS, AuthConfigError, JwksError
from .keys import _Key, _parse_jwks


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
