"""Runs the YAML rule tests: a compact patient, a hook, and the cards expected.

Used by ``ketamine-cds test-rules`` and by pytest, so informaticians and CI run the same checks.
Each case's cards are asserted by topic (rule or panel id) and indicator, in order; ``fired`` and
``not_fired`` assert on single rules, including rows inside panel cards.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import pipeline
from .compact import build_request
from .config import Settings
from .engine.loader import RuleSet, load_ruleset
from .engine.yamlio import line_of, load_with_lines
from .errors import ApiError, DataUnavailable
from .services import SERVICES
from .validation import schema_validator, validate_request


@dataclass
class CaseResult:
    case_id: str
    file: str
    line: int
    failures: list[str] = field(default_factory=list)
    cards: list[dict[str, Any]] = field(default_factory=list)
    outcome: Any = None

    @property
    def ok(self) -> bool:
        return not self.failures


def default_case_files(rules_dir: Path) -> list[Path]:
    return sorted((Path(rules_dir) / "tests").glob("*.yaml"))


def load_case_file(path: Path) -> list[tuple[dict[str, Any], int]]:
    data, lines = load_with_lines(path)
    cases = (data or {}).get("cases") or []
    return [(c, line_of(lines, ("cases", i))) for i, c in enumerate(cases)]


class RuleSets:
    """Rule sets per site override, loaded once each."""

    def __init__(self, rules_dir: Path) -> None:
        self.rules_dir = Path(rules_dir)
        self._cache: dict[str, RuleSet] = {}

    def get(self, site: dict[str, Any]) -> RuleSet:
        """The rule set with the case's `site` overrides (`params`, `rules`) on top of site.yaml."""
        overrides = {k: site[k] for k in ("rules", "params") if site.get(k)}
        key = json.dumps(overrides, sort_keys=True)
        if key not in self._cache:
            site_path = self.rules_dir / "site.yaml"
            if overrides:
                base = (yaml.safe_load(site_path.read_text()) if site_path.exists() else None) or {}
                merged = dict(base.get("rules") or {})
                for rid, o in (overrides.get("rules") or {}).items():
                    m = dict(merged.get(rid) or {})
                    m.update({k: v for k, v in o.items() if k != "params"})
                    m["params"] = {**(m.get("params") or {}), **(o.get("params") or {})}
                    merged[rid] = m
                params = {**(base.get("params") or {}), **(overrides.get("params") or {})}
                # the merged file lives only while it loads: a compiled rule set keeps no path to it
                with tempfile.TemporaryDirectory(prefix="ketamine-cds-site-") as tmp:
                    merged_path = Path(tmp) / "site.yaml"
                    merged_path.write_text(yaml.safe_dump({**base, "rules": merged, "params": params}))
                    self._cache[key] = load_ruleset(self.rules_dir, merged_path)
            else:
                self._cache[key] = load_ruleset(self.rules_dir, site_path)
        return self._cache[key]


SECTIONS = ("conditions", "medications", "observations", "procedures", "orders")


def splice(case: dict[str, Any]) -> dict[str, Any]:
    """A list item that is itself a list (a YAML anchor of several entries) is spliced in place."""
    out = dict(case)
    for key in SECTIONS:
        items = out.get(key)
        if isinstance(items, list):
            out[key] = [x for item in items for x in (item if isinstance(item, list) else [item])]
    return out


def run_case(case: dict[str, Any], rulesets: RuleSets, *, file: str = "", line: int = 0) -> CaseResult:
    case = splice(case)
    result = CaseResult(case.get("id", "?"), file, line)
    site = case.get("site") or {}
    if not isinstance(site.get("jurisdiction", "US"), str):
        result.failures.append('site.jurisdiction must be a string (quote "NO": YAML reads NO as false)')
        return result
    ruleset = rulesets.get(site)
    settings = Settings(rules_dir=rulesets.rules_dir, allow_time_override=True)
    try:
        built = build_request({k: v for k, v in case.items() if k != "inject"})
        for key, resources in (case.get("inject") or {}).items():
            # raw FHIR the compact format cannot express (e.g. a malformed resource)
            bundle = built["prefetch"][key]
            bundle.setdefault("entry", []).extend({"resource": r} for r in resources)
        request = validate_request(built, SERVICES[case["hook"]])
        outcome = pipeline.run(request, ruleset, settings, jurisdiction=site.get("jurisdiction"))
    except (ApiError, DataUnavailable, KeyError, ValueError) as exc:
        result.failures.append(f"request failed: {type(exc).__name__}: {exc}")
        return result
    result.outcome = outcome
    result.cards = outcome.response["cards"]
    errors = list(schema_validator("response").iter_errors(outcome.response))
    result.failures += [
        f"response schema: {'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errors
    ]
    expect = case.get("expect") or {}
    if "cards" in expect:
        want = [(c["topic"], c["indicator"]) for c in expect["cards"] or []]
        got = [(c["source"]["topic"]["code"], c["indicator"]) for c in result.cards]
        if want != got:
            result.failures.append(f"cards: expected {_fmt(want)}, got {_fmt(got)}")
    status = {o.rule.id: o for o in outcome.evaluation.outcomes}
    shown = {c["source"]["topic"]["code"] for c in result.cards}
    for rid in expect.get("fired") or []:
        o = status.get(rid)
        if rid in ruleset.panels or rid == "data-gaps":
            if rid not in shown:
                result.failures.append(f"fired: no {rid} card")
        elif o is None:
            result.failures.append(f"fired: no rule {rid!r}")
        elif o.status != "fired":
            result.failures.append(f"fired: {rid} did not fire ({o.status}: {o.reason})")
    for rid in expect.get("not_fired") or []:
        o = status.get(rid)
        if rid in ruleset.panels or rid == "data-gaps":
            if rid in shown:
                result.failures.append(f"not_fired: a {rid} card was shown")
        elif o is None:
            result.failures.append(f"not_fired: no rule {rid!r}")
        elif o.status == "fired":
            result.failures.append(f"not_fired: {rid} fired ({o.reason})")
    for text in expect.get("summary_contains") or []:
        if not any(text.lower() in c["summary"].lower() for c in result.cards):
            result.failures.append(f"summary_contains: no card summary contains {text!r}")
    for text in expect.get("detail_contains") or []:
        if not any(text.lower() in (c.get("detail") or "").lower() for c in result.cards):
            result.failures.append(f"detail_contains: no card detail contains {text!r}")
    for text in expect.get("summary_not_contains") or []:
        for c in result.cards:
            if text.lower() in c["summary"].lower():
                result.failures.append(f"summary_not_contains: {c['source']['topic']['code']} says {text!r}")
    for text in expect.get("detail_not_contains") or []:
        for c in result.cards:
            if text.lower() in (c.get("detail") or "").lower():
                result.failures.append(f"detail_not_contains: {c['source']['topic']['code']} says {text!r}")
    return result


def run_cases(paths: list[Path], rules_dir: Path, *, select: str | None = None) -> list[CaseResult]:
    rulesets = RuleSets(rules_dir)
    results = []
    for path in paths:
        for case, line in load_case_file(path):
            if select and select not in case.get("id", ""):
                continue
            results.append(run_case(case, rulesets, file=str(path), line=line))
    return results


def _fmt(pairs: list[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"{t}:{i}" for t, i in pairs) + "]" if pairs else "no cards"
