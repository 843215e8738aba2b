"""evaluate() works from a plan per hook and jurisdiction (issue 8: speed): every rule's outcome is
in rule order, and the fired and unknown ones it gathers while evaluating are exactly those."""

from __future__ import annotations

import pytest

from cds_service import pipeline
from cds_service.config import Settings
from cds_service.engine.evaluate import Evaluation, evaluate
from cds_service.engine.loader import load_ruleset

from .conftest import RULES, example_names, load_example


@pytest.mark.parametrize("name", example_names())
def test_gathered_outcomes_are_the_outcomes_of_that_status(name: str) -> None:
    rs = load_ruleset(RULES, RULES / "site.yaml")
    body = load_example(name)
    out = pipeline.run(body, rs, Settings(rules_dir=RULES, allow_time_override=True))
    for hook in dict.fromkeys([body["hook"], "patient-view"]):
        ev = out.evaluation
        if hook != body["hook"]:
            facts = ev.facts
            facts.hook = hook
            ev = evaluate(rs, facts)
        assert [o.rule.id for o in ev.outcomes] == [r.id for r in rs.rules]
        assert ev.fired == [o for o in ev.outcomes if o.status == "fired"]
        assert ev.unknown == [o for o in ev.outcomes if o.status == "unknown"]
        unplanned = Evaluation(ev.ruleset, ev.facts, ev.jurisdiction, ev.outcomes)  # built by hand
        assert unplanned.fired == ev.fired and unplanned.unknown == ev.unknown


def test_a_second_evaluation_starts_from_the_plan_not_from_the_last_answers() -> None:
    """The plan's outcomes are copied per call: one patient's fired rules never show for the next."""
    rs = load_ruleset(RULES, RULES / "site.yaml")
    settings = Settings(rules_dir=RULES, allow_time_override=True)
    names = example_names()
    first = [pipeline.run(load_example(n), rs, settings).evaluation for n in names]
    again = [pipeline.run(load_example(n), rs, settings).evaluation for n in reversed(names)][::-1]
    for a, b in zip(first, again, strict=True):
        assert [(o.rule.id, o.status, o.reason) for o in a.outcomes] == [
            (o.rule.id, o.status, o.reason) for o in b.outcomes
        ]
    assert len({tuple(o.status for o in ev.outcomes) for ev in first}) > 1  # the examples differ
