"""Evaluates a compiled rule set against one request's facts, recording every rule's outcome.

Which rules apply to a hook and jurisdiction (site switches, ``hooks``, ``jurisdictions``) and
each rule's severity there are worked out once per rule set and (hook, jurisdiction)
(:func:`plan`); per call only the applicable rules' compiled conditions run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..reading.facts import Facts
from .loader import Rule, RuleSet
from .predicates import Env, Result

MAX_PLANS = 32  # hooks × jurisdictions a process serves: a handful


@dataclass(slots=True)
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


@dataclass(frozen=True, slots=True)
class Step:
    """One rule in a plan: ``skipped`` (its outcome), or evaluated by ``when``."""

    rule: Rule
    skipped: Outcome | None  # the same read-only outcome every call (nothing per patient in it)
    when: Callable[[Env], Result] | None
    requirement: bool
    ask: bool
    indicator: str


def plan(ruleset: RuleSet, hook: str, jurisdiction: str) -> tuple[Step, ...]:
    """The rules in order, each skipped (and why) or with its evaluator, for one hook/jurisdiction."""
    key = (hook, jurisdiction)
    steps = ruleset.plans.get(key)
    if steps is None:
        steps = tuple(_step(rule, hook, jurisdiction) for rule in ruleset.rules)
        if len(ruleset.plans) >= MAX_PLANS:  # a caller choosing jurisdictions freely cannot grow it
            ruleset.plans.clear()
        ruleset.plans[key] = steps
    return steps


def _step(rule: Rule, hook: str, jurisdiction: str) -> Step:
    skip = None
    if not rule.enabled:
        skip = "disabled in site configuration"
    elif hook not in rule.hooks:
        skip = f"not for hook {hook}"
    elif "all" not in rule.jurisdictions and jurisdiction not in rule.jurisdictions:
        skip = f"not for jurisdiction {jurisdiction}"
    return Step(
        rule,
        None if skip is None else Outcome(rule, "skipped", skip),
        None if skip else rule.when.evaluator(),
        rule.kind == "requirement",
        rule.on_unknown == "ask",
        rule.indicator_for(jurisdiction),
    )


def evaluate(ruleset: RuleSet, facts: Facts, *, jurisdiction: str | None = None) -> Evaluation:
    jurisdiction = jurisdiction or ruleset.jurisdiction
    env = Env(facts, jurisdiction, ruleset.evaluators)
    ev = Evaluation(ruleset, facts, jurisdiction)
    outcomes = ev.outcomes
    append = outcomes.append
    for step in plan(ruleset, facts.hook, jurisdiction):
        rule = step.rule
        when = step.when
        if when is None:
            append(step.skipped)
            continue
        result = when(env)
        value = result.value
        if value is True:
            if step.requirement:
                append(Outcome(rule, "not-fired", "requirement met", result))
            else:
                append(Outcome(rule, "fired", result.reason or "condition true", result, step.indicator))
        elif value is None:
            missing = ", ".join(dict.fromkeys(m.label for m in result.missing)) or "unknown"
            append(Outcome(rule, "unknown" if step.ask else "not-fired", f"missing: {missing}", result))
        else:
            append(Outcome(rule, "not-fired", result.reason or "condition false", result))
    return ev
