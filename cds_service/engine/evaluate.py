"""Evaluates a compiled rule set against one request's facts, recording every rule's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..reading.facts import Facts
from .loader import Rule, RuleSet
from .predicates import Env, Result


@dataclass
class Outcome:
    """What one rule did: fired, not-fired, unknown (data missing) or skipped (does not apply)."""

    rule: Rule
    status: str
    reason: str = ""
    result: Result | None = None
    indicator: str | None = None


@dataclass
class Evaluation:
    ruleset: RuleSet
    facts: Facts
    jurisdiction: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def fired(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "fired"]


def evaluate(ruleset: RuleSet, facts: Facts, *, jurisdiction: str | None = None) -> Evaluation:
    jurisdiction = jurisdiction or ruleset.jurisdiction
    env = Env(facts, jurisdiction, ruleset.definitions)
    ev = Evaluation(ruleset, facts, jurisdiction)
    for rule in ruleset.rules:
        if not rule.enabled:
            ev.outcomes.append(Outcome(rule, "skipped", "disabled in site configuration"))
            continue
        if facts.hook not in rule.hooks:
            ev.outcomes.append(Outcome(rule, "skipped", f"not for hook {facts.hook}"))
            continue
        if "all" not in rule.jurisdictions and jurisdiction not in rule.jurisdictions:
            ev.outcomes.append(Outcome(rule, "skipped", f"not for jurisdiction {jurisdiction}"))
            continue
        result = rule.when(env)
        if result.value is True:
            if rule.kind == "requirement":
                ev.outcomes.append(Outcome(rule, "not-fired", "requirement met", result))
            else:
                ev.outcomes.append(
                    Outcome(
                        rule,
                        "fired",
                        result.reason or "condition true",
                        result,
                        rule.indicator_for(jurisdiction),
                    )
                )
        elif result.value is None:
            missing = ", ".join(dict.fromkeys(m.label for m in result.missing)) or "unknown"
            status = "unknown" if rule.on_unknown == "ask" else "not-fired"
            ev.outcomes.append(Outcome(rule, status, f"missing: {missing}", result))
        else:
            ev.outcomes.append(Outcome(rule, "not-fired", result.reason or "condition false", result))
    return ev
