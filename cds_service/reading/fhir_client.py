"""Reads from the CDS client's FHIR server, bounded in time and size.

Every call shares one deadline per CDS request so a slow or hostile server can never hold a worker
past it; ``next`` links are followed only on the same server, a bounded number of times, and never
in a cycle. The bearer token is sent only to the ``fhirServer`` origin and never logged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from .raw import as_list


class FhirFetchError(Exception):
    """A FHIR read that failed; ``reason`` is safe to show to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Deadline:
    """A point in time shared by all calls made for one CDS request."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


@dataclass
class FetchStats:
    requests: int = 0
    pages: int = 0
    bytes: int = 0


class FhirClient:
    def __init__(
        self,
        base_url: str,
        *,
        access_token: str | None = None,
        deadline: Deadline,
        connect_timeout: float = 1.0,
        read_timeout: float = 2.0,
        max_pages: int = 20,
        max_bytes: int = 20_000_000,
        request_id: str | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self._origin = _origin(self.base_url)
        self._token = access_token
        self.deadline = deadline
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_pages = max_pages
        self.max_bytes = max_bytes
        self.request_id = request_id
        self.session = session or requests.Session()
        self.stats = FetchStats()

    def get_json(self, url: str) -> dict[str, Any]:
        """GET one URL (relative to the base) and return its JSON object."""
        absolute = urljoin(self.base_url, url)
        if _origin(absolute) != self._origin:
            raise FhirFetchError(f"refusing to follow a link off the FHIR server: {absolute[:200]}")
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise FhirFetchError(f"FHIR deadline of {self.deadline.seconds:g} s exceeded")
        headers = {"Accept": "application/fhir+json, application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self.request_id:
            headers["X-Request-ID"] = self.request_id
        timeout = (min(self.connect_timeout, remaining), min(self.read_timeout, remaining))
        self.stats.requests += 1
        try:
            with self.session.get(absolute, headers=headers, timeout=timeout, stream=True) as resp:
                body = self._read_body(resp)
                status = resp.status_code
        except requests.Timeout as exc:
            raise FhirFetchError(f"FHIR server timed out ({_path(absolute)})") from exc
        except requests.ConnectionError as exc:
            raise FhirFetchError(f"FHIR server unreachable ({self._origin})") from exc
        except requests.RequestException as exc:
            raise FhirFetchError(f"FHIR request failed: {type(exc).__name__}") from exc
        if status in (401, 403):
            raise FhirFetchError(
                f"FHIR server refused access ({status}) for {_path(absolute)}: "
                "check fhirAuthorization (token and scopes)"
            )
        if status != 200:
            raise FhirFetchError(f"FHIR server answered {status} for {_path(absolute)}")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise FhirFetchError(f"FHIR server sent a non-JSON body for {_path(absolute)}") from exc
        if not isinstance(data, dict):
            raise FhirFetchError(f"FHIR server sent JSON that is not a resource for {_path(absolute)}")
        return data

    def _read_body(self, resp: requests.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_content(8192):
            size += len(chunk)
            self.stats.bytes += len(chunk)
            if size > self.max_bytes:
                raise FhirFetchError(f"FHIR response larger than {self.max_bytes} bytes")
            if self.deadline.remaining() <= 0:
                raise FhirFetchError(f"FHIR deadline of {self.deadline.seconds:g} s exceeded")
            chunks.append(chunk)
        return b"".join(chunks)

    def search(self, query: str) -> list[dict[str, Any]]:
        """Run a search and return every resource, following ``next`` links within bounds."""
        url: str | None = query
        seen: set[str] = set()
        resources: list[dict[str, Any]] = []
        pages = 0
        while url:
            absolute = urljoin(self.base_url, url)
            if absolute in seen:
                raise FhirFetchError(f"FHIR paging loops back to a page already read ({_path(absolute)})")
            seen.add(absolute)
            pages += 1
            if pages > self.max_pages:
                raise FhirFetchError(f"FHIR search has more than {self.max_pages} pages ({_path(query)})")
            bundle = self.get_json(absolute)
            self.stats.pages += 1
            resources.extend(bundle_resources(bundle))
            url = next_link(bundle)
        return resources

    def continue_bundle(self, bundle: dict[str, Any]) -> list[dict[str, Any]]:
        """Resources of a (prefetched) Bundle plus those of the pages its ``next`` link leads to."""
        resources = bundle_resources(bundle)
        nxt = next_link(bundle)
        return resources + (self.search(nxt) if nxt else [])


def bundle_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    if bundle.get("resourceType") != "Bundle":
        return [bundle]
    out = []
    for entry in as_list(bundle.get("entry")):
        if isinstance(entry, dict):
            search = entry.get("search")
            if isinstance(search, dict) and search.get("mode") == "outcome":
                continue
            if isinstance(entry.get("resource"), dict):
                out.append(entry["resource"])
    return out


def next_link(bundle: dict[str, Any]) -> str | None:
    for link in as_list(bundle.get("link")):
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return (parts.scheme.lower(), parts.netloc.lower())


def _path(url: str) -> str:
    """The resource path of a URL, without query values (they may hold patient ids)."""
    return urlsplit(url).path.rsplit("/", 2)[-1] or "/"
