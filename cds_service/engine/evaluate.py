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
from .predicates.core import FALSE, TRUE

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
    #: the outcomes of the shared constant answers (TRUE, FALSE: nothing bound, no reason),
    #: the same read-only objects every call, as ``skipped``
    if_true: Outcome | None = None
    if_false: Outcome | None = None


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
    if skip is not None:
        return Step(
            rule, Outcome(rule, "skipped", skip), None, False, False, rule.indicator_for(jurisdiction)
        )
    indicator = rule.indicator_for(jurisdiction)
    requirement = rule.kind == "requirement"
    return Step(
        rule,
        None,
        rule.when.evaluator(),
        requirement,
        rule.on_unknown == "ask",
        indicator,
        _outcome(rule, TRUE, requirement, indicator),
        _outcome(rule, FALSE, requirement, indicator),
    )


def _outcome(rule: Rule, result: Result, requirement: bool, indicator: str) -> Outcome:
    """What ``evaluate`` makes of a true or false answer (the same words, in one place)."""
    if result.value:
        if requirement:
            return Outcome(rule, "not-fired", "requirement met", result)
        return Outcome(rule, "fired", result.reason or "condition true", result, indicator)
    return Outcome(rule, "not-fired", result.reason or "condition false", result)


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
        if result is FALSE:
            append(step.if_false)
        elif result is TRUE:
            append(step.if_true)
        elif result.value is None:
            missing = ", ".join(dict.fromkeys(m.label for m in result.missing)) or "unknown"
            append(Outcome(rule, "unknown" if step.ask else "not-fired", f"missing: {missing}", result))
        else:
            append(_outcome(rule, result, step.requirement, step.indicator))
    return ev
