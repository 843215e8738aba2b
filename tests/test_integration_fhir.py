"""The service against a real FHIR R4 server (Medplum's engine, `fhir_server/`), as an EHR uses it.

Every example patient is seeded into the session's two servers (open, and token-protected). For every
example the cards must not depend on how the data reached the service:

(a) prefetch filled by running the service's own prefetch templates (from discovery) against the server;
(b) no prefetch: the service fetches everything itself with the `fhirAuthorization` bearer token;
(b') partial prefetch: one key left out (a different one per example) is fetched by the service;

and the failure modes give a 412 that says why: (c) a wrong token, (d) a stopped server, a slow one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import client
from cds_service.app import create_app
from cds_service.services import PREFETCH
from tests.support.fault_fhir import FaultFhirServer
from tests.support.fhir_server import FhirServerHandle, start_fhir_server

from .conftest import EXAMPLES, CheckedClient, example_names, load_example, make_settings

NAMES = example_names()
KEYS = list(PREFETCH)


# -- helpers ----------------------------------------------------------------------------------------
def signature(cards: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What must not change: the cards' topics and indicators, in order."""
    return [(c["source"]["topic"]["code"], c["indicator"]) for c in cards]


def without_uuids(value: Any) -> Any:
    """Cards with their (random) uuid fields removed, for a full comparison."""
    if isinstance(value, dict):
        return {k: without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [without_uuids(v) for v in value]
    return value


def post(http: FlaskClient, request: dict[str, Any]) -> Any:
    return http.post(
        f"/cds-services/{request['hook']}", data=json.dumps(request), content_type="application/json"
    )


class FlaskService:
    """The Flask test client seen through the client's `CdsService` protocol (for `client.discover`)."""

    where = "flask-test-client"

    def __init__(self, http: FlaskClient) -> None:
        self.http = http

    def discover(self) -> client.Reply:
        resp = self.http.get("/cds-services")
        return client.Reply(resp.status_code, resp.get_json(silent=True))

    def call(self, service_id: str, body: dict[str, Any]) -> client.Reply:
        resp = self.http.post(f"/cds-services/{service_id}", json=body)
        return client.Reply(resp.status_code, resp.get_json(silent=True))


def fresh(request: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of an example request with a new hookInstance and the given top-level changes."""
    out = {k: v for k, v in request.items() if k != "prefetch"}
    out["hookInstance"] = str(uuid.uuid4())
    out.update({k: v for k, v in changes.items() if v is not None})
    return out


def build_app(tmp: Path, **overrides: Any) -> Flask:
    # fhir_error_detail: an integrator's test setup, where a 412 may say what the network did
    app = create_app(make_settings(tmp, **{"fhir_error_detail": True, **overrides}))
    app.test_client_class = CheckedClient
    return app


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The service with time override on (the examples are dated around 2026-05-04), module-wide."""
    app = build_app(tmp_path_factory.mktemp("integration"))
    yield app
    app.extensions["ketamine_cds"].store.close()


@pytest.fixture(scope="module")
def http(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as c:
        yield c


@pytest.fixture(scope="module")
def open_fhir(fhir_server: FhirServerHandle) -> FhirServerHandle:
    """The open FHIR server, holding every example patient (seeded with the client's own code)."""
    report = client.seed(client.Fhir(fhir_server.base_url), client.example_files([EXAMPLES]))
    assert len(report.patients) == len(NAMES)
    return fhir_server


@pytest.fixture(scope="module")
def token_fhir(fhir_server_with_token: FhirServerHandle) -> FhirServerHandle:
    """The token-protected FHIR server, holding every example patient."""
    fhir = client.Fhir(fhir_server_with_token.base_url, fhir_server_with_token.token)
    report = client.seed(fhir, client.example_files([EXAMPLES]))
    assert len(report.patients) == len(NAMES)
    return fhir_server_with_token


@pytest.fixture(scope="module")
def originals(http: FlaskClient) -> dict[str, list[dict[str, Any]]]:
    """Each example's cards from its own (built) prefetch: the reference."""
    out = {}
    for name in NAMES:
        resp = post(http, load_example(name))
        assert resp.status_code == 200, (name, resp.get_json())
        out[name] = resp.get_json()["cards"]
    return out


def assert_same_cards(name: str, cards: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    assert signature(cards) == signature(reference), name
    assert without_uuids(cards) == without_uuids(reference), f"{name}: same topics, different card content"


# -- (a) prefetch filled from the FHIR server -------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_prefetch_filled_from_fhir_server_gives_the_same_cards(
    name: str, http: FlaskClient, open_fhir: FhirServerHandle, originals: dict[str, list[dict[str, Any]]]
) -> None:
    request = load_example(name)
    service_id, templates = client.discover(FlaskService(http), request["hook"])
    assert templates == PREFETCH
    filled = client.fill_prefetch(client.Fhir(open_fhir.base_url), templates, request["context"])
    assert filled.omitted == {}
    assert set(filled.values) == set(request["prefetch"])
    # Same resources, in the same order, as the example's prefetch (the server only adds meta).
    for key, value in filled.values.items():
        got = [(r["resourceType"], r["id"]) for r in client.resources_in(value)]
        want = [(r["resourceType"], r["id"]) for r in client.resources_in(request["prefetch"][key])]
        assert got == want, (name, key)
    resp = http.post(
        f"/cds-services/{service_id}",
        json=fresh(request, fhirServer=open_fhir.base_url, prefetch=filled.values),
    )
    assert resp.status_code == 200, resp.get_json()
    assert_same_cards(name, resp.get_json()["cards"], originals[name])


# -- (b) no prefetch: the service fetches with the bearer token -------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_service_fetches_with_bearer_token_and_gives_the_same_cards(
    name: str, http: FlaskClient, token_fhir: FhirServerHandle, originals: dict[str, list[dict[str, Any]]]
) -> None:
    request = load_example(name)
    assert token_fhir.token
    body = fresh(
        request,
        fhirServer=token_fhir.base_url,
        fhirAuthorization=client.fhir_authorization(token_fhir.token, request["context"]["patientId"]),
    )
    assert "prefetch" not in body
    resp = post(http, body)
    assert resp.status_code == 200, resp.get_json()
    assert_same_cards(name, resp.get_json()["cards"], originals[name])


@pytest.mark.parametrize("name", NAMES)
def test_partial_prefetch_missing_key_is_fetched_with_the_token(
    name: str, http: FlaskClient, token_fhir: FhirServerHandle, originals: dict[str, list[dict[str, Any]]]
) -> None:
    request = load_example(name)
    assert token_fhir.token
    left_out = KEYS[NAMES.index(name) % len(KEYS)]  # every key is left out by some example
    fhir = client.Fhir(token_fhir.base_url, token_fhir.token)
    filled = client.fill_prefetch(fhir, PREFETCH, request["context"])
    assert filled.omitted == {}
    prefetch = {k: v for k, v in filled.values.items() if k != left_out}
    body = fresh(
        request,
        fhirServer=token_fhir.base_url,
        fhirAuthorization=client.fhir_authorization(token_fhir.token, request["context"]["patientId"]),
        prefetch=prefetch,
    )
    resp = post(http, body)
    assert resp.status_code == 200, resp.get_json()
    assert_same_cards(name, resp.get_json()["cards"], originals[name])


def test_client_prefetch_without_token_omits_every_key(token_fhir: FhirServerHandle) -> None:
    """An EHR that cannot read a key leaves it out (like the CDS Hooks Sandbox), never sends null."""
    filled = client.fill_prefetch(client.Fhir(token_fhir.base_url), PREFETCH, {"patientId": "v01"})
    assert filled.values == {}
    assert set(filled.omitted) == set(PREFETCH)
    assert all("refused access (401)" in reason for reason in filled.omitted.values())


def test_empty_search_is_sent_as_an_empty_searchset(open_fhir: FhirServerHandle) -> None:
    filled = client.fill_prefetch(client.Fhir(open_fhir.base_url), PREFETCH, {"patientId": "v14"})
    procedures = filled.values["procedures"]
    assert procedures["resourceType"] == "Bundle" and procedures["type"] == "searchset"
    assert not procedures.get("entry")


# -- (c) a wrong token ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["v01-clear-trd-eligible", "v15-patient-view-course"])
def test_wrong_token_gives_412_saying_access_was_refused(
    name: str, http: FlaskClient, token_fhir: FhirServerHandle
) -> None:
    request = load_example(name)
    body = fresh(
        request,
        fhirServer=token_fhir.base_url,
        fhirAuthorization=client.fhir_authorization("not-the-token", request["context"]["patientId"]),
    )
    resp = post(http, body)
    assert resp.status_code == 412
    error = resp.get_json()
    assert "answered 401" in error["error"] and "check fhirAuthorization" in error["error"], error
    assert sorted(error["missing"]) == sorted(PREFETCH)
    assert "not-the-token" not in json.dumps(error)


def test_no_token_gives_412_saying_access_was_refused(
    http: FlaskClient, token_fhir: FhirServerHandle
) -> None:
    resp = post(http, fresh(load_example("v01-clear-trd-eligible"), fhirServer=token_fhir.base_url))
    assert resp.status_code == 412
    assert "answered 401" in resp.get_json()["error"]


# -- (d) a stopped server, a slow server ------------------------------------------------------------
def test_stopped_fhir_server_gives_412_quickly(http: FlaskClient) -> None:
    request = load_example("v01-clear-trd-eligible")
    server = start_fhir_server(seed=[EXAMPLES / "v01-clear-trd-eligible.json"])
    base = server.base_url
    try:
        filled = client.fill_prefetch(client.Fhir(base), PREFETCH, request["context"])
        assert filled.omitted == {}, "the server was up and seeded"
    finally:
        server.stop()
    started = time.monotonic()
    resp = post(http, fresh(request, fhirServer=base))
    elapsed = time.monotonic() - started
    assert resp.status_code == 412
    assert "ConnectionError" in resp.get_json()["error"]
    assert elapsed < 1.0, f"connection refused should fail at once, took {elapsed:.2f} s"


@pytest.fixture(scope="module")
def app_1s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The service with a 1 s deadline for all FHIR fetches of a call."""
    app = build_app(tmp_path_factory.mktemp("deadline"), fhir_deadline=1.0)
    yield app
    app.extensions["ketamine_cds"].store.close()


def test_slow_fhir_server_gives_412_within_the_deadline(app_1s: Flask, fault_fhir: FaultFhirServer) -> None:
    fault_fhir.route("*", "slow", delay=5)
    request = load_example("v01-clear-trd-eligible")
    started = time.monotonic()
    resp = post(app_1s.test_client(), fresh(request, fhirServer=fault_fhir.base_url))
    elapsed = time.monotonic() - started
    assert resp.status_code == 412
    error = resp.get_json()
    assert "deadline of 1 s exceeded" in error["error"] or "timed out" in error["error"], error
    assert sorted(error["missing"]) == sorted(PREFETCH)
    assert 0.9 <= elapsed < 1.5, f"412 after {elapsed:.2f} s with a 1 s deadline"


def test_one_slow_search_gives_412_within_the_deadline(app_1s: Flask, fault_fhir: FaultFhirServer) -> None:
    """Only the survey search hangs; every other key is prefetched or answers at once."""
    request = load_example("v01-clear-trd-eligible")
    codes = PREFETCH["assessments"].split("code=")[1].split("&")[0]
    fault_fhir.route("/Observation", "slow", delay=5, query={"code": codes})
    prefetch = {k: v for k, v in request["prefetch"].items() if k != "assessments"}
    started = time.monotonic()
    resp = post(app_1s.test_client(), fresh(request, fhirServer=fault_fhir.base_url, prefetch=prefetch))
    elapsed = time.monotonic() - started
    assert resp.status_code == 412
    assert resp.get_json()["missing"] == ["assessments"]
    assert elapsed < 1.5, f"412 after {elapsed:.2f} s with a 1 s deadline"
    # only the scores were asked for: the template's codes (narrowed to the rules' window), and the
    # score history's (engine/windows.py)
    asked = [r.param("code") or "" for r in fault_fhir.requests_to("/Observation")]
    assert codes in asked and all(set(a.split(",")) <= set(codes.split(",")) for a in asked), asked
