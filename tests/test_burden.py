"""The card-burden report counts what the examples and rule-test cases really show."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cds_service.burden import Call, summarise
from cds_service.cli import main

from .conftest import RULES


def test_summary_counts_cards_per_call_and_fire_rates():
    calls = [
        Call(
            "example",
            "a",
            "order-sign",
            ["critical", "info"],
            ["ci-x", "trd-met"],
            {"ci-x", "trd-met"},
            {"ci-x", "trd-met"},
        ),
        Call("rule-test", "b", "order-sign", ["info"], ["trd-met"], {"trd-met"}, {"ci-x", "trd-met"}),
        Call("rule-test", "c", "order-sign", [], [], set(), {"ci-x", "trd-met"}, {"ci-x"}),
    ]
    s = summarise(calls)
    assert s["groups"]["all"]["cards_median"] == 1
    assert s["groups"]["all"]["cards_max"] == 2
    assert s["groups"]["all"]["by_indicator"] == {"critical": 1, "warning": 0, "info": 2}
    assert s["rules"]["ci-x"]["fire_rate"] == round(1 / 3, 3)
    assert s["rules"]["ci-x"]["data_missing"] == 1
    assert s["rules"]["trd-met"]["fired"] == 2


def test_card_burden_command_runs_over_examples_and_rule_tests():
    out = CliRunner().invoke(
        main,
        ["card-burden", "--json", "--rules", str(RULES), "--examples", str(RULES.parent / "fhir_examples")],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["groups"]["example"]["calls"] == len(list((RULES.parent / "fhir_examples").glob("*.json")))
    assert data["groups"]["rule-test"]["calls"] > 50
    assert "trd-met" in data["rules"]
