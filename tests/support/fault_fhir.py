"""A fake FHIR server whose answers are scripted per path, for failure tests of FHIR access.

    with FaultFhirServer() as srv:
        srv.route("/Condition", mode="slow", delay=5)
        srv.route("/Observation", mode="status", status=503)
        srv.route("/Observation", query={"category": "survey"}, mode="drop")
        ...  # point the code under test at srv.base_url
        assert srv.requests[0].headers["Authorization"] == "Bearer t"

Modes (`route(path, mode=..., ...)`):

- ``ok``: answer `status` (200) with `body` (default: an empty searchset Bundle).
- ``status``: answer `status` with `body`, or an OperationOutcome when no body is given.
- ``slow``: wait `delay` seconds, then answer like ``ok``.
- ``non_json``: answer 200 with a body that is not JSON (an HTML page unless `body` is given),
  labelled `content_type` (default ``text/html``).
- ``huge``: answer 200 with a valid searchset Bundle of about `size` bytes (default 32 MiB),
  streamed; `content_length=False` leaves out Content-Length and closes the connection at the end.
- ``next_cycle``: a searchset Bundle whose `next` link is the URL just requested: paging never ends.
- ``next_endless``: each page links to a new page (`_page=N+1`) and has a new resource: never ends.
- ``drop``: close the connection without answering.
- ``drip``: answer 200 with a valid Bundle (or `body`), one byte every `interval` seconds (default 1).
- ``drip_headers``: send the status line, then one made-up header line every `interval` seconds,
  never ending the headers.
- ``redirect``: answer `status` (302) with ``Location: <location>``.
- ``proxy``: forward the request (path relative to the base, query, ``Authorization``) to
  `upstream` (another FHIR base URL, e.g. the real test server) and relay its status and body:
  with `delay` or a more specific route on top, one prefetch key can be made slow or failing
  while the others come from a real server.

``FaultFhirServer(serial=True)`` answers one request at a time (a single-threaded server, such as
one Node process busy with each search): requests sent together wait in turn, their `delay` too.

Any mode honours `delay` (wait before answering). A route matches the path relative to the base
(``/Condition`` or ``Condition``; ``*`` globs allowed), optionally only one `method` and only
requests whose query has the given `query` values; `times=N` makes it apply to the next N matching
requests only. The newest matching route wins. Unrouted paths answer 404 with an OperationOutcome.
Every request is recorded in `requests` (method, path, query, headers, body).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from requests.structures import CaseInsensitiveDict

MODES = frozenset(
    {
        "ok",
        "status",
        "slow",
        "non_json",
        "huge",
        "next_cycle",
        "next_endless",
        "drop",
        "drip",
        "drip_headers",
        "redirect",
        "proxy",
    }
)
FHIR_JSON = "application/fhir+json; charset=utf-8"
DEFAULT_HUGE_SIZE = 32 * 1024 * 1024
_CHUNK = 64 * 1024

# Sockets bound (never listening) by refused_url(), kept open so that no one else takes the port.
_reserved_sockets: list[socket.socket] = []


def operation_outcome(status: int, text: str | None = None) -> dict[str, Any]:
    """An OperationOutcome for an HTTP error status."""
    code = {
        400: "invalid",
        401: "login",
        403: "forbidden",
        404: "not-found",
        408: "timeout",
        429: "throttled",
        503: "transient",
        504: "timeout",
    }.get(status, "exception")
    text = text or f"HTTP {status} (scripted by FaultFhirServer)"
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


def empty_searchset() -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": 0}


def refused_url(path: str = "/fhir") -> str:
    """A URL on 127.0.0.1 where connecting is refused at once (ECONNREFUSED).

    The port is bound by a socket that never listens and stays open for the life of the process,
    so nothing else can start listening there during the tests.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _reserved_sockets.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}{path}"


@dataclass
class RecordedRequest:
    """One request as the fake saw it."""

    method: str
    path: str
    """Path relative to the base, with a leading slash: ``/Condition``, ``/Patient/p1``."""
    query: dict[str, list[str]]
    """Parsed query string (``parse_qs``, blank values kept)."""
    raw_query: str
    headers: CaseInsensitiveDict[str]
    body: bytes
    target: str
    """The request target exactly as sent: ``/fhir/Condition?patient=p1``."""
    route: str | None = None
    """The mode of the route that answered (None: unrouted, 404)."""

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Route:
    path: str
    mode: str
    method: str | None = None
    query: Mapping[str, str] | None = None
    status: int = 200
    body: Any = None
    delay: float = 0.0
    size: int = DEFAULT_HUGE_SIZE
    content_type: str | None = None
    content_length: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)
    times: int | None = None
    interval: float = 1.0
    location: str | None = None
    upstream: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str, query: Mapping[str, list[str]]) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        if not (fnmatch.fnmatchcase(path, self.path) if "*" in self.path else path == self.path):
            return False
        return all(value in query.get(name, []) for name, value in (self.query or {}).items())


class FaultFhirServer:
    """A scripted fake FHIR server on 127.0.0.1 (free port), served from a background thread."""

    def __init__(self, base_path: str = "/fhir", *, serial: bool = False) -> None:
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self._serial = threading.Lock() if serial else contextlib.nullcontext()
        self.requests: list[RecordedRequest] = []
        self.connections = 0  # TCP connections accepted (keep-alive reuse shows as fewer)
        self._routes: list[Route] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FaultFhirServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="FaultFhirServer",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; wakes handlers that are sleeping in `slow`/`delay`. Safe to call twice."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultFhirServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FaultFhirServer is not started")
        return self._httpd.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/fhir`` (no trailing slash)."""
        return self.origin + self.base_path

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    # -- scripting ---------------------------------------------------------------------------------

    def route(
        self,
        path: str,
        mode: str = "ok",
        *,
        body: Any = None,
        status: int | None = None,
        delay: float | None = None,
        size: int = DEFAULT_HUGE_SIZE,
        content_type: str | None = None,
        content_length: bool = True,
        method: str | None = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        times: int | None = None,
        interval: float = 1.0,
        location: str | None = None,
        upstream: str | None = None,
    ) -> Route:
        """Script the answer for `path` (relative to the base). See the module docstring."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {sorted(MODES)}")
        if mode == "status" and status is None:
            raise ValueError("mode 'status' needs status=")
        if mode == "proxy" and not upstream:
            raise ValueError("mode 'proxy' needs upstream=")
        if mode == "slow" and not delay:
            delay = 5.0
        route = Route(
            path=self._normalise(path),
            mode=mode,
            method=method.upper() if method else None,
            query=dict(query) if query else None,
            status=status if status is not None else 200,
            body=body,
            delay=delay or 0.0,
            size=size,
            content_type=content_type,
            content_length=content_length,
            headers=dict(headers or {}),
            times=times,
            interval=interval,
            location=location,
            upstream=upstream.rstrip("/") if upstream else None,
        )
        if mode == "redirect" and status is None:
            route.status = 302
        with self._lock:
            self._routes.append(route)
        return route

    def ok(self, path: str, body: Any, **kwargs: Any) -> Route:
        """Shorthand for ``route(path, mode="ok", body=body)``."""
        return self.route(path, "ok", body=body, **kwargs)

    def reset(self) -> None:
        """Forget routes and recorded requests."""
        with self._lock:
            self._routes.clear()
            self.requests.clear()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recorded requests for one path (relative to the base)."""
        path = self._normalise(path)
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _normalise(self, path: str) -> str:
        path = urlsplit(path).path if "://" in path else path
        if self.base_path and (path == self.base_path or path.startswith(self.base_path + "/")):
            path = path[len(self.base_path) :]
        return "/" + path.strip("/")

    def _match(self, method: str, path: str, query: Mapping[str, list[str]]) -> Route | None:
        with self._lock:
            for route in reversed(self._routes):
                if route.matches(method, path, query):
                    route.hits += 1
                    return route
        return None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 drops the SYNs of a client opening 8 connections at once

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: FaultFhirServer
    ) -> None:
        self.fake = fake
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up on slow or huge answers are expected; stay quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake.connections += 1

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    # -- dispatch ------------------------------------------------------------------------------------

    def _serve(self) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        path = fake._normalise(split.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        route = fake._match(self.command, path, query)
        fake._record(
            RecordedRequest(
                method=self.command,
                path=path,
                query=query,
                raw_query=split.query,
                headers=CaseInsensitiveDict(self.headers.items()),
                body=body,
                target=self.path,
                route=route.mode if route else None,
            )
        )
        with fake._serial:
            try:
                if route is None:
                    self._send_json(404, operation_outcome(404, f"no route for {path} in FaultFhirServer"))
                    return
                if route.delay and fake._stopping.wait(route.delay):
                    self.close_connection = True
                    return
                getattr(self, f"_mode_{route.mode}")(route, split.query, query)
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                self.close_connection = True

    # -- modes ---------------------------------------------------------------------------------------

    def _mode_ok(self, route: Route, raw_query: str, query: dict[str, list[str]]) -> None:
        body = empty_searchset() if route.body is None else route.body
        self._send_body(route.status, body, route)

    _mode_slow = _mode_ok

    def _mode_status(self, route: Route, raw_query: str, query: dict[str, list[str]]) -> None:
        body = operation_outcome(route.status) if route.body is None else route.body
        self._send_body(route.status, body, route)

    def _mode_non_json(self, route: Route, raw_query: str, query: dict[str, list[str]]) -> None:
        body = (
            route.body
            if route.body is not None
            else (
                "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
                "<body><h1>Bad Gateway</h1><p>The proxy could not reach the FHIR server.</p></body></html>"
            )
        )
        if not route.content_type:
            route = _with(route, content_type="text/html; charset=utf-8")
        self._send_body(route.status, body if isinstance(body, str | bytes) else str(body), route)

    def _mode_huge(self, route: Route, raw_query: str, query: dict[str, list[str]]) -> None:
        head, entry_for, tail, count = _huge_bundle_parts(route.size)
        total = len(head) + len(tail) + sum(len(entry_for(i)) for i in range(count))
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type or FHIR_JSON)
        if route.content_length:
            self.send_header("Content-Length", str(total))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        buffer = bytearray(head)
        for i in range(count):
            buffer += entry_for(i)
            if len(buffer) >= _CHUNK:
                self.wfile.write(buffer)
                buffer.clear()
                if self.server.fake._stopping.is_set():
                    self.close_connection = True
                    return
        buffer += tail
        self.wfile.write(buffer)

    def _mode_next_cycle(self, route: Route, raw_query: str, query: dict[str, list[str]]) -> None:
        fake = self.server.fake
        here = fake.origin + self.path
        bundle = dict(route.body) if isinstance(route.body, Mapping) else _page_bundle("cycle", 0)
        bundle["link"] = [{"relation": "self", "url": here}, {"relation": "next", "url": here}]
        self._send_body(route.status, bundle, route)

    def _mode_next_endless(self, route: Route, raw_query: str, query: dict[str, list[str]]) -> None:
        fake = self.server.fake
        try:
            page = int(query.get("_page", ["1"])[-1])
        except ValueError:
            page = 1
        following = {k: v for k, v in query.items() if k != "_page"}
        following["_page"] = [str(page + 1)]
        split = urlsplit(self.path)
        next_url = f"{fake.origin}{split.path}?{urlencode(following, doseq=True)}"
        bundle = _page_bundle("endless", page)
        bundle["link"] = [
            {"relation": "self", "url": fake.origin + self.path},
            {"relation": "next", "url": next_url},
        ]
        self._send_body(route.status, bundle, route)

    def _mode_drip(self, route: Route, raw_query: str, query: dict[str, list[str]]) -> None:
        body = route.body if route.body is not None else _page_bundle("drip", 0)
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        self.send_response(route.status)
        self.send_header("Content-Type", FHIR_JSON)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.flush()
        for i in range(len(data)):
            if self.server.fake._stopping.wait(route.interval):
                self.close_connection = True
                return
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()

    def _mode_drip_headers(self, route: Route, raw_query: str, query: dict[str, list[str]]) -> None:
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        self.wfile.flush()
        n = 0
        while not self.server.fake._stopping.wait(route.interval):
            n += 1
            self.wfile.write(f"X-Drip-{n}: {n}\r\n".encode("ascii"))
            self.wfile.flush()
        self.close_connection = True

    def _mode_redirect(self, route: Route, raw_query: str, query: dict[str, list[str]]) -> None:
        self.send_response(route.status)
        self.send_header("Location", route.location or "/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _mode_proxy(self, route: Route, raw_query: str, query: dict[str, list[str]]) -> None:
        split = urlsplit(self.path)
        target = f"{route.upstream}{self.server.fake._normalise(split.path)}"
        headers = {"Accept": self.headers.get("Accept") or FHIR_JSON}
        if self.headers.get("Authorization"):
            headers["Authorization"] = self.headers["Authorization"]
        upstream = requests.get(target + (f"?{raw_query}" if raw_query else ""), headers=headers, timeout=30)
        self._send_body(upstream.status_code, upstream.content, route)

    def _mode_drop(self, route: Route, raw_query: str, query: dict[str, list[str]]) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- writing -------------------------------------------------------------------------------------

    def _send_body(self, status: int, body: Any, route: Route) -> None:
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", route.content_type or FHIR_JSON)
        self.send_header("Content-Length", str(len(data)))
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status: int, body: Any) -> None:
        self._send_body(status, body, Route(path="", mode="status", status=status))


def _with(route: Route, **changes: Any) -> Route:
    values = {name: getattr(route, name) for name in route.__dataclass_fields__}
    values.update(changes)
    return Route(**values)


def _page_bundle(kind: str, page: int) -> dict[str, Any]:
    """A one-entry searchset page whose resource id is new on every page."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "fullUrl": f"urn:fault-fhir:Observation/{kind}-{page}",
                "search": {"mode": "match"},
                "resource": {
                    "resourceType": "Observation",
                    "id": f"{kind}-{page}",
                    "status": "final",
                    "code": {"text": f"{kind} page {page}"},
                },
            }
        ],
    }


def _huge_bundle_parts(size: int) -> tuple[bytes, Any, bytes, int]:
    """A searchset Bundle of about `size` bytes as (head, entry(i), tail, entry count)."""
    head = b'{"resourceType":"Bundle","type":"searchset","entry":['
    tail = b"]}"
    padding = "x" * 900

    def entry_for(i: int) -> bytes:
        text = (
            f'{{"resource":{{"resourceType":"Observation","id":"huge-{i:09d}","status":"final",'
            f'"code":{{"text":"{padding}"}}}}}}'
        )
        return (text if i == 0 else "," + text).encode("ascii")

    per_entry = len(entry_for(1))
    count = max(1, (size - len(head) - len(tail)) // per_entry + 1)
    return head, entry_for, tail, count
