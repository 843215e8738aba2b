"""A row's fixed text is split and joined once per process (issue 8): each row of a panel card is
still exactly its text with whitespace runs as one space, fixed or rendered, shadowed or not."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from cds_service import cards
from cds_service.config import Settings
from cds_service.engine.loader import load_ruleset

from .conftest import RULES, load_example


def definition(o: Any, base: dict[str, Any]) -> dict[str, Any]:
    """The row texts as main had them (af824b0)."""
    ctx = cards._rule_context(o, base)
    return {key: " ".join(cards._rule_text(o, key, ctx, "row:").split()) for key in o.rule.row}


@pytest.mark.parametrize("name", ["v01-clear-trd-eligible", "v07-daily-lorazepam", "v13-missing-data"])
def test_row_texts_are_their_definition(name: str) -> None:
    from cds_service import pipeline

    rs = load_ruleset(RULES, RULES / "site.yaml")
    out = pipeline.run(load_example(name), rs, Settings(rules_dir=RULES, allow_time_override=True))
    ev = out.evaluation
    base = {**cards._base_context(ev), "critical": []}
    rows = [o for o in ev.outcomes if o.rule.kind == "row" and o.result is not None]
    assert any(any(o.rule.fixed.get("row:" + k) for k in o.rule.row) for o in rows)
    for o in rows:
        view = cards._row_view(o, base)
        assert {k: view[k] for k in o.rule.row} == definition(o, base)
        assert {k: cards._row_view(o, base)[k] for k in o.rule.row} == definition(o, base)  # cached


def test_a_shadowed_fixed_text_is_rendered() -> None:
    """A binding named like a value the fixed text reads: the text is rendered, not the fixed one."""
    rs = load_ruleset(RULES, RULES / "site.yaml")
    rule, key = next((r, k) for r in rs.rules for k, f in r.fixed.items() if f is not None and f.names)
    name = sorted(rule.fixed[key].names)[0]
    assert cards._fixed_text(outcome(rule, {name: "x"}), key) is None
    assert cards._fixed_text(outcome(rule, {"other": 1}), key) == rule.fixed[key].text
    assert cards._fixed_text(outcome(rule, {}), key) == rule.fixed[key].text


def outcome(rule: Any, bind: dict[str, Any]) -> Any:
    return SimpleNamespace(rule=rule, result=SimpleNamespace(bind=bind))


def test_squeezed_is_split_and_joined() -> None:
    for text in ["a  b\n c", " lead —  ≥ 28 days\t", "", "   "]:
        assert cards._squeezed(text) == " ".join(text.split())
