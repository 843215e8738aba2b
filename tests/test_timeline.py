"""Statuses and time (issue 8 item 4): what counts today, written as EHRs record it.

- a stopped or completed medication counts until its end plus the rule's washout (grace) window;
- a preliminary observation is a safety signal (labelled preliminary) but never clears a check;
- every time field an EHR may use feeds the timeline (effectiveInstant, effectivePeriod …).
"""

from __future__ import annotations

import copy
from typing import Any

from .conftest import load_example
from .record_support import facts_of, fired, run_predicate, run_request

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
TRANYLCYPROMINE = {
    "coding": [{"system": RXNORM, "code": "10734", "display": "tranylcypromine"}],
    "text": "Parnate",
}


def ketamine_request() -> dict[str, Any]:
    return copy.deepcopy(load_example("v02-one-failed-trial"))  # IV ketamine order, no MAOI


def add(request: dict[str, Any], key: str, resource: dict[str, Any]) -> dict[str, Any]:
    bundle = request["prefetch"][key]
    bundle.setdefault("entry", []).append({"resource": resource, "search": {"mode": "match"}})
    return request


def maoi_request(status: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "maoi-1",
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": TRANYLCYPROMINE,
        "subject": {"reference": "Patient/v02"},
        "authoredOn": "2025-11-03",
        **fields,
    }


def bounds(start: str, end: str) -> dict[str, Any]:
    return {"dosageInstruction": [{"timing": {"repeat": {"boundsPeriod": {"start": start, "end": end}}}}]}


# -- stopped and completed medications -------------------------------------------------------------
def test_tranylcypromine_stopped_ten_days_ago_is_still_an_interaction():
    request = add(
        ketamine_request(),
        "medicationRequests",
        maoi_request("stopped", **bounds("2025-11-03", "2026-04-24")),
    )
    assert "ddi-maoi" in fired(request)


def test_tranylcypromine_stopped_a_month_ago_is_past_the_washout():
    request = add(
        ketamine_request(),
        "medicationRequests",
        maoi_request("stopped", **bounds("2025-11-03", "2026-04-01")),
    )
    assert "ddi-maoi" not in fired(request)


def test_completed_statement_counts_until_its_effective_period_end_plus_washout():
    statement = {
        "resourceType": "MedicationStatement",
        "id": "maoi-st",
        "status": "completed",
        "medicationCodeableConcept": TRANYLCYPROMINE,
        "subject": {"reference": "Patient/v02"},
        "effectivePeriod": {"start": "2025-10-01", "end": "2026-04-27"},
        "dateAsserted": "2026-04-28",
    }
    assert "ddi-maoi" in fired(add(ketamine_request(), "medicationStatements", statement))


def test_stopped_without_a_stop_date_counts_until_the_last_supply_ends():
    request = ketamine_request()
    add(
        request,
        "medicationRequests",
        maoi_request(
            "stopped", dispenseRequest={"validityPeriod": {"start": "2025-11-03", "end": "2026-11-03"}}
        ),
    )
    # dispensed 2026-03-30 for 30 days: supply ended 2026-04-29, 5 days ago (washout 14)
    add(
        request,
        "medicationDispenses",
        {
            "resourceType": "MedicationDispense",
            "id": "maoi-d1",
            "status": "completed",
            "medicationCodeableConcept": TRANYLCYPROMINE,
            "subject": {"reference": "Patient/v02"},
            "whenHandedOver": "2026-03-30T10:00:00Z",
            "daysSupply": {"value": 30, "unit": "day", "system": "http://unitsofmeasure.org", "code": "d"},
        },
    )
    facts = facts_of(request)
    r = run_predicate({"active_medication": {"valueset": "maoi", "grace_days": 14}}, facts)
    assert r.value is True and "MedicationRequest/maoi-1" in r.evidence


def test_stopped_early_on_an_unknown_day_counts_while_its_validity_runs():
    rx = maoi_request(
        "stopped", dispenseRequest={"validityPeriod": {"start": "2025-11-03", "end": "2026-11-03"}}
    )
    assert "ddi-maoi" in fired(add(ketamine_request(), "medicationRequests", rx))


def test_cancelled_or_entered_in_error_never_counts():
    for status in ("cancelled", "entered-in-error"):
        rx = maoi_request(status, **bounds("2026-04-20", "2026-05-20"))
        assert "ddi-maoi" not in fired(add(ketamine_request(), "medicationRequests", rx)), status


# -- preliminary observations ----------------------------------------------------------------------
def bp_panel(
    systolic: float, diastolic: float, status: str, when: dict[str, str], oid: str = "bp-p"
) -> dict[str, Any]:
    def comp(code: str, value: float) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {
                "value": value,
                "unit": "mmHg",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        }

    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": {"reference": "Patient/v02"},
        **when,
        "component": [comp("8480-6", systolic), comp("8462-4", diastolic)],
    }


def without_bp(request: dict[str, Any]) -> dict[str, Any]:
    bundle = request["prefetch"]["vitalSigns"]
    bundle["entry"] = [e for e in bundle.get("entry", []) if "85354-9" not in str(e["resource"].get("code"))]
    return request


TODAY = {"effectiveDateTime": "2026-05-04T08:40:00Z"}


def test_preliminary_bp_of_188_over_108_is_a_signal_labelled_preliminary():
    request = add(without_bp(ketamine_request()), "vitalSigns", bp_panel(188, 108, "preliminary", TODAY))
    assert "ci-blood-pressure-severe" in fired(request)
    r = run_predicate(
        {"observation": {"kind": "systolic_bp", "gte": 180, "within_hours": 24}}, facts_of(request)
    )
    assert r.value is True and r.bind["systolic_bp"]["preliminary"] is True
    summaries = [c["summary"] for c in run_request(request).response["cards"]]
    assert any("188/108" in s and "preliminary" in s for s in summaries), summaries


def test_a_normal_preliminary_bp_does_not_clear_the_check():
    request = add(without_bp(ketamine_request()), "vitalSigns", bp_panel(120, 78, "preliminary", TODAY))
    r = run_predicate(
        {"observation": {"kind": "systolic_bp", "gte": 180, "within_hours": 24}}, facts_of(request)
    )
    assert r.value is None and r.missing


def test_a_final_reading_after_a_preliminary_one_decides():
    request = add(
        without_bp(ketamine_request()),
        "vitalSigns",
        bp_panel(188, 108, "preliminary", {"effectiveDateTime": "2026-05-04T08:00:00Z"}),
    )
    add(request, "vitalSigns", bp_panel(128, 80, "final", TODAY, oid="bp-f"))
    assert "ci-blood-pressure-severe" not in fired(request)


def bp_as_text(text: str, status: str = "final") -> dict[str, Any]:
    """A BP panel as some EHRs send it: no components, the reading written out in ``valueString``."""
    panel = bp_panel(0, 0, status, TODAY, oid="bp-text")
    del panel["component"]
    panel["valueString"] = text
    return panel


def test_bp_written_as_text_with_its_unit_is_read_and_the_card_says_so():
    request = add(without_bp(ketamine_request()), "vitalSigns", bp_as_text("188/108 mmHg"))
    assert "ci-blood-pressure-severe" in fired(request)
    summaries = [c["summary"] for c in run_request(request).response["cards"]]
    assert any("188/108" in s and "read from text" in s for s in summaries), summaries


def test_bp_written_as_text_in_kpa_is_converted():
    request = add(without_bp(ketamine_request()), "vitalSigns", bp_as_text("25/14.4 kPa"))
    r = run_predicate(
        {"observation": {"kind": "systolic_bp", "gte": 180, "within_hours": 24}}, facts_of(request)
    )
    assert r.value is True and r.bind["systolic_bp"]["value"] == 188


def test_bp_written_as_text_without_a_unit_is_not_assumed_to_be_mmhg():
    request = add(without_bp(ketamine_request()), "vitalSigns", bp_as_text("168/102"))
    r = run_predicate(
        {"observation": {"kind": "systolic_bp", "gte": 140, "within_hours": 24}}, facts_of(request)
    )
    assert r.value is None and r.missing  # still asked for, never read as a number in an assumed unit


def test_a_normal_bp_written_as_text_clears_the_check():
    request = add(without_bp(ketamine_request()), "vitalSigns", bp_as_text("128/80 mm[Hg]"))
    assert not {"ci-blood-pressure-severe", "ci-blood-pressure"} & fired(request)
    r = run_predicate(
        {"observation": {"kind": "diastolic_bp", "gt": 90, "within_hours": 24}}, facts_of(request)
    )
    assert r.value is False


def test_text_that_is_not_a_bp_reading_is_not_read():
    for text in ("see note", "168/102/99 mmHg", "168 mmHg", "1680/1020 mmHg"):
        request = add(without_bp(ketamine_request()), "vitalSigns", bp_as_text(text))
        r = run_predicate(
            {"observation": {"kind": "systolic_bp", "gte": 140, "within_hours": 24}}, facts_of(request)
        )
        assert r.value is None and r.missing, text


def test_effective_instant_and_period_feed_the_timeline():
    for when in (
        {"effectiveInstant": "2026-05-04T08:40:00.000Z"},
        {"effectivePeriod": {"end": "2026-05-04T08:41:00Z"}},
    ):
        request = add(without_bp(ketamine_request()), "vitalSigns", bp_panel(186, 104, "final", when))
        assert "ci-blood-pressure-severe" in fired(request), when


def test_procedure_with_only_a_period_end_is_dated():
    request = ketamine_request()
    add(
        request,
        "procedures",
        {
            "resourceType": "Procedure",
            "id": "ect-1",
            "status": "completed",
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "90870"}]},
            "subject": {"reference": "Patient/v02"},
            "performedPeriod": {"end": "2026-04-20T11:00:00Z"},
        },
    )
    facts = facts_of(request)
    dated = [(r, d) for vs in ("ect",) for r, d in facts.procedures_in(vs)]
    assert dated and dated[0][1] is not None


def test_stopped_early_the_update_day_is_the_stop_day():
    validity = {"dispenseRequest": {"validityPeriod": {"start": "2025-11-03", "end": "2026-11-03"}}}
    recent = maoi_request("stopped", meta={"lastUpdated": "2026-04-29T16:02:11Z"}, **validity)
    assert "ddi-maoi" in fired(add(ketamine_request(), "medicationRequests", recent))  # 5 days, washout 14
    old = maoi_request("stopped", meta={"lastUpdated": "2026-02-10T16:02:11Z"}, **validity)
    assert "ddi-maoi" not in fired(add(ketamine_request(), "medicationRequests", old))
