"""Predicates over ketamine/esketamine sessions: a course in progress, frequency, response."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from ...reading.facts import MedUse
from .core import FALSE, CompileContext, CompileError, Env, Leaf, Node, Result, check_args, predicate
from .views import num


@predicate(
    "ketamine_course", "Administrations of the value set's drugs within `within_days` (a course in progress)."
)
def _ketamine_course(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset", "within_days"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    within = ctx.number(a, "within_days", 45)

    def run(env: Env, _a: dict[str, Any]) -> Result:
        recent = [s for s in env.facts.sessions(vs) if s.start and (env.facts.today - s.start).days <= within]
        active_orders = env.facts.active_uses(vs)
        if not recent and not active_orders:
            return FALSE
        return Result(
            True,
            bind={"course_sessions": len(recent)},
            evidence=[s.ref for s in recent] + [u.ref for u in active_orders],
        )

    return Leaf("ketamine_course", run, {"vs": vs, "within": within}, {f"valueset:{vs}"})


@predicate(
    "first_session",
    "No administration of the value set's drugs before (the order would be day 1 of a course).",
)
def _first_session(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset", "course_gap_days"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    gap = ctx.number(a, "course_gap_days", 60)

    def run(env: Env, _a: dict[str, Any]) -> Result:
        sessions = env.facts.sessions(vs)
        if sessions and sessions[-1].start and (env.facts.today - sessions[-1].start).days <= gap:
            return Result(
                False, bind={"prior_sessions": len(sessions)}, evidence=[s.ref for s in sessions[-3:]]
            )
        return Result(True, bind={"prior_sessions": 0})

    return Leaf("first_session", run, {"vs": vs, "gap": gap}, {f"valueset:{vs}"})


@predicate(
    "session_frequency",
    "Sessions in the last 7 days, counting the order, exceed the phase's limit. `phases` is a list of "
    "{until_week, max_per_week} (the last without until_week) counted from the course's first session.",
)
def _session_frequency(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset", "phases", "course_gap_days"}, {"valueset", "phases"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    phases = ctx.value(a["phases"], ("phases",))
    gap = ctx.number(a, "course_gap_days", 60)
    if not isinstance(phases, list) or not phases:
        raise CompileError("phases must be a non-empty list", ("phases",))

    def run(env: Env, _a: dict[str, Any]) -> Result:
        orders = env.facts.orders_in(vs)
        if not orders:
            return FALSE
        course = current_course(env.facts.sessions(vs), env.facts.today, int(gap))
        first = (course[0].start if course else None) or env.facts.today
        week = (env.facts.today - first).days // 7 + 1
        limit = next(
            (p["max_per_week"] for p in phases if p.get("until_week") is None or week <= p["until_week"]),
            phases[-1]["max_per_week"],
        )
        last7 = [s for s in course if s.start and (env.facts.today - s.start).days < 7]
        # The order's own timing counts too: "daily" means 7 sessions a week whatever came before.
        per_week = max((o.doses_per_day or 0) * 7 for o in orders)
        order_sessions = max(1, round(per_week))
        count = len(last7) + 1
        bind = {
            "course_week": week,
            "sessions_7d": count,
            "max_per_week": limit,
            "order_per_week": num(round(per_week, 1)) if per_week else None,
        }
        return Result(count > limit or order_sessions > limit, bind=bind, evidence=[s.ref for s in last7])

    return Leaf("session_frequency", run, {"vs": vs, "phases": repr(phases), "gap": gap}, {f"valueset:{vs}"})


def current_course(sessions: list[MedUse], today: date, gap_days: int) -> list[MedUse]:
    """The latest run of sessions with no gap longer than ``gap_days`` (ending no earlier than that)."""
    course: list[MedUse] = []
    last = today
    for s in reversed(sessions):
        if s.start is None or (last - s.start).days > gap_days:
            break
        course.append(s)
        last = s.start
    return list(reversed(course))


@predicate(
    "course",
    "The current course of administrations (sessions separated by at most `course_gap_days`): true "
    "when it has at least `min_sessions`; binds session count, dates and the response after session "
    "`assess_after` on `score_kinds` (response = improvement of at least `response_pct`).",
)
def _course(args: Any, ctx: CompileContext) -> Node:
    allowed = {
        "valueset",
        "min_sessions",
        "assess_after",
        "response_pct",
        "score_kinds",
        "course_gap_days",
        "by_week_valueset",
        "assess_week",
    }
    a = check_args(args, allowed, {"valueset"})
    spec = {
        "vs": ctx.valueset(a["valueset"], "medication", ("valueset",)),
        "week_vs": ctx.valueset(a["by_week_valueset"], "medication", ("by_week_valueset",))
        if a.get("by_week_valueset")
        else None,
        "week": ctx.number(a, "assess_week", 4),
        "min": ctx.number(a, "min_sessions", 1),
        "after": ctx.number(a, "assess_after", 6),
        "pct": ctx.number(a, "response_pct", 50),
        "kinds": tuple(ctx.value(a.get("score_kinds") or ["madrs", "phq9"])),
        "gap": ctx.number(a, "course_gap_days", 60),
    }
    for k in spec["kinds"]:
        ctx.kind(k, ("score_kinds",))

    def run(env: Env, s: dict[str, Any]) -> Result:
        course = current_course(env.facts.sessions(s["vs"]), env.facts.today, int(s["gap"]))
        if len(course) < s["min"]:
            return FALSE
        first, last = course[0].start, course[-1].start
        # A course of the by-week drug (esketamine: the label evaluates at week 4) is assessed at
        # that week; any other course after the N-th session (the Norwegian protocol's sixth).
        by_week = s["week_vs"] is not None and all(env.facts.t.drug_in(c.drug, s["week_vs"]) for c in course)
        pivot = None
        if by_week and first and (env.facts.today - first).days >= s["week"] * 7:
            pivot = first + timedelta(days=int(s["week"] * 7))
        elif not by_week and len(course) >= s["after"]:
            pivot = course[int(s["after"]) - 1].start
        info: dict[str, Any] = {
            "sessions": len(course),
            "first": first.isoformat() if first else None,
            "last": last.isoformat() if last else None,
            "assess_after": int(s["after"]),
            "assess_label": f"at week {s['week']:g}" if by_week else f"after session {s['after']:g}",
            "due": pivot is None,
            "response": None,
        }
        for kind in s["kinds"]:
            series = env.facts.series(kind)
            base = [o for o in series if first and o.when.date() <= first and o.value is not None]
            if not base:
                continue
            info["instrument"] = kind.upper().replace("PHQ9", "PHQ-9")
            info["baseline"] = f"{num(base[-1].value)}"
            if pivot is not None:
                after = [o for o in series if o.when.date() >= pivot and o.value is not None]
                if after:
                    pct = (base[-1].value - after[0].value) / base[-1].value * 100 if base[-1].value else 0
                    info["after_score"] = f"{num(after[0].value)}"
                    info["improvement_pct"] = round(pct)
                    info["response"] = pct >= s["pct"]
            break
        return Result(True, bind={"course": info}, evidence=[c.ref for c in course])

    return Leaf("course", run, spec, {f"valueset:{spec['vs']}"})
