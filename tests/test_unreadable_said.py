"""Every record entry a rule needed and could not read is said in a card, on every hook, once.

On patient-view the service speaks about a patient it concerns (rules/common.yaml
patient-view-concerned: a course in progress, a coded TRD diagnosis, or MDD that meets the TRD
definition). When TRD is unknown, whether the patient is concerned is unknown, and so was the
"record entries not read in full" card (data-unreadable-resources, gated on ketamine-decision):
the data-gaps card then said what TRD needed, and any other entry that could not be read (a PHQ-9
whose date cannot be read) was said nowhere (the differential: 10 of 2,182 variants). The card now
appears whenever the decision may be in play (ketamine-decision true or unknown), as the data-gaps
card does; a patient the service does not concern still gets no card.

The requests are the worked vignette v01 (TRD met by sertraline and venlafaxine) built for each
hook, with EHR-shaped defects: a MedicationStatement of sertraline whose dates carry a time without
a zone (TRD unknown: tests/test_trd_unread_records.py), a PHQ-9 whose effectiveDateTime has a space
for the T.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cds_service.compact import build_request, load_cases

from .conftest import RULES
from .record_support import run_request
from .test_trd_unread_records import UNREADABLE_DATES, _statement

HOOKS = ["patient-view", "order-select", "order-sign"]


def _v01(hook: str) -> dict[str, Any]:
    (case,) = [
        c for c in load_cases(RULES / "tests" / "vignettes.yaml") if c["id"] == "v01-clear-trd-eligible"
    ]
    case = copy.deepcopy(case)
    case["hook"] = hook
    if hook == "patient-view":
        del case["orders"]
    return build_request(case)


def _unread_sertraline(req: dict[str, Any]) -> None:
    patient = req["context"]["patientId"]
    statement = _statement("sertraline", UNREADABLE_DATES["time without a zone"], patient)
    req["prefetch"]["medicationStatements"].setdefault("entry", []).append({"resource": statement})


def _unread_phq9_date(req: dict[str, Any]) -> None:
    (phq9, *_) = [
        e["resource"]
        for e in req["prefetch"]["assessments"]["entry"]
        if any(c.get("code") == "44261-6" for c in e["resource"]["code"]["coding"])
    ]
    phq9["effectiveDateTime"] = phq9["effectiveDateTime"].replace("T", " ")


def _said(req: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(the cards, how many times the unreadable-resources card lists each unreadable entry the
    rules met: by its type and element, as "- Observation, from assessments: not read: …")."""
    out = run_request(req)
    cards = out.response["cards"]
    listed = [
        line
        for c in cards
        if c["source"]["topic"]["code"] == "data-unreadable-resources"
        for line in c["detail"].splitlines()
        if line.startswith("- ")
    ]
    said: dict[str, int] = {}
    for p in out.evaluation.facts.record.problems:
        rtype, element = p.resource.split("/")[0], p.message.split(":")[0]
        said[f"{rtype} {element}"] = sum(
            1 for line in listed if line.startswith(f"- {rtype}") and f"{element}:" in line
        )
    return cards, said


@pytest.mark.parametrize("hook", HOOKS)
def test_an_unreadable_phq9_is_said_when_trd_is_unknown(hook: str) -> None:
    req = _v01(hook)
    _unread_sertraline(req)
    _unread_phq9_date(req)
    cards, said = _said(req)
    assert said == {"MedicationStatement effectivePeriod.end": 1, "Observation effectiveDateTime": 1}, (
        hook,
        said,
        [c["summary"] for c in cards],
    )
    assert sum(c["source"]["topic"]["code"] == "data-unreadable-resources" for c in cards) == 1


@pytest.mark.parametrize("hook", HOOKS)
def test_an_unreadable_phq9_is_said_when_trd_is_met(hook: str) -> None:
    req = _v01(hook)
    _unread_phq9_date(req)
    _, said = _said(req)
    assert said == {"Observation effectiveDateTime": 1}, (hook, said)


def test_trd_unknown_on_patient_view_keeps_its_data_gap() -> None:
    req = _v01("patient-view")
    _unread_sertraline(req)
    cards, _ = _said(req)
    topics = [c["source"]["topic"]["code"] for c in cards]
    assert topics.count("data-gaps") == 1 and topics.count("data-unreadable-resources") == 1, topics
    assert "trd-met" not in topics and "eligibility" not in topics


def test_a_patient_the_service_does_not_concern_still_gets_no_card() -> None:
    """Patient-view for a patient without MDD: the decision is not in play (false), whatever the
    record holds."""
    req = _v01("patient-view")
    req["prefetch"]["conditions"]["entry"] = []
    _unread_phq9_date(req)
    assert run_request(req).response["cards"] == []
