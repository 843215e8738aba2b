"""Dosage readings are kept by the sig's content, never by a patient's dates or words (issue 8, speed)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

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
    assert "2024" not in repr(key_a) and "2019" not in repr(key_b)
    assert "boundsPeriod" in a["timing"]["repeat"]  # the record itself is left as sent


def test_dates_elsewhere_in_a_dosage_are_never_in_a_key() -> None:
    """Only the parts the amounts are read from are a key: events, extensions, bounds are not."""
    a = _request({"start": "2024-12-02"})["dosageInstruction"][0]
    a["timing"]["event"] = ["2024-12-02"]
    a["extension"] = [{"url": "x", "valuePeriod": {"start": "2024-12-02"}}]
    a["timing"]["repeat"]["boundsDuration"] = {"value": 10, "unit": "d"}
    a["doseAndRate"][0]["doseQuantity"]["extension"] = [{"url": "x", "valueDateTime": "2024-12-02"}]
    key = dosage._dosage_key(a)
    assert key is not None and "2024" not in repr(key)
    assert key == dosage._dosage_key(_request({"start": "2019-01-05"})["dosageInstruction"][0])


def test_a_kept_reading_is_the_reading() -> None:
    first = dosage.dosing_of(_request({"start": "2024-12-02"}), "MedicationRequest")
    again = dosage.dosing_of(_request({"start": "2021-03-09", "end": "2021-06-01"}), "MedicationRequest")
    assert (first.dose, first.dose_unit, first.per_day, first.route) == (300, "mg", 3, "oral")
    assert again == first


def test_a_dosage_with_free_text_is_kept_without_the_words() -> None:
    """Free text (the sig's text, patient instructions, a route or dose type written out, a note,
    an extension) can hold anything about the patient: only the numbers, units and codes the
    amounts are read from are a kept key, and a part of another shape is read, not kept."""
    dosage._DOSINGS.clear()
    base = _request({"start": "2024-12-02"})
    words = "Jane Doe, born 1961-02-03: take with food after the overdose attempt"
    for where in ("text", "patientInstruction", "note", "extension"):
        res = copy.deepcopy(base)
        given = res["dosageInstruction"][0]
        given[where] = words if where in ("text", "patientInstruction") else [{"text": words}]
        given["route"] = {"text": words}
        given["additionalInstruction"] = [{"text": words}]
        given["doseAndRate"][0]["type"] = {"text": words}
        given["doseAndRate"][0]["doseQuantity"]["extension"] = [{"url": "x", "valueString": words}]
        key = dosage._dosage_key(given)
        assert key is not None and "Jane" not in repr(key) and "1961" not in repr(key)
        assert dosage.dosing_of(res, "MedicationRequest").dose == 300
    res = copy.deepcopy(base)
    res["dosageInstruction"][0]["timing"]["repeat"]["frequency"] = [words]  # not a number: not kept
    assert dosage._dosage_key(res["dosageInstruction"][0]) is None
    dosage.dosing_of(res, "MedicationRequest")
    assert len(dosage._DOSINGS) == 1
    assert not any("Jane" in repr(key) or "1961" in repr(key) for key in dosage._DOSINGS)
    assert not any("Jane" in str(v) for v in dosage._DOSINGS.values())


def _worded(route_text: str, sig: str) -> dict[str, Any]:
    res = _request({"start": "2024-12-02"})
    given = res["dosageInstruction"][0]
    given["text"] = sig
    given["route"] = {"text": route_text} if route_text else {}
    return res


def test_a_route_written_out_is_read_from_each_records_own_words() -> None:
    """Two sigs alike but for their words share a kept key; the route each names is its own."""
    dosage._DOSINGS.clear()
    oral = _worded("by mouth", "300 mg three times daily")
    iv = _worded("IV infusion", "300 mg three times daily")
    assert dosage._dosage_key(oral["dosageInstruction"][0]) == dosage._dosage_key(iv["dosageInstruction"][0])
    assert dosage.dosing_of(oral, "MedicationRequest").route == "oral"
    assert dosage.dosing_of(iv, "MedicationRequest").route == "iv"
    assert len(dosage._DOSINGS) == 1 and "iv" not in next(iter(dosage._DOSINGS.values()))
    # no route concept: the sig's own text names it
    by_sig = [_worded("", s) for s in ("300 mg by mouth tid", "300 mg i.m. tid", "300 mg tid")]
    assert [dosage.dosing_of(r, "MedicationRequest").route for r in by_sig] == ["oral", "im", None]
    assert dosage.dosing_of(iv, "MedicationRequest", {}).route == "iv"


def test_timing_events_are_left_out_of_every_key() -> None:
    """``timing.event`` holds the patient's dates and no reading uses it."""
    a = _request({"start": "2024-12-02"})["dosageInstruction"][0]
    a["timing"]["event"] = ["2024-12-02T08:00:00Z"]
    key = dosage._dosage_key(a)
    assert key is not None and b"2024" not in key
    assert key == dosage._dosage_key(_request({})["dosageInstruction"][0])
    assert a["timing"]["event"] == ["2024-12-02T08:00:00Z"]


def test_the_request_memo_reads_one_course_once() -> None:
    """Within a request, records of one sig (and drug form) share one reading, which nobody can
    change (a route filled in for one record would be every record's)."""
    memo: dosage.Memo = {}
    course = [_worded("oral", "300 mg three times daily") for _ in range(4)]
    for dispense in (course[0], course[2], course[3]):  # a request (course[1]) has the bounds
        del dispense["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"]
    readings = [dosage.dosing_of(r, "MedicationRequest", memo) for r in course]
    assert len(memo) == 2  # the request (with its bounds) and its dispenses
    assert readings[0] is readings[3] and readings[0] is not readings[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        readings[0].route = "iv"  # type: ignore[misc]
    nasal = dosage.dosing_of(course[0], "MedicationRequest", memo, "nasal")
    assert nasal is not readings[0] and nasal.route == "oral" and len(memo) == 3  # its own route wins
    assert (readings[1].dose, readings[1].per_day, readings[1].route) == (300, 3, "oral")
    other = _worded("IV", "300 mg three times daily")
    assert dosage.dosing_of(other, "MedicationRequest", memo).route == "iv" and len(memo) == 4


def test_without_a_route_the_drugs_form_names_it_each_form_its_own_reading() -> None:
    memo: dosage.Memo = {}
    sig = _worded("", "300 mg three times daily")
    routes = [dosage.dosing_of(sig, "MedicationRequest", memo, f).route for f in ("nasal", "injection", None)]
    assert routes == ["nasal", "injection", None] and len(memo) == 3
    assert dosage.dosing_of({}, "MedicationRequest", memo, "transdermal").route == "transdermal"
    assert dosage.dosing_of({}, "MedicationAdministration", None, None) == dosage.Dosing()


def test_a_routes_own_word_reads_as_the_search_would() -> None:
    """The word-for-word lookup of a route written out is the pattern search's answer."""
    for words in dosage.ROUTES.values():
        for word in words:
            for written in (word, word.upper(), f" {word} "):
                assert dosage._route_in(written) == dosage._route_by_pattern(written.lower()), written
    assert dosage._route_in("Oral") == "oral" and dosage._route_in("nasal spray, both nostrils") == "nasal"


def test_a_kept_reading_is_never_another_records_number_of_another_type() -> None:
    """``True == 1 == 1.0`` in Python (one hash): a sig's ``frequency: true`` (which R4B accepts as
    1, and the reading refuses) or a dose of ``300.0`` must not answer for ``1`` or ``300`` read
    later in the same worker: what a record says is read from that record."""
    fresh = {}
    for value in (True, 1, 1.0, 300, 300.0):
        dosage._DOSINGS.clear()
        res = _request({"start": "2024-12-02"})
        res["dosageInstruction"][0]["timing"]["repeat"]["frequency"] = value
        res["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = value
        read = dosage.dosing_of(res, "MedicationRequest")
        fresh[repr(value)] = (read.dose, type(read.dose), read.per_day, type(read.per_day))
    dosage._DOSINGS.clear()
    for value in (True, 1, 1.0, 300, 300.0, 1, True):
        res = _request({"start": "2024-12-02"})
        res["dosageInstruction"][0]["timing"]["repeat"]["frequency"] = value
        res["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = value
        read = dosage.dosing_of(res, "MedicationRequest")
        assert (read.dose, type(read.dose), read.per_day, type(read.per_day)) == fresh[repr(value)], value
