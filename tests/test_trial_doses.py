"""An antidepressant trial whose recorded dose cannot be read (issue 8, item 1; session 6's review).

A trial with no dose recorded at all is presumed adequate in dose (the card says "dose not recorded:
adequacy not assessed"). A trial whose dose WAS recorded but cannot be read — a dose element that is
not valid FHIR, a dose without a unit, a dose in tablets, a sig written only as text — is another
thing: before this test it was read as "not recorded" too, so an unreadable field made the TRD answer
more permissive (sertraline 25 mg/day, below the 50 mg minimum, became an adequate failed trial and
"TRD not established" became "TRD met") and the card said something false. Now such a trial is
neither counted nor dropped: when it decides the answer, TRD is unknown and the data gap says which
dose could not be read (no value, no id); otherwise the card lists it as not assessed.

The records are the worked vignette v01 (sertraline, then venlafaxine 225 mg, then duloxetine
ongoing) with sertraline's request and dispenses rewritten to 25 mg/day, in the shapes EHRs send.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from .conftest import RULES, load_example
from .record_support import facts_of, run_predicate, run_request

Dosage = dict[str, Any]
GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"


def _sertraline(req: dict[str, Any], kinds: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    for bundle in req["prefetch"].values():
        for e in bundle.get("entry", []) if isinstance(bundle, dict) else []:
            r = e.get("resource", {})
            concept = json.dumps(r.get("medicationCodeableConcept", {})).lower()
            if "sertraline" in concept and (not kinds or r["resourceType"] in kinds):
                yield r


def _rewrite(req: dict[str, Any], change: Callable[[Dosage], Any], kinds: tuple[str, ...] = ()) -> None:
    for r in _sertraline(req, kinds):
        for d in r.get("dosageInstruction", []):
            change(d)


def _at_25_mg(d: Dosage) -> None:
    d["doseAndRate"][0]["doseQuantity"]["value"] = 25
    d["text"] = "25 mg oral once daily"


def _quantity(d: Dosage) -> dict[str, Any]:
    return d["doseAndRate"][0]["doseQuantity"]


def _value_as_string(d: Dosage) -> None:
    _quantity(d)["value"] = "25"


def _no_unit(d: Dosage) -> None:
    for k in ("unit", "code", "system"):
        _quantity(d).pop(k)


def _in_tablets(d: Dosage) -> None:
    d["doseAndRate"][0]["doseQuantity"] = {"value": 1, "unit": "tab"}


def _in_pills_ucum(d: Dosage) -> None:  # the Sandbox's "1 {pill}"
    d["doseAndRate"][0]["doseQuantity"] = {
        "value": 1,
        "unit": "pill",
        "system": "http://unitsofmeasure.org",
        "code": "{pill}",
    }


def _text_only(d: Dosage) -> None:
    d.pop("doseAndRate")


def _nothing_recorded(d: Dosage) -> None:
    d.pop("doseAndRate")
    d.pop("text")


def _twice_daily_by_code_only(d: Dosage) -> None:
    """``timing.code`` BID without ``repeat`` (an EHR habit): 25 mg twice a day is 50 mg/day
    (HL7's timing-abbreviation code, read through rules/terminology/timing.yaml)."""
    d["timing"] = {"code": {"coding": [{"system": GTS, "code": "BID"}], "text": "BID"}}


def _twice_daily_by_a_local_code_only(d: Dosage) -> None:
    """A site's own frequency code without ``repeat``: how often is unknown, never assumed."""
    local = {"system": "http://example.org/sig-codes", "code": "2X"}
    d["timing"] = {"code": {"coding": [local], "text": "BID"}}


UNREADABLE = {
    "value as a string": _value_as_string,
    "no unit": _no_unit,
    "unit tab": _in_tablets,
    "unit {pill}": _in_pills_ucum,
    "text-only sig": _text_only,
    "frequency by a local timing code only": _twice_daily_by_a_local_code_only,
}


def _request(change: Callable[[Dosage], Any] | None = None, kinds: tuple[str, ...] = ()) -> dict[str, Any]:
    req = copy.deepcopy(load_example("v01-clear-trd-eligible"))
    _rewrite(req, _at_25_mg)
    if change is not None:
        _rewrite(req, change, kinds)
    return req


def _fired(req: dict[str, Any]) -> tuple[set[str], list[dict[str, Any]]]:
    out = run_request(req)
    return {o.rule.id for o in out.evaluation.fired}, out.response["cards"]


def _trd_spec(**overrides: Any) -> dict[str, Any]:
    common = yaml.safe_load((RULES / "common.yaml").read_text())
    spec = dict(common["definitions"]["trd-met"]["trd"])
    spec = {
        k: common["params"][v[1:]] if isinstance(v, str) and v.startswith("$") else v for k, v in spec.items()
    }
    return {"trd": {**spec, **overrides}}


def test_a_readable_dose_below_the_minimum_is_not_an_adequate_trial() -> None:
    """The control: 25 mg/day sertraline is below the 50 mg minimum, so one adequate trial is counted."""
    fired, _ = _fired(_request())
    assert "trd-not-established" in fired and "trd-met" not in fired


def test_no_dose_recorded_at_all_is_still_presumed_adequate() -> None:
    """The deliberate presumption stays: nothing recorded means the card says 'dose not recorded'."""
    req = _request(_nothing_recorded)
    fired, _ = _fired(req)
    assert "trd-met" in fired
    summary = run_predicate(_trd_spec(), facts_of(req)).bind["trd"]
    (sertraline,) = [t for t in summary["counted"] if t["ingredient"] == "sertraline"]
    assert sertraline["dose_note"] == "dose not recorded: adequacy not assessed"


@pytest.mark.parametrize("shape", sorted(UNREADABLE))
def test_an_unreadable_recorded_dose_that_decides_trd_makes_it_unknown(shape: str) -> None:
    req = _request(UNREADABLE[shape])
    fired, cards = _fired(req)
    assert "trd-met" not in fired, f"{shape}: an unreadable dose counted as an adequate trial"
    assert "trd-not-established" not in fired, f"{shape}: an unreadable dose read as a low one"
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None
    assert [m.id for m in result.missing] == ["trd-trial-dose"]
    assert any(r.startswith("MedicationRequest/") for r in result.evidence)
    summary = result.bind["trd"]
    assert summary["count"] == 1 and len(summary["undecided_trials"]) == 1
    assert [t["ingredient"] for t in summary["counted"]] == ["venlafaxine"]
    (left,) = [t for t in summary["not_counted"] if t["ingredient"] == "sertraline"]
    assert "could not be read" in left["why"] and "not recorded" not in left["why"]
    # the data gap says what could not be read, with no value and no id
    (gap,) = [c for c in cards if "daily dose" in c["summary"] + c.get("detail", "")]
    text = gap["summary"] + gap.get("detail", "")
    assert "antidepressant trial" in text
    for leak in (
        r"v01",
        r"MedicationRequest/",
        r"\b25\b",
        r"\btab\b",
        r"\bpill\b",
        r"Patient/",
        r"oral once",
    ):
        assert not re.search(leak, text), f"{shape}: the data gap shows {leak!r}"


def test_an_unreadable_dose_that_cannot_change_the_answer_is_said_not_counted() -> None:
    """Met without it (1 trial needed) or not met even with it (3 needed): the answer stands, and
    the trial is listed as not counted because its dose could not be read — never 'not recorded'."""
    facts = facts_of(_request(_no_unit))
    for needed, met in ((1, True), (3, False)):
        result = run_predicate(_trd_spec(min_trials=needed), facts)
        assert result.value is met and not result.missing
        (left,) = [t for t in result.bind["trd"]["not_counted"] if t["ingredient"] == "sertraline"]
        assert left["why"].startswith("dose recorded but could not be read (a dose in no unit of mass")


def test_an_unreadable_dose_beside_a_readable_adequate_one_is_adequate() -> None:
    """A dispense in tablets beside a prescription of 100 mg/day: the trial reached 100 mg/day, adequate."""
    req = _request(_in_tablets, ("MedicationDispense",))
    _rewrite(req, lambda d: _quantity(d).update(value=100), ("MedicationRequest",))
    fired, _ = _fired(req)
    assert "trd-met" in fired


def test_an_unreadable_dose_beside_a_readable_low_one_leaves_adequacy_unknown() -> None:
    """25 mg/day prescribed, the dispenses in tablets: the dispensed dose may have been higher."""
    fired, _ = _fired(_request(_in_tablets, ("MedicationDispense",)))
    assert not {"trd-met", "trd-not-established"} & fired


def test_a_dose_whose_frequency_is_an_hl7_timing_code_is_read() -> None:
    """25 mg BID (timing.code alone) is 50 mg/day, the minimal adequate dose: sertraline counts."""
    req = _request(_twice_daily_by_code_only)
    fired, _ = _fired(req)
    assert "trd-met" in fired
    summary = run_predicate(_trd_spec(), facts_of(req)).bind["trd"]
    (sertraline,) = [t for t in summary["counted"] if t["ingredient"] == "sertraline"]
    assert sertraline["max_daily_dose"] == 50
