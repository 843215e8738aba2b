"""A reading recorded but not usable is not "missing": the data gap says which (issue 8, "say what you
could not read"; session 6 leftover).

A blood pressure recorded without a unit, or in a unit that is not a pressure, an implausible weight
and a reading that could not be read at all each gave the same row as no reading ("blood pressure
today", "body weight (30 days)"): the prescriber, who sees the reading in the chart, is told it is
missing. The row now says what is wrong with it, by unit and element, never by value or id.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .conftest import load_example
from .record_support import bp_panels, run_request, weight


def gap_rows(request: dict[str, Any]) -> tuple[str, list[str]]:
    out = run_request(request)
    (card,) = [c for c in out.response["cards"] if c["source"]["topic"]["code"] == "data-gaps"]
    rows = [line for line in card["detail"].splitlines() if line.startswith("| ")][1:]
    return card["summary"], [row.split(" | ")[0].removeprefix("| ") for row in rows]


@pytest.mark.parametrize(
    ("quantity", "why"),
    [
        ({"value": 190}, "the latest has no unit"),
        ({"value": 190, "unit": "bananas"}, "the latest is in a unit not convertible to mm[Hg]"),
        ({"value": 190, "system": "http://unitsofmeasure.org", "code": "kg"}, "not convertible to mm[Hg]"),
    ],
)
def test_a_blood_pressure_without_a_usable_unit_is_said_so(quantity: dict[str, Any], why: str) -> None:
    request = copy.deepcopy(load_example("v01-clear-trd-eligible"))
    for panel in bp_panels(request):
        for comp in panel["component"]:
            comp["valueQuantity"] = dict(quantity)
    summary, rows = gap_rows(request)
    (row,) = [r for r in rows if "blood pressure" in r]
    assert row.startswith("a usable blood pressure (last 24 hours) — "), row
    assert why in row, row
    assert "usable blood pressure" in summary, summary
    assert "190" not in summary + " ".join(rows)


def test_a_reading_that_could_not_be_read_is_said_so() -> None:
    request = copy.deepcopy(load_example("v02-one-failed-trial"))  # IV ketamine dosed by weight
    weight(request)["valueQuantity"]["value"] = "70"  # a string: FHIR JSON has a number
    summary, rows = gap_rows(request)
    (row,) = [r for r in rows if "body weight" in r]
    assert row.startswith("a readable body weight (last 30 days) — "), row
    assert "could not be read" in row, row
    assert "readable body weight" in summary, summary


def test_an_implausible_weight_is_said_so_without_its_value() -> None:
    request = copy.deepcopy(load_example("v02-one-failed-trial"))
    weight(request)["valueQuantity"].update({"value": 7000, "unit": "kg", "code": "kg"})
    summary, rows = gap_rows(request)
    (row,) = [r for r in rows if "body weight" in r]
    assert row.startswith("a plausible body weight (last 30 days) — "), row
    assert "7000" not in summary + row and "7 000" not in summary + row


def test_no_reading_at_all_is_said_missing() -> None:
    request = copy.deepcopy(load_example("v01-clear-trd-eligible"))
    vitals = request["prefetch"]["vitalSigns"]
    vitals["entry"] = [e for e in vitals["entry"] if "component" not in e["resource"]]
    _summary, rows = gap_rows(request)
    assert "blood pressure (last 24 hours)" in rows, rows
