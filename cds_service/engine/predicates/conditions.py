"""Predicates over Conditions and Procedures in a value set."""

from __future__ import annotations

from typing import Any

from .core import FALSE, CompileContext, Env, Leaf, Node, Result, check_args, predicate
from .views import condition_view, unreadable_missing


@predicate(
    "condition", "A Condition in the value set: `active_only` (default false) restricts to active ones."
)
def _condition(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset", "active_only", "bind", "onset_within_days"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "condition", ("valueset",))
    active_only = bool(ctx.value(a.get("active_only", False)))
    bind_as = a.get("bind", "conditions")
    recent = ctx.number(a, "onset_within_days")

    def run(env: Env, a: dict[str, Any]) -> Result:
        found = env.facts.conditions_in(vs, active_only=active_only)
        if recent is not None:  # onset (or, without one, the recorded date) no older than this
            today = env.facts.today
            found = [
                c
                for c in found
                if (c.onset or c.recorded) is not None
                and 0 <= (today - (c.onset or c.recorded)).days <= recent
            ]
        if not found:
            # conditions_in has read the value set, so any unreadable Condition of it is listed
            unreadable = env.facts.malformed_conditions and env.facts.unreadable_conditions_in(
                vs, active_only=active_only
            )
            if unreadable:
                return Result(None, missing=[unreadable_missing(env, vs, unreadable)])
            return FALSE  # the shared answer: nothing bound, nothing cited
        return Result(
            True, bind={bind_as: [condition_view(c) for c in found]}, evidence=[c.ref for c in found]
        )

    return Leaf(
        "condition",
        run,
        {"vs": vs, "active_only": active_only, "bind": bind_as, "recent": recent},
        {f"valueset:{vs}"},
    )


@predicate("procedure", "A Procedure in the value set was performed (`within_days` optional).")
def _procedure(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset", "within_days"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "procedure", ("valueset",))
    within = ctx.number(a, "within_days")

    def run(env: Env, a: dict[str, Any]) -> Result:
        found = [
            (r, d)
            for r, d in env.facts.procedures_in(vs)
            if within is None or (d is not None and (env.facts.today - d).days <= within)
        ]
        return Result(bool(found), evidence=[r for r, _ in found], bind={"procedures": len(found)})

    return Leaf("procedure", run, {"vs": vs, "within": within}, {f"valueset:{vs}"})
