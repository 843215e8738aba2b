"""An antidepressant record whose status or dates cannot be read (session 7's review, finding 1).

The medication reading keeps such a record out of the trials and lists it as unreadable
(``Facts.unreadable_medications_in``). Before this test TRD never asked, so "TRD met" or "TRD not
established" could rest on a history with a hole in it. What an unread record could do to the
answer is bounded by its drug, the one part of it that was read:

- of an ingredient no counted trial has, it could be one more adequate failed trial (its dates in
  the episode, long enough; or an attested non-response that counts an ongoing trial): "not
  established" may be wrong;
- of an ingredient already counted, it cannot add a trial, but it could take that one away (the
  course still going on, a stop for intolerance, a later score showing response): "met" may be
  wrong.

So TRD is unknown, and the data gap names what could not be read (kind of record and element,
never a value, an id or the drug), exactly when the unread records could flip the answer; when
they cannot, the answer stands and nothing is asked.

The records are the worked vignettes v01 (sertraline then venlafaxine counted, duloxetine ongoing:
TRD met) and v02 (sertraline counted, escitalopram ongoing: not established), with one
MedicationStatement added in shapes EHRs send: a dateTime with a time but no time zone, a date
with a space for the T, a US-style date.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from cds_service.compact import build_request, load_cases

from .conftest import RULES, load_example
from .record_support import facts_of, run_predicate, run_request
from .test_trial_doses import _trd_spec

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
DRUGS = {"bupropion": "42347", "sertraline": "36437", "escitalopram": "321988", "duloxetine": "72625"}

#: effective[x] as EHRs write it and FHIR does not read (no zone after a time; a space; US order)
UNREADABLE_DATES: dict[str, dict[str, Any]] = {
    "time without a zone": {
        "effectivePeriod": {"start": "2025-06-01T10:00:00", "end": "2025-09-30T10:00:00"}
    },
    "space for the T": {"effectivePeriod": {"start": "2025-06-01 10:00", "end": "2025-09-30"}},
    "US date": {"effectiveDateTime": "06/01/2025"},
}


def _statement(drug: str, dates: dict[str, Any], patient: str, n: int = 0) -> dict[str, Any]:
    return {
        "resourceType": "MedicationStatement",
        "id": f"{patient}-hist-{n}",
        "status": "completed",
        "subject": {"reference": f"Patient/{patient}"},
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": DRUGS[drug], "display": drug}],
            "text": drug,
        },
        **dates,
    }


def _with(example: str, *drugs: str, shape: str = "time without a zone") -> dict[str, Any]:
    req = copy.deepcopy(load_example(example))
    patient = req["context"]["patientId"]
    bundle = req["prefetch"].setdefault(
        "medicationStatements", {"resourceType": "Bundle", "type": "searchset"}
    )
    entries = bundle.setdefault("entry", [])
    for n, drug in enumerate(drugs):
        entries.append({"resource": _statement(drug, UNREADABLE_DATES[shape], patient, n)})
    return req


def _fired(req: dict[str, Any]) -> tuple[set[str], list[dict[str, Any]]]:
    out = run_request(req)
    return {o.rule.id for o in out.evaluation.fired}, out.response["cards"]


def _gap_text(cards: list[dict[str, Any]]) -> str:
    (gap,) = [c for c in cards if "record of an antidepressant trial" in c["summary"] + c.get("detail", "")]
    return gap["summary"] + "\n" + gap.get("detail", "")


def test_the_controls() -> None:
    assert "trd-met" in _fired(load_example("v01-clear-trd-eligible"))[0]
    assert "trd-not-established" in _fired(load_example("v02-one-failed-trial"))[0]


@pytest.mark.parametrize("shape", sorted(UNREADABLE_DATES))
def test_an_unread_record_of_another_antidepressant_leaves_not_established_unknown(shape: str) -> None:
    """v02 has one counted trial of two needed; an unread bupropion statement could be the second."""
    req = _with("v02-one-failed-trial", "bupropion", shape=shape)
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None
    assert [m.id for m in result.missing] == ["trd-trial-record"]
    assert result.evidence == [f"MedicationStatement/{req['context']['patientId']}-hist-0"]
    fired, cards = _fired(req)
    assert not {"trd-met", "trd-not-established"} & fired
    text = _gap_text(cards)
    assert "MedicationStatement" in text and "effective" in text
    for leak in (r"v02", r"hist-", r"2025", r"06/01", r"10:00", r"bupropion", r"Patient/"):
        assert not re.search(leak, text), f"{shape}: the data gap shows {leak!r}"


def test_an_unread_record_of_an_ongoing_uncounted_antidepressant_leaves_it_unknown() -> None:
    """Escitalopram is ongoing in v02 (outcome not known): an unread record of it could attest
    non-response or end it, and make it count."""
    result = run_predicate(_trd_spec(), facts_of(_with("v02-one-failed-trial", "escitalopram")))
    assert result.value is None and [m.id for m in result.missing] == ["trd-trial-record"]


def test_an_unread_record_of_the_counted_drug_cannot_establish_trd() -> None:
    """Another sertraline record cannot add a second trial: 'not established' stands, nothing asked."""
    req = _with("v02-one-failed-trial", "sertraline")
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is False and not result.missing
    fired, cards = _fired(req)
    assert "trd-not-established" in fired
    assert not any("record of an antidepressant trial" in c["summary"] + c.get("detail", "") for c in cards)


def test_not_established_even_with_every_unread_record_counted_stands() -> None:
    """Three trials needed: one counted plus one unread bupropion record cannot reach it."""
    result = run_predicate(_trd_spec(min_trials=3), facts_of(_with("v02-one-failed-trial", "bupropion")))
    assert result.value is False and not result.missing


@pytest.mark.parametrize("drug", ["bupropion", "duloxetine"])
def test_an_unread_record_of_an_uncounted_drug_cannot_undo_met(drug: str) -> None:
    """v01 is met by sertraline and venlafaxine: a record of another drug cannot take them away."""
    req = _with("v01-clear-trd-eligible", drug)
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is True and not result.missing
    assert "trd-met" in _fired(req)[0]


def test_an_unread_record_of_a_counted_drug_leaves_met_unknown_when_it_decides() -> None:
    """An unread sertraline statement may say the course goes on, or stopped for intolerance: with
    two trials needed and two counted, TRD is unknown; with one needed, venlafaxine still meets it."""
    req = _with("v01-clear-trd-eligible", "sertraline")
    facts = facts_of(req)
    result = run_predicate(_trd_spec(), facts)
    assert result.value is None and [m.id for m in result.missing] == ["trd-trial-record"]
    assert result.evidence == ["MedicationStatement/v01-hist-0"]
    assert run_predicate(_trd_spec(min_trials=1), facts).value is True
    fired, cards = _fired(req)
    assert not {"trd-met", "trd-not-established"} & fired
    assert "MedicationStatement" in _gap_text(cards)


def test_two_unread_records_of_one_drug_are_one_gap() -> None:
    """Two unread bupropion records: one possible trial, one row naming both records."""
    req = _with("v02-one-failed-trial", "bupropion", "bupropion")
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None
    (gap,) = result.missing
    assert gap.id == "trd-trial-record" and gap.why.startswith("2 MedicationStatements")


def _untreated_years(*drugs: str) -> dict[str, Any]:
    """Sertraline and venlafaxine failed in 2018, then seven years with no antidepressant and no
    score: an earlier episode (rules/tests/completeness.yaml), so TRD is not established."""
    (case,) = [
        c
        for c in load_cases(RULES / "tests" / "completeness.yaml")
        if c["id"] == "episode-untreated-years-left-out"
    ]
    req = build_request(case)
    patient = req["context"]["patientId"]
    entries = req["prefetch"]["medicationStatements"].setdefault("entry", [])
    for n, drug in enumerate(drugs):
        entries.append({"resource": _statement(drug, UNREADABLE_DATES["US date"], patient, n)})
    return req


def test_an_unread_record_in_the_stretch_that_separated_the_episodes_leaves_it_unknown() -> None:
    """Any antidepressant record not read may fall in the years off antidepressants: the 2018
    trials might then be this episode's, two failed trials: TRD unknown, not 'not established'."""
    assert run_predicate(_trd_spec(), facts_of(_untreated_years())).value is False
    req = _untreated_years("bupropion")
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None and [m.id for m in result.missing] == ["trd-trial-record"]
    assert not {"trd-met", "trd-not-established"} & _fired(req)[0]
    # four trials needed: the two earlier ones and the unread one could not reach it
    assert run_predicate(_trd_spec(min_trials=4), facts_of(req)).value is False


def test_why_a_record_of_a_counted_drug_matters_its_readable_twin_can_undo_met() -> None:
    """The same sertraline statement, readable, saying the course stopped for nausea: sertraline is
    then intolerance, not resistance, and TRD is not met. Unread, it may say just that."""
    req = _with("v01-clear-trd-eligible", "sertraline")
    (stmt,) = [
        e["resource"]
        for e in req["prefetch"]["medicationStatements"]["entry"]
        if e["resource"]["id"] == "v01-hist-0"
    ]
    stmt.pop("effectivePeriod")
    stmt.update(
        status="stopped",
        effectivePeriod={"start": "2025-03-01", "end": "2025-06-15"},
        statusReason=[{"text": "stopped: nausea"}],
    )
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is False
    (left,) = [t for t in result.bind["trd"]["not_counted"] if t["ingredient"] == "sertraline"]
    assert "intolerance" in left["why"]
