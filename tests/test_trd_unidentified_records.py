"""A medication record whose drug could not be identified, and TRD (session 9's review).

A MedicationStatement (or request, dispense, administration) that names its drug only by a
``medicationReference`` nothing could read — no contained or included Medication, none fetched, no
display — is no known drug. The interaction checks already refuse to say "not taking X" while one is
in effect (``Facts.unresolved_in_effect``); TRD left it out silently, so "TRD met" or "TRD not
established" could rest on a record that might be an antidepressant. Such a record could be any
antidepressant: one more adequate failed trial (a drug no counted trial has), or a record of a
counted drug that takes that trial away (the course still going on, a stop for intolerance). TRD is
therefore unknown exactly when one such record per unidentified record could flip the answer, and
the data gap says what could not be identified (the kind of record; no id, no reference); when it
cannot flip it, the answer stands and nothing is asked.

Records: the worked vignettes v01 (two counted trials, two needed: met) and v02 (one counted:
not established), with statements added as an EHR sends them.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .conftest import load_example
from .record_support import facts_of, run_predicate
from .test_trd_unread_records import _fired, _gap_text
from .test_trial_doses import _trd_spec


def _unidentified(patient: str, n: int, **fields: Any) -> dict[str, Any]:
    out = {
        "resourceType": "MedicationStatement",
        "id": f"{patient}-unknown-{n}",
        "status": "completed",
        "subject": {"reference": f"Patient/{patient}"},
        "medicationReference": {"reference": f"Medication/{patient}-gone-{n}"},
        "effectivePeriod": {"start": "2025-06-01", "end": "2025-09-30"},
    }
    out.update(fields)
    return out


def _with(example: str, *records: dict[str, Any]) -> dict[str, Any]:
    req = copy.deepcopy(load_example(example))
    req.pop("fhirServer", None)  # nothing to fetch the Medication from
    req.pop("fhirAuthorization", None)
    bundle = req["prefetch"].setdefault(
        "medicationStatements", {"resourceType": "Bundle", "type": "searchset"}
    )
    bundle.setdefault("entry", []).extend({"resource": r} for r in records)
    return req


def test_an_unidentified_record_leaves_not_established_unknown() -> None:
    """v02: one counted trial of two needed; the unidentified statement could be the second."""
    req = _with("v02-one-failed-trial", _unidentified("v02", 0))
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None
    assert [m.id for m in result.missing] == ["trd-trial-record"]
    assert result.evidence == ["MedicationStatement/v02-unknown-0"]
    fired, cards = _fired(req)
    assert not {"trd-met", "trd-not-established"} & fired
    text = _gap_text(cards)
    assert "MedicationStatement" in text and "identified" in text
    for leak in (r"v02", r"unknown-0", r"gone", r"2025", r"Medication/"):
        assert not re.search(leak, text), f"the data gap shows {leak!r}"


def test_an_unidentified_record_leaves_met_unknown_when_it_decides() -> None:
    """v01: two counted, two needed; it could be a record of one of them that takes it away. With
    one trial needed, the other still meets it."""
    req = _with("v01-clear-trd-eligible", _unidentified("v01", 0))
    facts = facts_of(req)
    result = run_predicate(_trd_spec(), facts)
    assert result.value is None and [m.id for m in result.missing] == ["trd-trial-record"]
    assert run_predicate(_trd_spec(min_trials=1), facts).value is True
    assert not {"trd-met", "trd-not-established"} & _fired(req)[0]


def test_each_unidentified_record_is_at_most_one_trial() -> None:
    """Three trials needed: one counted plus one unidentified record cannot reach it; plus two can."""
    one = _with("v02-one-failed-trial", _unidentified("v02", 0))
    assert run_predicate(_trd_spec(min_trials=3), facts_of(one)).value is False
    two = _with("v02-one-failed-trial", _unidentified("v02", 0), _unidentified("v02", 1))
    result = run_predicate(_trd_spec(min_trials=3), facts_of(two))
    assert result.value is None
    (gap,) = result.missing
    assert gap.why.startswith("2 MedicationStatements")


def test_records_that_are_no_use_of_a_drug_change_nothing() -> None:
    """Entered in error, not taken, or a record whose name is known (not an antidepressant by its
    display): the answers of v01 and v02 stand, nothing is asked."""
    for fields in (
        {"status": "entered-in-error"},
        {"status": "not-taken"},
        {"medicationReference": {"reference": "Medication/x", "display": "salbutamol inhaler"}},
    ):
        for example, met in (("v02-one-failed-trial", False), ("v01-clear-trd-eligible", True)):
            patient = "v02" if example.startswith("v02") else "v01"
            result = run_predicate(_trd_spec(), facts_of(_with(example, _unidentified(patient, 0, **fields))))
            assert result.value is met and not result.missing, (fields, example)
