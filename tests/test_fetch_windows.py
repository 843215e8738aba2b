"""What fetch mode asks for: the vital-sign window derived from the rules, larger pages (issue 8 item 7)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from cds_service.engine.loader import load_ruleset
from cds_service.engine.windows import fetch_narrowing, vital_signs_window
from cds_service.reading.fhir_client import PAGE_SIZE, with_page_size

from .conftest import RULES

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


def test_bundled_rules_read_vital_signs_of_the_last_30_days_at_most() -> None:
    ruleset = load_ruleset(RULES)
    assert vital_signs_window(ruleset) == 30
    assert fetch_narrowing(ruleset, NOW) == {"vitalSigns": "date=ge2026-04-03"}


def _rules_with(tmp_path: Path, extra_rule: str) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    path = rules / "monitoring.yaml"
    path.write_text(path.read_text() + extra_rule)
    return rules


UNBOUNDED = """
  - id: test-any-weight
    title: A weight ever recorded
    source: {label: test, guideline: test, year: 2026, url: https://example.org/, evidence: local-policy}
    hooks: [order-sign]
    indicator: info
    when:
      all:
        - ref: ketamine-order
        - has_observation: {kind: weight}
    card: {summary: "A weight is recorded", detail: "test"}
"""


def test_a_rule_reading_vital_signs_without_a_window_turns_the_narrowing_off(tmp_path: Path) -> None:
    ruleset = load_ruleset(_rules_with(tmp_path, UNBOUNDED))
    assert vital_signs_window(ruleset) is None
    assert fetch_narrowing(ruleset, NOW) == {}


def test_a_rule_with_a_longer_window_widens_it(tmp_path: Path) -> None:
    ruleset = load_ruleset(
        _rules_with(tmp_path, UNBOUNDED.replace("{kind: weight}", "{kind: weight, within_days: 90}"))
    )
    assert vital_signs_window(ruleset) == 90
    assert fetch_narrowing(ruleset, NOW) == {"vitalSigns": "date=ge2026-02-02"}


def test_page_size_is_raised_never_lowered() -> None:
    assert with_page_size("Condition?patient=p") == f"Condition?patient=p&_count={PAGE_SIZE}"
    assert with_page_size("Observation?patient=p&_count=200&_sort=-date") == (
        f"Observation?patient=p&_count={PAGE_SIZE}&_sort=-date"
    )
    assert (
        with_page_size(f"Observation?patient=p&_count={PAGE_SIZE * 2}")
        == f"Observation?patient=p&_count={PAGE_SIZE * 2}"
    )
    assert with_page_size("Patient/p") == "Patient/p"
