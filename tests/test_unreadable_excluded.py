"""A record that no check would count is never an unreadable record of its kind (session 7
leftovers of issue 8), and a reading whose date cannot be read is said so, not "missing".

(a) An entered-in-error or refuted Condition, or for a check of current conditions a resolved
one, whose code (or onset) cannot be read made the check unknown ("a readable record of
Psychotic disorders"), though a readable copy of it would never count. Its status is what
excludes it, so only a status that itself was read excludes it: an unreadable status still makes
the check unknown (an unread field never costs a safety check).

(b) A reading of a kind whose date cannot be read could be the latest: the gap says it could not
be read instead of "missing".
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import load_example
from .record_support import bp_panels, facts_of, run_request, weight

VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"


def condition(code: str, **elements: Any) -> dict[str, Any]:
    """A Condition as an EHR sends it, its code's display written as a number (not readable)."""
    return {
        "resourceType": "Condition",
        "id": "c-77",
        "subject": {"reference": "Patient/v01"},
        "code": {"coding": [{"system": ICD, "code": code, "display": 5}]},
        **elements,
    }


def with_condition(resource: dict[str, Any]) -> dict[str, Any]:
    request = load_example("v01-clear-trd-eligible")
    request["prefetch"]["conditions"].setdefault("entry", []).append({"resource": resource})
    return request


def unknown_rules(request: dict[str, Any]) -> set[str]:
    return {o.rule.id for o in run_request(request).evaluation.unknown}


def gap_text(request: dict[str, Any]) -> str:
    cards = run_request(request).response["cards"]
    return " ".join(
        c["summary"] + c.get("detail", "") for c in cards if c["source"]["topic"]["code"] == "data-gaps"
    )


@pytest.mark.parametrize("status", ["entered-in-error", "refuted"])
def test_a_condition_recorded_in_error_whose_code_cannot_be_read_is_no_unreadable_record_of_its_kind(
    status: str,
) -> None:
    request = with_condition(
        condition("F20.0", verificationStatus={"coding": [{"system": VER, "code": status}]})
    )
    facts = facts_of(request)
    assert facts.conditions_in("psychosis") == []
    assert facts.unreadable_conditions_in("psychosis") == []
    assert "ci-psychosis" not in unknown_rules(request)
    assert "Psychotic disorders" not in gap_text(request)


def test_a_condition_whose_verification_status_cannot_be_read_is_still_an_unreadable_record() -> None:
    request = with_condition(
        condition("F20.0", verificationStatus="entered-in-error")
    )  # not a CodeableConcept
    assert facts_of(request).unreadable_conditions_in("psychosis") == ["Condition/c-77"]
    assert "ci-psychosis" in unknown_rules(request)
    assert "a readable record of Psychotic disorders" in gap_text(request)


def test_a_resolved_condition_that_cannot_be_read_leaves_a_check_of_current_ones_decided() -> None:
    resolved = {"coding": [{"system": CLIN, "code": "resolved"}]}
    request = with_condition(condition("F30.10", clinicalStatus=resolved))
    facts = facts_of(request)
    assert facts.unreadable_conditions_in("mania-hypomania", active_only=True) == []
    assert "ci-current-mania" not in unknown_rules(request)
    # history counts: for a check of any (also past) condition it is still an unreadable record
    assert facts.unreadable_conditions_in("mania-hypomania") == ["Condition/c-77"]


@pytest.mark.parametrize("clinical", [{"coding": [{"system": CLIN, "code": "active"}]}, None, "resolved"])
def test_a_current_or_unknown_status_condition_that_cannot_be_read_still_makes_the_check_unknown(
    clinical: Any,
) -> None:
    elements = {} if clinical is None else {"clinicalStatus": clinical}
    request = with_condition(condition("F30.10", **elements))
    assert facts_of(request).unreadable_conditions_in("mania-hypomania", active_only=True) == [
        "Condition/c-77"
    ]
    assert "ci-current-mania" in unknown_rules(request)


# -- (b) a reading whose date cannot be read --------------------------------------------------------
def gap_rows(request: dict[str, Any]) -> list[str]:
    cards = run_request(request).response["cards"]
    gaps = [c for c in cards if c["source"]["topic"]["code"] == "data-gaps"]
    rows = [line for c in gaps for line in c["detail"].splitlines() if line.startswith("| ")][1:]
    return [row.split(" | ")[0].removeprefix("| ") for row in rows]


@pytest.mark.parametrize("when", ["yesterday", "2026-13-45T08:00:00Z", 20260503])
def test_a_weight_whose_date_cannot_be_read_is_said_unreadable_not_missing(when: Any) -> None:
    request = load_example("v02-one-failed-trial")  # IV ketamine dosed by weight
    weight(request)["effectiveDateTime"] = when
    (row,) = [r for r in gap_rows(request) if "body weight" in r]
    assert row.startswith("a readable body weight (last 30 days) — "), row
    assert "could not be read" in row, row
    assert "yesterday" not in row and "2026-13" not in row  # elements are named, never values


def test_blood_pressures_whose_date_cannot_be_read_are_said_unreadable_not_missing() -> None:
    request = load_example("v01-clear-trd-eligible")
    for panel in bp_panels(request):
        panel["effectiveDateTime"] = "this morning"
    (row,) = [r for r in gap_rows(request) if "blood pressure" in r]
    assert row.startswith("a readable blood pressure (last 24 hours) — "), row
    assert "could not be read" in row, row


@pytest.mark.parametrize(
    "change",
    [
        {"status": "entered-in-error"},  # no reading: its date does not matter
        {"dataAbsentReason": {"text": "not obtained"}, "valueQuantity": None},  # a reading not made
    ],
)
def test_a_weight_that_is_no_reading_is_missing_whatever_its_date(change: dict[str, Any]) -> None:
    request = load_example("v02-one-failed-trial")
    found = weight(request)
    found["effectiveDateTime"] = "yesterday"
    for key, value in change.items():
        if value is None:
            found.pop(key, None)
        else:
            found[key] = value
    (row,) = [r for r in gap_rows(request) if "body weight" in r]
    assert "could not be read" not in row, row


def test_a_weight_whose_date_cannot_be_read_does_not_hide_a_readable_one() -> None:
    request = load_example("v02-one-failed-trial")
    extra = {**weight(request), "id": "w-undated", "effectiveDateTime": "yesterday"}
    request["prefetch"]["vitalSigns"]["entry"].append({"resource": extra})
    facts = facts_of(request)
    assert facts.latest("weight", within_days=30) is not None
    assert not any("body weight" in r for r in gap_rows(request))
