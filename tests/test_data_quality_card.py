"""The data-quality card (``data-unreadable-resources``) counts record entries and says what was not read.

Findings of session 5 (issue 8): one Patient with two invalid elements read "2 record entries could
not be read and were left out of these checks". It is one entry; and element-level reading keeps
the entry, leaving out only the facts that rest on its unreadable elements.
"""

from __future__ import annotations

import re
from typing import Any

from .conftest import load_example
from .record_support import run_request

UNREADABLE = "data-unreadable-resources"


def quality_card(response: dict[str, Any]) -> dict[str, Any]:
    (card,) = [c for c in response["cards"] if c["source"]["topic"]["code"] == UNREADABLE]
    return card


def test_one_patient_with_two_invalid_elements_is_one_entry_with_two_elements():
    request = load_example("v01-clear-trd-eligible")
    patient = request["prefetch"]["patient"]
    patient["birthDate"] = "19th May 1980"
    patient["gender"] = ["female"]
    card = quality_card(run_request(request).response)
    summary = card["summary"]
    assert summary.startswith("1 record entry (Patient)"), summary
    assert "2 elements" in summary and "2 record entries" not in summary, summary
    assert len(summary) < 140, summary


def test_an_entry_read_in_part_is_not_said_left_out():
    request = load_example("v01-clear-trd-eligible")
    request["prefetch"]["patient"]["birthDate"] = "19th May 1980"
    card = quality_card(run_request(request).response)
    text = card["summary"] + card["detail"]
    assert "left out" not in text, text
    assert "birthDate" in card["detail"], card["detail"]
    assert "date of birth" in card["detail"] or "data-gap" in card["detail"], card["detail"]


def test_the_card_names_no_id_and_no_value():
    request = load_example("v01-clear-trd-eligible")
    pid = request["prefetch"]["patient"]["id"]
    request["prefetch"]["patient"]["birthDate"] = "19th May 1980"
    vitals = request["prefetch"]["vitalSigns"]
    entries = vitals["entry"] if isinstance(vitals, dict) else None
    bp = next(e["resource"] for e in entries if e["resource"]["code"]["coding"][0]["code"] == "85354-9")
    bp["effectiveDateTime"] = "yesterday"
    card = quality_card(run_request(request).response)
    text = card["summary"] + card["detail"]  # (the explanation extension names evidence by id)
    assert "19th May" not in text and "yesterday" not in text
    assert re.search(rf"\b{re.escape(pid)}\b", text) is None, text
    assert re.search(rf"\b{re.escape(bp['id'])}\b", text) is None, text
    assert card["summary"].startswith("2 record entries (Patient, Observation)"), card["summary"]


def test_an_entry_of_the_wrong_type_is_said_left_out():
    request = load_example("v01-clear-trd-eligible")
    vitals = request["prefetch"]["vitalSigns"]
    vitals["entry"].append({"resource": {"resourceType": "Condition", "id": "stray"}})
    card = quality_card(run_request(request).response)
    assert card["summary"].startswith("1 record entry (Condition) could not be read and was left out"), card[
        "summary"
    ]
