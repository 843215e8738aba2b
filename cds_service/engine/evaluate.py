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
    #: the fired and the unknown outcomes, in rule order, gathered while evaluating (None: worked
    #: out from ``outcomes``); read them, never change them
    fired_outcomes: list[Outcome] | None = None
    unknown_outcomes: list[Outcome] | None = None

    @property
    def fired(self) -> list[Outcome]:
        if self.fired_outcomes is None:
            return [o for o in self.outcomes if o.status == "fired"]
        return self.fired_outcomes

    @property
    def unknown(self) -> list[Outcome]:
        """The rules that could not decide for want of data (the data-gaps card's)."""
        if self.unknown_outcomes is None:
            return [o for o in self.outcomes if o.status == "unknown"]
        return self.unknown_outcomes


@dataclass(frozen=True, slots=True)
class Step:
    """One evaluated rule in a plan: its place among the outcomes and its evaluator."""

    rule: Rule
    when: Callable[[Env], Result]
    requirement: bool
    ask: bool
    indicator: str
    #: the outcomes of the shared constant answers (TRUE, FALSE: nothing bound, no reason), the
    #: same read-only objects every call (nothing per patient in them)
    if_true: Outcome
    if_false: Outcome


@dataclass(frozen=True, slots=True)
class Plan:
    """The rules of one hook and jurisdiction. ``outcomes``: every rule's outcome as it is unless
    its condition says otherwise (skipped ones and why; for the others, their outcome when false,
    the most common answer), copied per call; ``steps``: (place, evaluator, step) of the rules
    evaluated, in rule order."""

    outcomes: tuple[Outcome, ...]
    steps: tuple[tuple[int, Callable[[Env], Result], Step], ...]


def plan(ruleset: RuleSet, hook: str, jurisdiction: str) -> Plan:
    """The rules in order, each skipped (and why) or with its evaluator, for one hook/jurisdiction."""
    key = (hook, jurisdiction)
    found = ruleset.plans.get(key)
    if found is None:
        found = _plan(ruleset, hook, jurisdiction)
        if len(ruleset.plans) >= MAX_PLANS:  # a caller choosing jurisdictions freely cannot grow it
            ruleset.plans.clear()
        ruleset.plans[key] = found
    return found


def _plan(ruleset: RuleSet, hook: str, jurisdiction: str) -> Plan:
    outcomes: list[Outcome] = []
    steps = []
    for i, rule in enumerate(ruleset.rules):
        skip = None
        if not rule.enabled:
            skip = "disabled in site configuration"
        elif hook not in rule.hooks:
            skip = f"not for hook {hook}"
        elif "all" not in rule.jurisdictions and jurisdiction not in rule.jurisdictions:
            skip = f"not for jurisdiction {jurisdiction}"
        if skip is not None:
            outcomes.append(Outcome(rule, "skipped", skip))
            continue
        indicator = rule.indicator_for(jurisdiction)
        requirement = rule.kind == "requirement"
        step = Step(
            rule,
            rule.when.evaluator(),
            requirement,
            rule.on_unknown == "ask",
            indicator,
            _outcome(rule, TRUE, requirement, indicator),
            _outcome(rule, FALSE, requirement, indicator),
        )
        outcomes.append(step.if_false)
        steps.append((i, step.when, step))
    return Plan(tuple(outcomes), tuple(steps))


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
    p = plan(ruleset, facts.hook, jurisdiction)
    outcomes = list(p.outcomes)  # a false answer leaves its rule's outcome as it is
    fired: list[Outcome] = []
    unknown: list[Outcome] = []
    for i, when, step in p.steps:
        result = when(env)
        if result is FALSE:
            continue
        if result is TRUE:
            o = step.if_true
        elif result.value is None:
            missing = ", ".join(dict.fromkeys(m.label for m in result.missing)) or "unknown"
            if step.ask:
                o = Outcome(step.rule, "unknown", f"missing: {missing}", result)
                unknown.append(o)
            else:
                o = Outcome(step.rule, "not-fired", f"missing: {missing}", result)
        else:
            o = _outcome(step.rule, result, step.requirement, step.indicator)
        outcomes[i] = o
        if o.status == "fired":
            fired.append(o)
    return Evaluation(ruleset, facts, jurisdiction, outcomes, fired, unknown)
