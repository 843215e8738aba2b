"""FHIR server access for the client: reads, searches and transactions, errors in words."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import requests

from .common import FHIR_JSON, ClientError


# -- FHIR server access -----------------------------------------------------------------------------
@dataclass
class Fhir:
    """A FHIR R4 server as the CDS client (the EHR) sees it: a base URL and an optional bearer token."""

    base_url: str
    token: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if not re.match(r"^https?://", self.base_url):
            raise ClientError(f"FHIR server URL must start with http:// or https://, got {self.base_url!r}")

    def headers(self, content_type: bool = False) -> dict[str, str]:
        out = {"Accept": f"{FHIR_JSON}, application/json"}
        if content_type:
            out["Content-Type"] = FHIR_JSON
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        return out

    def get(self, query: str) -> dict[str, Any]:
        """GET ``{base}/{query}``; :class:`ClientError` on any failure."""
        url = f"{self.base_url}/{query.lstrip('/')}"
        try:
            resp = requests.get(url, headers=self.headers(), timeout=self.timeout)
        except requests.RequestException as exc:
            raise ClientError(self._unreachable(exc)) from exc
        return self._json(resp, f"GET {query.split('?')[0]}")

    def post_bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a batch/transaction Bundle to the base URL."""
        try:
            resp = requests.post(
                self.base_url, data=json.dumps(bundle), headers=self.headers(True), timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise ClientError(self._unreachable(exc)) from exc
        return self._json(resp, "transaction")

    def _unreachable(self, exc: requests.RequestException) -> str:
        kind = "timed out" if isinstance(exc, requests.Timeout) else "unreachable"
        return f"FHIR server {kind} at {self.base_url} ({type(exc).__name__})"

    def _json(self, resp: requests.Response, what: str) -> dict[str, Any]:
        if resp.status_code in (401, 403):
            hint = "check --token" if self.token else "it wants a bearer token: pass --token"
            raise ClientError(
                f"FHIR server refused access ({resp.status_code}) for {what}{_outcome_text(resp)}; {hint}"
            )
        if resp.status_code >= 300:
            raise ClientError(f"FHIR server answered {resp.status_code} for {what}{_outcome_text(resp)}")
        try:
            data = resp.json()
        except ValueError as exc:
            raise ClientError(f"FHIR server sent a non-JSON body for {what}") from exc
        if not isinstance(data, dict):
            raise ClientError(f"FHIR server sent JSON that is not a resource for {what}")
        return data


def _outcome_text(resp: requests.Response) -> str:
    """`: diagnostics` of an OperationOutcome body, or a short body excerpt."""
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return f": {text[:200]}" if text else ""
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [
            i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "")
            for i in body.get("issue") or []
            if isinstance(i, dict)
        ]
        return ": " + "; ".join(t for t in texts if t) if any(texts) else ""
    return ""
