"""Predicates over the record's allergies, vital status and the orders signed together.

Registered in the same vocabulary as :mod:`.predicates` (importing this module registers them);
kept apart so that file does not keep growing.
"""

from __future__ import annotations

from typing import Any

from .predicates import (
    CompileContext,
    Env,
    Leaf,
    Missing,
    Node,
    Result,
    _args,
    predicate,
)


@predicate(
    "allergy",
    "An allergy or intolerance to a drug of the medication value set (substance coded or named; "
    "reaction substances count). Active or without a clinical status unless `include_inactive`; "
    "unconfirmed ones count unless `confirmed_only`; `criticality` (list) restricts. Refuted and "
    "entered-in-error records never count. Unknown when a relevant record cannot be read. Binds "
    "`allergies` (substance, criticality, verification, clinical_status, reactions, ref).",
)
def _allergy(args: Any, ctx: CompileContext) -> Node:
    a = _args(args, {"valueset", "include_inactive", "confirmed_only", "criticality", "bind"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    include_inactive = bool(ctx.value(a.get("include_inactive", False)))
    confirmed_only = bool(ctx.value(a.get("confirmed_only", False)))
    crit = ctx.value(a.get("criticality") or [], ("criticality",))
    crit = tuple([crit] if isinstance(crit, str) else crit)
    bind_as = a.get("bind", "allergies")

    def run(env: Env, _a: dict[str, Any]) -> Result:
        t = env.facts.t
        allergies = env.facts.allergies
        found = allergies.to(
            t, vs, include_inactive=include_inactive, confirmed_only=confirmed_only, criticality=crit
        )
        if not found:
            unreadable = allergies.unreadable_to(t, vs)
            if unreadable:
                title = t.valuesets[vs].title.lower()
                label = f"a readable allergy record of {title} ({', '.join(unreadable[:3])} malformed)"
                return Result(None, missing=[Missing("unreadable-record", label)])
            return Result(False)
        return Result(
            True,
            bind={bind_as: [f.view(t) for f in found]},
            evidence=[f.ref for f in found],
            reason=f"{len(found)} allergy record(s)",
        )

    key = {"vs": vs, "inactive": include_inactive, "confirmed": confirmed_only, "crit": crit, "bind": bind_as}
    return Leaf("allergy", run, key, {f"valueset:{vs}"})
