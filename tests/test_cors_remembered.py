"""CORS headers with flask_cors's answer to Origin-less requests remembered (cds_service/cors.py) are
exactly flask_cors's own, on every response: with and without Origin, preflights, errors, first and
later calls, a wildcard and a listed origin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask

from cds_service import cors
from cds_service.app import create_app

from .conftest import load_example, make_settings

CALL = orjson.dumps(load_example("v01-clear-trd-eligible"))
REQUESTS: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("POST", "/cds-services/order-sign", {}, CALL),
    ("POST", "/cds-services/order-sign", {"Origin": "https://sandbox.cds-hooks.org"}, CALL),
    ("POST", "/cds-services/order-sign", {}, b"{not json"),
    ("POST", "/cds-services/nope", {}, CALL),
    ("GET", "/cds-services", {}, None),
    ("GET", "/cds-services", {"Origin": "https://elsewhere.example"}, None),
    ("GET", "/healthz", {}, None),
    ("GET", "/no/such/page", {}, None),
    ("GET", "/healthz", {"Access-Control-Request-Private-Network": "true"}, None),
    (
        "OPTIONS",
        "/cds-services/order-sign",
        {
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        None,
    ),
    ("OPTIONS", "/cds-services/order-sign", {}, None),
]


def cors_headers(app: Flask) -> list[list[tuple[str, str]]]:
    """The CORS-related response headers of every request in REQUESTS, sent twice each."""
    out = []
    with app.test_client() as c:
        for _round in range(2):
            for method, path, headers, body in REQUESTS:
                resp = c.open(
                    path, method=method, headers={"Content-Type": "application/json", **headers}, data=body
                )
                out.append(
                    [(k, v) for k, v in resp.headers.items() if k.startswith("Access-") or k == "Vary"]
                )
    return out


@pytest.mark.parametrize("origins", ["*", "https://sandbox.cds-hooks.org"])
def test_remembered_headers_are_flask_cors_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, origins: str
) -> None:
    apps = []
    for name, wrap in (("remembering", cors.remembering), ("plain", lambda f: f)):
        monkeypatch.setattr(cors, "remembering", wrap)
        apps.append(create_app(make_settings(tmp_path / name, cors_origins=origins)))
    try:
        remembered, plain = (cors_headers(app) for app in apps)
    finally:
        for app in apps:
            app.extensions["ketamine_cds"].store.close()
    assert remembered == plain
    assert any(h for h in plain[: len(REQUESTS)] if ("Access-Control-Allow-Origin", origins) in h)


def test_the_hook_is_wrapped_and_keeps_one_answer_per_method(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    try:
        hooks: list[Any] = app.after_request_funcs[None]
        wrapped = [f for f in hooks if f.__qualname__.startswith("remembering")]
        assert len(wrapped) == 1
        cors_headers(app)
        kept = next(c.cell_contents for c in wrapped[0].__closure__ if isinstance(c.cell_contents, dict))
        assert set(kept) == {"GET", "POST"}
    finally:
        app.extensions["ketamine_cds"].store.close()


def test_an_allow_origin_header_is_found_whatever_its_case() -> None:
    from flask import Response

    assert not cors._has_allow_origin(Response("x", headers={"X-Request-ID": "r"}))
    assert cors._has_allow_origin(Response("x", headers={"access-control-allow-origin": "*"}))
    assert cors._has_allow_origin(Response("x", headers={"Access-Control-Allow-Origin": "https://a"}))
