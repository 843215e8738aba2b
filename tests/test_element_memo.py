"""What the element walk remembers (reading/elements.py): per request, what it found in content
the record repeats; across calls, only by content without the patient's words or dates.

A patient's monthly refills repeat the same drug, days supply and sig: the walk checks that
content once per request and answers every resource from it, each for itself. Across calls a
dosage's period of use (``timing.repeat.boundsPeriod``, the patient's own dates) is a placeholder
in the key when it is certainly valid, so the verdict is shared and no date is kept; a bound the
fast check cannot vouch for is walked apart, every time.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cds_service.reading.medication_records  # noqa: F401  (declares the Reads)
from cds_service.reading import element_walk, elements
from cds_service.reading.medication_records import READS
from cds_service.reading.raw import without_words
from cds_service.reading.record import PatientRecord

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SIG = {
    "sequence": 1,
    "text": "300 mg oral three times daily",
    "doseAndRate": [
        {"doseQuantity": {"value": 300, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}
    ],
    "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
    "route": {"text": "oral"},
}


def _dispense(i: int, code: str = "310431") -> dict[str, Any]:
    return {
        "resourceType": "MedicationDispense",
        "id": f"d{i}",
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}], "text": "gabapentin"},
        "daysSupply": {"value": 30, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"},
        "whenHandedOver": f"2024-{i % 12 + 1:02d}-02",
        "dosageInstruction": [copy.deepcopy(SIG)],
    }


def _order(start: str, end: str) -> dict[str, Any]:
    sig = copy.deepcopy(SIG)
    sig["timing"]["repeat"]["boundsPeriod"] = {"start": start, "end": end}
    return {
        "resourceType": "MedicationRequest",
        "id": f"o{start}",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "310431"}]},
        "authoredOn": start,
        "dosageInstruction": [sig],
    }


def test_repeated_content_is_walked_once_per_request_and_each_resource_answers_for_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    walked: list[int] = []
    real = element_walk._shared
    monkeypatch.setattr(element_walk, "_shared", lambda *a: walked.append(1) or real(*a))
    refills = [_dispense(i) for i in range(6)]
    refills[4]["whenHandedOver"] = "2024-02-30"  # its own element, checked for it alone
    other = _dispense(9, code="31 0431\u00a0")  # another content: its own walk (a code no model allows)
    record = PatientRecord(by_type={"MedicationDispense": [*refills, other]})
    reads = READS["MedicationDispense"][0]
    answers = [record.readable(r, reads) for r in [*refills, other]]
    assert answers == [True, True, True, True, False, True, False]
    assert len(walked) == 2  # six refills of one drug and sig: one walk of it; main walked each
    assert [p.resource for p in record.problems] == ["MedicationDispense/d4", "MedicationDispense/d9"]
    assert record.problems[0].message.startswith("whenHandedOver")
    assert record.problems[1].message.startswith("medicationCodeableConcept")


def test_a_dosage_period_is_a_placeholder_in_the_kept_key_and_no_date_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = _order("1911-03-04", "1911-09-04"), _order("1912-05-06", "1912-11-06")
    elements.walk(first, "MedicationRequest")
    table = element_walk.COMPILED["MedicationRequest"].table
    before = len(table.kept.data)
    walked: list[str] = []
    real = element_walk._read
    monkeypatch.setattr(element_walk, "_read", lambda key, *a: walked.append(key) or real(key, *a))
    assert elements.walk(second, "MedicationRequest")[0] == frozenset()
    assert "dosageInstruction" not in walked  # answered from the key the first one made; main walked it
    assert len(table.kept.data) == before
    kept = b"".join(k[1] for k in table.kept.data if isinstance(k, tuple) and isinstance(k[1], bytes))
    assert b"1911-" not in kept and b"1912-" not in kept
    assert b"(read apart)" in kept


def test_a_bound_the_fast_check_cannot_vouch_for_is_walked_apart_and_still_fails() -> None:
    bad = _order("1913-02-30", "1913-09-04")  # no such day
    record = PatientRecord(by_type={"MedicationRequest": [bad]})
    assert not record.readable(bad, READS["MedicationRequest"][1])
    assert "dosageInstruction[0].timing" in record.problems[0].message
    table = element_walk.COMPILED["MedicationRequest"].table
    assert not any(b"1913-" in k[1] for k in table.kept.data if isinstance(k[1], bytes))


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("BP taken by Anna", True),
        ("é ok", True),
        ("", False),
        ("é", False),
        ('say "x"', False),
        ("a\\b", False),
        ("\n", False),
    ],
)
def test_without_words_replaces_only_a_string_the_fhir_check_vouches_for(text: str, kept: bool) -> None:
    import orjson

    content = orjson.dumps({"coding": [{"code": "x"}], "text": text, "b": {"text": "ok"}})
    key = without_words(content)
    assert (key is not None) is kept
    if key is not None:
        assert key == b'{"coding":[{"code":"x"}],"text":"(written)","b":{"text":"(written)"}}'


def test_a_problem_names_the_prefetch_key_its_resource_came_from() -> None:
    bad = {"resourceType": "Condition", "id": "c1", "code": {"coding": "not a list"}}
    good = {"resourceType": "Condition", "id": "c2", "code": {"coding": []}}
    record = PatientRecord.from_prefetch(
        {"patient": [{"resourceType": "Patient", "id": "p"}], "conditions": [good, bad, dict(bad)]},
        {"patientId": "p"},
    )
    assert record.resources("Condition") == [good, bad]  # the second c1 is the same resource
    reads = elements.Reads("Condition", "code")
    assert not record.readable(bad, reads)
    assert record.problems[-1].where == "conditions"
    assert record.origin_of(good) == "conditions" and record.origin_of(record.patient) == "patient"


def _without_words_by_splitting(content: bytes) -> bytes | None:
    """The definition without_words had before it was one regex substitution (session 6): split at
    every written key, each string checked by hand. The regex must answer exactly as this does."""
    import re

    if any(content.find(m) != -1 for m in (b'"note":', b'xtension":', b'"comment":')):
        return None
    for marker in (b'"text":', b'"patientInstruction":'):
        parts = content.split(marker)
        for i in range(1, len(parts)):
            part = parts[i]
            end = part.find(b'"', 1)
            if end < 2 or part[0] != 34:
                return None
            if part.find(b"\\", 1, end) != -1:
                return None
            if re.search(rb"[ !#-\[\]-~]", part[1:end]) is None:
                return None
            parts[i] = b'"(written)"' + part[end + 1 :]
        content = marker.join(parts)
    return content


_WRITTEN = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "é", "é ok", 'say "x"', "a\\b", "\n", "\t x", "\x00", "☃☃", "x" * 40]),
    st.integers(-(2**53), 2**53),
    st.none(),
    st.booleans(),
    st.lists(st.just("a"), max_size=2),
)
_KEYS = st.sampled_from(["text", "patientInstruction", "code", "display", "texts", "Text", "note", "x"])
_JSON = st.recursive(
    _WRITTEN,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=600, deadline=None)
@given(_JSON)
def test_without_words_answers_as_its_definition_by_splitting(value: Any) -> None:
    import orjson

    content = orjson.dumps(value)
    assert without_words(content) == _without_words_by_splitting(content)


def test_without_words_gives_the_same_object_back_when_nothing_is_written() -> None:
    content = b'{"coding":[{"code":"x","display":"y"}]}'
    assert without_words(content) is content  # terminology.py tells "written" by identity
