"""The CDS Hooks endpoints: discovery, request validation (each 4xx), cards, CORS, health."""

from __future__ import annotations

import copy
import json
import re

import pytest

from cds_service.services import PREFETCH, SERVICES

from .conftest import load_example

TOKEN = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")
ALLOWED_TOKENS = {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}


def test_discovery_lists_three_services_with_2_0_1_prefetch(client):
    resp = client.get("/cds-services")
    assert resp.status_code == 200
    services = {s["id"]: s for s in resp.get_json()["services"]}
    assert {"patient-view", "order-select", "order-sign"} <= set(services)
    for s in services.values():
        assert s["hook"] and s["title"] and s["description"]
        for template in s["prefetch"].values():
            for token in TOKEN.findall(template):
                assert token.startswith("context.") or token in ALLOWED_TOKENS, token
                assert "." not in token.removeprefix("context."), "only root-level context fields"


def test_prefetch_asks_for_everything_the_rules_read():
    wanted = {
        "Patient",
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "MedicationDispense",
        "MedicationAdministration",
        "Observation",
        "Procedure",
        "AllergyIntolerance",
    }
    assert {t.split("?")[0].split("/")[0] for t in PREFETCH.values()} == wanted


def post(client, service: str, body, **kw):
    return client.post(
        f"/cds-services/{service}", data=json.dumps(body), content_type="application/json", **kw
    )


def base_request(hook: str = "order-sign") -> dict:
    return (
        load_example("v01-clear-trd-eligible")
        if hook == "order-sign"
        else load_example("v15-patient-view-course")
    )


def test_example_request_returns_conformant_cards(client):
    resp = post(client, "order-sign", base_request())
    assert resp.status_code == 200, resp.get_json()
    cards = resp.get_json()["cards"]
    assert cards, "V1 yields cards"
    for card in cards:
        assert card["source"]["topic"]["code"]
        assert card["source"].get("url")
        assert len(card["summary"]) < 140
    order = ["critical", "warning", "info"]
    assert [order.index(c["indicator"]) for c in cards] == sorted(order.index(c["indicator"]) for c in cards)


def test_optional_fields_are_omitted_not_null(client):
    body = post(client, "order-sign", base_request()).get_json()

    def walk(v, path="$"):
        if isinstance(v, dict):
            for k, x in v.items():
                assert x is not None and x != "" and x != [] and x != {}, f"{path}.{k} is empty"
                walk(x, f"{path}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")

    for card in body["cards"]:
        walk(card)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.pop("hookInstance"), "hookInstance"),
        (lambda r: r.update(hookInstance="not-a-uuid"), "hookInstance"),
        (lambda r: r.pop("context"), "context"),
        (lambda r: r["context"].pop("patientId"), "context.patientId"),
        (lambda r: r["context"].pop("draftOrders"), "context.draftOrders"),
        (lambda r: r["context"].update(userId="Device/1"), "context.userId"),
        (lambda r: r.update(hook="patient-view"), "hook"),
        (
            lambda r: r.update(
                fhirAuthorization={
                    "access_token": "t",
                    "token_type": "Bearer",
                    "expires_in": 60,
                    "scope": "patient/*.read",
                    "subject": "cds",
                }
            ),
            "fhirServer",
        ),
        (
            lambda r: r.update(fhirAuthorization={"access_token": "t"}, fhirServer="http://x"),
            "fhirAuthorization.token_type",
        ),
        (lambda r: r.update(prefetch={"patient": "a string"}), "prefetch.patient"),
        (
            lambda r: r["context"].update(draftOrders={"resourceType": "Patient"}),
            "context.draftOrders.resourceType",
        ),
    ],
)
def test_invalid_requests_get_400_naming_the_field(client, mutate, field):
    body = copy.deepcopy(base_request())
    mutate(body)
    resp = post(client, "order-sign", body)
    assert resp.status_code == 400
    assert resp.get_json()["field"] == field, resp.get_json()
    assert field.split(".")[-1] in resp.get_json()["error"]


def test_order_select_requires_selections(client):
    body = copy.deepcopy(base_request())
    body["hook"] = "order-select"
    resp = post(client, "order-select", body)
    assert resp.status_code == 400 and resp.get_json()["field"] == "context.selections"


def test_malformed_json_is_400(client):
    resp = client.post("/cds-services/order-sign", data=b"{not json", content_type="application/json")
    assert resp.status_code == 400 and resp.get_json()["field"] == "(body)"


def test_deeply_nested_json_is_400_not_500(client):
    deep = b"[" * 100_000 + b"]" * 100_000
    resp = client.post("/cds-services/order-sign", data=deep, content_type="application/json")
    assert resp.status_code == 400


def test_non_object_body_is_400(client):
    resp = post(client, "order-sign", [1, 2, 3])
    assert resp.status_code == 400 and resp.get_json()["field"] == "(body)"


def test_unknown_service_is_404(client):
    resp = post(client, "no-such-service", base_request())
    assert resp.status_code == 404
    assert resp.get_json()["field"] == "service"
    assert "no-such-service" not in resp.get_json()["error"], "the path segment is not echoed"


def test_non_json_content_type_is_415(client):
    resp = client.post("/cds-services/order-sign", data="hello", content_type="text/plain")
    assert resp.status_code == 415
    assert resp.get_json()["field"] == "Content-Type"


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 200),
        ("Application/JSON", 200),
        ("application/json; charset=utf-8", 200),
        ("application/fhir+json", 200),
        ("application/jsonx", 415),
        ("text/json", 415),
        ("", 415),
    ],
)
def test_content_types_json_and_plus_json_only(client, content_type, status):
    resp = client.post(
        "/cds-services/order-sign", data=json.dumps(base_request()), headers={"Content-Type": content_type}
    )
    assert resp.status_code == status


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "gzip, identity"])
def test_a_compressed_body_is_415_naming_content_encoding(client, coding):
    """A body sent compressed (a gateway's gzip): 415 naming Content-Encoding, with the codings the
    service accepts (RFC 9110 §8.4.1, §15.5.16), never "malformed JSON", and never the value."""
    import gzip

    resp = client.post(
        "/cds-services/order-sign",
        data=gzip.compress(json.dumps(base_request()).encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
    )
    assert resp.status_code == 415
    assert resp.get_json()["field"] == "Content-Encoding"
    assert coding not in resp.get_data(as_text=True)
    assert resp.headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize("coding", ["identity", "Identity", ""])
def test_an_identity_content_encoding_is_read(client, coding):
    resp = client.post(
        "/cds-services/order-sign",
        data=json.dumps(base_request()),
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
    )
    assert resp.status_code == 200


def test_body_over_limit_is_413(tmp_path):
    from cds_service.app import create_app

    from .conftest import make_settings

    app = create_app(make_settings(tmp_path, max_body_bytes=10_000))
    with app.test_client() as c:
        resp = c.post("/cds-services/order-sign", data=b"x" * 20_000, content_type="application/json")
    assert resp.status_code == 413
    assert "10000" in resp.get_json()["error"]


def test_cors_preflight_is_answered_without_auth(tmp_path):
    from cds_service.app import create_app

    from .conftest import make_settings

    class RefuseAll:
        def verify(self, header, audience):
            from cds_service.auth import AuthError

            raise AuthError("no")

    app = create_app(
        make_settings(tmp_path, insecure_no_auth=False, public_base_url="http://localhost"),
        authenticator=RefuseAll(),
    )
    with app.test_client() as c:
        for path in ("/cds-services", "/cds-services/order-sign", "/cds-services/order-sign/feedback"):
            resp = c.options(
                path,
                headers={
                    "Origin": "https://sandbox.cds-hooks.org",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
            )
            assert resp.status_code in (200, 204), path
            assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
            assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
        # ...while the real calls are refused with a 401
        resp = c.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
        assert resp.status_code == 401 and resp.get_json()["status"] == 401
        assert resp.headers["Access-Control-Allow-Origin"]


def test_cors_headers_on_responses(client):
    resp = client.get("/cds-services", headers={"Origin": "http://localhost:8080"})
    assert resp.headers["Access-Control-Allow-Origin"]


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json()["status"] == "ok"
    assert resp.get_json()["rules"] > 20


def test_services_ids_match_hooks():
    for sid, s in SERVICES.items():
        assert sid == s.hook


def test_request_id_is_echoed(client):
    resp = client.get("/cds-services", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
