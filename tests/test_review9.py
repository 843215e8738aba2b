"""Session 9's review: the differential's windowed-drug mutations (bench/mutation_windowed.py,
exercising HZ's partial reading of old records) and what the differential runs found.
"""

from __future__ import annotations

import copy
import json
import random
import sys
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from cds_service import pipeline
from cds_service.config import Settings
from cds_service.engine.med_windows import medication_horizon
from cds_service.rule_tests import RuleSets
from cds_service.services import SERVICES
from cds_service.validation import validate_request

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
sys.path.insert(0, str(ROOT / "bench"))

import differential  # noqa: E402
import mutation_windowed  # noqa: E402
import mutations  # noqa: E402

_RULESETS = RuleSets(RULES)
BEYOND = ("cutoff-1d", "old")


def _seeds() -> list[dict[str, Any]]:
    """The differential's seeds but the Sandbox captures, the 200-resource record among them
    (its gabapentin and pregabalin records are the pool's only ones)."""
    return [s for s in differential.seed_requests(ROOT, (200,)) if not s["id"].startswith("sandbox/")]


def _windowed_variants(count: int, seed: int) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(request, the record mutated, label) of ``count`` variants, one windowed mutation each."""
    seeds = _seeds()
    pool = mutations.Pool()
    for item in seeds:
        pool.add(item["request"])
    small = [s for s in seeds if not s["id"].startswith("bench/")]  # quicker to run
    out = []
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        request = copy.deepcopy(rng.choice(small)["request"])
        got = mutation_windowed.windowed_record(rng, request, pool)
        if got:
            out.append((request, *got))
    return out


def _uses(request: dict[str, Any]) -> set[str]:
    """Ids of the records the medication facts use (those left out by the horizon are absent)."""
    valid = validate_request(request, SERVICES[request["hook"]])
    outcome = pipeline.run(valid, _RULESETS.get({}), Settings(rules_dir=RULES, allow_time_override=True))
    return {u.resource.get("id") for u in outcome.evaluation.facts.medication_uses}


def test_the_cutoff_days_are_the_rule_sets_horizon() -> None:
    """The mutator dates records around the cutoff day it knows; the rule set's horizon must put
    it there (a rule set with another window makes the ``cutoff±1d`` labels lie: this fails)."""
    ruleset = _RULESETS.get({})
    horizon = medication_horizon(ruleset)
    assert horizon is not None
    today = date(2026, 12, 1)
    for name, days in mutation_windowed.CUTOFF_DAYS.items():
        drug = ruleset.terminology.match_drug({"text": name})
        assert drug.ingredients == {name}
        cutoff = horizon.cutoff(ruleset.terminology.valuesets_of(drug), today)
        assert cutoff == (None if days is None else date.fromordinal(today.toordinal() - days)), name


def test_windowed_mutations_are_deterministic_and_cover_every_defect_and_place() -> None:
    first = _windowed_variants(300, 3)
    again = _windowed_variants(300, 3)
    assert [(json.dumps(r, sort_keys=True), x) for r, _, x in first] == [
        (json.dumps(r, sort_keys=True), x) for r, _, x in again
    ]
    parts = [label.split(":") for *_, label in first]
    assert all(p[0] == "windowed" for p in parts)
    assert {p[1] for p in parts} == set(mutation_windowed.BUNDLE)
    assert {p[3] for p in parts} == set(mutation_windowed.WHERE)
    defects = set(mutation_windowed.DEFECTS) - {p[4] for p in parts}
    assert not defects
    assert {p[2] for p in parts} >= {"gabapentin", "pregabalin", "lorazepam", "lamotrigine", "phenelzine"}


def test_clean_windowed_records_fall_on_the_side_of_the_cutoff_their_label_says() -> None:
    """On this checkout (whatever its horizon reads first), a clean record labelled on or after
    the cutoff day is used, and one labelled beyond it is left out of the medication uses: the
    differential's windowed variants exercise the horizon on both sides of its edge. A beyond
    dispense may be kept (a stopped or completed record of its drug ending with its last supply
    keeps its dispenses); a MAOI's records are kept however old."""
    kept: Counter[tuple[str, str, bool]] = Counter()
    wrong = []
    for request, res, label in _windowed_variants(240, 4):
        _, rtype, drug, where, defect = label.split(":")
        if defect != "clean":
            continue
        used = res["id"] in _uses(request)
        beyond = where in BEYOND and mutation_windowed.CUTOFF_DAYS[drug] is not None
        kept[(rtype, "beyond" if beyond else "within", used)] += 1
        if used == beyond and not (beyond and rtype == "MedicationDispense"):
            wrong.append((label, used, res))
    assert not wrong, wrong[:3]
    # both sides are there, and most beyond dispenses are left out too
    assert sum(n for (_, side, used), n in kept.items() if side == "beyond" and not used) >= 20, kept
    assert sum(n for (_, side, used), n in kept.items() if side == "within" and used) >= 20, kept
    dispenses = {
        used: n
        for (rtype, side, used), n in kept.items()
        if rtype == "MedicationDispense" and side == "beyond"
    }
    assert dispenses.get(False, 0) > dispenses.get(True, 0), kept
