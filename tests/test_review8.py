"""Session 8's review: the differential harness's own checks (bench/differential.py) and what its
runs of main against the helpers' branches found, as tests on the shapes that showed it.
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


def _case_request(file: str, case_id: str) -> dict[str, Any]:
    for case, _ in load_case_file(RULES / "tests" / file):
        if case.get("id") == case_id:
            return json.loads(json.dumps(build_request(splice(case))))
    raise KeyError(case_id)


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
