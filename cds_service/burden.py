"""Card burden: how many cards each hook call shows, by indicator, and how often each rule fires.

Runs every example request (``fhir_examples/*.json``, under the site's own settings) and every
rule-test case (``rules/tests/*.yaml``, each with its own site overrides) through the same pipeline
the service uses and counts what a prescriber would see. ``ketamine-cds card-burden`` prints it;
``--json`` gives the numbers for a script.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import pipeline
from .config import Settings
from .engine.loader import load_ruleset
from .rule_tests import RuleSets, default_case_files, load_case_file, run_case
from .services import SERVICES
from .validation import parse_json, validate_request

INDICATORS = ("critical", "warning", "info")


@dataclass
class Call:
    """One hook call: where it came from and what it showed."""

    source: str  # "example" or "rule-test"
    name: str
    hook: str
    cards: list[str]  # indicators, in card order
    topics: list[str]  # card topics (rule or panel id), in card order
    fired: set[str] = field(default_factory=set)  # rules that fired (panel rows included)
    evaluated: set[str] = field(default_factory=set)  # rules not skipped for hook/jurisdiction
    unknown: set[str] = field(default_factory=set)  # rules that lacked data (asked in data-gaps)


def collect(rules_dir: Path, examples_dir: Path | None, site_config: Path | None = None) -> list[Call]:
    calls: list[Call] = []
    if examples_dir is not None and examples_dir.is_dir():
        settings = Settings(rules_dir=rules_dir, site_config=site_config, allow_time_override=True)
        ruleset = load_ruleset(rules_dir, settings.site_config_path)
        for path in sorted(examples_dir.glob("*.json")):
            body = parse_json(path.read_bytes())
            request = validate_request(body, SERVICES[body["hook"]])
            outcome = pipeline.run(request, ruleset, settings)
            calls.append(_call("example", path.stem, body["hook"], outcome))
    rulesets = RuleSets(rules_dir)
    for case_file in default_case_files(rules_dir):
        for case, line in load_case_file(case_file):
            result = run_case(case, rulesets, file=str(case_file), line=line)
            if result.outcome is None:  # a case that cannot run is reported by test-rules
                continue
            calls.append(_call("rule-test", result.case_id, case["hook"], result.outcome))
    return calls


def _call(source: str, name: str, hook: str, outcome: Any) -> Call:
    cards = outcome.response["cards"]
    outcomes = outcome.evaluation.outcomes
    return Call(
        source,
        name,
        hook,
        [c["indicator"] for c in cards],
        [c["source"]["topic"]["code"] for c in cards],
        {o.rule.id for o in outcomes if o.status == "fired"},
        {o.rule.id for o in outcomes if o.status != "skipped"},
        {o.rule.id for o in outcomes if o.status == "unknown"},
    )


def summarise(calls: list[Call]) -> dict[str, Any]:
    def stats(group: list[Call]) -> dict[str, Any]:
        counts = [len(c.cards) for c in group]
        by_indicator = Counter(i for c in group for i in c.cards)
        return {
            "calls": len(group),
            "cards_total": sum(counts),
            "cards_median": statistics.median(counts) if counts else 0,
            "cards_mean": round(statistics.fmean(counts), 2) if counts else 0,
            "cards_max": max(counts) if counts else 0,
            "calls_with_more_than_2": sum(n > 2 for n in counts),
            "by_indicator": {i: by_indicator.get(i, 0) for i in INDICATORS},
            "calls_with_critical": sum("critical" in c.cards for c in group),
        }

    groups: dict[str, list[Call]] = {"all": calls}
    for source in ("example", "rule-test"):
        groups[source] = [c for c in calls if c.source == source]
    for hook in sorted({c.hook for c in calls}):
        groups[f"hook {hook}"] = [c for c in calls if c.hook == hook]
    rules: dict[str, dict[str, Any]] = {}
    for rid in sorted({r for c in calls for r in c.evaluated}):
        evaluated = [c for c in calls if rid in c.evaluated]
        fired = sum(rid in c.fired for c in evaluated)
        shown = sum(rid in c.topics for c in evaluated)
        rules[rid] = {
            "evaluated": len(evaluated),
            "fired": fired,
            "fire_rate": round(fired / len(evaluated), 3) if evaluated else 0.0,
            "shown_as_card": shown,
            "data_missing": sum(rid in c.unknown for c in evaluated),
        }
    for panel in sorted({t for c in calls for t in c.topics} - set(rules)):
        shown = sum(panel in c.topics for c in calls)
        rules[panel] = {
            "evaluated": len(calls),
            "fired": shown,
            "fire_rate": round(shown / len(calls), 3),
            "shown_as_card": shown,
            "data_missing": 0,
        }
    worst = sorted(calls, key=lambda c: -len(c.cards))[:5]
    return {
        "groups": {k: stats(v) for k, v in groups.items() if v},
        "rules": rules,
        "most_cards": [
            {"source": c.source, "name": c.name, "cards": len(c.cards), "topics": c.topics} for c in worst
        ],
    }


def render_text(summary: dict[str, Any]) -> str:
    lines = ["Cards per hook call", ""]
    lines.append(
        f"{'calls':24} {'n':>4} {'median':>7} {'mean':>6} {'max':>4} {'>2':>4} "
        f"{'crit':>5} {'warn':>5} {'info':>5}"
    )
    for name, s in summary["groups"].items():
        ind = s["by_indicator"]
        lines.append(
            f"{name:24} {s['calls']:>4} {s['cards_median']:>7g} {s['cards_mean']:>6g} {s['cards_max']:>4} "
            f"{s['calls_with_more_than_2']:>4} {ind['critical']:>5} {ind['warning']:>5} {ind['info']:>5}"
        )
    lines += [
        "",
        "(crit/warn/info: cards of that indicator over all calls; >2: calls with more than 2 cards;",
        " examples run under the site settings, rule-test cases under their own)",
        "",
    ]
    lines.append("Per rule: fired in how many of the calls where it was evaluated (not skipped)")
    lines.append("")
    lines.append(f"{'rule':40} {'evaluated':>9} {'fired':>6} {'rate':>6} {'as card':>8} {'no data':>8}")
    for rid, r in sorted(summary["rules"].items(), key=lambda kv: (-kv[1]["fire_rate"], kv[0])):
        lines.append(
            f"{rid:40} {r['evaluated']:>9} {r['fired']:>6} {100 * r['fire_rate']:>5.0f}% "
            f"{r['shown_as_card']:>8} {r['data_missing']:>8}"
        )
    lines += [
        "",
        "(panel rows are shown inside their panel card; 'no data': the rule could not decide and asked",
        " for data in the data-gaps card)",
        "",
        "Most cards:",
    ]
    for c in summary["most_cards"]:
        lines.append(f"  {c['cards']} {c['source']}:{c['name']}: {', '.join(c['topics'])}")
    return "\n".join(lines)
