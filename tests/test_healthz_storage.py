"""/healthz says whether the storage (SQLite or PostgreSQL) is reachable, without its URL.

Finding of session 4: /healthz answered 200 "ok" with the database down, so a load balancer kept
sending JWT calls to an instance that refuses them (the jti replay cache lives in the database).
Now: reachable → 200; unreachable → 503 "unavailable" when calls are authenticated, 200 "degraded"
without authentication (cards are still served, feedback is not stored). Never the URL, host,
user or password in the answer.
"""

from __future__ import annotations

import time
from pathlib import Path

from cds_service.app import create_app

from .conftest import make_settings


class _AnyToken:
    """Stands for a configured Authenticator: /healthz never authenticates."""


def _jwt_app(tmp_path: Path, database: str):
    settings = make_settings(
        tmp_path, database=database, insecure_no_auth=False, public_base_url="https://cds.example.org"
    )
    return create_app(settings, authenticator=_AnyToken())


def test_healthz_reports_a_reachable_sqlite_database(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    try:
        resp = app.test_client().get("/healthz")
    finally:
        app.extensions["ketamine_cds"].store.close()
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ok" and body["storage"] == {"backend": "sqlite", "reachable": True}
    assert str(tmp_path) not in resp.get_data(as_text=True)


def test_healthz_follows_postgresql_down_and_back(own_postgres_server, tmp_path: Path) -> None:
    url = own_postgres_server.create_database()
    jwt_app = _jwt_app(tmp_path / "jwt", url)
    open_app = create_app(make_settings(tmp_path / "open", database=url))
    jwt, dev = jwt_app.test_client(), open_app.test_client()
    try:
        resp = jwt.get("/healthz")
        assert resp.status_code == 200, resp.get_json()
        assert resp.get_json()["storage"] == {"backend": "postgresql", "reachable": True}
        own_postgres_server.stop_server()  # immediate: a crash
        started = time.monotonic()
        down = jwt.get("/healthz")
        assert time.monotonic() - started < 5
        degraded = dev.get("/healthz")
        own_postgres_server.start_server()
        back = jwt.get("/healthz")
    finally:
        jwt_app.extensions["ketamine_cds"].store.close()
        open_app.extensions["ketamine_cds"].store.close()
    assert down.status_code == 503, down.get_json()
    assert down.get_json()["status"] == "unavailable"
    assert down.get_json()["storage"] == {"backend": "postgresql", "reachable": False}
    assert degraded.status_code == 200 and degraded.get_json()["status"] == "degraded"
    assert degraded.get_json()["storage"]["reachable"] is False
    assert back.status_code == 200 and back.get_json()["storage"]["reachable"] is True
    for resp in (down, degraded, back):
        text = resp.get_data(as_text=True)
        assert own_postgres_server.password not in text
        assert "127.0.0.1" not in text and "postgresql://" not in text
