"""The YAML rule tests (rules/tests/*.yaml) run under pytest, one test per case."""

from __future__ import annotations

import pytest

from cds_service.rule_tests import RuleSets, default_case_files, load_case_file, run_case

from .conftest import RULES

CASES = [(path, case, line) for path in default_case_files(RULES) for case, line in load_case_file(path)]
_rulesets = RuleSets(RULES)


@pytest.mark.parametrize(("path", "case", "line"), CASES, ids=[c["id"] for _, c, _ in CASES])
def test_rule_case(path, case, line):
    result = run_case(case, _rulesets, file=str(path), line=line)
    assert result.ok, "\n".join(result.failures)


def test_every_rule_has_a_case_where_it_fires_and_one_where_it_does_not():
    """Informaticians' contract: each rule is shown to fire and shown to stay silent."""
    ruleset = _rulesets.get({})
    fired: set[str] = set()
    silent: set[str] = set()
    for path, case, line in CASES:
        result = run_case(case, _rulesets, file=str(path), line=line)
        for o in result.outcome.evaluation.outcomes:
            (fired if o.status == "fired" else silent).add(o.rule.id)
    never_fired = {r.id for r in ruleset.rules if r.kind != "requirement"} - fired
    assert not never_fired, f"rules no case makes fire: {sorted(never_fired)}"
    never_silent = {r.id for r in ruleset.rules} - silent
    assert not never_silent, f"rules no case keeps silent: {sorted(never_silent)}"


def test_a_site_override_leaves_no_temporary_file_behind(tmp_path, monkeypatch):
    """`ketamine-cds test` with site overrides must not leave a directory per run in /tmp."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rulesets = RuleSets(RULES)
    ruleset = rulesets.get({"params": {"trd_min_duration_days": 42}})
    assert ruleset is rulesets.get({"params": {"trd_min_duration_days": 42}})
    assert list(tmp_path.iterdir()) == []
