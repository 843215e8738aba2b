"""A pregnancy status whose value cannot be read is said to be unreadable, never missing.

A pregnancy-status observation is an answer: one of its listed answers, an answer that says it is
not known ("Unknown", LA4489-6), or something else ("Yes", "12 weeks"), which is not a reading of
the kind. An answer whose value[x] is not valid R4B (its coding an object, its code or text a
number, the concept inside an array, a boolean written as a string) was taken for "none of the
listed answers": the observation was dropped as "not a reading" before its readability was asked,
and the data-gaps card asked for the status as if none were recorded. Every other kind says "a
readable … — the latest could not be read" for an unreadable observation; this one now does too,
and lists the entry among those not read in full. The request is the worked vignette v01 (a woman
of 45, IV ketamine) with its one pregnancy-status observation changed.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .conftest import load_example
from .record_support import run_request

LOINC = "http://loinc.org"
UNREADABLE_ROW = "a readable pregnancy status — the latest could not be read"

#: value[x] as EHRs have sent it and R4B does not read
INVALID_VALUES: dict[str, dict[str, Any]] = {
    "coding as an object": {
        "valueCodeableConcept": {"coding": {"system": LOINC, "code": "LA26683-5", "display": "Not pregnant"}}
    },
    "code as a number": {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": 26683}]}},
    "text as a number": {"valueCodeableConcept": {"text": 0}},
    "concept inside an array": {"valueCodeableConcept": [{"text": "Not pregnant"}]},
    "valueString as a number": {"valueString": 0},
    "valueBoolean as a string": {"valueBoolean": "false"},
}


def _status(request: dict[str, Any]) -> dict[str, Any]:
    (found,) = [e["resource"] for e in request["prefetch"]["pregnancyStatus"]["entry"]]
    return found


def _with_value(value: dict[str, Any], **changes: Any) -> dict[str, Any]:
    request = copy.deepcopy(load_example("v01-clear-trd-eligible"))
    status = _status(request)
    del status["valueCodeableConcept"]
    status.update(value, **changes)
    return request


def _cards(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["source"]["topic"]["code"]: c for c in run_request(request).response["cards"]}


def _rows(card: dict[str, Any]) -> list[str]:
    rows = [line for line in card["detail"].splitlines() if line.startswith("| ")][1:]
    return [row.split(" | ")[0].removeprefix("| ") for row in rows]


def _pregnancy_rows(request: dict[str, Any]) -> list[str]:
    return [r for r in _rows(_cards(request)["data-gaps"]) if "pregnancy" in r]


@pytest.mark.parametrize("shape", sorted(INVALID_VALUES))
def test_an_invalid_value_is_could_not_be_read(shape: str) -> None:
    request = _with_value(INVALID_VALUES[shape])
    assert _pregnancy_rows(request) == [UNREADABLE_ROW], shape
    text = str(_cards(request))
    assert "pregnancyStatus" in text and "value" in text  # the entry is listed as not read


@pytest.mark.parametrize("shape", sorted(INVALID_VALUES))
def test_an_invalid_value_with_an_unreadable_date_is_could_not_be_read(shape: str) -> None:
    """No readable date either: it may be the latest, and it could not be read."""
    request = _with_value(INVALID_VALUES[shape], effectiveDateTime="05/04/2026")
    assert _pregnancy_rows(request) == [UNREADABLE_ROW], shape


@pytest.mark.parametrize(
    "answer",
    [
        {"coding": [{"system": LOINC, "code": "LA4489-6", "display": "Unknown"}], "text": "Unknown"},
        {"text": "Yes"},
    ],
    ids=["LA4489-6", "yes"],
)
def test_a_readable_answer_that_is_no_status_is_still_asked_for(answer: dict[str, Any]) -> None:
    """The controls: a valid answer that says it is not known, or none of the answers, is no
    reading of the status: the status is asked for, as missing (nothing was unreadable)."""
    assert _pregnancy_rows(_with_value({"valueCodeableConcept": answer})) == ["pregnancy status"]


def test_an_unknown_answer_with_an_unreadable_date_is_still_no_reading() -> None:
    request = _with_value(
        {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA4489-6"}]}},
        effectiveDateTime="05/04/2026",
    )
    assert _pregnancy_rows(request) == ["pregnancy status"]


def test_a_readable_not_pregnant_answer_is_asked_for_by_nobody() -> None:
    request = _with_value({"valueCodeableConcept": {"text": "Not pregnant"}})
    gaps = _cards(request).get("data-gaps")
    assert gaps is None or not [r for r in _rows(gaps) if "pregnancy" in r]
