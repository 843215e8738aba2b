"""How often a dose is taken, from ``Timing.code`` (session 7's review, finding 4).

EHRs often send a sig's frequency as a code of the FHIR R4 value set timing-abbreviation
(http://hl7.org/fhir/ValueSet/timing-abbreviation, 4.0.1: codes of
http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation) and no ``timing.repeat``: "BID" alone.
Only ``repeat`` was read, so such a dose had no frequency (a daily dose only as a lower bound). The
expected doses per day below are the value set's own definitions ("Two times a day at institution
specified time", "Every Other Day …", "Every 8 hours …"); the mapping the service reads lives in
rules/terminology/timing.yaml. A code it does not know — another system's, a misspelt one, words
alone — leaves the frequency unknown, never assumed.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .conftest import load_example
from .record_support import facts_of, run_request

GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"

#: each code of the R4 value set, and its definition's doses per day
PER_DAY = {
    "BID": 2,  # Two times a day
    "TID": 3,  # Three times a day
    "QID": 4,  # Four times a day
    "AM": 1,  # Every morning
    "PM": 1,  # Every afternoon
    "QD": 1,  # Every Day
    "QOD": 0.5,  # Every Other Day
    "Q1H": 24,  # Every hour
    "Q2H": 12,  # Every 2 hours
    "Q3H": 8,  # Every 3 hours
    "Q4H": 6,  # Every 4 hours
    "Q6H": 4,  # Every 6 Hours
    "Q8H": 3,  # Every 8 hours
    "BED": 1,  # At bedtime
    "WK": 1 / 7,  # Weekly
    "MO": 1 / 30,  # Monthly (a month read as 30 days, as timing.repeat's periodUnit "mo" is)
}


def _escitalopram(request: dict[str, Any]) -> dict[str, Any]:
    (found,) = [
        e["resource"]
        for e in request["prefetch"]["medicationRequests"]["entry"]
        if "escitalopram" in str(e["resource"].get("medicationCodeableConcept")).lower()
    ]
    return found


def _with_timing(timing: dict[str, Any]) -> dict[str, Any]:
    """v02's escitalopram 20 mg, its timing replaced (bounds kept as the record had them)."""
    request = copy.deepcopy(load_example("v02-one-failed-trial"))
    dosage = _escitalopram(request)["dosageInstruction"][0]
    bounds = dosage["timing"]["repeat"]["boundsPeriod"]
    dosage["timing"] = copy.deepcopy(timing)
    dosage["timing"].setdefault("repeat", {})["boundsPeriod"] = bounds
    return request


def _coded(code: str, system: str | None = GTS, text: str | None = None) -> dict[str, Any]:
    coding = {"code": code} if system is None else {"system": system, "code": code}
    concept: dict[str, Any] = {"coding": [coding]}
    if text:
        concept["text"] = text
    return {"code": concept}


def _use(request: dict[str, Any]) -> Any:
    facts = facts_of(request)
    wanted = f"MedicationRequest/{_escitalopram(request)['id']}"
    (use,) = [u for u in facts.medication_uses if u.ref == wanted]
    return use


@pytest.mark.parametrize("code", sorted(PER_DAY))
def test_a_timing_code_of_the_value_set_gives_the_doses_per_day(code: str) -> None:
    use = _use(_with_timing(_coded(code, text=code)))
    assert use.doses_per_day == pytest.approx(PER_DAY[code])
    assert use.daily_dose == pytest.approx(20 * PER_DAY[code])


@pytest.mark.parametrize(
    "timing",
    [
        _coded("BID", "http://example.org/local-frequencies"),  # another system's "BID"
        _coded("BID", None),  # a code without its system
        _coded("B.I.D."),  # not a code of the system
        _coded("Q12H"),  # not a code of the R4 value set
        {"code": {"text": "BID"}},  # words alone
    ],
    ids=["other system", "no system", "not a code", "not in the value set", "text only"],
)
def test_an_unknown_timing_code_leaves_the_frequency_unknown(timing: dict[str, Any]) -> None:
    use = _use(_with_timing(timing))
    assert use.doses_per_day is None


def test_a_repeat_with_a_frequency_is_read_before_the_code() -> None:
    """FHIR: the code and the structured repeat say the same; where a repeat states a frequency it
    is read (the code then adds nothing)."""
    timing = {**_coded("BID"), "repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}
    assert _use(_with_timing(timing)).doses_per_day == 1


def test_a_sig_read_before_with_another_code_is_not_reused() -> None:
    """Readings of a sig are kept across requests by what they are read from: the code is part of
    it, so 'BID' after 'TID' (and a local 'BID' after HL7's) is read again."""
    assert _use(_with_timing(_coded("TID"))).doses_per_day == 3
    assert _use(_with_timing(_coded("BID"))).doses_per_day == 2
    assert _use(_with_timing(_coded("BID", "http://example.org/local-frequencies"))).doses_per_day is None
    assert _use(_with_timing(_coded("BID"))).doses_per_day == 2


def test_an_order_dosed_by_timing_code_is_read_in_the_card() -> None:
    """The whole path: the service reads the coded frequency of a record and answers as it does
    for the same sig written as a repeat."""
    coded = run_request(_with_timing(_coded("QD"))).response["cards"]
    repeat = run_request(_with_timing({"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}})).response[
        "cards"
    ]
    assert [c["summary"] for c in coded] == [c["summary"] for c in repeat]
