"""Predicates over the record's allergies, vital status, the orders signed together and its data quality."""

from __future__ import annotations

from typing import Any

from ...reading.facts import DECEASED
from ...reading.raw import as_dict
from ...reading.record import Problem, ref
from .context import patient_gap
from .core import FALSE, CompileContext, Env, Leaf, Node, Result, check_args, predicate
from .views import med_view, unreadable_missing


@predicate(
    "allergy",
    "An allergy or intolerance to a drug of the medication value set (substance coded or named; "
    "reaction substances count). Active or without a clinical status unless `include_inactive`; "
    "unconfirmed ones count unless `confirmed_only`; `criticality` (list) restricts. Refuted and "
    "entered-in-error records never count. Unknown when a relevant record cannot be read. Binds "
    "`allergies` (substance, criticality, verification, clinical_status, reactions, ref).",
)
def _allergy(args: Any, ctx: CompileContext) -> Node:
    a = check_args(
        args, {"valueset", "include_inactive", "confirmed_only", "criticality", "bind"}, {"valueset"}
    )
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
                return Result(None, missing=[unreadable_missing(env, vs, unreadable, "allergy record")])
            return FALSE
        return Result(
            True,
            bind={bind_as: [f.view(t) for f in found]},
            evidence=[f.ref for f in found],
            reason=f"{len(found)} allergy record(s)",
        )

    key = {"vs": vs, "inactive": include_inactive, "confirmed": confirmed_only, "crit": crit, "bind": bind_as}
    return Leaf("allergy", run, key, {f"valueset:{vs}"})


@predicate(
    "concurrent_medication",
    "An order of `order_valueset` is being decided while a drug of `valueset` is in use: an active "
    "record (`grace_days` after its end), an administration within `within_days` (default 28), or "
    "another draft of the same request (orders signed together). `other_ingredient: true` counts only "
    "drugs with an ingredient the order does not have (IV ketamine during an esketamine course: "
    "duplicate NMDA-antagonist therapy). Binds `order` and `concurrent` (name, ingredients, source: "
    "record | administered | ordered together, ref).",
)
def _concurrent_medication(args: Any, ctx: CompileContext) -> Node:
    allowed = {"order_valueset", "valueset", "grace_days", "within_days", "other_ingredient"}
    a = check_args(args, allowed, {"order_valueset", "valueset"})
    order_vs = ctx.valueset(a["order_valueset"], "medication", ("order_valueset",))
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    grace = int(ctx.number(a, "grace_days", 0))
    within = int(ctx.number(a, "within_days", 28))
    other = bool(ctx.value(a.get("other_ingredient", False)))

    def run(env: Env, _a: dict[str, Any]) -> Result:
        f, t = env.facts, env.facts.t
        orders = f.orders_in(order_vs)
        if not orders:
            return FALSE
        records = [(u, "record") for u in f.active_uses(vs, grace_days=grace)]
        recent = [s for s in f.sessions(vs) if s.start and (f.today - s.start).days <= within]
        records += [(s, "administered") for s in recent]
        for order in orders:
            found: dict[str, tuple[Any, str]] = {}
            candidates = records + [(d, "ordered together") for d in f.drafts_in(vs, excluding=order)]
            for use, source in candidates:
                if use is order or use.ref == order.ref:
                    continue
                if other and not (t.drug_in(use.drug, vs) - order.drug.ingredients):
                    continue
                found.setdefault(use.ref, (use, source))
            if found:
                views = []
                for use, source in found.values():
                    views.append({**med_view(env, use), "source": source})
                return Result(
                    True,
                    bind={"order": med_view(env, order), "concurrent": views},
                    evidence=[order.ref, *found],
                    reason=f"{len(views)} concurrent record(s)",
                )
        unreadable = f.unreadable_medications_in(vs)
        if unreadable:
            return Result(None, missing=[unreadable_missing(env, vs, unreadable)])
        return FALSE

    key = {"order_vs": order_vs, "vs": vs, "grace": grace, "within": within, "other": other}
    return Leaf("concurrent_medication", run, key, {f"valueset:{order_vs}", f"valueset:{vs}"})


@predicate(
    "deceased",
    "The patient is recorded as deceased (Patient.deceasedBoolean true, or a deceasedDateTime not in "
    "the future). False without a Patient or deceased[x]; unknown when deceased[x] cannot be read. "
    "Binds `deceased_on` (date or none).",
)
def _deceased(args: Any, ctx: CompileContext) -> Node:
    check_args(args, set())

    def run(env: Env, _a: dict[str, Any]) -> Result:
        dead, on = env.facts.deceased
        if dead is None:  # only when deceased[x] is there and unreadable: absent reads as alive
            return Result(None, missing=[patient_gap(env, DECEASED, "deceased status")])
        patient = env.facts.record.patient
        evidence = [f"Patient/{patient.get('id')}"] if dead and patient else []
        return Result(dead, bind={"deceased_on": on.isoformat() if on else None}, evidence=evidence)

    return Leaf("deceased", run, {}, set())


@predicate(
    "unidentified_order",
    "An order being decided whose drug could not be identified (no known code, no readable "
    'Medication, no known name) while its text loosely names a drug of the value set ("Ketamin", '
    '"S-Ketamin"): its checks cannot run. Binds `unidentified` (text, ref, reference, suggests).',
)
def _unidentified_order(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, {"valueset"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))

    def run(env: Env, _a: dict[str, Any]) -> Result:
        f, t = env.facts, env.facts.t
        _ = f.drafts  # identifies every draft, collecting the unidentified ones
        selected = set(f.record.selections)
        found = []
        for res in f.unidentified_orders:
            r = ref(res)
            if f.hook == "order-select" and selected and r not in selected:
                continue
            identified = f.medications.identify(res)
            display = as_dict(res.get("medicationReference")).get("display")
            text = " ".join(
                p for p in (identified.drug.text, display if isinstance(display, str) else "") if p
            )
            suggests = t.suggested_by_text(text, vs)
            if suggests:
                found.append(
                    {
                        # every name once (the one that looks like the drug among them)
                        "text": (" / ".join(f.medications.names_of(res)) or text)[:60],
                        "ref": r,
                        "reference": identified.reference,
                        "suggests": " or ".join(sorted(t.display(i) for i in suggests)),
                    }
                )
        return Result(
            bool(found), bind={"unidentified": found} if found else {}, evidence=[o["ref"] for o in found]
        )

    return Leaf("unidentified_order", run, {"vs": vs}, {f"valueset:{vs}"})


# -- data quality -------------------------------------------------------------------------------
@predicate(
    "unreadable_resources",
    "Record entries with an element a check read that is invalid (the entry is kept, that element is "
    "not read), or not read at all (another type, an error outcome, not fetched). Binds `entries` "
    "(type, where, count, elements, whole: messages naming elements, no values or ids), `types`, and "
    "the counts `count` (entries), `elements` (not read in entries kept) and `whole` (entries left out).",
)
def _unreadable(args: Any, ctx: CompileContext) -> Node:
    def run(env: Env, _a: dict[str, Any]) -> Result:
        # The problems found in what the rules read (this rule runs last); resources no rule
        # needed are never validated, so they cannot mislead anyone.
        f = env.facts
        _ = (f.patient, f.medication_uses, f.orders)
        problems = f.record.problems
        if not problems:
            return FALSE
        # the entries' references are evidence (the explanation), never card text
        evidence = [p.resource for p in problems if "/" in p.resource]
        return Result(True, bind=_entries(problems), evidence=evidence)

    return Leaf("unreadable_resources", run, {}, set())


def _entries(problems: list[Problem]) -> dict[str, Any]:
    """The problems by record entry: one Patient with two invalid elements is one entry."""
    entries: dict[Any, dict[str, Any]] = {}
    for p in problems:
        key = p.entry or (p.where, p.resource)
        e = entries.get(key)
        if e is None:
            head = p.resource.split("/", 1)[0].split(" (", 1)[0]
            many = p.resource.split(" ", 1)[0]  # "2 Medication reference(s)": references not fetched
            e = entries[key] = {
                "type": head if head.isalpha() else "Medication" if many.isdigit() else "unknown type",
                "where": p.where,
                "count": int(many) if many.isdigit() else 1,
                "elements": [],
                "whole": [],
            }
        e["elements" if p.partial else "whole"].append(p.message.rstrip("."))
    view = list(entries.values())
    return {
        "entries": view,
        "count": sum(e["count"] for e in view),
        "elements": sum(len(e["elements"]) for e in view if not e["whole"]),
        "whole": sum(e["count"] for e in view if e["whole"]),
        "types": list(dict.fromkeys(e["type"] for e in view)),
    }
