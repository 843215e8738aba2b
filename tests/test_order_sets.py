"""Orders signed together (issue 9): the other drafts of a request are concurrent medications.

The extra drafts are written as an EHR's order set sends them (PRN, asNeededBoolean, a product
code and its display), next to the worked example's ketamine order.
"""

from __future__ import annotations

import copy
from typing import Any

from cds_service.compact import build_request

from .conftest import load_example
from .record_support import facts_of, fired, run_predicate

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def prn_lorazepam(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "ordset-lorazepam",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [
                {"system": RXNORM, "code": "104719", "display": "lorazepam 1 MG Oral Tablet [Ativan]"}
            ],
            "text": "LORazepam (ATIVAN) 1 mg tablet",
        },
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": "2026-05-04T08:55:00Z",
        "dosageInstruction": [
            {
                "text": "1 mg PO q6h PRN anxiety/agitation during infusion",
                "asNeededBoolean": True,
                "timing": {"repeat": {"frequency": 1, "period": 6, "periodUnit": "h"}},
                "doseAndRate": [
                    {
                        "doseQuantity": {
                            "value": 1,
                            "unit": "mg",
                            "system": "http://unitsofmeasure.org",
                            "code": "mg",
                        }
                    }
                ],
            }
        ],
    }


def with_lorazepam(name: str, hook: str | None = None) -> dict[str, Any]:
    request = copy.deepcopy(load_example(name))
    pid = request["context"]["patientId"]
    request["context"]["draftOrders"]["entry"].append({"resource": prn_lorazepam(pid)})
    if hook == "order-select":
        request["hook"] = "order-select"
        ketamine = request["context"]["draftOrders"]["entry"][0]["resource"]["id"]
        request["context"]["selections"] = [f"MedicationRequest/{ketamine}"]
    return request


def test_iv_ketamine_with_prn_lorazepam_in_one_order_set_is_an_interaction():
    assert "ddi-cns-depressants" not in fired(load_example("v02-one-failed-trial"))
    got = fired(with_lorazepam("v02-one-failed-trial"))
    assert {"ddi-cns-depressants", "ddi-benzodiazepine-efficacy"} <= got


def test_unselected_draft_of_the_order_set_still_counts_on_order_select():
    assert "ddi-cns-depressants" in fired(with_lorazepam("v02-one-failed-trial", hook="order-select"))


def test_active_medication_says_the_drug_was_ordered_together():
    r = run_predicate(
        {"active_medication": {"valueset": "benzodiazepines"}},
        facts_of(with_lorazepam("v02-one-failed-trial")),
    )
    assert r.value is True
    assert r.bind["meds"][0]["ordered_together"] is True
    assert r.evidence == ["MedicationRequest/ordset-lorazepam"]


# -- duplicate NMDA-antagonist therapy ------------------------------------------------------------
COURSE_CASE = {
    "id": "nmda",
    "now": "2026-05-04T09:00:00Z",
    "hook": "order-sign",
    "patient": {"id": "nmda1", "sex": "male", "age": 45},
    "conditions": [{"code": ["icd:F33.2"], "onset": "2024-11"}],
    "orders": [
        {"code": "rx:238082", "text": "Ketamine HCl 50 mg/mL injection", "dose": "35 mg", "route": "iv"}
    ],
}
ESKETAMINE_COURSE = {
    "code": "rx:2201625",
    "as": "administration",
    "text": "Spravato 56 mg",
    "dose": "56 mg",
    "route": "nasal",
    "dates": ["2026-04-20", "2026-04-23", "2026-04-27", "2026-04-30"],
}
KETAMINE_COURSE = {
    "code": "rx:238082",
    "as": "administration",
    "text": "Ketamine HCl 50 mg/mL injection",
    "dose": "35 mg",
    "route": "iv",
    "dates": ["2026-04-21", "2026-04-24", "2026-04-28", "2026-05-01"],
}
DUPLICATE = {
    "concurrent_medication": {
        "order_valueset": "ketamine-any",
        "valueset": "ketamine-any",
        "other_ingredient": True,
    }
}


def test_iv_ketamine_during_an_esketamine_course_is_duplicate_therapy():
    r = run_predicate(DUPLICATE, facts_of(build_request(dict(COURSE_CASE, medications=[ESKETAMINE_COURSE]))))
    assert r.value is True
    assert r.bind["order"]["ingredients"] == "ketamine"
    assert {c["ingredients"] for c in r.bind["concurrent"]} == {"esketamine"}
    assert {c["source"] for c in r.bind["concurrent"]} == {"administered"}


def test_the_next_session_of_the_same_drug_is_not_duplicate_therapy():
    r = run_predicate(DUPLICATE, facts_of(build_request(dict(COURSE_CASE, medications=[KETAMINE_COURSE]))))
    assert r.value is False


def test_ketamine_and_esketamine_drafts_together_are_duplicate_therapy():
    case = dict(COURSE_CASE)
    case["orders"] = [
        *COURSE_CASE["orders"],
        {"code": "rx:2201625", "text": "Spravato 56 mg", "dose": "56 mg"},
    ]
    r = run_predicate(DUPLICATE, facts_of(build_request(case)))
    assert r.value is True
    assert r.bind["concurrent"][0]["source"] == "ordered together"


def test_a_course_that_ended_long_ago_is_not_concurrent():
    old = dict(ESKETAMINE_COURSE, dates=["2025-09-01", "2025-09-04"])
    r = run_predicate(DUPLICATE, facts_of(build_request(dict(COURSE_CASE, medications=[old]))))
    assert r.value is False
