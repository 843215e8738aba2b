"""The medication horizon: records no rule can need are left out of the medication uses (issue 8's
speed target).

The interaction rules ask whether a drug is in effect today (with grace/washout days); TRD counting,
the pathway and course tracking read the whole history of their drugs. A record of a drug read only
within windows, whose validated end lies before the longest of them (plus a margin), can change no
card: once validated (and reported, as any record) it is left out of the uses. Everything else is
kept: a drug read over the whole history, a record without an end, one recent enough.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from cds_service.pipeline import IGNORED_EXTENSION

from .conftest import RULES, load_example
from .record_support import facts_of, fired, run_request

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
GABAPENTIN = {"coding": [{"system": RXNORM, "code": "25480", "display": "gabapentin"}]}
LORAZEPAM = {"coding": [{"system": RXNORM, "code": "6470", "display": "lorazepam"}]}
CITALOPRAM = {"coding": [{"system": RXNORM, "code": "2556", "display": "citalopram"}]}
TRANYLCYPROMINE = {"coding": [{"system": RXNORM, "code": "10734", "display": "tranylcypromine"}]}
#: an element no rule reads, written wrongly (an array in R4): reported as ignored when walked
BAD_UNREAD = {"performer": {"actor": {"reference": "Practitioner/1"}}}
DAYS = {"value": 30, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}


def ketamine_request() -> dict[str, Any]:
    return copy.deepcopy(load_example("v02-one-failed-trial"))  # IV ketamine order, 2026-05-04


def add(request: dict[str, Any], key: str, *resources: dict[str, Any]) -> dict[str, Any]:
    bundle = request["prefetch"][key]
    for resource in resources:
        bundle.setdefault("entry", []).append({"resource": resource, "search": {"mode": "match"}})
    return request


def dispense(rid: str, concept: dict[str, Any], handed_over: Any, **fields: Any) -> dict[str, Any]:
    out = {
        "resourceType": "MedicationDispense",
        "id": rid,
        "status": "completed",
        "medicationCodeableConcept": concept,
        "subject": {"reference": "Patient/v02"},
        "daysSupply": DAYS,
        **fields,
    }
    if handed_over is not None:
        out["whenHandedOver"] = handed_over
    return out


def ignored(response: dict[str, Any]) -> list[tuple[str, str]]:
    entries = (response.get("extension") or {}).get(IGNORED_EXTENSION) or []
    return [(e["resourceType"], e["element"]) for e in entries]


def card_rules(outcome: Any) -> set[str]:
    return {o.rule.id for o in outcome.evaluation.fired}


# -- (a) an old record of a windowed drug is validated and reported, then left out --------------------
def test_an_old_gabapentin_dispense_is_validated_and_reported_but_left_out_of_the_uses():
    request = add(
        ketamine_request(),
        "medicationDispenses",
        dispense("gaba-2023", GABAPENTIN, "2023-03-01", **BAD_UNREAD),
        dispense("gaba-2023b", GABAPENTIN, "2023-04-01", note="not a list"),  # a read element, invalid
    )
    outcome = run_request(request)
    facts = outcome.evaluation.facts
    assert ("MedicationDispense", "performer") in ignored(outcome.response)  # as on main
    assert [p.resource for p in facts.record.problems] == ["MedicationDispense/gaba-2023b"]
    assert facts.unreadable_medications_in("gabapentinoids") == ["MedicationDispense/gaba-2023b"]
    assert facts.uses_in("gabapentinoids") == []  # the readable one: no use of it
    assert "ddi-cns-depressants" not in card_rules(outcome)


def test_an_old_stopped_benzodiazepine_request_is_left_out_of_the_uses():
    request = add(
        ketamine_request(),
        "medicationRequests",
        {
            "resourceType": "MedicationRequest",
            "id": "lzp-2021",
            "status": "stopped",
            "intent": "order",
            "medicationCodeableConcept": LORAZEPAM,
            "subject": {"reference": "Patient/v02"},
            "authoredOn": "2021-01-04",
            "dispenseRequest": {"validityPeriod": {"start": "2021-01-04", "end": "2021-07-04"}},
            "category": {"text": "an object where R4 has an array"},
        },
    )
    outcome = run_request(request)
    assert ("MedicationRequest", "category") in ignored(outcome.response)
    assert outcome.evaluation.facts.uses_in("benzodiazepines") == []
    assert "ddi-cns-depressants" not in card_rules(outcome)


def test_an_old_maoi_is_kept_as_an_antidepressant():
    """Tranylcypromine is an MAOI (a 14-day washout) and an antidepressant (TRD trials): kept."""
    request = add(
        ketamine_request(),
        "medicationDispenses",
        dispense("maoi-2021", TRANYLCYPROMINE, "2021-01-05", **BAD_UNREAD),
    )
    outcome = run_request(request)
    assert [u.ref for u in outcome.evaluation.facts.uses_in("maoi")] == ["MedicationDispense/maoi-2021"]
    assert "ddi-maoi" not in card_rules(outcome)


# -- (b) the same records inside the window are read and give their cards ---------------------------
def test_a_recent_gabapentin_dispense_is_read_and_gives_its_card():
    request = add(
        ketamine_request(),
        "medicationDispenses",
        dispense("gaba-now", GABAPENTIN, "2026-04-20", **BAD_UNREAD),
    )
    outcome = run_request(request)
    assert "ddi-cns-depressants" in card_rules(outcome)
    assert ("MedicationDispense", "performer") in ignored(outcome.response)


def test_a_gabapentin_supply_ended_within_the_grace_days_still_counts():
    # handed over 2026-03-29 for 30 days: ended 2026-04-28, six days before the call (grace 7)
    request = add(ketamine_request(), "medicationDispenses", dispense("gaba-grace", GABAPENTIN, "2026-03-29"))
    assert "ddi-cns-depressants" in fired(request)


def test_a_recent_benzodiazepine_dispense_is_read():
    request = add(ketamine_request(), "medicationDispenses", dispense("lzp", LORAZEPAM, "2026-04-25"))
    assert "ddi-cns-depressants" in fired(request)


def test_a_maoi_stopped_ten_days_ago_still_gives_its_card():
    request = add(
        ketamine_request(),
        "medicationRequests",
        {
            "resourceType": "MedicationRequest",
            "id": "maoi-1",
            "status": "stopped",
            "intent": "order",
            "medicationCodeableConcept": TRANYLCYPROMINE,
            "subject": {"reference": "Patient/v02"},
            "authoredOn": "2025-11-03",
            "dosageInstruction": [
                {"timing": {"repeat": {"boundsPeriod": {"start": "2025-11-03", "end": "2026-04-24"}}}}
            ],
        },
    )
    assert "ddi-maoi" in fired(request)


def test_a_stopped_request_ending_with_its_supply_still_reads_its_old_dispenses():
    """A stopped order whose recorded end is still ahead ended with its last supply: its
    dispenses are kept, however old (the last one ran out years ago: not in effect). Left
    out, the order would count until it was last updated, four days ago."""
    request = add(
        ketamine_request(),
        "medicationRequests",
        {
            "resourceType": "MedicationRequest",
            "id": "lzp-open",
            "status": "stopped",
            "intent": "order",
            "medicationCodeableConcept": LORAZEPAM,
            "subject": {"reference": "Patient/v02"},
            "authoredOn": "2021-01-04",
            "dosageInstruction": [
                {"timing": {"repeat": {"boundsPeriod": {"start": "2021-01-04", "end": "2027-01-04"}}}}
            ],
            "meta": {"lastUpdated": "2026-04-30T10:00:00Z"},
        },
    )
    add(request, "medicationDispenses", dispense("lzp-d", LORAZEPAM, "2021-01-05"))
    outcome = run_request(request)
    refs = [u.ref for u in outcome.evaluation.facts.uses_in("benzodiazepines")]
    assert refs == ["MedicationRequest/lzp-open", "MedicationDispense/lzp-d"]
    assert "ddi-cns-depressants" not in card_rules(outcome)  # ended with its supply, 2021-02-04


# -- (c) antidepressants are read over the whole history (TRD trials) --------------------------------
def test_an_antidepressant_of_years_ago_still_counts_as_a_trial():
    old = [dispense(f"cit-{i}", CITALOPRAM, f"2019-0{i + 1}-01", **BAD_UNREAD) for i in range(4)]
    request = add(ketamine_request(), "medicationDispenses", *old)
    outcome = run_request(request)
    assert ("MedicationDispense", "performer") in ignored(outcome.response)
    trials = [t for t in outcome.evaluation.facts.trials("antidepressants") if t.ingredient == "citalopram"]
    assert [(t.start.isoformat(), len(t.refs)) for t in trials] == [("2019-01-01", 4)]


# -- (d) a record without a certain end is kept -------------------------------------------------------
def test_an_undated_gabapentin_dispense_is_kept():
    request = add(ketamine_request(), "medicationDispenses", dispense("gaba-undated", GABAPENTIN, None))
    outcome = run_request(request)
    assert [u.ref for u in outcome.evaluation.facts.uses_in("gabapentinoids")] == [
        "MedicationDispense/gaba-undated"
    ]


def test_an_unreadable_date_on_an_old_gabapentin_dispense_is_reported_and_asked_for():
    for when in ("2023-02-30", "2023-03-01T10:00", "March 2023"):
        request = add(ketamine_request(), "medicationDispenses", dispense("gaba-bad", GABAPENTIN, when))
        facts = run_request(request).evaluation.facts
        problems = [p for p in facts.record.problems if p.resource.endswith("/gaba-bad")]
        assert problems and "whenHandedOver" in problems[0].message, when
        assert facts.unreadable_medications_in("gabapentinoids") == ["MedicationDispense/gaba-bad"], when


def test_facts_without_a_horizon_keep_every_record():
    """Facts built without the rule set's horizon (tools, other callers) keep every record."""
    from cds_service.reading.facts import Facts

    request = add(ketamine_request(), "medicationDispenses", dispense("gaba-2023", GABAPENTIN, "2023-03-01"))
    facts = facts_of(request)
    bare = Facts(facts.record, facts.t, {}, facts.now, facts.hook)
    assert [u.ref for u in bare.uses_in("gabapentinoids")] == ["MedicationDispense/gaba-2023"]
    assert facts.uses_in("gabapentinoids") == []


# -- (e) the horizon comes from the rule set, site parameters included ------------------------------
EXTRA_RULE = """
  - id: test-gabapentinoid-washout
    title: A gabapentinoid within a long washout (test)
    source: {label: test, guideline: test, year: 2026, url: https://example.org/, evidence: local-policy}
    hooks: [order-sign]
    indicator: info
    params: {washout_days: 7}
    when:
      all:
        - ref: ketamine-order
        - active_medication: {valueset: gabapentinoids, grace_days: $washout_days}
    card: {summary: "A gabapentinoid (test)", detail: "test"}
"""


def _rules_with(tmp_path: Path, washout: int | None) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    path = rules / "interactions.yaml"
    path.write_text(path.read_text() + EXTRA_RULE)
    if washout is not None:
        site = rules / "site.yaml"
        site.write_text(
            site.read_text().replace(
                "rules: {}", f"rules:\n  test-gabapentinoid-washout: {{params: {{washout_days: {washout}}}}}"
            )
        )
    return rules


def test_a_site_parameter_that_lengthens_a_window_lengthens_the_horizon(tmp_path: Path):
    from cds_service import pipeline
    from cds_service.config import Settings
    from cds_service.engine.loader import load_ruleset
    from cds_service.engine.med_windows import medication_horizon

    default = load_ruleset(_rules_with(tmp_path / "a", None))
    longer = load_ruleset(_rules_with(tmp_path / "b", 400))
    assert medication_horizon(default).windows["gabapentinoids"] == 7
    assert medication_horizon(longer).windows["gabapentinoids"] == 400
    # handed over 2025-06-01 for 30 days: ended 307 days before the call
    for ruleset, fires in ((default, False), (longer, True)):
        request = add(
            ketamine_request(),
            "medicationDispenses",
            dispense("gaba-2025", GABAPENTIN, "2025-06-01", **BAD_UNREAD),
        )
        outcome = pipeline.run(request, ruleset, Settings(rules_dir=RULES, allow_time_override=True))
        assert ("MedicationDispense", "performer") in ignored(outcome.response)  # validated either way
        assert bool(outcome.evaluation.facts.uses_in("gabapentinoids")) is fires
        assert ("test-gabapentinoid-washout" in card_rules(outcome)) is fires


def test_the_bundled_rules_read_antidepressants_and_ketamine_over_the_whole_history():
    from cds_service.engine.loader import load_ruleset
    from cds_service.engine.med_windows import medication_horizon

    horizon = medication_horizon(load_ruleset(RULES))
    assert horizon is not None
    assert {"antidepressants", "ssri", "ketamine-any", "esketamine"} <= horizon.history
    assert horizon.windows["maoi"] == 14 and horizon.windows["benzodiazepines"] >= 7
