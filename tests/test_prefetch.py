"""Prefetch, all four cases, and FHIR server faults — each answered, none hanging, none a 500."""

from __future__ import annotations

import copy
import json
import time

import pytest

from cds_service.services import PREFETCH
from tests.support.fault_fhir import FaultFhirServer, operation_outcome, refused_url

from .conftest import fhir_authorization, load_example, make_settings

TOKEN = "s3cret-token"
AUTH = fhir_authorization(TOKEN)


def post(client, body, service="order-sign"):
    return client.post(f"/cds-services/{service}", data=json.dumps(body), content_type="application/json")


def topics(resp) -> list[tuple[str, str]]:
    return [(c["source"]["topic"]["code"], c["indicator"]) for c in resp.get_json()["cards"]]


@pytest.fixture
def v1():
    return load_example("v01-clear-trd-eligible")


def serve_keys(srv: FaultFhirServer, request: dict, keys: list[str]) -> None:
    """Make the fake server answer each key's query with what the prefetch held."""
    paths = {
        "conditions": "/Condition",
        "medicationRequests": "/MedicationRequest",
        "medicationStatements": "/MedicationStatement",
        "medicationDispenses": "/MedicationDispense",
        "medicationAdministrations": "/MedicationAdministration",
        "procedures": "/Procedure",
    }
    pregnancy_codes = PREFETCH["pregnancyStatus"].split("code=")[1].split("&")[0]
    if "assessments" in keys:  # the other Observation searches: scores by code, in two searches
        srv.route("/Observation", mode="ok", body=request["prefetch"]["assessments"])
    for key in keys:
        value = request["prefetch"][key]
        if key == "patient":
            srv.ok(f"/Patient/{request['context']['patientId']}", value)
        elif key == "vitalSigns":
            srv.route("/Observation", mode="ok", body=value, query={"category": "vital-signs"})
        elif key == "pregnancyStatus":
            srv.route("/Observation", mode="ok", body=value, query={"code": pregnancy_codes})
        elif key != "assessments":
            srv.ok(paths[key], value)


def test_present_prefetch_needs_no_fhir_server(client, v1):
    resp = post(client, v1)
    assert resp.status_code == 200
    assert topics(resp)


def test_null_prefetch_means_nothing_found_and_fetches_nothing(client, v1):
    body = copy.deepcopy(v1)
    for key in body["prefetch"]:
        if key != "patient":
            body["prefetch"][key] = None
    with FaultFhirServer() as srv:
        body["fhirServer"] = srv.base_url
        resp = post(client, body)
        assert srv.requests == []
    assert resp.status_code == 200
    # no history at all: TRD cannot be established for this ketamine order
    assert ("trd-not-established", "warning") in topics(resp) or not any(
        t == "trd-met" for t, _ in topics(resp)
    )


def test_missing_keys_are_fetched_with_the_bearer_token(client, v1):
    full = topics(post(client, v1))
    body = copy.deepcopy(v1)
    missing = [
        "patient",
        "conditions",
        "medicationRequests",
        "medicationDispenses",
        "vitalSigns",
        "assessments",
    ]
    with FaultFhirServer() as srv:
        serve_keys(srv, v1, missing)
        for key in missing:
            del body["prefetch"][key]
        body["fhirServer"] = srv.base_url
        body["fhirAuthorization"] = AUTH
        resp = post(client, body)
        assert resp.status_code == 200, resp.get_json()
        # vital signs: the window and readings without effective[x]; scores: the history too
        assert len(srv.requests) == len(missing) + 3
        for r in srv.requests:
            assert r.headers["Authorization"] == f"Bearer {TOKEN}"
            assert r.headers.get("X-Request-ID")
        queries = {
            r.path + "?" + "&".join(f"{k}={v[0]}" for k, v in sorted(r.query.items())) for r in srv.requests
        }
        assert any("patient=" + v1["context"]["patientId"] in q for q in queries)
    assert topics(resp) == full, "fetched data gives the same cards as prefetched data"


def test_operation_outcome_in_prefetch_is_fetched_instead(client, v1):
    full = topics(post(client, v1))
    body = copy.deepcopy(v1)
    body["prefetch"]["conditions"] = operation_outcome(500, "could not search")
    with FaultFhirServer() as srv:
        serve_keys(srv, v1, ["conditions"])
        body["fhirServer"] = srv.base_url
        resp = post(client, body)
        assert [r.path for r in srv.requests] == ["/Condition"]
    assert resp.status_code == 200
    assert topics(resp) == full


def test_missing_key_without_fhir_server_is_412(client, v1):
    body = copy.deepcopy(v1)
    del body["prefetch"]["conditions"]
    resp = post(client, body)
    assert resp.status_code == 412
    assert "conditions" in resp.get_json()["error"] and resp.get_json()["missing"] == ["conditions"]


def test_unreachable_fhir_server_is_412(client, v1):
    body = copy.deepcopy(v1)
    del body["prefetch"]["medicationRequests"]
    body["fhirServer"] = refused_url()
    resp = post(client, body)
    assert resp.status_code == 412
    assert "the FHIR server request failed" in resp.get_json()["error"]
    assert resp.get_json()["missing"] == ["medicationRequests"]


def test_prefetched_bundle_next_page_is_followed(client, v1):
    body = copy.deepcopy(v1)
    bundle = body["prefetch"]["medicationRequests"]
    entries = bundle["entry"]
    first, rest = entries[:1], entries[1:]
    with FaultFhirServer() as srv:
        page2 = {"resourceType": "Bundle", "type": "searchset", "entry": rest}
        srv.ok("/MedicationRequest", page2)
        bundle["entry"] = first
        bundle["link"] = [{"relation": "next", "url": srv.url("/MedicationRequest?patient=x&page=2")}]
        body["fhirServer"] = srv.base_url
        resp = post(client, body)
        assert len(srv.requests) == 1
    assert resp.status_code == 200
    assert topics(resp) == topics(post(client, v1))


@pytest.mark.parametrize(
    ("route", "expect"),
    [
        ({"mode": "status", "status": 401}, "answered 401 for Condition: check fhirAuthorization"),
        ({"mode": "status", "status": 403}, "answered 403"),
        ({"mode": "status", "status": 404}, "answered 404"),
        ({"mode": "status", "status": 500}, "answered 500"),
        ({"mode": "non_json"}, "non-JSON"),
        ({"mode": "huge", "size": 3_000_000}, "more than 1000000 bytes"),
        ({"mode": "next_cycle"}, "loops back"),
        ({"mode": "next_endless"}, "more than 5 pages"),
        ({"mode": "drop"}, "ConnectionError"),
        ({"mode": "slow", "delay": 5}, "timed out"),
    ],
)
def test_fhir_faults_are_412_with_a_reason_within_the_deadline(tmp_path, v1, route, expect):
    from cds_service.app import create_app

    app = create_app(
        make_settings(
            tmp_path,
            fhir_deadline=1.5,
            fhir_read_timeout=1.0,
            fhir_max_bytes=1_000_000,
            fhir_max_pages=5,
            fhir_error_detail=True,
        )
    )
    body = copy.deepcopy(v1)
    del body["prefetch"]["conditions"]
    with FaultFhirServer() as srv, app.test_client() as c:
        srv.route("/Condition", **route)
        body["fhirServer"] = srv.base_url
        started = time.monotonic()
        resp = post(c, body)
        elapsed = time.monotonic() - started
    assert resp.status_code == 412, resp.get_json()
    assert expect in resp.get_json()["error"], resp.get_json()
    assert elapsed < 1.5 + 0.5, f"answered after {elapsed:.2f}s, past the deadline"


def test_dribbling_server_cannot_hold_the_worker_past_the_deadline(tmp_path, v1):
    from cds_service.app import create_app

    app = create_app(make_settings(tmp_path, fhir_deadline=1.0, fhir_read_timeout=0.9))
    body = copy.deepcopy(v1)
    for key in ("conditions", "medicationRequests", "procedures"):
        del body["prefetch"][key]
    with FaultFhirServer() as srv, app.test_client() as c:
        srv.route("/*", mode="slow", delay=0.8)  # each answer just under the read timeout
        srv.route("/Condition", mode="next_endless", delay=0.5)
        body["fhirServer"] = srv.base_url
        started = time.monotonic()
        resp = post(c, body)
        elapsed = time.monotonic() - started
    # the two keys that answered are read; the endless one is not: a partial answer, in time
    assert resp.status_code == 200, resp.get_json()
    gaps = [c for c in resp.get_json()["cards"] if c["source"]["topic"]["code"] == "data-gaps"]
    assert gaps and "diagnoses (Condition)" in gaps[0]["summary"], [
        c["summary"] for c in resp.get_json()["cards"]
    ]
    assert elapsed < 1.6


def test_links_off_the_fhir_server_are_not_followed(client, v1):
    body = copy.deepcopy(v1)
    with FaultFhirServer() as srv, FaultFhirServer() as other:
        body["prefetch"]["conditions"]["link"] = [{"relation": "next", "url": other.url("/Condition?page=2")}]
        body["fhirServer"] = srv.base_url
        body["fhirAuthorization"] = AUTH
        resp = post(client, body)
        assert other.requests == [], "the token must never go to another host"
    assert resp.status_code == 412
    assert "link off the FHIR server" in resp.get_json()["error"]


def test_another_patients_prefetched_patient_is_fetched_again(client, v1, caplog):
    """A prefetched Patient whose id is not context.patientId is another patient's (an EHR's
    mix-up): with a fhirServer, this patient's Patient is fetched instead, and the cards are those
    of the prefetched record (before: left out, so date of birth, sex and vital status unknown).
    The call log says where the Patient came from, never the other id."""
    full = topics(post(client, v1))
    body = copy.deepcopy(v1)
    body["prefetch"]["patient"]["id"] = "someone-else"
    with FaultFhirServer() as srv:
        serve_keys(srv, v1, ["patient"])
        body["fhirServer"] = srv.base_url
        with caplog.at_level("INFO"):
            resp = post(client, body)
        assert [r.path for r in srv.requests] == [f"/Patient/{v1['context']['patientId']}"]
    assert resp.status_code == 200, resp.get_json()
    assert topics(resp) == full
    assert "someone-else" not in resp.get_data(as_text=True)
    (call,) = [r for r in caplog.records if r.getMessage() == "cds call"]
    assert call.fields["prefetch"]["patient"] == "fetched-after-other-patient", call.fields["prefetch"]
    assert "someone-else" not in json.dumps([getattr(r, "fields", {}) for r in caplog.records], default=str)


def test_another_patients_patient_is_left_out_without_a_fhir_server(client, v1):
    """No fhirServer to fetch from: the call still answers, the Patient left out and said."""
    body = copy.deepcopy(v1)
    body["prefetch"]["patient"]["id"] = "someone-else"
    resp = post(client, body)
    assert resp.status_code == 200
    assert "another patient" in resp.get_data(as_text=True)
