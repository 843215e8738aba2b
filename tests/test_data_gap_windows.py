"""A data-gap label states the window the site configured, never a fixed one (session 6 leftover).

``rules/common.yaml`` ``data_needs`` said "body weight (30 days)", "suicide-risk screen (…, 30 days)"
and "blood pressure today" whatever ``site.yaml`` set the rules' windows to: a site asking for a
weight within 7 days was told a 30-day-old weight would do.
"""

from __future__ import annotations

import copy
from typing import Any

from cds_service import pipeline
from cds_service.config import Settings
from cds_service.rule_tests import RuleSets

from .conftest import RULES, load_example

RULESETS = RuleSets(RULES)


def gap_rows(request: dict[str, Any], site: dict[str, Any]) -> list[str]:
    ruleset = RULESETS.get(site)
    settings = Settings(rules_dir=RULES, allow_time_override=True)
    out = pipeline.run(copy.deepcopy(request), ruleset, settings)
    (card,) = [c for c in out.response["cards"] if c["source"]["topic"]["code"] == "data-gaps"]
    rows = [line for line in card["detail"].splitlines() if line.startswith("| ")][1:]
    return [row.split(" | ")[0].removeprefix("| ") for row in rows]


def without_weight(name: str) -> dict[str, Any]:
    request = load_example(name)
    vitals = request["prefetch"]["vitalSigns"]
    vitals["entry"] = [
        e
        for e in vitals["entry"]
        if not any(c.get("code") == "29463-7" for c in e["resource"]["code"]["coding"])
    ]
    return request


def test_the_weight_window_is_the_sites() -> None:
    request = without_weight("v02-one-failed-trial")
    assert "body weight (last 30 days)" in gap_rows(request, {})
    site = {
        "rules": {
            r: {"params": {"weight_within_days": 7}}
            for r in ("dose-ketamine-high", "dose-ketamine-parenteral")
        }
    }
    rows = gap_rows(request, site)
    assert "body weight (last 7 days)" in rows, rows
    assert not [r for r in rows if "30 days" in r], rows


def test_the_blood_pressure_and_suicide_screen_windows_are_the_sites() -> None:
    request = load_example("v13-missing-data")
    rows = gap_rows(request, {})
    assert "blood pressure (last 24 hours)" in rows, rows
    assert "suicide-risk screen (C-SSRS or PHQ-9 item 9, last 30 days)" in rows, rows
    site = {
        "rules": {
            "ci-blood-pressure-severe": {"params": {"within_hours": 4}},
            "ci-blood-pressure": {"params": {"within_hours": 4}},
            "req-suicide-risk": {"params": {"within_days": 14}},
        }
    }
    rows = gap_rows(request, site)
    assert "blood pressure (last 4 hours)" in rows, rows
    assert "suicide-risk screen (C-SSRS or PHQ-9 item 9, last 14 days)" in rows, rows
    assert not [r for r in rows if "today" in r or "30 days" in r or "24 hours" in r], rows


def test_two_rules_with_two_windows_are_two_rows() -> None:
    """The severe BP check over 4 hours and the other over 24: one window would be wrong for one."""
    rows = gap_rows(
        load_example("v13-missing-data"),
        {"rules": {"ci-blood-pressure-severe": {"params": {"within_hours": 4}}}},
    )
    assert "blood pressure (last 4 hours)" in rows and "blood pressure (last 24 hours)" in rows, rows
