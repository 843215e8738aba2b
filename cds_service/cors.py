"""CORS by flask_cors, with its answer to a request that sent no ``Origin`` remembered.

flask_cors's after-request hook cost ~0.25 M instructions per CDS call (header lookups that raise
and catch werkzeug's KeyError, a MultiDict built and printed for a debug line, a path regex), about
6 % of what a call spends around the pipeline. An EHR's server calls without an ``Origin`` header
(it is not a browser), and for such a request the headers flask_cors adds (``always_send``: the
allowed origin, the exposed headers) depend on its configuration alone, as long as every path falls
under its one resource (``r"/*"``, passed explicitly here) and the request is not a preflight. So
the first such response of each method runs flask_cors and the headers it appended are kept; later
ones get the same headers appended. Everything else — any request with ``Origin`` (a browser, the
Sandbox), a preflight, a response that already carries CORS headers — runs flask_cors itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from flask_cors import CORS

#: The one resource pattern the remembered answers rely on: every path.
ALL_PATHS = r"/*"
#: Request headers that make flask_cors answer differently (the environ keys WSGI gives them).
_VARYING = ("HTTP_ORIGIN", "HTTP_ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK")
#: Methods whose answer is kept (a bounded set: the method is whatever the client wrote).
_KEPT_METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH"})


def install(app: Flask, **options: Any) -> None:
    """``CORS(app, resources=r"/*", **options)``, its after-request hook wrapped by :func:`remembering`."""
    hooks = app.after_request_funcs.setdefault(None, [])
    before = list(hooks)
    CORS(app, resources=ALL_PATHS, **options)
    added = [f for f in hooks if f not in before]
    if len(added) != 1:  # another flask_cors: leave it as it is
        return
    hooks[hooks.index(added[0])] = remembering(added[0])


def _has_allow_origin(resp: Response) -> bool:
    """``"Access-Control-Allow-Origin" in resp.headers`` without werkzeug's lookup, which raises and
    catches a BadRequestKeyError whenever the header is missing (every Origin-less call)."""
    return any(name.lower() == "access-control-allow-origin" for name, _ in resp.headers)


def remembering(cors_after_request: Callable[[Response], Response]) -> Callable[[Response], Response]:
    """``cors_after_request``, with the headers it appends to an Origin-less response kept per method."""
    kept: dict[str, list[tuple[str, str]]] = {}
    lock = threading.Lock()

    def after_request(resp: Response) -> Response:
        environ = request.environ
        method = environ.get("REQUEST_METHOD", "")
        if (
            method not in _KEPT_METHODS
            or any(key in environ for key in _VARYING)
            or _has_allow_origin(resp)
            or hasattr(resp, "_FLASK_CORS_EVALUATED")
        ):
            return cors_after_request(resp)
        headers = kept.get(method)
        if headers is not None:
            for name, value in headers:
                resp.headers.add(name, value)
            return resp
        before = resp.headers.to_wsgi_list()
        out = cors_after_request(resp)
        after = out.headers.to_wsgi_list()
        if out is resp and after[: len(before)] == before:  # it only appended: keep what it appended
            with lock:
                kept.setdefault(method, after[len(before) :])
        return out

    return after_request
