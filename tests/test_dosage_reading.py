"""Dosage readings are kept by the sig's content, never by a patient's dates (issue 8, speed)."""

from __future__ import annotations

import copy
from typing import Any

from cds_service.reading import dosage


def _request(bounds: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "dosageInstruction": [
            {
                "text": "300 mg oral three times daily",
                "doseAndRate": [{"doseQuantity": {"value": 300, "unit": "mg", "code": "mg"}}],
                "timing": {
                    "repeat": {"boundsPeriod": bounds, "frequency": 3, "period": 1, "periodUnit": "d"}
                },
                "route": {"text": "oral"},
            }
        ],
    }


def test_a_sig_with_timing_bounds_is_kept_by_its_content_without_the_dates() -> None:
    a = _request({"start": "2024-12-02", "end": "2026-04-26"})["dosageInstruction"][0]
    b = _request({"start": "2019-01-05"})["dosageInstruction"][0]
    key_a, key_b = dosage._dosage_key(a), dosage._dosage_key(b)
    assert key_a is not None and key_a == key_b  # one reading for every patient's course of this sig
    assert b"2024" not in key_a and b"2019" not in key_b and b"bounds" not in key_a
    assert "boundsPeriod" in a["timing"]["repeat"]  # the record itself is left as sent


def test_dates_elsewhere_in_a_dosage_are_not_a_key() -> None:
    a = _request({"start": "2024-12-02"})["dosageInstruction"][0]
    a["timing"]["event"] = ["2024-12-02"]
    a["extension"] = [{"url": "x", "valuePeriod": {"start": "2024-12-02"}}]
    a["timing"]["repeat"]["boundsDuration"] = {"value": 10, "unit": "d"}
    other = copy.deepcopy(a)
    other["extension"][0]["valuePeriod"] = {"boundsPeriod": {"start": "2025-01-01"}}
    assert dosage._dosage_key(other) is None


def test_a_kept_reading_is_the_reading() -> None:
    first = dosage.dosing_of(_request({"start": "2024-12-02"}), "MedicationRequest")
    again = dosage.dosing_of(_request({"start": "2021-03-09", "end": "2021-06-01"}), "MedicationRequest")
    assert (first.dose, first.dose_unit, first.per_day, first.route) == (300, "mg", 3, "oral")
    assert again == first and again is not first  # a fresh object: callers may fill in the route
