"""Log and error-body hygiene (issue 10 item 8): library log lines carry no request data, the
patient-id hash salt is never a fixed default, and 4xx bodies name the field without its value."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from cds_service import logs
from cds_service.app import create_app
from cds_service.logs import JsonFormatter, hash_id, init_salt
from tests.support.fault_fhir import FaultFhirServer

from .conftest import fhir_authorization, load_example, make_settings

PID = "zq9-hygiene-5513"
SECRET = "fhir-secret-7f3a9c"


@pytest.fixture(autouse=True)
def keep_salt():
    saved = logs._SALT
    yield
    logs._SALT = saved


def request_for_patient(pid: str = PID) -> dict[str, Any]:
    body = copy.deepcopy(load_example("v01-clear-trd-eligible"))
    body["context"]["patientId"] = pid
    body["prefetch"]["patient"]["id"] = pid
    return body


# -- library log lines --------------------------------------------------------------------------------
def test_library_log_lines_do_not_carry_request_data(tmp_path, caplog) -> None:
    """A FHIR server sends a broken header line: urllib3 warns with the full URL (patient id in
    the query) and the bytes it could not parse. The line as written must hold neither."""
    app = create_app(make_settings(tmp_path))
    body = request_for_patient()
    del body["prefetch"]["conditions"]
    caplog.set_level(logging.DEBUG)
    with FaultFhirServer() as srv, app.test_client() as c:
        srv.route(
            "/Condition",
            mode="ok",
            body={"resourceType": "Bundle", "type": "searchset"},
            headers={"X-Note": f"ok\r\nserver-bytes-{PID} without a colon"},
        )
        body["fhirServer"] = srv.base_url
        c.post("/cds-services/order-sign", data=json.dumps(body), content_type="application/json")
    app.extensions["ketamine_cds"].store.close()
    library = [r for r in caplog.records if not r.name.startswith(("cds_service", "ketamine_cds"))]
    assert any(r.name.startswith("urllib3") for r in library), "the attack produced a urllib3 line"
    formatter = JsonFormatter()
    for record in caplog.records:
        line = formatter.format(record)
        assert PID not in line, line


def test_formatter_writes_library_templates_without_arguments() -> None:
    record = logging.LogRecord(
        "urllib3.connectionpool",
        logging.WARNING,
        __file__,
        1,
        "Failed to parse headers (url=%s): %s",
        (f"https://fhir.example/Condition?patient={PID}", "garbage"),
        None,
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "Failed to parse headers (url=%s): %s"
    own = logging.LogRecord(
        "cds_service.api", logging.WARNING, __file__, 1, "authentication failed: %s", ("x",), None
    )
    assert json.loads(JsonFormatter().format(own))["msg"] == "authentication failed: x"


def test_gunicorn_lifecycle_lines_are_written_in_full_and_its_other_lines_as_templates() -> None:
    """On main an operator read "Listening at: %s (%s)"; gunicorn's own lifecycle lines carry only
    the server's address, pid, worker class and signal, so they are written in full."""

    def line(msg: str, args: tuple[object, ...]) -> str:
        record = logging.LogRecord("gunicorn.error", logging.INFO, __file__, 1, msg, args, None)
        return json.loads(JsonFormatter().format(record))["msg"]

    assert (
        line("Listening at: %s (%s)", ("http://127.0.0.1:8411", 4242))
        == "Listening at: http://127.0.0.1:8411 (4242)"
    )
    assert line("Booting worker with pid: %s", (4243,)) == "Booting worker with pid: 4243"
    assert line("Invalid request from ip=%s: %s", ("10.0.0.1", PID)) == "Invalid request from ip=%s: %s"


# -- the salt -----------------------------------------------------------------------------------------
def test_salt_is_generated_kept_private_and_reused(tmp_path: Path) -> None:
    fixed_default = hashlib.sha256(f"ketamine-cds:{PID}".encode()).hexdigest()[:16]
    create_app(make_settings(tmp_path)).extensions["ketamine_cds"].store.close()
    first = hash_id(PID)
    assert first != fixed_default, "no fixed default salt"
    kept = tmp_path / "log-salt"
    assert kept.exists() and stat.S_IMODE(kept.stat().st_mode) == 0o600
    create_app(make_settings(tmp_path)).extensions["ketamine_cds"].store.close()
    assert hash_id(PID) == first, "a restart (or another worker) hashes alike"
    other = tmp_path / "other"
    create_app(make_settings(other, database=other / "f.sqlite3")).extensions["ketamine_cds"].store.close()
    assert hash_id(PID) != first, "another installation has another salt"


def test_configured_salt_is_used(tmp_path: Path) -> None:
    init_salt("a-configured-salt-of-enough-length", tmp_path / "unused")
    assert (
        hash_id(PID) == hashlib.sha256(f"a-configured-salt-of-enough-length:{PID}".encode()).hexdigest()[:16]
    )
    assert not (tmp_path / "unused").exists()


# -- 4xx bodies -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.update(fhirAuthorization=f"Bearer {SECRET}"), "fhirAuthorization"),
        (lambda b: b["fhirAuthorization"].update(access_token=[SECRET]), "fhirAuthorization.access_token"),
        (lambda b: b["fhirAuthorization"].update(token_type=SECRET), "fhirAuthorization.token_type"),
        (lambda b: b.update(hookInstance={"x": SECRET}), "hookInstance"),
        (lambda b: b.update(hook=SECRET), "hook"),
        (lambda b: b["context"].update(patientId=[SECRET]), "context.patientId"),
    ],
)
def test_4xx_bodies_name_the_field_never_its_value(tmp_path, mutate, field) -> None:
    body = request_for_patient()
    body["fhirServer"] = "https://fhir.example/r4"
    body["fhirAuthorization"] = fhir_authorization("t")
    mutate(body)
    app = create_app(make_settings(tmp_path))
    with app.test_client() as c:
        resp = c.post("/cds-services/order-sign", data=json.dumps(body), content_type="application/json")
    app.extensions["ketamine_cds"].store.close()
    assert resp.status_code == 400
    assert resp.get_json()["field"] == field
    assert SECRET not in resp.get_data(as_text=True)


def test_instances_starting_together_share_one_salt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers or instances starting at the same moment on one host: none may read the salt file
    before its salt is written (it exited with "holds no usable salt"), and all use one salt."""
    import threading

    from cds_service import logs

    real = logs.secrets.token_hex

    def slow_token(n: int) -> str:  # the moment between creating the file and filling it, widened
        time.sleep(0.2)
        return real(n)

    monkeypatch.setattr(logs.secrets, "token_hex", slow_token)
    keep_at = tmp_path / "state" / "log-salt"
    outcomes: list[object] = []
    start = threading.Barrier(6)

    def start_instance() -> None:
        start.wait()
        try:
            init_salt(None, keep_at)
            outcomes.append("ok")
        except SystemExit as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=start_instance) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == ["ok"] * 6
    salt = keep_at.read_text(encoding="ascii").strip()
    assert len(salt) == 64 and oct(keep_at.stat().st_mode & 0o777) == "0o600"
    assert hash_id("x") == logs.hashlib.sha256(f"{salt}:x".encode()).hexdigest()[:16]
    assert [p.name for p in keep_at.parent.iterdir()] == ["log-salt"]  # no temporary file left
