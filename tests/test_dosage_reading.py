"""Dosage readings are kept by the sig's content, never by a patient's dates or words (issue 8, speed)."""

from __future__ import annotations

import copy
from typing import Any

from cds_service.reading import dosage

SCT = "http://snomed.info/sct"


def _request(bounds: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "dosageInstruction": [
            {
                "doseAndRate": [{"doseQuantity": {"value": 300, "unit": "mg", "code": "mg"}}],
                "timing": {
                    "repeat": {"boundsPeriod": bounds, "frequency": 3, "period": 1, "periodUnit": "d"}
                },
                "route": {"coding": [{"system": SCT, "code": "26643006", "display": "Oral route"}]},
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


def test_a_dosage_with_free_text_is_read_afresh_and_never_kept() -> None:
    """Free text (the sig's text, patient instructions, a route or reason written out, a note, an
    extension) can hold anything about the patient: a dosage carrying it is read, not kept."""
    dosage._DOSINGS.clear()
    base = _request({"start": "2024-12-02"})
    words = "Jane Doe, born 1961-02-03: take with food after the overdose attempt"
    for where in ("text", "patientInstruction"):
        res = copy.deepcopy(base)
        res["dosageInstruction"][0][where] = words
        assert dosage._dosage_key(res["dosageInstruction"][0]) is None
        assert dosage.dosing_of(res, "MedicationRequest").dose == 300
    res = copy.deepcopy(base)
    res["dosageInstruction"][0]["route"] = {"text": words}
    res["dosageInstruction"][0]["additionalInstruction"] = [{"text": words}]
    assert dosage._dosage_key(res["dosageInstruction"][0]) is None
    res = copy.deepcopy(base)
    res["dosageInstruction"][0]["extension"] = [{"url": "x", "valueString": words}]
    assert dosage._dosage_key(res["dosageInstruction"][0]) is None
    dosage.dosing_of(res, "MedicationRequest")
    assert not any(b"Jane" in key for _, key in dosage._DOSINGS)
