"""Reads from the CDS client's FHIR server for one CDS call: bounded in time, size and reach.

One :class:`CallBudget` per CDS call holds the hard deadline and the limits on bytes, pages and
resources, shared by every request the call makes. When the deadline passes the budget shuts down
every socket the call opened, so a server that drips bytes or never answers releases the thread
at once instead of at its own pace; no work continues after the answer.

A :class:`FetchPolicy` decides which servers may be asked at all (SSRF): https only in JWT mode,
no credentials in the URL, no loopback, link-local or unspecified address however spelled (the
address actually connected to is checked, so DNS tricks do not help), optionally only the origins
an issuer is allowlisted for. Redirects are followed only on the same origin, and the bearer token
goes only to the ``fhirServer`` origin; no environment proxy or ``.netrc`` is consulted.

Errors carry two texts: ``reason``, safe to show the caller (it never tells a refused connection
from a 404, which would let a caller probe ports), and ``detail`` for the log (no query values,
no patient data).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from .raw import as_list

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)  # what fetch_all's jobs are named by

#: Work that was already running when the deadline passed ends within this margin (documented in
#: docs/security.md): sockets are shut down at the deadline, parsing a page already read finishes.
DEADLINE_MARGIN = 0.25
#: Page size asked for when fetching a search (servers may cap it lower): fewer round trips.
PAGE_SIZE = 1000
MAX_REDIRECTS = 3
MAX_PARALLEL = 8
FAILED = "the FHIR server request failed"


class FhirFetchError(Exception):
    """A FHIR read that failed. ``reason`` is safe to show to the caller; ``detail`` is for the log."""

    def __init__(self, reason: str, detail: str | None = None, *, kind: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason
        self.kind = kind  # policy | deadline | limit | failed


# -- policy -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FetchPolicy:
    """Which ``fhirServer`` URLs may be fetched from (see docs/security.md, "FHIR server policy")."""

    allow_http: bool = False
    allow_loopback: bool = False
    allowed_origins: tuple[str, ...] | None = None  # per trusted issuer; None: any public origin
    show_detail: bool = False  # development: the caller sees the log's detail too

    def check(self, base_url: Any) -> str:
        """The normalised base URL, or FhirFetchError(kind="policy") saying which rule refused it."""
        if not isinstance(base_url, str) or not base_url:
            raise FhirFetchError("fhirServer refused: not a URL", kind="policy")
        try:
            parts = urlsplit(base_url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise FhirFetchError("fhirServer refused: not a valid URL", kind="policy") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FhirFetchError("fhirServer refused: must be an https URL", kind="policy")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise FhirFetchError(
                "fhirServer refused: credentials in the URL are not allowed (use fhirAuthorization)",
                kind="policy",
            )
        if parts.scheme == "http" and not self.allow_http:
            raise FhirFetchError(
                "fhirServer refused: https is required (plain http only with the development "
                "setting fhir_allow_http)",
                kind="policy",
            )
        if self.allowed_origins is not None and origin_of(base_url) not in self.allowed_origins:
            raise FhirFetchError(
                "fhirServer refused: not among the FHIR servers allowed for this client", kind="policy"
            )
        literal = _literal_address(parts.hostname)
        name = parts.hostname.rstrip(".").lower()
        is_localhost = name == "localhost" or name.endswith(".localhost")  # RFC 6761 §6.3
        if (literal is not None and not self.address_allowed(literal)) or (
            is_localhost and not self.allow_loopback
        ):
            raise FhirFetchError(
                "fhirServer refused: loopback, link-local and unspecified addresses are not allowed",
                kind="policy",
            )
        return base_url.rstrip("/") + "/"

    def address_allowed(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_loopback:
            return self.allow_loopback
        return not (address.is_link_local or address.is_unspecified or address.is_multicast)


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP literal in any spelling the resolver accepts (``127.1``, ``0x7f.1``, ``2130706433``)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def origin_of(url: str) -> str:
    """``scheme://host:port`` with the default port made explicit, lower-cased."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


# -- the per-call budget ----------------------------------------------------------------------------
@dataclass
class FetchStats:
    requests: int = 0
    pages: int = 0
    bytes: int = 0
    resources: int = 0


class CallBudget:
    """The hard deadline and the byte/page/resource limits of one CDS call, thread-safe."""

    def __init__(
        self,
        deadline_seconds: float,
        *,
        max_bytes: int = 20_000_000,
        max_pages: int = 50,
        max_resources: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = deadline_seconds
        self.max_bytes = max_bytes
        self.max_pages = max_pages
        self.max_resources = max_resources
        self._clock = clock
        self._ends = clock() + deadline_seconds
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.aborted = False
        self.stats = FetchStats()

    def remaining(self) -> float:
        return self._ends - self._clock()

    def check_time(self) -> float:
        remaining = self.remaining()
        if remaining <= 0 or self.aborted:
            raise self.deadline_error()
        return remaining

    def deadline_error(self) -> FhirFetchError:
        return FhirFetchError(f"FHIR deadline of {self.seconds:g} s exceeded", kind="deadline")

    def charge(self, *, requests: int = 0, pages: int = 0, nbytes: int = 0, resources: int = 0) -> None:
        with self._lock:
            s = self.stats
            s.requests += requests
            s.pages += pages
            s.bytes += nbytes
            s.resources += resources
            if s.bytes > self.max_bytes:
                raise FhirFetchError(FAILED, f"more than {self.max_bytes} bytes for one call", kind="limit")
            if s.pages > self.max_pages:
                raise FhirFetchError(FAILED, f"more than {self.max_pages} pages for one call", kind="limit")
            if s.resources > self.max_resources:
                raise FhirFetchError(
                    FAILED, f"more than {self.max_resources} resources for one call", kind="limit"
                )

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            if self.aborted:
                raise OSError("FHIR deadline passed")
            self._sockets.add(sock)

    def unregister(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def abort(self) -> None:
        """Shut down every open socket of the call: blocked reads return at once."""
        with self._lock:
            self.aborted = True
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# -- connections that obey the policy and the budget ------------------------------------------------
class _PolicyRefused(Exception):
    """Raised inside urllib3 (not an OSError, so it is not retried or rewrapped)."""


class _GuardedConnectionMixin:
    """Resolves the host itself, connects only to allowed addresses, within the deadline, and
    registers the socket with the call's budget so the deadline can shut it down."""

    _budget: CallBudget
    _policy: FetchPolicy
    _connect_timeout: float

    def _new_conn(self) -> socket.socket:  # type: ignore[override]
        host, port = self._dns_host, self.port  # type: ignore[attr-defined]
        budget = self._budget
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NewConnectionError(self, f"name resolution failed: {exc.strerror}") from None  # type: ignore[arg-type]
        allowed = [
            i for i in infos if self._policy.address_allowed(ipaddress.ip_address(i[4][0].split("%")[0]))
        ]
        if not allowed:
            raise _PolicyRefused("resolves only to loopback, link-local or unspecified addresses")
        last: OSError | None = None
        for family, socktype, proto, _name, address in allowed:
            sock = socket.socket(family, socktype, proto)
            try:
                budget.register(sock)
                remaining = budget.check_time()
                sock.settimeout(min(self._connect_timeout, remaining))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.connect(address)
                sock.settimeout(self.timeout)  # type: ignore[attr-defined]
                return sock
            except FhirFetchError:
                budget.unregister(sock)
                sock.close()
                raise
            except TimeoutError:
                budget.unregister(sock)
                sock.close()
                raise ConnectTimeoutError(self, "connect timed out") from None
            except OSError as exc:
                budget.unregister(sock)
                sock.close()
                last = exc
        raise NewConnectionError(self, f"connection failed: {last}")  # type: ignore[arg-type]

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._budget.register(self.sock)  # type: ignore[attr-defined] # the TLS socket, if any

    def close(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            self._budget.unregister(sock)
        super().close()  # type: ignore[misc]


def _adapter(budget: CallBudget, policy: FetchPolicy, connect_timeout: float) -> HTTPAdapter:
    """An HTTPAdapter whose pools make guarded connections (classes made per call: they carry it)."""
    attrs = {"_budget": budget, "_policy": policy, "_connect_timeout": connect_timeout}
    http_conn = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), attrs)
    https_conn = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), attrs)
    pools = {
        "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

    return Adapter(pool_connections=1, pool_maxsize=MAX_PARALLEL, max_retries=0)


def guarded_session(budget: CallBudget, policy: FetchPolicy, connect_timeout: float) -> requests.Session:
    """A keep-alive session whose connections obey ``policy`` and ``budget``; no environment
    proxies and no ``.netrc`` credentials (``trust_env`` off)."""
    session = requests.Session()
    session.trust_env = False
    adapter = _adapter(budget, policy, connect_timeout)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# -- the client -------------------------------------------------------------------------------------
class FhirClient:
    """The FHIR server of one CDS call: one keep-alive session, one budget, one policy."""

    def __init__(
        self,
        base_url: str,
        *,
        budget: CallBudget,
        policy: FetchPolicy | None = None,
        access_token: str | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float | None = None,
        request_id: str | None = None,
    ) -> None:
        """``read_timeout``: how long one read may wait for the server; None (the default) is what
        is left of the call's deadline, a number an upper bound within it. A shorter fixed timeout
        would drop a key that a server answering one request after another serves in time."""
        self.policy = policy or FetchPolicy()
        self.base_url = self.policy.check(base_url)
        self._origin = origin_of(self.base_url)
        self._token = access_token
        self.budget = budget
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.request_id = request_id
        self.session = guarded_session(budget, self.policy, connect_timeout)

    @property
    def stats(self) -> FetchStats:
        return self.budget.stats

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request ------------------------------------------------------------------------------
    def get_json(self, url: str) -> dict[str, Any]:
        """GET one URL (relative to the base) and return its JSON object."""
        absolute = urljoin(self.base_url, url)
        if origin_of(absolute) != self._origin:
            raise FhirFetchError(
                "refusing to follow a link off the FHIR server",
                f"link to {origin_of(absolute)}",
                kind="policy",
            )
        for _ in range(MAX_REDIRECTS + 1):
            status, body, location = self._get(absolute)
            if location is None:
                break
            target = urljoin(absolute, location)
            if origin_of(target) != self._origin:
                raise FhirFetchError(
                    "the FHIR server redirected to another origin (not followed)",
                    f"redirect from {_path(absolute)} to {origin_of(target)}",
                    kind="policy",
                )
            absolute = target
        else:
            raise FhirFetchError(FAILED, f"more than {MAX_REDIRECTS} redirects ({_path(absolute)})")
        if status in (401, 403):
            raise FhirFetchError(FAILED, f"answered {status} for {_path(absolute)}: check fhirAuthorization")
        if status != 200:
            raise FhirFetchError(FAILED, f"answered {status} for {_path(absolute)}")
        self.budget.check_time()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FhirFetchError(FAILED, f"non-JSON body for {_path(absolute)}") from None
        self.budget.check_time()  # parsing done after the deadline is thrown away
        if not isinstance(data, dict):
            raise FhirFetchError(FAILED, f"JSON that is not a resource for {_path(absolute)}")
        return data

    def _get(self, absolute: str) -> tuple[int, bytes, str | None]:
        """Status, body and (for a redirect) the Location of one GET, all within the budget."""
        remaining = self.budget.check_time()
        headers = {"Accept": "application/fhir+json, application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self.request_id:
            headers["X-Request-ID"] = self.request_id
        self.budget.charge(requests=1)
        read = remaining if self.read_timeout is None else min(self.read_timeout, remaining)
        timeout = (min(self.connect_timeout, remaining), read)
        try:
            with self.session.get(
                absolute, headers=headers, timeout=timeout, stream=True, allow_redirects=False
            ) as resp:
                if resp.is_redirect:
                    return resp.status_code, b"", resp.headers.get("Location") or ""
                body = self._read_body(resp) if resp.status_code == 200 else b""
                return resp.status_code, body, None
        except _PolicyRefused as exc:
            raise FhirFetchError(
                "fhirServer refused: loopback, link-local and unspecified addresses are not allowed",
                str(exc),
                kind="policy",
            ) from None
        except FhirFetchError:
            raise
        except Exception as exc:  # noqa: BLE001 - requests, urllib3 and http.client all raise here
            if self.budget.aborted or self.budget.remaining() <= 0:
                raise self.budget.deadline_error() from None
            kind = "timed out" if isinstance(exc, requests.Timeout) else type(exc).__name__
            raise FhirFetchError(FAILED, f"{kind} for {_path(absolute)} at {self._origin}") from None

    def _read_body(self, resp: requests.Response) -> bytes:
        chunks: list[bytes] = []
        for chunk in resp.raw.stream(65536, decode_content=True):
            self.budget.charge(nbytes=len(chunk))
            self.budget.check_time()
            chunks.append(chunk)
        return b"".join(chunks)

    # -- searches -----------------------------------------------------------------------------------
    def search(self, query: str) -> list[dict[str, Any]]:
        """Run a search and return every resource, following ``next`` links within the budget."""
        return self._follow(with_page_size(query), [])

    def continue_bundle(self, bundle: dict[str, Any]) -> list[dict[str, Any]]:
        """Resources of a (prefetched) Bundle plus those of the pages its ``next`` link leads to."""
        resources = bundle_resources(bundle)
        self.budget.charge(resources=len(resources))
        nxt = next_link(bundle)
        return self._follow(nxt, resources) if nxt else resources

    def _follow(self, url: str | None, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: set[str] = set()
        while url:
            absolute = urljoin(self.base_url, url)
            if absolute in seen:
                raise FhirFetchError(FAILED, f"paging loops back to a page already read ({_path(absolute)})")
            seen.add(absolute)
            self.budget.charge(pages=1)
            bundle = self.get_json(absolute)
            page = bundle_resources(bundle)
            self.budget.charge(resources=len(page))
            resources.extend(page)
            url = next_link(bundle)
        return resources

    def read(self, path: str) -> list[dict[str, Any]]:
        """A read (``Patient/1``) or a search (anything with ``?``), as a list of resources."""
        if "?" in path:
            return self.search(path)
        data = self.get_json(path)
        found = bundle_resources(data)
        self.budget.charge(resources=len(found))
        return found

    # -- many at once --------------------------------------------------------------------------------
    def fetch_all(
        self, jobs: dict[K, Callable[[], list[dict[str, Any]]]]
    ) -> tuple[dict[K, list[dict[str, Any]]], dict[K, FhirFetchError]]:
        """Run the jobs concurrently on this client; results and failures by key, never later than
        the deadline + :data:`DEADLINE_MARGIN`. Unfinished jobs fail with the deadline reason."""
        results: dict[K, list[dict[str, Any]]] = {}
        failures: dict[K, FhirFetchError] = {}
        if not jobs:
            return results, failures
        pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(jobs)), thread_name_prefix="fhir-fetch")
        futures: dict[K, Future[list[dict[str, Any]]]] = {key: pool.submit(job) for key, job in jobs.items()}
        try:
            _, pending = wait(futures.values(), timeout=max(self.budget.remaining(), 0))
            if pending:
                self.budget.abort()
                wait(pending, timeout=DEADLINE_MARGIN)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        for key, job in futures.items():
            if job.cancelled() or not job.done():
                failures[key] = self.budget.deadline_error()
                continue
            exc = job.exception()
            if exc is None:
                results[key] = job.result()
            elif isinstance(exc, FhirFetchError):
                failures[key] = exc
            else:  # a bug, not the server: keep the 412, log the type only
                log.error("FHIR fetch of %s crashed: %s", key, type(exc).__name__)
                failures[key] = FhirFetchError(FAILED, f"internal error {type(exc).__name__}")
        return results, failures


def with_page_size(query: str) -> str:
    """Ask for pages of :data:`PAGE_SIZE` (fewer round trips). A smaller ``_count`` in a template
    (``_count=200``, which bounds what a *client* prefetches in one page) is raised: the service
    follows every ``next`` page anyway, so only the number of round trips changes, not the data."""
    if "?" not in query:
        return query
    path, _, params = query.partition("?")
    parts = params.split("&")
    for i, part in enumerate(parts):
        name, _, value = part.partition("=")
        if name == "_count":
            if not value.isdigit() or int(value) < PAGE_SIZE:
                parts[i] = f"_count={PAGE_SIZE}"
            return f"{path}?{'&'.join(parts)}"
    return f"{query}&_count={PAGE_SIZE}"


_MATCH = {"mode": "match"}


def bundle_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """A Bundle's resources (the resource itself when it is not a Bundle); a search's notes
    (``search.mode: outcome``) are left out unless they report an error (results left out), which
    is kept for the record to say.

    It runs once per entry of every prefetch key, so the usual searchset (every entry an object with
    a resource object and a ``search.mode`` of ``match`` or ``include``) is taken in one loop of three
    subscripts and a string comparison per entry, no call (compiled: ~900 instructions an entry, where
    ``map`` with three ``itemgetter``s, a list of modes and a set of types took ~1,650). Any
    other is read entry by entry (:func:`entries_resources`, the definition), with the same result."""
    if bundle.get("resourceType") != "Bundle":
        return [bundle]
    entries = bundle.get("entry")
    if type(entries) is list:
        resources = []
        for entry in entries:
            # the usual entry, tested with no call: an object with a resource object and a search
            # object whose mode is a match or an include (a KeyError: a key is not there)
            if type(entry) is not dict:
                break
            try:
                resource = entry["resource"]
                search = entry["search"]
                if type(resource) is not dict or type(search) is not dict:
                    break
                mode = search["mode"]
            except KeyError:
                break
            if mode != "match" and mode != "include":
                break
            resources.append(resource)
        else:
            return resources
    return entries_resources(bundle)


def entries_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`bundle_resources` of a Bundle, entry by entry: its definition."""
    return [
        resource
        for entry in as_list(bundle.get("entry"))
        if isinstance(entry, dict)
        and isinstance(resource := entry.get("resource"), dict)
        and (
            (search := entry.get("search")) is None
            or search == _MATCH  # the usual entry: one comparison, no calls
            or not isinstance(search, dict)
            or search.get("mode") != "outcome"
            or is_error_outcome(resource)  # notes about the search are left out, an error is not
        )
    ]


def is_error_outcome(resource: dict[str, Any]) -> bool:
    """An OperationOutcome with an ``error`` or ``fatal`` issue: in a search Bundle, results may be
    missing (warnings and information, such as "no results" notes, are not gaps)."""
    return resource.get("resourceType") == "OperationOutcome" and any(
        isinstance(i, dict) and i.get("severity") in ("error", "fatal")
        for i in as_list(resource.get("issue"))
    )


def next_link(bundle: dict[str, Any]) -> str | None:
    for link in as_list(bundle.get("link")):
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def _path(url: str) -> str:
    """The resource type a URL reads, never its ids or query values (they may name the patient)."""
    for segment in urlsplit(url).path.split("/"):
        if segment[:1].isupper() and segment.isalpha():
            return segment
    return "/"


def origins(urls: Iterable[str]) -> tuple[str, ...]:
    """Normalised origins of configured URLs (for ``FetchPolicy.allowed_origins``)."""
    return tuple(dict.fromkeys(origin_of(u) for u in urls))
