"""Predicates over observations by kind: the latest value in a window, coded positive answers."""

from __future__ import annotations

import re
from typing import Any

from ...reading.facts import ObservationFact
from ...reading.observations import says_only
from .core import (
    COMPARATORS,
    FALSE,
    CompileContext,
    Env,
    Leaf,
    Missing,
    Node,
    Result,
    check_args,
    compare,
    predicate,
)
from .views import obs_view


@predicate(
    "observation",
    "The latest observation of a kind within `within_days`/`within_hours`, compared with "
    "gt/gte/lt/lte/eq, or `positive: true` for a coded positive answer. Unknown when there is none.",
)
def _observation(args: Any, ctx: CompileContext) -> Node:
    a = check_args(
        args, {"kind", "within_days", "within_hours", "positive", "label", "ask", *COMPARATORS}, {"kind"}
    )
    kind = ctx.kind(a["kind"], ("kind",))
    spec = {k: ctx.number(a, k) for k in COMPARATORS | {"within_days", "within_hours"} if k in a}
    positive = a.get("positive")
    ask = bool(a.get("ask", True))
    window = spec.get("within_days")
    if spec.get("within_hours") is not None:
        window = spec["within_hours"] / 24
    label = a.get("label") or _window_label(kind, window)
    own = bool(a.get("label"))  # a rule's own wording is not overruled by the generic data_needs label
    span = _hours_text(spec["within_hours"]) if spec.get("within_hours") is not None else window_text(window)

    def holds(env: Env, obs: ObservationFact) -> bool | None:
        if positive is not None:
            hit = (
                obs.code in env.facts.positive_answers.get(kind, set())
                or positive_text(obs.text)
                or says_only(obs.text, env.facts.positive_words.get(kind, ()))
            )
            return hit == bool(positive)
        return None if obs.value is None else compare(obs.value, spec)

    def run(env: Env, _a: dict[str, Any]) -> Result:
        # A preliminary reading newer than the latest final one is a signal: it can make the
        # condition true (and says it is preliminary), never false.
        prelims, obs = env.facts.newest(kind, window)
        for p in prelims:
            if holds(env, p):
                return Result(True, bind={kind: obs_view(p)}, evidence=[p.ref], reason="preliminary reading")
        if obs is None:
            return (
                Result(None, missing=[observation_gap(env, kind, label, own, span, window)]) if ask else FALSE
            )
        verdict = holds(env, obs)
        if verdict is None:
            if not ask:
                return FALSE
            if obs.unusable and not own:  # recorded, but in no unit it can be read in
                return Result(None, missing=[Missing(kind, label, own, span, "usable", obs.unusable)])
            return Result(None, missing=[Missing(kind, label, own, span)])
        return Result(verdict, bind={kind: obs_view(obs)}, evidence=[obs.ref])

    return Leaf(
        "observation", run, {"kind": kind, **spec, "positive": positive, "ask": ask}, {f"observation:{kind}"}
    )


_POSITIVE = re.compile(r"\b(positive|detected|reactive)\b", re.I)
_NEGATED = re.compile(r"\b(not|non|negative|no)\b|non-reactive|undetected", re.I)


def positive_text(text: str) -> bool:
    """A coded answer whose words say positive ("Positive", "hCG detected"), not negated."""
    return bool(text and _POSITIVE.search(text) and not _NEGATED.search(text))


@predicate(
    "has_observation",
    "True when an observation of the kind exists in the window; else unknown (asks for it).",
)
def _has_observation(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"kind", "within_days", "label"}, {"kind"})
    kind = ctx.kind(a["kind"], ("kind",))
    within = ctx.number(a, "within_days")
    label = a.get("label") or _window_label(kind, within)
    own = bool(a.get("label"))
    span = window_text(within)

    def run(env: Env, _a: dict[str, Any]) -> Result:
        obs = env.facts.latest(kind, within_days=within)
        if obs is None:
            return Result(None, missing=[observation_gap(env, kind, label, own, span, within)])
        return Result(True, bind={kind: obs_view(obs)}, evidence=[obs.ref])

    return Leaf("has_observation", run, {"kind": kind, "within": within}, {f"observation:{kind}"})


def observation_gap(env: Env, kind: str, label: str, own: bool, span: str, days: float | None) -> Missing:
    """No readable reading of the kind in the window: "missing", unless one there could not be read
    (its element is named in the record's problems), which the gap then says."""
    if not own and env.facts.unreadable_in(kind, days):
        return Missing(kind, label, own, span, "readable", "the latest could not be read")
    return Missing(kind, label, own, span)


def _window_label(kind: str, days: float | None) -> str:
    name = kind.replace("_", " ")
    if days is None:
        return name
    if days < 1:
        return f"{name} within the last {round(days * 24)} hours"
    return f"{name} within the last {days:g} days"


def _hours_text(hours: float) -> str:
    return f"{hours:g} hour{'s' if hours != 1 else ''}"


def window_text(days: float | None) -> str:
    """A window as the site configured it: "30 days", "24 hours", "1 day" ("" for none)."""
    if days is None:
        return ""
    if days < 1:
        return _hours_text(round(days * 24))
    return f"{days:g} day{'s' if days != 1 else ''}"
