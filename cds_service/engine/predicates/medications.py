"""Predicates over orders and medication use: orders of a value set, active drugs, benzodiazepine load."""

from __future__ import annotations

from typing import Any

from .core import (
    COMPARATORS,
    FALSE,
    CompileContext,
    CompileError,
    Env,
    Leaf,
    Node,
    Result,
    check_args,
    compare,
    predicate,
)
from .views import UNRESOLVED_MEDICATION, drug_name, med_view, num, unreadable_missing


@predicate(
    "order",
    "A current order (draft, or selected for order-select) is in the medication value set; "
    "`routes` optional.",
)
def _order(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset", "routes", "bind"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    routes = tuple(ctx.value(a.get("routes")) or ())
    bind_as = a.get("bind")  # another name, for a second drug ordered in the same request

    def run(env: Env, _a: dict[str, Any]) -> Result:
        found = [o for o in env.facts.orders_in(vs) if not routes or o.route in routes]
        if not found:
            unreadable = env.facts.unreadable_orders_in(vs)
            if unreadable:  # an order of this drug that cannot be read is not "no order"
                return Result(None, missing=[unreadable_missing(env, vs, unreadable)])
            return FALSE
        views = [med_view(env, o) for o in found]
        bind = {bind_as: views} if bind_as else {"order": views[0], "orders": views}
        return Result(True, bind=bind, evidence=[o.ref for o in found])

    return Leaf("order", run, {"vs": vs, "routes": routes, "bind": bind_as}, {f"valueset:{vs}"})


@predicate(
    "order_route_unknown",
    "A matching order whose route cannot be read (so a route-specific check cannot run).",
)
def _order_route_unknown(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))

    def run(env: Env, _a: dict[str, Any]) -> Result:
        found = [o for o in env.facts.orders_in(vs) if o.route in (None, "injection")]
        return Result(bool(found), evidence=[o.ref for o in found])

    return Leaf("order_route_unknown", run, {"vs": vs}, {f"valueset:{vs}"})


@predicate(
    "active_medication",
    "The patient is taking a drug of the value set today, or it is ordered together with the "
    "order being decided (another draft of the same request); `grace_days` after the end.",
)
def _active_medication(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset", "grace_days", "bind"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    grace = ctx.number(a, "grace_days", 0)
    bind_as = a.get("bind", "meds")

    def run(env: Env, _a: dict[str, Any]) -> Result:
        found = env.facts.active_uses(vs, grace_days=int(grace)) + env.facts.drafts_in(vs)
        if not found:
            unreadable = env.facts.unreadable_medications_in(vs)
            if unreadable:
                return Result(None, missing=[unreadable_missing(env, vs, unreadable)])
            if env.facts.unresolved_in_effect(int(grace)):  # some current drug is not known at all
                return Result(None, missing=[UNRESOLVED_MEDICATION])
            return FALSE
        seen: dict[str, dict[str, Any]] = {}
        for u in found:
            view = med_view(env, u)
            seen.setdefault(view["ingredients"], view)
        return Result(True, bind={bind_as: list(seen.values())}, evidence=[u.ref for u in found])

    return Leaf("active_medication", run, {"vs": vs, "grace": grace, "bind": bind_as}, {f"valueset:{vs}"})


@predicate(
    "diazepam_equivalent",
    "Total daily dose of the active drugs of the value set in diazepam-equivalent mg/day, from the site's "
    "chosen `table` among `tables` (mg equal to 10 mg oral diazepam, by ingredient), compared with "
    "gt/gte/lt/lte; draft orders of the value set count as concurrent use. `unassessed: true` instead "
    "is true when such a drug is used but its dose cannot be converted (no table chosen, drug not in "
    "the table, or no daily dose on the record).",
)
def _diazepam_equivalent(args: Any, ctx: CompileContext) -> Node:
    a = check_args(
        args,
        {"valueset", "tables", "table", "grace_days", "unassessed", *COMPARATORS},
        {"valueset", "tables"},
    )
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    tables = ctx.value(a["tables"], ("tables",))
    choice = ctx.value(a.get("table"), ("table",))
    if not isinstance(tables, dict):
        raise CompileError("tables must map a table name to {ingredient: mg}", ("tables",))
    if choice not in (None, "", "none") and choice not in tables:
        raise CompileError(f"table {choice!r} is not one of {sorted(tables)} (or none)", ("table",))
    table = tables.get(choice) or {} if choice not in (None, "", "none") else {}
    grace = ctx.number(a, "grace_days", 7)
    unassessed = bool(a.get("unassessed", False))
    cmp = {k: ctx.number(a, k) for k in COMPARATORS if k in a}

    def run(env: Env, _a: dict[str, Any]) -> Result:
        # what the patient takes, and what is being ordered with it (an order set is concurrent use)
        uses = env.facts.active_uses(vs, grace_days=int(grace)) + env.facts.orders_in(vs)
        if not uses:
            unreadable = env.facts.unreadable_medications_in(vs)
            if unreadable:
                return Result(None, missing=[unreadable_missing(env, vs, unreadable)])
            return FALSE
        # one entry per ingredient (its request, dispenses and statements describe one use):
        # the highest daily dose any record gives
        by_ingredient: dict[str, dict[str, Any]] = {}
        open_: dict[str, str] = {}
        for u in uses:
            name = drug_name(env, u)
            for ing in env.facts.t.drug_in(u.drug, vs):
                mg10 = table.get(ing)
                daily = u.daily_dose if len(u.drug.ingredients) == 1 else None
                if not mg10 or daily is None or u.doses_per_day is None:
                    open_.setdefault(ing, name)
                    continue
                de = daily * 10 / float(mg10)
                if ing not in by_ingredient or de > by_ingredient[ing]["value"]:
                    by_ingredient[ing] = {
                        "name": name,
                        "mg_day": num(round(daily, 2)),
                        "de": num(round(de, 1)),
                        "value": de,
                    }
        for ing in by_ingredient:
            open_.pop(ing, None)
        parts = [{k: v for k, v in p.items() if k != "value"} for p in by_ingredient.values()]
        total = sum(p["value"] for p in by_ingredient.values())
        bind = {
            "de_mg_day": num(round(total, 1)),
            "de_parts": parts,
            "de_unassessed": sorted(set(open_.values())),
            "de_table": choice if table else None,
        }
        refs = [u.ref for u in uses]
        if unassessed:
            return Result(bool(open_) and not (cmp and compare(total, cmp)), bind=bind, evidence=refs)
        return Result(bool(parts) and compare(total, cmp), bind=bind, evidence=refs)

    return Leaf(
        "diazepam_equivalent",
        run,
        {"vs": vs, "table": repr(sorted(table.items())), "grace": grace, "unassessed": unassessed, **cmp},
        {f"valueset:{vs}"},
    )


@predicate("text_matched_order", "An order of the value set was recognised by its name, not its code.")
def _text_matched(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))

    def run(env: Env, _a: dict[str, Any]) -> Result:
        found = [o for o in env.facts.orders_in(vs) if o.drug.matched_by == "text"]
        return Result(
            bool(found),
            bind={"text_orders": [med_view(env, o) for o in found]},
            evidence=[o.ref for o in found],
        )

    return Leaf("text_matched_order", run, {"vs": vs}, {f"valueset:{vs}"})
