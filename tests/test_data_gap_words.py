"""The data-gap card says what could not be read, and why, and never silently drops an item.

Findings of session 4 (issue 8): a Patient with a ``modifierExtension`` (or an invalid birth date)
gave "Missing before deciding: date of birth, a readable Patient.deceased[x]" while the chart shows a
birth date: the prescriber cannot tell what is missing. And a summary over 139 characters lost its
last items (cut after a whole item, with "…"), though the detail table still listed them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from cds_service.cards import summary_text
from cds_service.engine.loader import load_ruleset
from cds_service.engine.templating import TEMPLATES, render

from .conftest import RULES, load_example
from .record_support import facts_of, run_predicate, run_request

MODIFIER = [{"url": "http://example.org/fhir/StructureDefinition/not-what-it-seems", "valueBoolean": True}]


def gap_card(response: dict[str, Any]) -> dict[str, Any]:
    (card,) = [c for c in response["cards"] if c["source"]["topic"]["code"] == "data-gaps"]
    return card


def table_rows(card: dict[str, Any]) -> list[str]:
    """The first column of the detail table (what is missing, in full)."""
    rows = [line for line in card["detail"].splitlines() if line.startswith("| ")][1:]  # header left out
    return [row.split(" | ")[0].removeprefix("| ") for row in rows]


def test_a_patient_with_a_modifier_extension_says_what_could_not_be_read_and_why():
    request = load_example("v01-clear-trd-eligible")
    request["prefetch"]["patient"]["modifierExtension"] = MODIFIER
    out = run_request(request)
    card = gap_card(out.response)
    assert card["summary"].startswith("Not readable in the Patient record: date of birth"), card["summary"]
    assert "deceased status" in card["summary"]
    # the table says why, by element, in words: no developer notation, no value, no extension URL
    (born,) = [r for r in table_rows(card) if r.startswith("date of birth")]
    assert "modifierExtension" in born and "not understood" in born, born
    assert "deceased[x]" not in json.dumps(out.response)
    assert "not-what-it-seems" not in json.dumps(out.response)
    assert re.search(r"\bv01\b", card["summary"] + card["detail"]) is None  # no id in the gap card


def test_an_invalid_birth_date_is_said_unreadable_not_missing():
    request = load_example("v01-clear-trd-eligible")
    request["prefetch"]["patient"]["birthDate"] = "19th May 1980"
    out = run_request(request)
    card = gap_card(out.response)
    assert card["summary"] == "Not readable in the Patient record: date of birth", card["summary"]
    (born,) = table_rows(card)
    assert "birthDate" in born, born
    assert "19th May" not in json.dumps(out.response)


def test_an_unreadable_patient_and_missing_data_are_both_in_the_summary():
    request = load_example("v13-missing-data")
    request["prefetch"]["patient"]["modifierExtension"] = MODIFIER
    card = gap_card(run_request(request).response)
    summary = card["summary"]
    assert summary.startswith("Not readable in the Patient record: date of birth"), summary
    # the missing items are said after the unreadable ones, so a cut counts them first
    assert re.search(r"missing before deciding: |\d+ more missing$|\d+ missing\)$", summary), summary
    assert_nothing_silently_lost(card)


def assert_nothing_silently_lost(card: dict[str, Any]) -> None:
    """Every row of the table is named in the summary (its short name at least), or counted in
    "… and N more" with the kinds left out."""
    summary = card["summary"]
    assert len(summary) < 140, summary
    rows = table_rows(card)
    named = [r for r in rows if re.split(r" \(| — ", r)[0] in summary]
    more = re.search(r"… and (\d+) more (.+)$", summary)
    if len(named) == len(rows):
        assert not more, summary
    else:
        assert more, (summary, rows)
        assert int(more.group(1)) == len(rows) - len(named), (summary, rows)


@pytest.mark.parametrize("example", ["v13-missing-data"])
def test_a_long_gap_summary_names_every_item(example):
    card = gap_card(run_request(load_example(example)).response)
    assert len(table_rows(card)) == 4
    assert "baseline depression score" in card["summary"], card["summary"]
    assert_nothing_silently_lost(card)


def render_summary(rows: list[dict[str, str]]) -> str:
    panel = load_ruleset(RULES).panels["data-gaps"]
    return summary_text(render(panel.summary, {**TEMPLATES.globals, "rows": rows}).strip(), panel.title)


@pytest.mark.parametrize("n", [1, 3, 6, 9, 14])
def test_a_summary_too_long_for_every_name_counts_the_rest_by_kind(n):
    rows = [
        {"id": f"need-{i}", "label": f"a needed reading number {i} (with its window, 30 days)"}
        for i in range(n)
    ]
    rows.insert(
        0, {"id": "not-read:vitalSigns", "label": "vital signs (Observation) — not retrieved from the EHR"}
    )
    summary = render_summary(rows)
    card = {
        "summary": summary,
        "detail": "| h | h |\n" + "\n".join(f"| {r['label'].split(' — ')[0]} | x |" for r in rows),
    }
    assert summary.startswith("Not retrieved from the EHR: vital signs"), summary
    assert_nothing_silently_lost(card)
    if n >= 6:
        assert summary.endswith("more missing"), summary


def test_the_kinds_left_out_are_said():
    rows = [{"id": "not-read:vitalSigns", "label": "vital signs (Observation) — not retrieved from the EHR"}]
    rows += [
        {"id": "unreadable:Patient", "label": f"patient element {i} — not readable (why)"} for i in range(9)
    ]
    rows += [{"id": f"need-{i}", "label": f"reading {i}"} for i in range(3)]
    summary = render_summary(rows)
    assert len(summary) < 140 and summary.endswith("not readable, 3 missing)"), summary


def test_a_birth_year_alone_asks_for_the_full_date_not_a_missing_one():
    """Born "2008", seen on 2026-05-04: 17 or 18. The gap names the full date of birth, since a
    year is on the chart (the predicate said so, and the generic "date of birth" label hid it)."""
    request = load_example("v10-age-17")
    request["prefetch"]["patient"]["birthDate"] = "2008"
    card = gap_card(run_request(request).response)
    assert card["summary"] == "Missing before deciding: full date of birth (only part recorded)", card[
        "summary"
    ]


def weight_of(request: dict[str, Any]) -> dict[str, Any]:
    entries = request["prefetch"]["vitalSigns"]["entry"]
    return next(e["resource"] for e in entries if e["resource"]["code"]["coding"][0]["code"] == "29463-7")


def test_a_weight_in_an_unknown_unit_is_asked_for_in_a_known_unit():
    """The dose check said "body weight in a known unit (kg, g, lb, oz)"; the generic "body
    weight (30 days)" label made a recorded weight read as if none were recorded."""
    request = load_example("v02-one-failed-trial")  # IV ketamine: the mg/kg check reads the weight
    weight_of(request)["valueQuantity"] = {
        "value": 11,
        "unit": "stone",
        "system": "http://unitsofmeasure.org",
        "code": "[stone_av]",
    }
    card = gap_card(run_request(request).response)
    assert "body weight in a known unit (kg, g, lb, oz)" in card["summary"], card["summary"]
    assert any(r.startswith("body weight in a known unit") for r in table_rows(card)), card["detail"]
    assert any(s["label"].startswith("Order: body weight") for s in card.get("suggestions", [])), card


def test_an_implausible_weight_is_said_implausible():
    request = load_example("v02-one-failed-trial")
    weight_of(request)["valueQuantity"] = {
        "value": 8000,
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    }
    card = gap_card(run_request(request).response)
    assert "a plausible body weight (last 30 days)" in card["summary"], card["summary"]
    assert "outside 1–400 kg" in card["detail"] and "8000" not in card["summary"] + card["detail"]


def test_a_rules_own_observation_label_is_the_gap_label():
    """A rule that words what it asks for (``label:``) is not overruled by the generic data_needs label."""
    result = run_predicate(
        {"has_observation": {"kind": "weight", "within_days": 7, "label": "body weight this week"}},
        facts_of(load_example("v13-missing-data")),
    )
    assert result.value is None
    (m,) = result.missing
    assert m.specific and m.label == "body weight this week", m


def test_the_deceased_gap_has_one_wording():
    """``Patient.deceased[x]`` unreadable is said as the other Patient elements are (the fallback
    "a readable Patient.deceased[x]" could never be reached and is gone: this passed before too)."""
    request = load_example("v01-clear-trd-eligible")
    request["prefetch"]["patient"]["deceasedBoolean"] = "unknown"
    card = gap_card(run_request(request).response)
    assert card["summary"] == "Not readable in the Patient record: deceased status", card["summary"]


# -- an unreadable record of a value set: its kind and why, never its id (session 6 leftover) -------
TRANYLCYPROMINE = {
    "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "313447"}],
    "text": "tranylcypromine 10 MG Oral Tablet",
}
UNREADABLE = {
    "medicationRequests": {
        "resourceType": "MedicationRequest",
        "id": "bad-maoi-77",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/v01"},
        "authoredOn": "not a date",
        "medicationCodeableConcept": TRANYLCYPROMINE,
    },
    "conditions": {
        "resourceType": "Condition",
        "id": "bad-psychosis-77",
        "subject": {"reference": "Patient/v01"},
        "clinicalStatus": "active",  # a string where FHIR has a CodeableConcept
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F20.0"}]},
    },
    "allergies": {
        "resourceType": "AllergyIntolerance",
        "id": "bad-allergy-77",
        "patient": {"reference": "Patient/v01"},
        "clinicalStatus": "active",
        "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "6130"}]},
    },
}


@pytest.mark.parametrize("key", sorted(UNREADABLE))
def test_an_unreadable_record_of_a_value_set_is_named_by_kind_and_element_never_by_id(key: str) -> None:
    request = load_example("v01-clear-trd-eligible")
    resource = UNREADABLE[key]
    request["prefetch"][key].setdefault("entry", []).append({"resource": resource})
    out = run_request(request)
    card = gap_card(out.response)
    text = card["summary"] + "\n" + card["detail"]
    (row,) = [r for r in table_rows(card) if r.startswith("a readable ")]
    assert resource["id"] not in text and "77" not in text, row
    element = "authoredOn" if key == "medicationRequests" else "clinicalStatus"
    article = "an" if key == "allergies" else "a"
    assert f"{article} {resource['resourceType']} with {element} not readable" in row, row
    # the explanation (for informaticians) still points at the record: as evidence, not in the label
    rules = card["extension"]["ketamine-cds.explanation"]["rules"]
    assert all(resource["id"] not in " ".join(r.get("missing", [])) for r in rules)
