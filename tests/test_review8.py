"""Session 8's review: what the differential runs (bench/differential.py) of main against the
helpers' branches found, the medication horizon against reading every record on EHR-shaped
variants of the project's requests, and the harness's own checks.
"""

from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from cds_service import pipeline
from cds_service.compact import build_request
from cds_service.config import Settings
from cds_service.rule_tests import RuleSets, load_case_file, splice
from cds_service.services import SERVICES
from cds_service.validation import validate_request

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
sys.path.insert(0, str(ROOT / "bench"))

import differential  # noqa: E402
import mutations  # noqa: E402

_RULESETS = RuleSets(RULES)


def _run(request: dict[str, Any]) -> tuple[dict[str, str], list[str], dict[str, Any]]:
    """(rule id → status, card topics, response)."""
    valid = validate_request(request, SERVICES[request["hook"]])
    outcome = pipeline.run(valid, _RULESETS.get({}), Settings(rules_dir=RULES, allow_time_override=True))
    statuses = {o.rule.id: o.status for o in outcome.evaluation.outcomes}
    topics = [c["source"]["topic"]["code"] for c in outcome.response["cards"]]
    return statuses, topics, outcome.response


def _med_records(request: dict[str, Any], code: str) -> list[dict[str, Any]]:
    out = []
    for _, res in mutations.resources(request):
        concept = res.get("medicationCodeableConcept") or {}
        codings = concept.get("coding") if isinstance(concept, dict) else None
        if isinstance(codings, list) and any(c.get("code") == code for c in codings):
            out.append(res)
    return out


def _case_request(file: str, case_id: str) -> dict[str, Any]:
    for case, _ in load_case_file(RULES / "tests" / file):
        if case.get("id") == case_id:
            return json.loads(json.dumps(build_request(splice(case))))
    raise KeyError(case_id)


# -- the medication horizon: every record validated first, then what no rule can need left out ------
# 8c37960 skipped old records before validating them; these answers of main (feefe0a) changed, and
# 17cc558 restored them (coordinator, 06:28: main keeps its conservative semantics).


def test_an_old_benzodiazepine_request_with_an_unreadable_validity_end_is_still_asked_for() -> None:
    """A lorazepam request completed 15 months ago whose dispenseRequest.validityPeriod.end is not a
    date (2025-02-30): main cannot read the record (an element its dates are read from) and asks
    for it (the benzodiazepine checks unknown, the data-gap card). 8c37960 took the end
    from the dosage's bounds (valid, months ago), skipped the record before validating it, and the
    checks turned 'not fired' with no data gap (differential, mutation date-feb30)."""
    request = _case_request("rules.yaml", "benzodiazepine-stopped-months-ago-silent")
    (lorazepam,) = _med_records(request, "104719")
    lorazepam["dispenseRequest"]["validityPeriod"]["end"] = "2025-02-30"
    statuses, topics, _ = _run(request)
    assert statuses["ddi-benzodiazepine-efficacy"] == "unknown"
    assert statuses["ddi-cns-depressants"] == "unknown"
    assert "data-gaps" in topics
    assert statuses["data-unreadable-resources"] == "fired"


def test_an_old_lamotrigine_dispense_whose_coding_is_an_object_is_still_asked_for() -> None:
    """V11: a lamotrigine dispense (a drug read within a window) of 2025, its coding written as an
    object instead of an array. Main cannot read its identity's element and asks (ddi-lamotrigine
    unknown, an unreadable-resources card); 8c37960 skipped it unread."""
    request = _case_request("vignettes.yaml", "v11-bipolar-depression")
    dispenses = [r for r in _med_records(request, "198429") if r["resourceType"] == "MedicationDispense"]
    assert dispenses
    concept = dispenses[-1]["medicationCodeableConcept"]
    concept["coding"] = concept["coding"][0]
    statuses, topics, _ = _run(request)
    assert statuses["ddi-lamotrigine"] == "unknown"
    assert "data-unreadable-resources" in topics


def test_an_unknown_key_of_an_old_dispense_is_still_in_the_ignored_report() -> None:
    """V09 on patient-view: a vendor key in a lamotrigine dispense that ran out three months ago is
    in main's ignored-elements report (the record is read); 8c37960 dropped it."""
    request = json.loads((ROOT / "fhir_examples" / "v09-lamotrigine.json").read_text())
    request["hook"] = "patient-view"
    request["context"].pop("draftOrders", None)
    (dispense,) = [r for _, r in mutations.resources(request) if r.get("id") == "v09-disp-18"]
    dispense["vendorSpecificField"] = {"a": 1}
    _, _, response = _run(request)
    report = (response.get("extension") or {}).get(pipeline.IGNORED_EXTENSION) or []
    assert {"resourceType": "MedicationDispense", "element": "vendorSpecificField"} in [
        {k: r[k] for k in ("resourceType", "element")} for r in report
    ]


WINDOW_MUTATIONS = ["window-edge", "stopped-recent", "transplant"]
HORIZON_MUTATIONS = [
    "window-edge",
    "transplant",
    "stopped-recent",
    "date-one",
    "date-shift",
    "date-period",
    "status",
    "invalid",
    "array-single",
    "extra",
    "remove",
    "med-reference",
    "unit",
    "dosage",
]


def test_the_horizon_changes_no_answer_of_ehr_shaped_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    """The horizon is a speed change: 800 variants of the project's requests (bench/mutations.py:
    medication ends on either side of each window in every precision and zone, other requests'
    drugs, coarse and invalid dates, odd statuses and shapes) give the same answer (cards, data
    gaps, ignored report, every rule's status and reason) as reading every medication record.
    A horizon that forgets the grace windows (every window 0 days) fails it (checked by hand); the
    rarer loss of 8c37960 (an old unreadable record) is left to the three tests above."""
    seeds = [s for s in differential.seed_requests(ROOT, ()) if not s["id"].startswith("sandbox/")]
    items = [
        *differential.variants(seeds, 400, 8, WINDOW_MUTATIONS, 250)[len(seeds) :],
        *differential.variants(seeds, 400, 9, HORIZON_MUTATIONS, 250)[len(seeds) :],
    ]

    def settings_for(rules_dir: Path) -> Settings:
        return Settings(rules_dir=rules_dir, allow_time_override=True)

    with_horizon = [differential.answer(i, _RULESETS, settings_for) for i in items]
    monkeypatch.setattr(pipeline, "medication_horizon", lambda ruleset: None)
    differing = [
        (item["id"], item["mutations"], [kind for kind, *_ in diff])
        for item, answer in zip(items, with_horizon, strict=True)
        if (diff := differential.differences(differential.answer(item, _RULESETS, settings_for), answer))
    ]
    assert not differing, differing[:5]


# -- the harness itself ----------------------------------------------------------------------------


def test_mutations_are_deterministic_by_seed_and_change_the_request() -> None:
    seed = _case_request("vignettes.yaml", "v01-clear-trd-eligible")
    pool = mutations.Pool()
    pool.add(seed)
    runs = []
    for _ in range(2):
        out = []
        for i in range(40):
            request = copy.deepcopy(seed)
            labels = mutations.mutate(random.Random(f"7:{i}"), request, pool, 2)
            out.append((labels, json.dumps(request, sort_keys=True)))
        runs.append(out)
    assert runs[0] == runs[1]
    changed = [labels for labels, text in runs[0] if text != json.dumps(seed, sort_keys=True)]
    assert len(changed) >= 30  # nearly every variant differs from its seed
    assert len({label.split(":")[0] for labels in changed for label in labels}) >= 10


def test_differences_reports_each_kind_and_nothing_for_equal_answers() -> None:
    answer = {
        "cards": [
            {
                "topic": "t",
                "indicator": "info",
                "summary": "s",
                "detail": "d",
                "source": {},
                "suggestions": None,
                "explanation": None,
                "other": {},
            }
        ],
        "gaps": ["r: missing"],
        "ignored": None,
        "rules": {"r": ["unknown", "missing"]},
        "other": {},
    }
    assert differential.differences(answer, copy.deepcopy(answer)) == []
    other = copy.deepcopy(answer)
    other["cards"][0]["indicator"] = "warning"
    other["cards"][0]["summary"] = "S"
    other["ignored"] = [{"resourceType": "X", "element": "y", "reason": "z", "count": 1}]
    other["rules"]["r"] = ["not-fired", "condition false"]
    other["gaps"] = []
    kinds = {kind for kind, *_ in differential.differences(answer, other)}
    assert kinds == {"cards", "summary", "ignored", "rule-status", "data-gaps"}
    assert [k for k, *_ in differential.differences(answer, {"crash": "TypeError: x"})] == ["crash"]


@pytest.mark.parametrize("seed", [0])
def test_the_harness_finds_no_difference_between_a_checkout_and_itself(seed: int, tmp_path: Path) -> None:
    """Both sides in their own subprocess: the same code answers the same (nothing in an answer is
    random once card uuids are blanked), so a difference the harness prints is the code's."""
    code = differential.main(
        [
            "--base",
            str(ROOT),
            "--code",
            str(ROOT),
            "--variants",
            "25",
            "--bench-sizes",
            "",
            "--select",
            "examples/",
            "--seed",
            str(seed),
        ]
    )
    assert code == 0
