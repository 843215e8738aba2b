"""A depression score that cannot be read, inside the stretch that separated two episodes.

TRD counts trials in the current episode only. A stretch of a year with no antidepressant and no
depression score (or of two months of remission scores) separates an earlier episode, whose trials
are then left out. That stretch rests on the *absence* of scores; a score that is there but could
not be read (a time without a zone, a value that is not a number) may fall in it and show
depression, and the episodes would be one. Before this test the stretch was claimed anyway: a
Sandbox record whose scores were written with local times and no zone came back as "TRD not
established: 0 adequate failed trials in this episode" instead of "criteria met".

So TRD is unknown when an unread score may fall in the separating stretch and the earlier
episode's trials could decide it, and the data gap names the kind of record and element (never a
value, an id or a date). A score not read outside the stretch changes nothing.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from cds_service.compact import build_request, load_cases

from .conftest import RULES, load_example
from .record_support import facts_of, run_predicate, run_request
from .test_trd_unread_records import _untreated_years
from .test_trial_doses import _trd_spec

LOINC = "http://loinc.org"
PHQ9 = "44261-6"

#: a PHQ-9 as EHRs write it and FHIR does not read
UNREADABLE: dict[str, dict[str, Any]] = {
    "time without a zone": {"effectiveDateTime": "2019-06-01T10:00:00", "valueQuantity": {"value": 19}},
    "US date": {"effectiveDateTime": "06/01/2019", "valueQuantity": {"value": 19}},
    "value as text in valueQuantity": {"effectiveDateTime": "2019-06-01", "valueQuantity": {"value": "19"}},
}


def _score(patient: str, n: int, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"{patient}-phq-{n}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": PHQ9, "display": "PHQ-9 total score"}]},
        "subject": {"reference": f"Patient/{patient}"},
        **copy.deepcopy(fields),
    }


def _with_scores(*fields: dict[str, Any]) -> dict[str, Any]:
    """The seven untreated years (2018 trials left out as an earlier episode) plus these PHQ-9s."""
    req = _untreated_years()
    patient = req["context"]["patientId"]
    bundle = req["prefetch"].setdefault("assessments", {"resourceType": "Bundle", "type": "searchset"})
    entries = bundle.setdefault("entry", [])
    for n, f in enumerate(fields):
        entries.append({"resource": _score(patient, n, f)})
    return req


def _gap_text(cards: list[dict[str, Any]]) -> str:
    (gap,) = [c for c in cards if "Missing" in c["summary"]]
    return gap["summary"] + "\n" + gap.get("detail", "")


def test_the_control_is_not_established_by_the_separating_years() -> None:
    result = run_predicate(_trd_spec(), facts_of(_with_scores()))
    assert result.value is False
    assert "without antidepressants or depression scores" in result.bind["trd"]["episode_basis"]


@pytest.mark.parametrize("shape", sorted(UNREADABLE))
def test_an_unread_score_in_the_separating_years_leaves_trd_unknown(shape: str) -> None:
    req = _with_scores(UNREADABLE[shape])
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None, shape
    assert [m.id for m in result.missing] == ["trd-episode-score"]
    assert result.evidence == [f"Observation/{req['context']['patientId']}-phq-0"]
    out = run_request(req)
    fired = {o.rule.id for o in out.evaluation.fired}
    assert not {"trd-met", "trd-not-established"} & fired
    text = _gap_text(out.response["cards"])
    assert "Observation" in text and ("effective" in text or "value" in text), text
    for leak in (r"c00", r"phq-", r"2019", r"06/01", r"10:00", r"\b19\b", r"Patient/"):
        assert not re.search(leak, text), f"{shape}: the data gap shows {leak!r}"


def test_a_readable_twin_of_that_score_joins_the_episodes() -> None:
    """Why it matters: read, the same PHQ-9 of 19 in 2019, five months after the last trial, shows
    depression in the stretch, the 2018 trials are this episode's, and TRD is met."""
    req = _with_scores({"effectiveDateTime": "2019-06-01T10:00:00Z", "valueQuantity": {"value": 19}})
    assert run_predicate(_trd_spec(), facts_of(req)).value is True


@pytest.mark.parametrize("when", ["2017-06-01T10:00:00", "2021-06-01T10:00:00", "2026-04-20T10:00:00"])
def test_an_unread_score_that_cannot_join_the_episodes_changes_nothing(when: str) -> None:
    """During the earlier trials (2017), or so late that the years before it still separate the
    episodes (2021, 2026): whatever the score says, TRD is not established."""
    result = run_predicate(
        _trd_spec(), facts_of(_with_scores({"effectiveDateTime": when, "valueQuantity": {"value": 19}}))
    )
    assert result.value is False and not result.missing


def test_an_unread_score_cannot_undo_met() -> None:
    """Joining the episodes only adds trials: with three trials needed and two there, still not met,
    and 'not established' stands when even the earlier trials could not reach it."""
    req = _with_scores(UNREADABLE["time without a zone"])
    assert run_predicate(_trd_spec(min_trials=3), facts_of(req)).value is False


def test_the_sandbox_capture_with_local_times_is_not_called_not_established() -> None:
    """The Sandbox's v10 esketamine order with every time written without a zone (as EHRs that
    send local times do): its scores cannot be read, so TRD is not claimed either way."""
    from .test_unread_elements_sweep import REQUESTS

    req = copy.deepcopy(REQUESTS["sandbox/order-sign-v10-esketamine.json"])
    text = json.dumps(req)
    text = re.sub(r'"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"', r'"\1"', text)
    local = json.loads(text)
    local["extension"] = req["extension"]  # the evaluation time keeps its zone
    out = run_request(local)
    summaries = [c["summary"] for c in out.response["cards"]]
    assert not any(s.startswith("TRD not established") for s in summaries), summaries


def _recent_trials_then_months_off(*fields: dict[str, Any]) -> dict[str, Any]:
    """Two failed trials ending 2025-09-01, then eight months without an antidepressant and
    without a score (too short, without scores, to separate episodes): TRD met."""
    (case,) = [
        c
        for c in load_cases(RULES / "tests" / "completeness.yaml")
        if c["id"] == "episode-untreated-years-left-out"
    ]
    case = copy.deepcopy(case)
    case["conditions"][0]["onset"] = "2024-03"
    case["medications"][0].update(start="2024-06-01", end="2024-10-01")
    case["medications"][1].update(start="2024-10-10", end="2025-09-01")
    req = build_request(case)
    patient = req["context"]["patientId"]
    bundle = req["prefetch"].setdefault("assessments", {"resourceType": "Bundle", "type": "searchset"})
    for n, f in enumerate(fields):
        bundle.setdefault("entry", []).append({"resource": _score(patient, n, f)})
    return req


def test_an_unread_score_in_months_off_antidepressants_leaves_met_unknown() -> None:
    """Read as a remission score, a PHQ-9 in those months would make them a remission of ≥ 2
    months (DSM-5), the trials an earlier episode's: 'met' is not claimed."""
    assert run_predicate(_trd_spec(), facts_of(_recent_trials_then_months_off())).value is True
    unread = {"effectiveDateTime": "2025-12-01T10:00:00", "valueQuantity": {"value": 3}}
    result = run_predicate(_trd_spec(), facts_of(_recent_trials_then_months_off(unread)))
    assert result.value is None and [m.id for m in result.missing] == ["trd-episode-score"]
    readable = {**unread, "effectiveDateTime": "2025-12-01T10:00:00Z"}
    assert run_predicate(_trd_spec(), facts_of(_recent_trials_then_months_off(readable))).value is False
    depressed = {**readable, "valueQuantity": {"value": 19}}
    assert run_predicate(_trd_spec(), facts_of(_recent_trials_then_months_off(depressed))).value is True


def _v01_with_sertraline_end_score(**fields: Any) -> dict[str, Any]:
    """v01 (sertraline PHQ-9 20→18, venlafaxine 19→17: TRD met) with the PHQ-9 at sertraline's
    end (2025-06-15) rewritten."""
    req = copy.deepcopy(load_example("v01-clear-trd-eligible"))
    (score,) = [
        e["resource"] for e in req["prefetch"]["assessments"]["entry"] if e["resource"]["id"] == "v01-obs-2"
    ]
    score.update(fields)
    return req


def test_an_unread_score_at_a_counted_trials_end_could_show_a_response() -> None:
    """Sertraline's end score not read: the nearest one read (19 on 2025-06-20) says failure, but
    the unread one, nearer, may say response (below 15): 'met' is not claimed."""
    req = _v01_with_sertraline_end_score(valueInteger="5")
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None and [m.id for m in result.missing] == ["trd-trial-score"]
    assert result.evidence == ["Observation/v01-obs-2"]
    # read, a 5 is a response: sertraline is not a failed trial and TRD is not met
    assert run_predicate(_trd_spec(), facts_of(_v01_with_sertraline_end_score(valueInteger=5))).value is False
    # one trial needed: venlafaxine meets it whatever the score says
    assert run_predicate(_trd_spec(min_trials=1), facts_of(req)).value is True


def test_an_unread_score_far_from_any_trials_start_or_end_changes_nothing() -> None:
    req = _v01_with_sertraline_end_score(valueInteger="5", effectiveDateTime="2025-04-20T08:45:00Z")
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is True and not result.missing


def _v01_with(changes: dict[str, dict[str, Any]], *extra: dict[str, Any]) -> dict[str, Any]:
    """v01 with its scores rewritten (by id; an empty dict removes one) and more scores added."""
    req = copy.deepcopy(load_example("v01-clear-trd-eligible"))
    entries = req["prefetch"]["assessments"]["entry"]
    for e in list(entries):
        rid = e["resource"]["id"]
        if rid in changes:
            if changes[rid]:
                e["resource"].update(changes[rid])
            else:
                entries.remove(e)
    entries.extend({"resource": r} for r in extra)
    return req


def _madrs(patient: str, n: int, fields: dict[str, Any]) -> dict[str, Any]:
    score = _score(patient, n, fields)
    score["id"] = f"{patient}-madrs-{n}"
    score["code"] = {
        "coding": [{"system": "http://ketamine-cds.local/CodeSystem/assessment", "code": "madrs-total"}]
    }
    return score


#: venlafaxine (2025-06-20 to 2025-10-10) a response: its end score 5, nine days before its end
VENLAFAXINE_RESPONDED = {"v01-obs-4": {"effectiveDateTime": "2025-10-01T08:45:00Z", "valueInteger": 5}}


def test_an_unread_score_at_a_responding_trials_end_could_show_a_failure() -> None:
    """Venlafaxine left out as a response (19→5): one trial counted, 'not established'. A PHQ-9 not
    read on the day it ended is nearer its end than the 5: read, it may show a failure, and the
    second trial would meet TRD. So 'not established' is not claimed either."""
    assert run_predicate(_trd_spec(), facts_of(_v01_with(VENLAFAXINE_RESPONDED))).value is False
    unread = _score("v01", 9, {"effectiveDateTime": "2025-10-10T08:45:00", "valueQuantity": {"value": 17}})
    req = _v01_with(VENLAFAXINE_RESPONDED, unread)
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None and [m.id for m in result.missing] == ["trd-trial-score"]
    assert result.evidence == ["Observation/v01-phq-9"]
    out = run_request(req)
    assert not {"trd-met", "trd-not-established"} & {o.rule.id for o in out.evaluation.fired}
    # read, the 17 is a failure and TRD is met
    readable = {**unread, "effectiveDateTime": "2025-10-10T08:45:00Z"}
    assert run_predicate(_trd_spec(), facts_of(_v01_with(VENLAFAXINE_RESPONDED, readable))).value is True
    # with three trials needed, even a failure leaves two: 'not established' stands
    assert run_predicate(_trd_spec(min_trials=3), facts_of(req)).value is False


def test_an_unread_score_farther_than_the_one_read_leaves_a_response_a_response() -> None:
    unread = _score("v01", 9, {"effectiveDateTime": "2025-09-20T08:45:00", "valueQuantity": {"value": 17}})
    result = run_predicate(_trd_spec(), facts_of(_v01_with(VENLAFAXINE_RESPONDED, unread)))
    assert result.value is False and not result.missing


def test_an_unread_madrs_cannot_change_a_trial_a_phq9_pair_decided() -> None:
    """PHQ-9 is read first (score_kinds): with a PHQ-9 at both ends, a MADRS never decides."""
    unread = _madrs("v01", 1, {"effectiveDateTime": "2025-06-15T08:45:00", "valueQuantity": {"value": 5}})
    result = run_predicate(_trd_spec(), facts_of(_v01_with({}, unread)))
    assert result.value is True and not result.missing
    # without the PHQ-9s of sertraline's end, a MADRS pair could decide it: not claimed
    start = _madrs("v01", 2, {"effectiveDateTime": "2025-03-01T08:45:00Z", "valueQuantity": {"value": 30}})
    alone = run_predicate(_trd_spec(), facts_of(_v01_with({"v01-obs-2": {}, "v01-obs-3": {}}, unread)))
    assert alone.value is True, "a MADRS at one end only makes no pair"
    no_end = _v01_with({"v01-obs-2": {}, "v01-obs-3": {}}, unread, start)
    result = run_predicate(_trd_spec(), facts_of(no_end))
    assert result.value is None and [m.id for m in result.missing] == ["trd-trial-score"]


NO_SCORES = {f"v01-obs-{n}": {} for n in (1, 2, 3, 4)}


def test_one_unread_score_at_one_end_of_a_trial_without_scores_changes_nothing() -> None:
    """Sertraline with no score read at either end: one score, read, cannot make a change of score
    (it needs one at its start and one at its end), so the failure presumed from the switch stands,
    and its outcome does not say no score was recorded."""
    unread = _score("v01", 9, {"effectiveDateTime": "2025-06-15T08:45:00", "valueQuantity": {"value": 5}})
    result = run_predicate(_trd_spec(), facts_of(_v01_with(NO_SCORES, unread)))
    assert result.value is True and not result.missing
    (sertraline,) = [t for t in result.bind["trd"]["counted"] if t["ingredient"] == "sertraline"]
    assert not sertraline["outcome"].startswith("no scores recorded"), sertraline["outcome"]
    # and one at each end could: not claimed
    start = _score("v01", 8, {"effectiveDateTime": "2025-03-01T08:45:00", "valueQuantity": {"value": 20}})
    result = run_predicate(_trd_spec(), facts_of(_v01_with(NO_SCORES, unread, start)))
    assert result.value is None and [m.id for m in result.missing] == ["trd-trial-score"]


def _as_text(req: dict[str, Any], rid: str) -> dict[str, Any]:
    (score,) = [e["resource"] for e in req["prefetch"]["assessments"]["entry"] if e["resource"]["id"] == rid]
    score["valueString"] = str(score.pop("valueInteger"))
    return req


def test_a_score_written_as_text_is_weighed_as_a_score_not_read() -> None:
    """valueString "18" is valid FHIR, but not a number the rules compare: at sertraline's end it
    could show a response, so 'met' is not claimed, and the gap says the value is not a number."""
    req = _as_text(_v01_with({}), "v01-obs-2")
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None and [m.id for m in result.missing] == ["trd-trial-score"]
    assert result.evidence == ["Observation/v01-obs-2"]
    assert "not a number" in result.missing[0].why, result.missing[0].why


def test_a_score_written_as_text_in_the_separating_years_leaves_trd_unknown() -> None:
    req = _with_scores({"effectiveDateTime": "2019-06-01T10:00:00Z", "valueString": "19"})
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None and [m.id for m in result.missing] == ["trd-episode-score"]
    text = _gap_text(run_request(req).response["cards"])
    assert "not a number" in text and "19" not in text, text


def test_a_trial_with_only_an_unread_score_does_not_say_no_score_was_recorded() -> None:
    """Venlafaxine (2024-10-10 to 2025-09-01) with no score: 'no scores recorded'. With one at its
    end that could not be read (a time without a zone), no change of score can be made, so TRD
    stays met, and the outcome says the score is there but was not read."""
    summary = run_predicate(_trd_spec(), facts_of(_recent_trials_then_months_off())).bind["trd"]
    (before,) = [t for t in summary["counted"] if t["ingredient"] == "venlafaxine"]
    assert before["outcome"].startswith("no scores recorded")
    unread = {"effectiveDateTime": "2025-09-01T10:00:00", "valueQuantity": {"value": 3}}
    result = run_predicate(_trd_spec(), facts_of(_recent_trials_then_months_off(unread)))
    assert result.value is True and not result.missing
    (after,) = [t for t in result.bind["trd"]["counted"] if t["ingredient"] == "venlafaxine"]
    assert after["outcome"].startswith("scores recorded but not read"), after["outcome"]


def test_a_score_with_no_value_at_all_is_not_weighed() -> None:
    """A PHQ-9 recorded with no value (and no dataAbsentReason) holds no score to read: nothing
    is asked for, and TRD stays met (found by bench/differential.py's observation-no-value)."""
    req = _v01_with({})
    (score,) = [
        e["resource"] for e in req["prefetch"]["assessments"]["entry"] if e["resource"]["id"] == "v01-obs-2"
    ]
    del score["valueInteger"]
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is True and not result.missing


#: both trials left out as responses: sertraline 20→5, venlafaxine 19→5 (0 of 2 counted)
BOTH_RESPONDED = {"v01-obs-2": {"valueInteger": 5}, **VENLAFAXINE_RESPONDED}


def test_an_unread_score_and_an_unread_record_together_leave_not_established_unknown() -> None:
    """Neither alone can make the second trial: the unread score at venlafaxine's end could make it
    a failure (one trial), the bupropion statement whose dates could not be read could be another.
    Together they could meet TRD: 'not established' is not claimed (found by review)."""
    from .test_trd_unread_records import UNREADABLE_DATES, _statement

    unread = _score("v01", 9, {"effectiveDateTime": "2025-10-10T08:45:00", "valueQuantity": {"value": 17}})
    req = _v01_with(BOTH_RESPONDED, unread)
    assert run_predicate(_trd_spec(), facts_of(req)).value is False
    statements = req["prefetch"].setdefault(
        "medicationStatements", {"resourceType": "Bundle", "type": "searchset"}
    )
    statement = _statement("bupropion", UNREADABLE_DATES["time without a zone"], "v01")
    statements.setdefault("entry", []).append({"resource": statement})
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None
    assert {m.id for m in result.missing} == {"trd-trial-score", "trd-trial-record"}


def test_an_unread_madrs_is_weighed_when_the_phq9_pair_cannot_decide() -> None:
    """A PHQ-9 pair starting at 0 makes no change of score, so the MADRS pair decides (30→28, a
    failure): an unread MADRS nearer the end could show a response (found by review)."""
    start = _madrs("v01", 1, {"effectiveDateTime": "2025-03-01T08:45:00Z", "valueQuantity": {"value": 30}})
    end = _madrs("v01", 2, {"effectiveDateTime": "2025-06-10T08:45:00Z", "valueQuantity": {"value": 28}})
    unread = _madrs("v01", 3, {"effectiveDateTime": "2025-06-15T08:45:00", "valueQuantity": {"value": 5}})
    zero = {"v01-obs-1": {"valueInteger": 0}}
    assert run_predicate(_trd_spec(), facts_of(_v01_with(zero, start, end))).value is True
    result = run_predicate(_trd_spec(), facts_of(_v01_with(zero, start, end, unread)))
    assert result.value is None and [m.id for m in result.missing] == ["trd-trial-score"]
    readable = {**unread, "effectiveDateTime": "2025-06-15T08:45:00Z"}
    assert run_predicate(_trd_spec(), facts_of(_v01_with(zero, start, end, readable))).value is False


@pytest.mark.parametrize("status", ["preliminary", "unknown"])
def test_a_preliminary_score_not_read_is_not_asked_for(status: str) -> None:
    """A trial's outcome and the episodes rest on final scores only: a preliminary one, read, changes
    nothing, so one that could not be read is not asked for (found by review)."""
    fields = {"effectiveDateTime": "2025-06-15T08:45:00Z", "status": status, "valueQuantity": {"value": 5}}
    readable = _v01_with({"v01-obs-2": {}}, _score("v01", 9, fields))
    assert run_predicate(_trd_spec(), facts_of(readable)).value is True
    for unread in (
        {**fields, "effectiveDateTime": "2025-06-15T08:45:00"},
        {**fields, "effectiveDateTime": "06/15/2025"},
    ):
        result = run_predicate(_trd_spec(), facts_of(_v01_with({"v01-obs-2": {}}, _score("v01", 9, unread))))
        assert result.value is True and not result.missing, unread["effectiveDateTime"]


def test_joined_episodes_that_rest_on_a_dose_not_read_ask_for_the_dose_too() -> None:
    """The unread 2019 score could join the 2018 trials to this episode; then venlafaxine, whose
    dose is written in tablets, decides TRD. Both the score and the dose are asked for (before:
    only the score, so reading it would have left the answer open again)."""
    req = _with_scores(UNREADABLE["time without a zone"])
    (venlafaxine,) = [
        e["resource"]
        for e in req["prefetch"]["medicationRequests"]["entry"]
        if e["resource"]["id"].endswith("-med-2")
    ]
    dosage = venlafaxine["dosageInstruction"][0]
    dosage["text"] = "1 tablet daily"
    dosage["doseAndRate"][0]["doseQuantity"] = {"value": 1, "unit": "tablet"}
    result = run_predicate(_trd_spec(), facts_of(req))
    assert result.value is None
    assert sorted(m.id for m in result.missing) == ["trd-episode-score", "trd-trial-dose"]
