"""The FHIR peers used by other tests: the Node FHIR server, its fixtures, and the fault fake."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import fhir_server as fhir_server_module
from tests.support.fault_fhir import FaultFhirServer, refused_url
from tests.support.fhir_server import (
    FhirServerError,
    FhirServerHandle,
    put_resources,
    start_fhir_server,
)

# The fixtures (fhir_server, fhir_server_with_token, fault_fhir); conftest.py may import them too.
pytest_plugins = ["tests.support.fixtures"]

FHIR_JSON = "application/fhir+json"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


# -- test data -----------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1984-05-06"}


def condition(cid: str, pid: str, code: str = "370143000") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
    }


def observation(oid: str, pid: str, when: str, code: str, category: str | None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
    }
    if category:
        obs["category"] = [{"coding": [{"system": OBS_CATEGORY, "code": category}]}]
    return obs


def record_for(pid: str) -> list[dict[str, Any]]:
    """One patient with two conditions, three vital signs, a survey and a pregnancy status."""
    return [
        patient(pid),
        condition(f"{pid}-c1", pid),
        condition(f"{pid}-c2", pid, "73867007"),
        observation(f"{pid}-bp-jan", pid, "2026-01-10T09:00:00Z", "85354-9", "vital-signs"),
        observation(f"{pid}-bp-mar", pid, "2026-03-10T09:00:00Z", "85354-9", "vital-signs"),
        observation(f"{pid}-hr-feb", pid, "2026-02-10T09:00:00Z", "8867-4", "vital-signs"),
        observation(f"{pid}-phq9", pid, "2026-02-11T09:00:00Z", "44261-6", "survey"),
        observation(f"{pid}-preg", pid, "2026-04-01T09:00:00Z", "82810-3", None),
    ]


def search_ids(server: FhirServerHandle, query: str) -> list[str]:
    response = requests.get(f"{server.base_url}/{query}", headers=server.auth_headers(), timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return [entry["resource"]["id"] for entry in bundle.get("entry", [])]


@pytest.fixture
def seeded(fhir_server: FhirServerHandle) -> str:
    pid = new_id("pt")
    fhir_server.put_resources(record_for(pid))
    # a second patient whose data must never show up in the first one's searches
    other = new_id("other")
    fhir_server.put_resources(record_for(other))
    return pid


# -- the Node FHIR server --------------------------------------------------------------------------


def test_metadata_is_a_capability_statement(fhir_server: FhirServerHandle) -> None:
    assert fhir_server.base_url.startswith("http://127.0.0.1:")
    assert fhir_server.base_url.endswith("/fhir")
    response = requests.get(f"{fhir_server.base_url}/metadata", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    capability = response.json()
    assert capability["resourceType"] == "CapabilityStatement"
    assert capability["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in capability["rest"][0]["resource"]}
    assert {
        "Patient",
        "Condition",
        "Observation",
        "MedicationRequest",
        "MedicationStatement",
        "MedicationDispense",
        "MedicationAdministration",
        "Procedure",
    } <= types
    assert "DomainResource" not in types


def test_put_then_search_conditions(fhir_server: FhirServerHandle, seeded: str) -> None:
    assert sorted(search_ids(fhir_server, f"Condition?patient={seeded}")) == [f"{seeded}-c1", f"{seeded}-c2"]
    assert sorted(search_ids(fhir_server, f"Condition?subject=Patient/{seeded}")) == [
        f"{seeded}-c1",
        f"{seeded}-c2",
    ]
    read = requests.get(f"{fhir_server.base_url}/Patient/{seeded}", timeout=30)
    assert read.status_code == 200
    assert read.json()["birthDate"] == "1984-05-06"


def test_vital_signs_search_sorted_newest_first(
    fhir_server: FhirServerHandle,
    seeded: str,
) -> None:
    query = f"Observation?patient={seeded}&category=vital-signs&_sort=-date&_count=200"
    assert search_ids(fhir_server, query) == [f"{seeded}-bp-mar", f"{seeded}-hr-feb", f"{seeded}-bp-jan"]
    survey = f"Observation?patient={seeded}&category=survey&_sort=-date&_count=200"
    assert search_ids(fhir_server, survey) == [f"{seeded}-phq9"]


def test_search_by_system_and_code(fhir_server: FhirServerHandle, seeded: str) -> None:
    expected = [f"{seeded}-preg"]
    assert search_ids(fhir_server, f"Observation?patient={seeded}&code=http://loinc.org|82810-3") == expected
    encoded = f"Observation?patient={seeded}&code=http%3A%2F%2Floinc.org%7C82810-3&_sort=-date&_count=10"
    assert search_ids(fhir_server, encoded) == expected
    assert search_ids(fhir_server, f"Observation?patient={seeded}&code=http://snomed.info/sct|82810-3") == []


def test_form_encoded_post_search(fhir_server: FhirServerHandle, seeded: str) -> None:
    response = requests.post(
        f"{fhir_server.base_url}/Observation/_search",
        data={"patient": seeded, "category": "vital-signs", "_sort": "-date", "_count": "200"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    ids = [e["resource"]["id"] for e in response.json()["entry"]]
    assert ids == [f"{seeded}-bp-mar", f"{seeded}-hr-feb", f"{seeded}-bp-jan"]
    # parameters in the URL and the body are combined
    response = requests.post(
        f"{fhir_server.base_url}/Condition/_search?patient={seeded}", data={"code": "73867007"}, timeout=30
    )
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [f"{seeded}-c2"]


def test_paging_links(fhir_server: FhirServerHandle, seeded: str) -> None:
    url: str | None = f"{fhir_server.base_url}/Observation?patient={seeded}&_sort=date&_count=2"
    pages = []
    while url:
        bundle = requests.get(url, timeout=30).json()
        assert bundle["total"] == 5
        pages.append([e["resource"]["id"] for e in bundle.get("entry", [])])
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert pages == [
        [f"{seeded}-bp-jan", f"{seeded}-hr-feb"],
        [f"{seeded}-phq9", f"{seeded}-bp-mar"],
        [f"{seeded}-preg"],
    ]


def test_create_update_and_transaction(fhir_server: FhirServerHandle) -> None:
    base = fhir_server.base_url
    created = requests.post(
        f"{base}/Patient",
        json={"resourceType": "Patient", "gender": "male"},
        headers={"Content-Type": FHIR_JSON},
        timeout=30,
    )
    assert created.status_code == 201
    pid = created.json()["id"]
    assert created.headers["Location"].startswith(f"{base}/Patient/{pid}")
    updated = requests.put(
        f"{base}/Patient/{pid}",
        json={"resourceType": "Patient", "id": pid, "gender": "female"},
        headers={"Content-Type": FHIR_JSON},
        timeout=30,
    )
    assert updated.status_code == 200
    assert updated.json()["meta"]["versionId"] != created.json()["meta"]["versionId"]

    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{pid}"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        ],
    }
    answer = requests.post(base, json=batch, headers={"Content-Type": FHIR_JSON}, timeout=30).json()
    assert answer["type"] == "batch-response"
    assert [e["response"]["status"][:3] for e in answer["entry"]] == ["200", "404"]
    assert answer["entry"][0]["resource"]["gender"] == "female"


def test_errors_are_operation_outcomes(fhir_server: FhirServerHandle) -> None:
    base = fhir_server.base_url
    cases = [
        requests.get(f"{base}/Patient/no-such-patient", timeout=30),
        requests.get(f"{base}/NotAResource?x=1", timeout=30),
        requests.get(f"{base}/Observation?patient=p&bogus-param=1", timeout=30),
        requests.get(f"{base}/Observation?_sort=-nonsense", timeout=30),
        requests.get(f"{base}/Observation?_count=many", timeout=30),
        requests.post(f"{base}/Patient", data=b"{not json", headers={"Content-Type": FHIR_JSON}, timeout=30),
        requests.post(f"{base}/Patient", data=b"[1, 2]", headers={"Content-Type": FHIR_JSON}, timeout=30),
        requests.put(
            f"{base}/Patient/a",
            json={"resourceType": "Condition", "id": "a"},
            headers={"Content-Type": FHIR_JSON},
            timeout=30,
        ),
        requests.get(f"{base.removesuffix('/fhir')}/not-fhir", timeout=30),
    ]
    assert [r.status_code for r in cases] == [404, 404, 400, 400, 400, 400, 400, 400, 404]
    for response in cases:
        assert response.headers["Content-Type"].startswith(FHIR_JSON)
        assert response.json()["resourceType"] == "OperationOutcome"
    assert requests.get(f"{base}/metadata", timeout=30).status_code == 200  # still up


def test_token_is_enforced(fhir_server_with_token: FhirServerHandle) -> None:
    server = fhir_server_with_token
    assert server.token
    pid = new_id("tok")
    with pytest.raises(FhirServerError):
        put_resources(server.base_url, [patient(pid)], token=None)
    put_resources(server.base_url, [patient(pid)], token=server.token)

    url = f"{server.base_url}/Patient?_id={pid}"
    missing = requests.get(url, timeout=30)
    assert missing.status_code == 401
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(url, headers={"Authorization": f"Bearer {server.token}x"}, timeout=30)
    assert wrong.status_code == 401
    right = requests.get(url, headers={"Authorization": f"Bearer {server.token}"}, timeout=30)
    assert right.status_code == 200
    assert [e["resource"]["id"] for e in right.json()["entry"]] == [pid]
    # /metadata and CORS preflight stay open
    assert requests.get(f"{server.base_url}/metadata", timeout=30).status_code == 200
    assert requests.options(url, timeout=30).status_code == 204


def test_cors(fhir_server: FhirServerHandle) -> None:
    preflight = requests.options(
        f"{fhir_server.base_url}/Observation/_search",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=30,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "accept"} <= allowed
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    simple = requests.get(
        f"{fhir_server.base_url}/metadata", headers={"Origin": "http://localhost:3000"}, timeout=30
    )
    assert simple.headers["Access-Control-Allow-Origin"] == "*"


def test_seed_files_and_directories(tmp_path: Path) -> None:
    pid = new_id("seed")
    hook_request = {
        "hookInstance": str(uuid.uuid4()),
        "hook": "order-select",
        "fhirServer": "http://example.org/fhir",
        "context": {
            "userId": "Practitioner/1",
            "patientId": pid,
            "selections": [f"MedicationRequest/{pid}-draft"],
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "MedicationRequest",
                            "id": f"{pid}-draft",
                            "status": "draft",
                            "intent": "order",
                            "subject": {"reference": f"Patient/{pid}"},
                            "medicationCodeableConcept": {"text": "esketamine"},
                        }
                    }
                ],
            },
        },
        "prefetch": {
            "patient": patient(pid),
            "conditions": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": condition(f"{pid}-c1", pid)}],
            },
            "vitalSigns": {"resourceType": "Bundle", "type": "searchset", "total": 0},
            "procedures": None,
            "assessments": {"resourceType": "OperationOutcome", "issue": []},  # not loaded
        },
    }
    (tmp_path / "hook.json").write_text(json.dumps(hook_request))
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "a-resource.json").write_text(json.dumps(condition(f"{pid}-c2", pid)))
    (extra / "b-transaction.json").write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "request": {"method": "PUT", "url": f"Condition/{pid}-c3"},
                        "resource": condition(f"{pid}-c3", pid),
                    }
                ],
            }
        )
    )
    (extra / "notes.txt").write_text("not json, ignored: only *.json files load")
    (extra / "c-expected-response.json").write_text(json.dumps({"cards": []}))  # skipped

    with start_fhir_server(seed=[tmp_path / "hook.json", extra]) as server:
        assert sorted(search_ids(server, f"Condition?patient={pid}")) == [
            f"{pid}-c1",
            f"{pid}-c2",
            f"{pid}-c3",
        ]
        assert search_ids(server, f"Patient?_id={pid}") == [pid]
        assert search_ids(server, f"MedicationRequest?patient={pid}") == []  # draftOrders skipped
        assert "seeded 4 resources" in server.stderr
        assert "c-expected-response.json: skipped" in server.stderr
        assert search_ids(server, "OperationOutcome") == []


def test_bad_seed_fails_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(FhirServerError, match="bad.json"):
        start_fhir_server(seed=[bad])


def test_missing_packages_name_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "server.mjs").write_text("")
    monkeypatch.setattr(fhir_server_module, "FHIR_SERVER_DIR", tmp_path)
    monkeypatch.setattr(fhir_server_module, "SERVER_SCRIPT", tmp_path / "server.mjs")
    with pytest.raises(FhirServerError, match=r"npm ci --prefix fhir_server"):
        start_fhir_server()


def test_stop_ends_the_process() -> None:
    server = start_fhir_server()
    url = f"{server.base_url}/metadata"
    assert requests.get(url, timeout=30).status_code == 200
    server.stop()
    assert server.process.poll() is not None
    server.stop()  # a second stop is harmless
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)


# -- the fault-injecting fake ------------------------------------------------------------------------


def test_fake_ok_and_recording(fault_fhir: FaultFhirServer) -> None:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": condition("c1", "p1")}]}
    fault_fhir.route("/Condition", mode="ok", body=bundle)
    response = requests.get(
        f"{fault_fhir.base_url}/Condition",
        params={"patient": "p1"},
        headers={"Authorization": "Bearer t0k", "X-Request-ID": "req-1"},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    assert response.json() == bundle
    [seen] = fault_fhir.requests
    assert (seen.method, seen.path, seen.query) == ("GET", "/Condition", {"patient": ["p1"]})
    assert seen.param("patient") == "p1"
    assert seen.headers["authorization"] == "Bearer t0k"
    assert seen.headers["X-Request-Id"] == "req-1"
    assert seen.target == "/fhir/Condition?patient=p1"
    assert fault_fhir.requests_to("Condition") == [seen]


def test_fake_unrouted_is_404(fault_fhir: FaultFhirServer) -> None:
    response = requests.get(f"{fault_fhir.base_url}/Patient/p1", timeout=5)
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    assert fault_fhir.requests[0].route is None


def test_fake_status(fault_fhir: FaultFhirServer) -> None:
    fault_fhir.route("/Condition", mode="status", status=503)
    fault_fhir.route("/Procedure", mode="status", status=500, body="<h1>oops</h1>", content_type="text/html")
    unavailable = requests.get(f"{fault_fhir.base_url}/Condition", timeout=5)
    assert unavailable.status_code == 503
    assert unavailable.json()["resourceType"] == "OperationOutcome"
    broken = requests.get(f"{fault_fhir.base_url}/Procedure", timeout=5)
    assert (broken.status_code, broken.text) == (500, "<h1>oops</h1>")


def test_fake_slow(fault_fhir: FaultFhirServer) -> None:
    fault_fhir.route("/Condition", mode="slow", delay=0.4)
    started = time.monotonic()
    response = requests.get(f"{fault_fhir.base_url}/Condition", timeout=5)
    assert time.monotonic() - started >= 0.4
    assert response.json()["type"] == "searchset"
    with pytest.raises(requests.Timeout):
        requests.get(f"{fault_fhir.base_url}/Condition", timeout=0.1)


def test_fake_stop_does_not_wait_for_slow_answers() -> None:
    server = FaultFhirServer().start()
    server.route("/Condition", mode="slow", delay=60)
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(requests.get(f"{server.base_url}/Condition", timeout=30))
        except requests.RequestException as exc:
            outcome.append(exc)

    client = threading.Thread(target=call)
    client.start()
    while not server.requests:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    client.join(timeout=10)
    assert time.monotonic() - started < 5
    assert isinstance(outcome[0], requests.ConnectionError)


def test_fake_non_json(fault_fhir: FaultFhirServer) -> None:
    fault_fhir.route("/Patient/p1", mode="non_json")
    fault_fhir.route("/Condition", mode="non_json", body="not json", content_type=FHIR_JSON)
    html = requests.get(f"{fault_fhir.base_url}/Patient/p1", timeout=5)
    assert html.status_code == 200
    assert html.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        html.json()
    lying = requests.get(f"{fault_fhir.base_url}/Condition", timeout=5)
    assert lying.headers["Content-Type"] == FHIR_JSON
    with pytest.raises(ValueError):
        lying.json()


def test_fake_huge(fault_fhir: FaultFhirServer) -> None:
    size = 3 * 1024 * 1024
    fault_fhir.route("/Observation", mode="huge", size=size)
    response = requests.get(f"{fault_fhir.base_url}/Observation", timeout=30)
    assert int(response.headers["Content-Length"]) == len(response.content) >= size
    bundle = response.json()
    assert bundle["type"] == "searchset" and len(bundle["entry"]) > 1000

    fault_fhir.route("/Condition", mode="huge", size=size, content_length=False)
    with requests.get(f"{fault_fhir.base_url}/Condition", stream=True, timeout=30) as streamed:
        assert "Content-Length" not in streamed.headers
        first = next(streamed.iter_content(64 * 1024))
        assert first.startswith(b'{"resourceType":"Bundle"')
    # a client that hangs up early does not disturb the fake
    fault_fhir.route("/Patient", mode="ok", body={"resourceType": "Patient", "id": "p"})
    assert requests.get(f"{fault_fhir.base_url}/Patient", timeout=5).json()["id"] == "p"


def _next_link(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)


def test_fake_next_cycle(fault_fhir: FaultFhirServer) -> None:
    fault_fhir.route("/Observation", mode="next_cycle")
    first_url = f"{fault_fhir.base_url}/Observation?patient=p1&_count=1"
    url = first_url
    for _ in range(4):
        bundle = requests.get(url, timeout=5).json()
        assert bundle["type"] == "searchset"
        url = _next_link(bundle)
        assert url == first_url
    assert len(fault_fhir.requests_to("/Observation")) == 4


def test_fake_next_endless(fault_fhir: FaultFhirServer) -> None:
    fault_fhir.route("/Observation", mode="next_endless")
    url: str | None = f"{fault_fhir.base_url}/Observation?patient=p1"
    seen_urls, seen_ids = [], []
    for _ in range(6):
        assert url is not None
        seen_urls.append(url)
        bundle = requests.get(url, timeout=5).json()
        seen_ids += [e["resource"]["id"] for e in bundle["entry"]]
        url = _next_link(bundle)
    assert len(set(seen_urls)) == 6
    assert len(set(seen_ids)) == 6
    assert all(r.param("patient") == "p1" for r in fault_fhir.requests)


def test_fake_drop(fault_fhir: FaultFhirServer) -> None:
    fault_fhir.route("/Condition", mode="drop")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fault_fhir.base_url}/Condition", timeout=5)
    assert fault_fhir.requests[0].route == "drop"


def test_fake_route_options(fault_fhir: FaultFhirServer) -> None:
    vitals = {"resourceType": "Bundle", "type": "searchset", "total": 0, "id": "vitals"}
    fault_fhir.route("/Observation", mode="ok", body=vitals)
    fault_fhir.route("/Observation", query={"category": "survey"}, mode="status", status=500)
    fault_fhir.route("/Condition", mode="ok")
    fault_fhir.route("/Condition", mode="status", status=429, times=1)
    fault_fhir.route("/Procedure", mode="ok", method="POST")
    base = fault_fhir.base_url
    assert requests.get(f"{base}/Observation?category=vital-signs", timeout=5).json()["id"] == "vitals"
    assert requests.get(f"{base}/Observation?category=survey", timeout=5).status_code == 500
    assert [requests.get(f"{base}/Condition", timeout=5).status_code for _ in range(3)] == [429, 200, 200]
    assert requests.get(f"{base}/Procedure", timeout=5).status_code == 404
    assert requests.post(f"{base}/Procedure", data=b"x=1", timeout=5).status_code == 200
    assert fault_fhir.requests[-1].body == b"x=1"


def test_fake_rejects_unknown_modes(fault_fhir: FaultFhirServer) -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        fault_fhir.route("/Condition", mode="explode")


def test_refused_url_refuses_quickly() -> None:
    url = refused_url()
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/metadata", timeout=5)
    assert time.monotonic() - started < 2
