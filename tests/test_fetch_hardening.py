"""Fetching from a hostile or broken FHIR server (issue 10 items 2, 3, 4, 7): one hard deadline per
call, limits per call, and an fhirServer policy against SSRF. Every test here failed on the code
before the fix (a 500, a late answer, a fetch that should not have happened, a telling message).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from typing import Any

import pytest

from cds_service.app import create_app
from cds_service.reading.fhir_client import CallBudget, FetchPolicy, FhirClient, FhirFetchError
from tests.support.fault_fhir import FaultFhirServer, refused_url

from .conftest import fhir_authorization, load_example, make_settings

ALL_KEYS = [
    "patient",
    "conditions",
    "medicationRequests",
    "medicationStatements",
    "medicationDispenses",
    "medicationAdministrations",
    "procedures",
    "vitalSigns",
    "assessments",
    "pregnancyStatus",
]
MARGIN = 0.5  # the documented DEADLINE_MARGIN (0.25 s) plus the test client's own time


def post(client: Any, body: dict[str, Any]) -> Any:
    return client.post("/cds-services/order-sign", data=json.dumps(body), content_type="application/json")


def without(keys: list[str]) -> dict[str, Any]:
    body = copy.deepcopy(load_example("v01-clear-trd-eligible"))
    for key in keys:
        body["prefetch"].pop(key, None)
    return body


def fetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fhir-fetch")]


@pytest.fixture
def app_factory(tmp_path):
    apps = []

    def make(**overrides: Any):
        app = create_app(make_settings(tmp_path, **overrides))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["ketamine_cds"].store.close()


# -- item 2: 500 instead of 412 -----------------------------------------------------------------------
def test_deadline_with_fetches_still_queued_is_412_not_500(app_factory) -> None:
    """Ten keys missing, a server that drips a byte every 0.5 s: more fetches than fetch threads,
    so some are still queued when the deadline passes (they were cancelled → CancelledError → 500)."""
    app = app_factory(fhir_deadline=1.0, fhir_read_timeout=2.0)
    body = without(ALL_KEYS)
    with FaultFhirServer() as srv, app.test_client() as c:
        srv.route("/*", mode="drip", interval=0.5)  # every receive inside the read timeout
        body["fhirServer"] = srv.base_url
        started = time.monotonic()
        resp = post(c, body)
        elapsed = time.monotonic() - started
    assert resp.status_code == 412, resp.get_data(as_text=True)[:300]
    assert sorted(resp.get_json()["missing"]) == sorted(ALL_KEYS)
    assert "deadline of 1 s exceeded" in resp.get_json()["error"]
    assert elapsed < 1.0 + MARGIN, f"412 after {elapsed:.2f} s"


# -- item 3: fetches outlive the deadline ------------------------------------------------------------
@pytest.mark.parametrize("mode", ["drip", "drip_headers"])
def test_dripping_server_is_cut_off_at_the_deadline_and_nothing_keeps_running(app_factory, mode) -> None:
    app = app_factory(fhir_deadline=1.0, fhir_read_timeout=2.0)
    body = without(["conditions", "medicationRequests", "procedures"])
    with FaultFhirServer() as srv, app.test_client() as c:
        srv.route("/*", mode=mode, interval=0.2)  # every receive well inside the read timeout
        body["fhirServer"] = srv.base_url
        started = time.monotonic()
        resp = post(c, body)
        elapsed = time.monotonic() - started
        assert resp.status_code == 412
        assert elapsed < 1.0 + MARGIN, f"412 after {elapsed:.2f} s"
        time.sleep(0.3)
        assert fetch_threads() == [], "no fetch thread outlives the answer"


# -- item 4: limits per call, not per response -------------------------------------------------------
@pytest.mark.parametrize("stagger", [0.0, 0.5])
def test_byte_limit_holds_for_the_whole_call(app_factory, caplog: pytest.LogCaptureFixture, stagger) -> None:
    """Four keys of 3 MB each: every response is under the 5 MB limit, the call is not. Which keys
    the limit cuts off depends on how the four streams interleave: if none had finished when the
    call passed 5 MB, nothing was read (412, naming the limit); if one had (a loaded machine runs
    one stream ahead), the other three are not read and the answer is partial. Either way at most
    one key was read; with a limit per response all four would have been. (The deadline is long:
    it is not what this test is about, and a loaded machine must not turn the limit into it.)
    ``stagger`` holds three of the four answers back, so that the first one usually finishes alone."""
    app = app_factory(fhir_deadline=30.0, fhir_max_bytes=5_000_000, fhir_error_detail=True)
    keys = ["conditions", "medicationRequests", "medicationStatements", "procedures"]
    body = without(keys)
    with FaultFhirServer() as srv, app.test_client() as c, caplog.at_level(logging.INFO):
        srv.route("/*", mode="huge", size=3_000_000, delay=stagger)
        srv.route("/Condition", mode="huge", size=3_000_000)
        body["fhirServer"] = srv.base_url
        resp = post(c, body)
    if resp.status_code == 412:
        assert "more than 5000000 bytes for one call" in resp.get_json()["error"]
        assert sorted(resp.get_json()["missing"]) == sorted(keys)
        return
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    calls = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "cds_call"]
    origin = calls[-1]["prefetch"]
    not_read = [k for k in keys if origin[k] == "not-read (limit)"]
    assert len(not_read) == 3 and [origin[k] for k in keys if k not in not_read] == ["fetched"], origin


def test_page_limit_holds_for_the_whole_call(app_factory) -> None:
    app = app_factory(fhir_deadline=5.0, fhir_max_pages=6, fhir_error_detail=True)
    keys = ["conditions", "medicationRequests", "procedures"]
    body = without(keys)
    with FaultFhirServer() as srv, app.test_client() as c:
        for key_path in ("/Condition", "/MedicationRequest", "/Procedure"):
            srv.route(key_path, mode="next_endless", times=3)  # 3 pages each, then an empty page
        body["fhirServer"] = srv.base_url
        resp = post(c, body)
    assert resp.status_code == 412, resp.get_data(as_text=True)[:300]
    assert "more than 6 pages for one call" in resp.get_json()["error"]


def test_resource_limit_holds_for_the_whole_call() -> None:
    budget = CallBudget(5, max_resources=3)
    with FaultFhirServer() as srv:
        page = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Condition"}}] * 2,
        }
        srv.ok("/Condition", page)
        client = FhirClient(
            srv.base_url, budget=budget, policy=FetchPolicy(allow_http=True, allow_loopback=True)
        )
        assert len(client.search("Condition?patient=p")) == 2
        with pytest.raises(FhirFetchError) as exc:
            client.search("Condition?patient=q")
    assert "more than 3 resources" in exc.value.detail


def test_one_session_reuses_its_connection() -> None:
    with FaultFhirServer() as srv:
        srv.ok("/Condition", {"resourceType": "Bundle", "type": "searchset"})
        client = FhirClient(
            srv.base_url, budget=CallBudget(5), policy=FetchPolicy(allow_http=True, allow_loopback=True)
        )
        for _ in range(4):
            client.search("Condition?patient=p")
    assert len(srv.requests) == 4
    assert srv.connections == 1, f"{srv.connections} connections for 4 requests"


# -- item 7: SSRF -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "0x7f.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "localhost",
        "localhost.",
        "[::1]",
        "[::ffff:127.0.0.1]",
    ],
)
def test_loopback_in_any_spelling_is_refused_unless_allowed(app_factory, host: str) -> None:
    app = app_factory(fhir_allow_loopback=False)
    body = without(["conditions"])
    with FaultFhirServer() as srv, app.test_client() as c:
        body["fhirServer"] = f"http://{host}:{srv.port}/fhir"
        resp = post(c, body)
        assert srv.requests == [], "nothing may reach a loopback server"
    assert resp.status_code == 412
    assert "loopback" in resp.get_json()["error"]


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data", "http://[fe80::1]/fhir", "http://0.0.0.0:1/fhir"]
)
def test_link_local_and_unspecified_are_refused(url: str) -> None:
    with pytest.raises(FhirFetchError) as exc:
        FetchPolicy(allow_http=True, allow_loopback=True).check(url)
    assert exc.value.kind == "policy"


def test_http_fhir_server_is_refused_in_jwt_mode() -> None:
    policy = FetchPolicy(allow_http=False, allow_loopback=True)
    with FaultFhirServer() as srv:
        with pytest.raises(FhirFetchError) as exc:
            FhirClient(srv.base_url, budget=CallBudget(2), policy=policy, access_token="t").search(
                "Condition?x=1"
            )
        assert srv.requests == [], "the bearer token never goes out over plain http"
    assert "https is required" in exc.value.reason


def test_http_is_refused_in_jwt_mode_and_allowed_only_with_the_flag(tmp_path) -> None:
    from cds_service.pipeline import fetch_policy

    assert fetch_policy(make_settings(tmp_path, insecure_no_auth=False)).allow_http is False
    assert fetch_policy(make_settings(tmp_path, insecure_no_auth=False, fhir_allow_http=True)).allow_http


def test_credentials_in_the_url_are_refused(app_factory) -> None:
    app = app_factory()
    body = without(["conditions"])
    with FaultFhirServer() as srv, app.test_client() as c:
        body["fhirServer"] = f"http://user:pass@127.0.0.1:{srv.port}/fhir"
        resp = post(c, body)
        assert srv.requests == []
    assert resp.status_code == 412
    assert "credentials" in resp.get_json()["error"] and "user:pass" not in resp.get_json()["error"]


def test_cross_origin_redirect_is_not_followed(app_factory) -> None:
    app = app_factory()
    body = without(["conditions"])
    with FaultFhirServer() as srv, FaultFhirServer() as other, app.test_client() as c:
        other.ok("/Condition", {"resourceType": "Bundle", "type": "searchset"})
        srv.route("/Condition", mode="redirect", location=other.url("/Condition?patient=x"))
        body["fhirServer"] = srv.base_url
        body["fhirAuthorization"] = fhir_authorization("t")
        resp = post(c, body)
        assert other.requests == [], "a redirect to another origin is not followed"
    assert resp.status_code == 412


def test_same_origin_redirect_is_followed(app_factory) -> None:
    app = app_factory()
    body = without(["procedures"])
    with FaultFhirServer() as srv, app.test_client() as c:
        srv.ok("/Procedure2", {"resourceType": "Bundle", "type": "searchset"})
        srv.route("/Procedure", mode="redirect", location=srv.url("/Procedure2?patient=x"))
        body["fhirServer"] = srv.base_url
        resp = post(c, body)
    assert resp.status_code == 200, resp.get_json()


def test_caller_cannot_tell_a_closed_port_from_a_404_or_a_401(app_factory) -> None:
    app = app_factory()
    texts = set()
    with FaultFhirServer() as srv, app.test_client() as c:
        srv.route("/Condition", mode="status", status=404, times=1)
        srv.route("/Condition", mode="status", status=401, times=1)
        srv.route("/Condition", mode="drop", times=1)
        srv.route("/Condition", mode="non_json", times=1)
        for base in (srv.base_url,) * 4 + (refused_url(),):
            body = without(["conditions"])
            body["fhirServer"] = base
            resp = post(c, body)
            assert resp.status_code == 412
            texts.add(resp.get_json()["error"].split(" (the service log")[0])
    assert len(texts) == 1, texts


def test_issuer_allowlist_of_fhir_servers() -> None:
    with FaultFhirServer() as srv, FaultFhirServer() as other:
        srv.ok("/Condition", {"resourceType": "Bundle", "type": "searchset"})
        policy = FetchPolicy(
            allow_http=True, allow_loopback=True, allowed_origins=(f"http://127.0.0.1:{srv.port}",)
        )
        assert FhirClient(srv.base_url, budget=CallBudget(2), policy=policy).search("Condition?p=1") == []
        with pytest.raises(FhirFetchError) as exc:
            FhirClient(other.base_url, budget=CallBudget(2), policy=policy)
        assert other.requests == []
    assert "not among the FHIR servers allowed" in exc.value.reason


def test_issuer_fhir_servers_are_validated_origins() -> None:
    from cds_service.auth import TrustedIssuer

    issuer = TrustedIssuer(
        iss="https://ehr.test", jwks_url="https://ehr.test/jwks", fhir_servers=("http://127.0.0.1:1/fhir",)
    )
    assert issuer.fhir_servers == ("http://127.0.0.1:1",)
    with pytest.raises(Exception, match="credentials"):
        TrustedIssuer(iss="https://e", jwks_url="https://e/j", fhir_servers=("https://u:p@e/fhir",))
