"""Safety under missing data: a contraindication check that lacks its facts says so, never passes.

For every contraindication and caution rule, the record is made to lack exactly what the rule
reads — a birth date, a pregnancy status, today's blood pressure, or a readable entry (a relevant
Condition or medication that is malformed) — and the rule must come out *unknown*, not fired and
not silently false, with the data-gaps card naming what is missing.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cds_service import pipeline
from cds_service.compact import build_request
from cds_service.config import Settings
from cds_service.engine.loader import load_ruleset

from .conftest import RULES

MDD = {"code": ["icd:F33.2", "sct:36474008"], "onset": "2024-11", "status": "active"}
HISTORY = [
    {
        "code": "rx:312941",
        "dose": "150 mg",
        "frequency": "1/d",
        "start": "2025-03-01",
        "end": "2025-06-15",
        "status": "completed",
    },
    {
        "code": "rx:313585",
        "dose": "225 mg",
        "frequency": "1/d",
        "start": "2025-06-20",
        "end": "2025-10-10",
        "status": "completed",
    },
]
NORMALS = [
    {"code": "loinc:29463-7", "value": "70 kg", "date": "-2d"},
    {"code": "loinc:85354-9", "systolic": 120, "diastolic": 78, "date": "today"},
    {"code": "loinc:44261-6", "value": 19, "date": "today"},
    {"cssrs_screen": "negative", "date": "today"},
]
ESKETAMINE = {"code": "rx:2201625", "text": "Spravato 56 mg", "dose": "56 mg", "route": "nasal"}
ORDER = {
    "code": "rx:238082",
    "text": "Ketamine HCl 50 mg/mL injection",
    "dose": "35 mg",
    "route": "iv",
    "infusion_minutes": 40,
}


def base_case(**changes: Any) -> dict[str, Any]:
    case = {
        "id": "safety",
        "now": "2026-05-04T09:00:00Z",
        "hook": "order-sign",
        "patient": {"id": "s1", "sex": "male", "age": 45},
        "conditions": [MDD],
        "medications": list(HISTORY),
        "observations": list(NORMALS),
        "orders": [ORDER],
    }
    case.update(changes)
    return case


def run(request: dict[str, Any]):
    return pipeline.run(request, load_ruleset(RULES), Settings(rules_dir=RULES, allow_time_override=True))


def outcome_of(result, rule_id: str):
    return next(o for o in result.evaluation.outcomes if o.rule.id == rule_id)


def gaps_card(result) -> dict[str, Any]:
    cards = [c for c in result.response["cards"] if c["source"]["topic"]["code"] == "data-gaps"]
    assert cards, (
        f"no data-gaps card among {[c['source']['topic']['code'] for c in result.response['cards']]}"
    )
    return cards[0]


def with_condition(code: str, **changes: Any) -> dict[str, Any]:
    orders = [ESKETAMINE] if code in ESKETAMINE_ONLY else [ORDER]
    conditions = [MDD, {"code": code, "onset": "2020-01", "status": "active"}]
    return build_request(base_case(conditions=conditions, orders=orders, **changes))


def with_malformed_condition(code: str) -> dict[str, Any]:
    """A request whose Condition in the rule's value set has an unreadable onset date."""
    request = with_condition(code)
    bundle = request["prefetch"]["conditions"]
    target = bundle["entry"][-1]["resource"]
    target["onsetDateTime"] = "last spring"
    return request


CONDITION_RULES = {
    "ci-vascular": "icd:I61.9",
    "ci-breastfeeding": "sct:866041003",
    "ci-cardiovascular-disease": "icd:I25.10",
    "ci-psychosis": "icd:F29",
    "ci-current-mania": "icd:F30.10",
    "ci-substance-use": "icd:F10.20",
    "ci-raised-icp": "sct:68267002",
    "caution-borderline-pd": "icd:F60.3",
    "caution-dissociative-disorder": "icd:F44.9",
    "ci-hepatic-impairment": "sct:420054005",
}
ESKETAMINE_ONLY = {"sct:420054005"}  # the hepatic caution comes from the esketamine label


@pytest.mark.parametrize(("rule_id", "code"), sorted(CONDITION_RULES.items()))
def test_unreadable_relevant_condition_is_unknown_not_absent(rule_id, code):
    # control: the same record, readable, fires the rule
    readable = run(with_condition(code))
    assert outcome_of(readable, rule_id).status == "fired"
    result = run(with_malformed_condition(code))
    o = outcome_of(result, rule_id)
    assert o.status == "unknown", (o.status, o.reason)
    detail = gaps_card(result)["detail"]
    assert "(a Condition with onsetDateTime not readable)" in detail, detail  # kind and element, no id
    assert any(c["source"]["topic"]["code"] == "data-unreadable-resources" for c in result.response["cards"])


def test_missing_birth_date_is_unknown_for_the_age_check():
    request = build_request(base_case())
    del request["prefetch"]["patient"]["birthDate"]
    result = run(request)
    assert outcome_of(result, "ci-age-under-18").status == "unknown"
    assert "date of birth" in gaps_card(result)["summary"]


def test_missing_pregnancy_status_is_unknown_for_a_woman_of_childbearing_age():
    result = run(build_request(base_case(patient={"id": "s2", "sex": "female", "age": 30})))
    assert outcome_of(result, "ci-pregnancy").status == "unknown"
    assert "pregnancy status" in gaps_card(result)["summary"]


def test_missing_sex_is_unknown_for_the_pregnancy_check():
    request = build_request(base_case(patient={"id": "s3", "sex": "female", "age": 30}))
    del request["prefetch"]["patient"]["gender"]
    result = run(request)
    assert outcome_of(result, "ci-pregnancy").status == "unknown"
    assert "sex" in gaps_card(result)["summary"]


@pytest.mark.parametrize("rule_id", ["ci-blood-pressure", "ci-blood-pressure-severe"])
def test_missing_pre_dose_blood_pressure_is_unknown(rule_id):
    observations = [o for o in NORMALS if o.get("code") != "loinc:85354-9"]
    result = run(build_request(base_case(observations=observations)))
    assert outcome_of(result, rule_id).status == "unknown"
    card = gaps_card(result)
    assert "blood pressure (last 24 hours)" in card["summary"]
    assert card["indicator"] == "warning", "a gap that blocks a safety check is a warning"
    assert any("85354-9" in str(s) for s in card.get("suggestions", [])), "suggests measuring BP"


@pytest.mark.parametrize(
    ("rule_id", "code"),
    [
        # lorazepam 1 mg/day is below the 8 mg diazepam-equivalent threshold of the efficacy rule
        ("ddi-cns-depressants", "rx:197901"),
        ("ddi-maoi", "rx:312347"),
        ("ddi-lamotrigine", "rx:198429"),
    ],
)
def test_unreadable_interacting_medication_is_unknown(rule_id, code):
    meds = [*HISTORY, {"code": code, "dose": "1 mg", "frequency": "1/d", "start": "-3m"}]
    readable = run(build_request(base_case(medications=meds)))
    assert outcome_of(readable, rule_id).status == "fired"
    request = build_request(base_case(medications=meds))
    entry = request["prefetch"]["medicationRequests"]["entry"][-1]["resource"]
    entry["authoredOn"] = "a while ago"
    result = run(request)
    assert outcome_of(result, rule_id).status == "unknown"


def test_null_prefetch_is_no_record_not_unknown():
    """`null` from the EHR means it looked and found nothing: condition checks are false, not gaps."""
    request = build_request(base_case())
    request = copy.deepcopy(request)
    request["prefetch"]["conditions"] = None
    result = run(request)
    assert outcome_of(result, "ci-vascular").status == "not-fired"
