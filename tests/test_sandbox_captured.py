"""Requests captured from the real CDS Hooks Sandbox, replayed: the cards it showed stay the cards.

tests/fixtures/sandbox/ holds request bodies the Sandbox (cds-hooks/sandbox 3b7e255, built locally,
driven in headless Chromium on 2026-12-01) POSTed to this service, byte for byte apart from
indentation (README.md there says how they were made). Its draft `MedicationRequest` is invalid R4
(`category` and `reasonCode` one object each), its dose is `{pill}`, not mg, and its prefetch is what
it read from `ketamine-cds fhir-server --seed`. Evaluation time is the capture's: the records are
dated around 2026-05-04, so a blood pressure or a weight is months old by then.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import make_settings

FIXTURES = Path(__file__).parent / "fixtures" / "sandbox"
CAPTURED_AT = "2026-12-01T12:48:00Z"
IGNORED = "ketamine-cds.ignored-elements"
UNREADABLE = {"data-unreadable-resources", "data-unidentified-order", "data-text-matched-order"}


def captured(name: str) -> dict[str, Any]:
    request = json.loads((FIXTURES / f"{name}.json").read_text())
    request["extension"] = {"ketamine-cds.evaluation-time": CAPTURED_AT}  # the Sandbox sends none
    return request


def post(client, request: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(f"/cds-services/{request['hook']}", json=request)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def topics(response: dict[str, Any]) -> dict[str, str]:
    return {c["source"]["topic"]["code"]: c["indicator"] for c in response["cards"]}


CASES = [
    # (fixture, safety cards that must be there with their indicator, cards that must not)
    (
        "order-sign-v04-esketamine",
        {"ci-pregnancy": "critical", "dose-esketamine-frequency": "warning"},
        set(),
    ),
    (
        "order-select-v04-esketamine-treating-3-bid",
        {"ci-pregnancy": "critical", "dose-esketamine-frequency": "warning"},
        set(),
    ),
    (
        "order-sign-v10-esketamine",
        {"ci-age-under-18": "critical", "dose-esketamine-frequency": "warning"},
        set(),
    ),
    ("order-sign-v08-ketamine", {"ddi-maoi": "warning"}, {"dose-esketamine-frequency"}),
]


@pytest.mark.parametrize(("fixture", "expected", "absent"), CASES, ids=[c[0] for c in CASES])
def test_sandbox_order_gets_its_safety_cards_not_a_malformed_warning(client, fixture, expected, absent):
    request = captured(fixture)
    (draft,) = [e["resource"] for e in request["context"]["draftOrders"]["entry"]]
    assert isinstance(draft["category"], dict)  # the Sandbox's invalid shape, kept as sent
    response = post(client, request)
    found = topics(response)
    for topic, indicator in expected.items():
        assert found.get(topic) == indicator, found
    assert not (set(found) & (absent | UNREADABLE)), found
    assert not any("malformed" in c["summary"].lower() for c in response["cards"])
    # its {pill} dose is not a dose in mg: the data-gaps card asks for it, no dose check passes silently
    gaps = next(c for c in response["cards"] if c["source"]["topic"]["code"] == "data-gaps")
    assert "the dose in mg on the order" in gaps["summary"]
    elements = {r["element"] for r in response["extension"][IGNORED]}
    assert "category" in elements
    assert ("reasonCode" in elements) == ("reasonCode" in draft)
    for card in response["cards"]:
        assert len(card["summary"]) < 140 and card["uuid"]
        assert all(s["uuid"] for s in card.get("suggestions", []))


def test_sandbox_dose_and_frequency_change_the_dosing_card(client):
    """Rx View with 3 {pill} twice daily: the frequency check reads the Sandbox's timing."""
    once = post(client, captured("order-sign-v04-esketamine"))
    twice = post(client, captured("order-select-v04-esketamine-treating-3-bid"))

    def dosing(response: dict[str, Any]) -> str:
        return next(
            c["summary"]
            for c in response["cards"]
            if c["source"]["topic"]["code"] == "dose-esketamine-frequency"
        )

    assert "7× a week" in dosing(once) and "14× a week" in dosing(twice)


def test_sandbox_patient_view_shows_the_overview(client):
    response = post(client, captured("patient-view-v04"))
    found = topics(response)
    assert found.get("eligibility") == "info", found
    assert not set(found) & UNREADABLE


def test_sandbox_feedback_shapes_are_stored(tmp_path):
    """Its three feedback bodies (suggestion taken; override with `{code, system}` only; plain
    Dismiss with no reason) are accepted and counted against the card's rule."""
    from cds_service.app import create_app

    settings = make_settings(tmp_path)
    app = create_app(settings)
    try:
        with app.test_client() as c:
            cards = post(c, captured("order-sign-v04-esketamine"))["cards"]
            pregnancy = next(x for x in cards if x["source"]["topic"]["code"] == "ci-pregnancy")
            dosing = next(x for x in cards if x["source"]["topic"]["code"] == "dose-esketamine-frequency")
            accepted, overridden, dismissed = json.loads((FIXTURES / "feedback-order-sign.json").read_text())
            bodies = copy.deepcopy([accepted, overridden, dismissed])
            bodies[0]["feedback"][0]["card"] = pregnancy["uuid"]
            bodies[0]["feedback"][0]["acceptedSuggestions"] = [{"id": pregnancy["suggestions"][0]["uuid"]}]
            bodies[1]["feedback"][0]["card"] = pregnancy["uuid"]
            bodies[2]["feedback"][0]["card"] = dosing["uuid"]
            assert "display" not in bodies[1]["feedback"][0]["overrideReason"]["reason"]
            assert "overrideReason" not in bodies[2]["feedback"][0]
            for body in bodies:
                resp = c.post("/cds-services/order-sign/feedback", json=body)
                assert resp.status_code == 200 and resp.get_json() == {"stored": 1}, resp.get_data(
                    as_text=True
                )
        stats = {s["rule"]: s for s in app.extensions["ketamine_cds"].store.rule_stats()}
    finally:
        app.extensions["ketamine_cds"].store.close()
    assert stats["ci-pregnancy"]["accepted"] == 1 and stats["ci-pregnancy"]["overridden"] == 1
    assert stats["dose-esketamine-frequency"]["overridden"] == 1


@pytest.mark.parametrize("fixture", ["order-sign-v04-esketamine", "order-sign-v07-esketamine"])
def test_a_long_data_gaps_summary_names_or_counts_every_item(client, fixture):
    """Months-old records give five or six missing items: the summary is never cut inside a word or a
    parenthesis (the Sandbox showed "… baselin…" and "(C-SSRS or PHQ-9 item 9,…"), and never drops an
    item silently (it lost the last ones): each is named, or counted in "… and N more"."""
    from .test_data_gap_words import assert_nothing_silently_lost, gap_card

    response = post(client, captured(fixture))
    card = gap_card(response)
    summary = card["summary"]
    assert summary.count("(") == summary.count(")"), summary
    assert not summary.endswith("…"), summary
    assert_nothing_silently_lost(card)


def test_summary_cut_rules():
    from cds_service.cards import summary_text

    items = "Missing: " + ", ".join(f"item {n:02d} (a, b)" for n in range(20))
    cut = summary_text(items, "")
    assert len(cut) < 140 and cut.endswith(")…") and cut.count("(") == cut.count(")")
    assert summary_text("a" * 200, "") == "a" * 138 + "…"  # no boundary at all: a hard cut
    assert summary_text("short, fine", "") == "short, fine"
