"""Dose checks of the orders being decided: mg/kg, mg, infusion time."""

from __future__ import annotations

from typing import Any

from .core import (
    COMPARATORS,
    FALSE,
    CompileContext,
    CompileError,
    Env,
    Leaf,
    Missing,
    Node,
    Result,
    check_args,
    compare,
    predicate,
)
from .observations import observation_gap, window_text
from .views import clinical_number, med_view, num, obs_view

# A weight outside this range is a recording error, not a patient: the mg/kg check asks again.
MIN_WEIGHT_KG, MAX_WEIGHT_KG = 1.0, 400.0


@predicate(
    "dose_per_kg",
    "Dose of an order of the value set per kg body weight (weight no older than `weight_within_days`), "
    "compared with gt/gte/lt/lte; unknown without a recent weight or a dose in mg.",
)
def _dose_per_kg(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset", "routes", "weight_within_days", *COMPARATORS}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    routes = tuple(ctx.value(a.get("routes")) or ())
    within = ctx.number(a, "weight_within_days", 30)
    span = window_text(within)
    cmp = {k: ctx.number(a, k) for k in COMPARATORS if k in a}

    def run(env: Env, _a: dict[str, Any]) -> Result:
        orders = [o for o in env.facts.orders_in(vs) if not routes or o.route in routes]
        if not orders:
            return FALSE
        weight = env.facts.latest("weight", within_days=within)
        if weight is not None and weight.value is None:  # recorded in a unit that cannot be read as kg
            gap = Missing("weight", "body weight in a known unit (kg, g, lb, oz)", specific=True)
            return Result(None, missing=[gap])
        if weight is not None and not (weight.value and MIN_WEIGHT_KG <= weight.value <= MAX_WEIGHT_KG):
            why = f"the latest is outside {MIN_WEIGHT_KG:g}–{MAX_WEIGHT_KG:g} kg"
            return Result(
                None, missing=[Missing("weight", "body weight", window=span, quality="plausible", why=why)]
            )
        results = []
        for o in orders:
            if o.dose is None or o.dose_unit not in ("mg", "mg/kg"):
                return Result(None, missing=[Missing("order-dose", "the dose in mg on the order")])
            if o.dose_unit == "mg/kg":
                per_kg = o.dose
                mg = o.dose * weight.value if weight and weight.value else None
            else:
                if weight is None or not weight.value:
                    return Result(
                        None,
                        missing=[
                            observation_gap(
                                env, "weight", f"body weight within the last {span}", False, span, within
                            )
                        ],
                    )
                per_kg = o.dose / weight.value
                mg = o.dose
            results.append((o, per_kg, mg))
        o, per_kg, mg = max(results, key=lambda r: r[1])
        bind = {
            "dose_mg": clinical_number(mg, "mg") if mg is not None else None,
            "dose_mg_per_kg": num(round(per_kg, 2)),
            "weight": obs_view(weight) if weight else None,
            "order": med_view(env, o),
        }
        evidence = [o.ref] + ([weight.ref] if weight else [])
        return Result(compare(per_kg, cmp), bind=bind, evidence=evidence)

    return Leaf(
        "dose_per_kg",
        run,
        {"vs": vs, "routes": routes, "within": within, **cmp},
        {f"valueset:{vs}", "observation:weight"},
    )


@predicate(
    "dose_mg",
    "Dose in mg of an order of the value set, compared with gt/gte/lt/lte/eq; unknown when not in mg.",
)
def _dose_mg(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset", "routes", "not_in", *COMPARATORS}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    routes = tuple(ctx.value(a.get("routes")) or ())
    cmp = {k: ctx.number(a, k) for k in COMPARATORS if k in a}
    not_in = tuple(ctx.value(a.get("not_in")) or ())
    if any(not isinstance(v, int | float) or isinstance(v, bool) for v in not_in):
        raise CompileError("not_in must be a list of numbers", ("not_in",))

    def run(env: Env, _a: dict[str, Any]) -> Result:
        orders = [o for o in env.facts.orders_in(vs) if not routes or o.route in routes]
        if not orders:
            return FALSE
        for o in orders:
            if o.dose is None or o.dose_unit != "mg":
                return Result(None, missing=[Missing("order-dose", "the dose in mg on the order")])
        hits = [
            o
            for o in orders
            if compare(o.dose or 0, cmp)
            and (not not_in or all(abs((o.dose or 0) - v) > 1e-6 for v in not_in))
        ]
        top = max(orders, key=lambda o: o.dose or 0)
        return Result(
            bool(hits),
            bind={"dose_mg": num(top.dose), "order": med_view(env, top)},
            evidence=[o.ref for o in orders],
        )

    return Leaf("dose_mg", run, {"vs": vs, "routes": routes, "not_in": not_in, **cmp}, {f"valueset:{vs}"})


@predicate(
    "infusion_minutes",
    "Infusion duration on an order of the value set compared with gt/gte/lt/lte; unknown when not stated.",
)
def _infusion_minutes(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset", "routes", *COMPARATORS}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    routes = tuple(ctx.value(a.get("routes")) or ())
    cmp = {k: ctx.number(a, k) for k in COMPARATORS if k in a}

    def run(env: Env, _a: dict[str, Any]) -> Result:
        orders = [o for o in env.facts.orders_in(vs) if not routes or o.route in routes]
        if not orders:
            return FALSE
        for o in orders:
            if o.infusion_minutes is None:
                return Result(None, missing=[Missing("infusion-time", "the infusion duration on the order")])
        shortest = min(orders, key=lambda o: o.infusion_minutes or 0)
        value = shortest.infusion_minutes or 0
        return Result(compare(value, cmp), bind={"infusion_minutes": round(value)}, evidence=[shortest.ref])

    return Leaf("infusion_minutes", run, {"vs": vs, "routes": routes, **cmp}, {f"valueset:{vs}"})
