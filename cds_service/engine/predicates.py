"""The closed vocabulary of predicates a rule's ``when`` is written in.

Every predicate answers True, False or None (unknown: the record lacks what it needs). Unknown is
never read as "no problem": it carries the missing data so the rule can ask for it. Predicates
also bind what they found (the order, the drugs, the trial list …) for card templates and for the
explanation of why a card fired.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from ..reading.facts import Facts, MedUse, ObservationFact, Trial


@dataclass(frozen=True)
class Missing:
    """A piece of data a predicate needed and did not find (``id`` keys ``rules/data-needs.yaml``)."""

    id: str
    label: str


@dataclass
class Result:
    value: bool | None
    bind: dict[str, Any] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    reason: str = ""


class CompileError(Exception):
    """A predicate written wrongly; ``path`` is relative to the predicate."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message, self.path = message, path


@dataclass
class Env:
    """What predicates see during one evaluation."""

    facts: Facts
    jurisdiction: str
    refs: dict[str, Node]
    cache: dict[Any, Result] = field(default_factory=dict)


class Node:
    name = ""

    def __call__(self, env: Env) -> Result:  # pragma: no cover - interface
        raise NotImplementedError

    def needs(self) -> set[str]:
        """Value sets and observation kinds this node refers to (for lint and the catalogue)."""
        return set()


# -- registry -----------------------------------------------------------------------------------
Compiler = Callable[[Any, "CompileContext"], Node]
REGISTRY: dict[str, tuple[Compiler, str]] = {}


def predicate(name: str, doc: str) -> Callable[[Compiler], Compiler]:
    def register(fn: Compiler) -> Compiler:
        REGISTRY[name] = (fn, doc)
        return fn

    return register


@dataclass
class CompileContext:
    params: dict[str, Any]
    valuesets: dict[str, str]  # id -> kind
    observation_kinds: set[str]
    ref_names: set[str]
    used_params: set[str] = field(default_factory=set)

    def value(self, v: Any, path: tuple[str | int, ...] = ()) -> Any:
        """Resolve ``$param`` references against the rule's (site-overridden) parameters."""
        if isinstance(v, str) and v.startswith("$"):
            name = v[1:]
            if name not in self.params:
                raise CompileError(f"unknown parameter {v!r}", path)
            self.used_params.add(name)
            return self.params[name]
        return v

    def valueset(self, v: Any, kind: str | None, path: tuple[str | int, ...]) -> str:
        v = self.value(v, path)
        if v not in self.valuesets:
            raise CompileError(f"unknown value set {v!r}", path)
        if kind and self.valuesets[v] != kind:
            raise CompileError(f"value set {v!r} is a {self.valuesets[v]} set, expected {kind}", path)
        return v

    def kind(self, v: Any, path: tuple[str | int, ...]) -> str:
        if v not in self.observation_kinds:
            raise CompileError(f"unknown observation kind {v!r}", path)
        return v

    def number(self, args: dict[str, Any], key: str, default: Any = None) -> Any:
        v = self.value(args.get(key, default), (key,))
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
            raise CompileError(f"{key} must be a number, got {v!r}", (key,))
        return v


def compile_node(spec: Any, ctx: CompileContext) -> Node:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise CompileError("a condition is a mapping with exactly one predicate name")
    ((name, args),) = spec.items()
    if name not in REGISTRY:
        raise CompileError(f"unknown predicate {name!r}; known: {', '.join(sorted(REGISTRY))}")
    try:
        return REGISTRY[name][0](args, ctx)
    except CompileError as exc:
        raise CompileError(exc.message, (name, *exc.path)) from exc


def _args(args: Any, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise CompileError("arguments must be a mapping")
    unknown = set(args) - allowed
    if unknown:
        raise CompileError(f"unknown argument(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    absent = required - set(args)
    if absent:
        raise CompileError(f"missing argument(s) {sorted(absent)}")
    return args


def _compare(value: float, args: dict[str, Any]) -> bool:
    checks = {
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
        "eq": lambda a, b: a == b,
    }
    return all(fn(value, args[k]) for k, fn in checks.items() if args.get(k) is not None)


COMPARATORS = {"gt", "gte", "lt", "lte", "eq"}


# -- logic --------------------------------------------------------------------------------------
class All(Node):
    def __init__(self, children: list[Node]) -> None:
        self.children = children

    def __call__(self, env: Env) -> Result:
        out = Result(True)
        for child in self.children:
            r = child(env)
            if r.value is False:
                return Result(False, reason=r.reason)
            if r.value is None:
                out.value = None
                out.missing += r.missing
            out.bind.update(r.bind)
            out.evidence += r.evidence
        return out

    def needs(self) -> set[str]:
        return set().union(*(c.needs() for c in self.children))


class Any_(Node):
    def __init__(self, children: list[Node]) -> None:
        self.children = children

    def __call__(self, env: Env) -> Result:
        unknown: list[Result] = []
        hits: list[Result] = []
        misses: list[Result] = []
        for child in self.children:
            r = child(env)
            if r.value is True:
                hits.append(r)
            elif r.value is None:
                unknown.append(r)
            else:
                misses.append(r)
        if hits:
            out = Result(True)
            for r in hits + misses:  # what the false branches found is context too (e.g. the other BP value)
                out.bind.update({k: v for k, v in r.bind.items() if k not in out.bind})
            for r in hits:
                out.evidence += r.evidence
            return out
        if unknown:
            return Result(None, missing=[m for r in unknown for m in r.missing])
        return Result(False)

    def needs(self) -> set[str]:
        return set().union(*(c.needs() for c in self.children))


class Not(Node):
    def __init__(self, child: Node) -> None:
        self.child = child

    def __call__(self, env: Env) -> Result:
        r = self.child(env)
        if r.value is None:
            return Result(None, missing=r.missing)
        return Result(not r.value, bind=r.bind, evidence=r.evidence)

    def needs(self) -> set[str]:
        return self.child.needs()


@predicate("all", "True when every condition is true; unknown if none is false and any is unknown.")
def _all(args: Any, ctx: CompileContext) -> Node:
    if not isinstance(args, list) or not args:
        raise CompileError("all: expects a non-empty list")
    return All([_child(a, ctx, i) for i, a in enumerate(args)])


@predicate("any", "True when some condition is true; unknown if none is true and any is unknown.")
def _any(args: Any, ctx: CompileContext) -> Node:
    if not isinstance(args, list) or not args:
        raise CompileError("any: expects a non-empty list")
    return Any_([_child(a, ctx, i) for i, a in enumerate(args)])


@predicate("not", "Negation; unknown stays unknown.")
def _not(args: Any, ctx: CompileContext) -> Node:
    return Not(_child(args, ctx, None))


def _child(spec: Any, ctx: CompileContext, index: int | None) -> Node:
    try:
        return compile_node(spec, ctx)
    except CompileError as exc:
        raise CompileError(exc.message, ((index,) if index is not None else ()) + exc.path) from exc


class Assess(Node):
    def __init__(self, child: Node) -> None:
        self.child = child

    def __call__(self, env: Env) -> Result:
        r = self.child(env)
        if r.value is None:
            return Result(None, missing=r.missing)
        return Result(True, bind=r.bind, evidence=r.evidence, reason=r.reason)

    def needs(self) -> set[str]:
        return self.child.needs()


@predicate(
    "assess",
    "Evaluates a condition only for what it finds (its bindings, e.g. the TRD trial list): true "
    "whether the condition holds or not, unknown only when it is unknown.",
)
def _assess(args: Any, ctx: CompileContext) -> Node:
    return Assess(_child(args, ctx, None))


class Ref(Node):
    def __init__(self, name: str) -> None:
        self.ref = name

    def __call__(self, env: Env) -> Result:
        key = ("ref", self.ref)
        if key not in env.cache:
            env.cache[key] = env.refs[self.ref](env)
        return env.cache[key]


@predicate("ref", "A named condition from rules/common.yaml `definitions` (evaluated once per request).")
def _ref(args: Any, ctx: CompileContext) -> Node:
    if args not in ctx.ref_names:
        raise CompileError(f"unknown definition {args!r}")
    return Ref(args)


class Leaf(Node):
    """A predicate over facts, memoised per request by its arguments."""

    def __init__(
        self, name: str, fn: Callable[[Env, dict[str, Any]], Result], args: dict[str, Any], needs: set[str]
    ) -> None:
        self.name, self.fn, self.args, self._needs = name, fn, args, needs
        self._key = (name, repr(sorted(args.items())))

    def __call__(self, env: Env) -> Result:
        if self._key not in env.cache:
            env.cache[self._key] = self.fn(env, self.args)
        return env.cache[self._key]

    def needs(self) -> set[str]:
        return self._needs


# -- context ------------------------------------------------------------------------------------
@predicate("hook", "True when the hook being served is one of the list.")
def _hook(args: Any, ctx: CompileContext) -> Node:
    hooks = args if isinstance(args, list) else [args]
    return Leaf("hook", lambda env, a: Result(env.facts.hook in a["hooks"]), {"hooks": tuple(hooks)}, set())


@predicate("jurisdiction", "True when the site's jurisdiction is one of the list (US, CA, UK, NO …).")
def _jurisdiction(args: Any, ctx: CompileContext) -> Node:
    codes = args if isinstance(args, list) else [args]
    return Leaf(
        "jurisdiction", lambda env, a: Result(env.jurisdiction in a["codes"]), {"codes": tuple(codes)}, set()
    )


# -- demographics -------------------------------------------------------------------------------
@predicate(
    "age",
    "Age in whole years at the hook's time compared with gt/gte/lt/lte/eq; unknown without a birth date.",
)
def _age(args: Any, ctx: CompileContext) -> Node:
    a = _args(args, COMPARATORS)
    a = {k: ctx.number(a, k) for k in a}

    def run(env: Env, a: dict[str, Any]) -> Result:
        age = env.facts.age
        if age is None:
            return Result(None, missing=[Missing("birth-date", "date of birth")])
        return Result(_compare(age, a), bind={"age": age}, reason=f"age {age}")

    return Leaf("age", run, a, set())


@predicate("sex", "Administrative gender equals the value (female, male); unknown when not recorded.")
def _sex(args: Any, ctx: CompileContext) -> Node:
    def run(env: Env, a: dict[str, Any]) -> Result:
        sex = env.facts.sex
        if sex is None:
            return Result(None, missing=[Missing("sex", "administrative sex")])
        return Result(sex == a["sex"], bind={"sex": sex})

    return Leaf("sex", run, {"sex": args}, set())


# -- conditions and procedures ------------------------------------------------------------------
@predicate(
    "condition", "A Condition in the value set: `active_only` (default false) restricts to active ones."
)
def _condition(args: Any, ctx: CompileContext) -> Node:
    a = _args(args, {"valueset", "active_only", "bind", "onset_within_days"}, {"valueset"})
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
            unreadable = env.facts.unreadable_conditions_in(vs)
            if unreadable:
                return Result(None, missing=[_unreadable_missing(env, vs, unreadable)])
        return Result(
            bool(found),
            bind={bind_as: [_condition_view(c) for c in found]} if found else {},
            evidence=[c.ref for c in found],
        )

    return Leaf(
        "condition",
        run,
        {"vs": vs, "active_only": active_only, "bind": bind_as, "recent": recent},
        {f"valueset:{vs}"},
    )


UNRESOLVED_MEDICATION = Missing(
    "unresolved-medication", "the drug of current medication records whose Medication could not be read"
)


def _unreadable_missing(env: Env, vs: str, refs: list[str]) -> Missing:
    """A relevant record that could not be read: the check cannot say 'absent'."""
    title = env.facts.t.valuesets[vs].title
    return Missing("unreadable-record", f"a readable record of {title} ({', '.join(refs[:3])} malformed)")


def concept_name(concept: Any, fallback: str = "") -> str:
    """A CodeableConcept's name, once: its text, else its first display (never both joined)."""
    if isinstance(concept, dict):
        if isinstance(concept.get("text"), str) and concept["text"].strip():
            return concept["text"].strip()
        for c in concept.get("coding") or []:
            if isinstance(c, dict) and isinstance(c.get("display"), str) and c["display"].strip():
                return c["display"].strip()
    return fallback


def _condition_view(c: Any) -> dict[str, Any]:
    return {
        "text": concept_name(c.concept, once(c.text)) or "condition (no name recorded)",
        "active": c.active,
        "onset": c.onset.isoformat() if c.onset else None,
        "ref": c.ref,
    }


@predicate("procedure", "A Procedure in the value set was performed (`within_days` optional).")
def _procedure(args: Any, ctx: CompileContext) -> Node:
    a = _args(args, {"valueset", "within_days"}, {"valueset"})
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


# -- observations -------------------------------------------------------------------------------
@predicate(
    "observation",
    "The latest observation of a kind within `within_days`/`within_hours`, compared with "
    "gt/gte/lt/lte/eq, or `positive: true` for a coded positive answer. Unknown when there is none.",
)
def _observation(args: Any, ctx: CompileContext) -> Node:
    a = _args(
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

    def holds(env: Env, obs: ObservationFact) -> bool | None:
        if positive is not None:
            hit = obs.code in env.facts.positive_answers.get(kind, set()) or positive_text(obs.text)
            return hit == bool(positive)
        return None if obs.value is None else _compare(obs.value, spec)

    def run(env: Env, _a: dict[str, Any]) -> Result:
        # A preliminary reading newer than the latest final one is a signal: it can make the
        # condition true (and says it is preliminary), never false.
        for p in env.facts.preliminary(kind, within_days=window):
            if holds(env, p):
                return Result(True, bind={kind: _obs_view(p)}, evidence=[p.ref], reason="preliminary reading")
        obs = env.facts.latest(kind, within_days=window)
        if obs is None:
            return Result(None, missing=[Missing(kind, label)]) if ask else Result(False)
        verdict = holds(env, obs)
        if verdict is None:
            return Result(None, missing=[Missing(kind, label)]) if ask else Result(False)
        return Result(verdict, bind={kind: _obs_view(obs)}, evidence=[obs.ref])

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
    a = _args(args, {"kind", "within_days", "label"}, {"kind"})
    kind = ctx.kind(a["kind"], ("kind",))
    within = ctx.number(a, "within_days")
    label = a.get("label") or _window_label(kind, within)

    def run(env: Env, _a: dict[str, Any]) -> Result:
        obs = env.facts.latest(kind, within_days=within)
        if obs is None:
            return Result(None, missing=[Missing(kind, label)])
        return Result(True, bind={kind: _obs_view(obs)}, evidence=[obs.ref])

    return Leaf("has_observation", run, {"kind": kind, "within": within}, {f"observation:{kind}"})


def _window_label(kind: str, days: float | None) -> str:
    name = kind.replace("_", " ")
    if days is None:
        return name
    if days < 1:
        return f"{name} within the last {round(days * 24)} hours"
    return f"{name} within the last {days:g} days"


# How clinicians write a measured value, by unit: blood pressure, rates and saturation in whole
# numbers, weight to 0.1 kg; anything else to at most 2 decimals (3 significant digits above 10).
WHOLE_UNITS = {"mm[hg]", "mmhg", "/min", "%", "{beats}/min", "{breaths}/min", "beats/min", "breaths/min"}
TENTH_UNITS = {"kg", "cm", "[degf]", "cel"}


def clinical_number(value: float | None, unit: str | None = None) -> int | float | None:
    """98.32605215136181 kg → 98.3; 151.86292759932016 mmHg → 152."""
    if value is None:
        return None
    u = (unit or "").strip().lower()
    if u in WHOLE_UNITS:
        return int(round(value))
    if u in TENTH_UNITS:
        return num(round(value, 1))
    return num(round(value, 1) if abs(value) >= 10 else round(value, 2))


def once(text: str) -> str:
    """ "Pregnant Pregnant" → "Pregnant": a concept's text and display joined when they are equal."""
    words = (text or "").split()
    half = len(words) // 2
    if words and len(words) % 2 == 0 and words[:half] == words[half:]:
        return " ".join(words[:half])
    return text


def _obs_view(o: ObservationFact) -> dict[str, Any]:
    return {
        "value": clinical_number(o.value, o.unit),
        "unit": o.unit,
        "date": o.when.date().isoformat(),
        "text": once(o.text),
        "ref": o.ref,
        "preliminary": o.preliminary,
    }


# -- medications --------------------------------------------------------------------------------
def num(value: float | None) -> int | float | None:
    """56.0 → 56, so card text reads like a person wrote it."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() else round(value, 2)


def drug_name(u: MedUse) -> str:
    """What the record calls the drug, once: the concept's text, else its first display.

    (The matcher's text joins text and displays, which repeats the name when they are equal.)"""
    concept = u.resource.get("medicationCodeableConcept") if isinstance(u.resource, dict) else None
    return concept_name(concept)[:80] or u.describe()


def _med_view(env: Env, u: MedUse) -> dict[str, Any]:
    t = env.facts.t
    return {
        "name": drug_name(u),
        "ingredients": ", ".join(sorted(t.display(i) for i in u.drug.ingredients)),
        "dose": clinical_number(u.dose, u.dose_unit),
        "dose_unit": u.dose_unit,
        "route": u.route,
        "infusion_minutes": u.infusion_minutes,
        "matched_by": u.drug.matched_by,
        "ref": u.ref,
        "start": u.start.isoformat() if u.start else None,
        "ordered_together": u.kind == "draft",
    }


@predicate(
    "order",
    "A current order (draft, or selected for order-select) is in the medication value set; "
    "`routes` optional.",
)
def _order(args: Any, ctx: CompileContext) -> Node:
    a = _args(args, {"valueset", "routes", "bind"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    routes = tuple(ctx.value(a.get("routes")) or ())
    bind_as = a.get("bind")  # another name, for a second drug ordered in the same request

    def run(env: Env, _a: dict[str, Any]) -> Result:
        found = [o for o in env.facts.orders_in(vs) if not routes or o.route in routes]
        if not found:
            unreadable = env.facts.unreadable_orders_in(vs)
            if unreadable:  # an order of this drug that cannot be read is not "no order"
                return Result(None, missing=[_unreadable_missing(env, vs, unreadable)])
            return Result(False)
        views = [_med_view(env, o) for o in found]
        bind = {bind_as: views} if bind_as else {"order": views[0], "orders": views}
        return Result(True, bind=bind, evidence=[o.ref for o in found])

    return Leaf("order", run, {"vs": vs, "routes": routes, "bind": bind_as}, {f"valueset:{vs}"})


@predicate(
    "order_route_unknown",
    "A matching order whose route cannot be read (so a route-specific check cannot run).",
)
def _order_route_unknown(args: Any, ctx: CompileContext) -> Node:
    a = _args(args, {"valueset"}, {"valueset"})
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
    a = _args(args, {"valueset", "grace_days", "bind"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    grace = ctx.number(a, "grace_days", 0)
    bind_as = a.get("bind", "meds")

    def run(env: Env, _a: dict[str, Any]) -> Result:
        found = env.facts.active_uses(vs, grace_days=int(grace)) + env.facts.drafts_in(vs)
        if not found:
            unreadable = env.facts.unreadable_medications_in(vs)
            if unreadable:
                return Result(None, missing=[_unreadable_missing(env, vs, unreadable)])
            if env.facts.unresolved_in_effect(int(grace)):  # some current drug is not known at all
                return Result(None, missing=[UNRESOLVED_MEDICATION])
            return Result(False)
        seen: dict[str, dict[str, Any]] = {}
        for u in found:
            view = _med_view(env, u)
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
    a = _args(
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
                return Result(None, missing=[_unreadable_missing(env, vs, unreadable)])
            return Result(False)
        # one entry per ingredient (its request, dispenses and statements describe one use):
        # the highest daily dose any record gives
        by_ingredient: dict[str, dict[str, Any]] = {}
        open_: dict[str, str] = {}
        for u in uses:
            name = drug_name(u)
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
            return Result(bool(open_) and not (cmp and _compare(total, cmp)), bind=bind, evidence=refs)
        return Result(bool(parts) and _compare(total, cmp), bind=bind, evidence=refs)

    return Leaf(
        "diazepam_equivalent",
        run,
        {"vs": vs, "table": repr(sorted(table.items())), "grace": grace, "unassessed": unassessed, **cmp},
        {f"valueset:{vs}"},
    )


@predicate(
    "ketamine_course", "Administrations of the value set's drugs within `within_days` (a course in progress)."
)
def _ketamine_course(args: Any, ctx: CompileContext) -> Node:
    a = _args(args, {"valueset", "within_days"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    within = ctx.number(a, "within_days", 45)

    def run(env: Env, _a: dict[str, Any]) -> Result:
        recent = [s for s in env.facts.sessions(vs) if s.start and (env.facts.today - s.start).days <= within]
        active_orders = env.facts.active_uses(vs)
        if not recent and not active_orders:
            return Result(False)
        return Result(
            True,
            bind={"course_sessions": len(recent)},
            evidence=[s.ref for s in recent] + [u.ref for u in active_orders],
        )

    return Leaf("ketamine_course", run, {"vs": vs, "within": within}, {f"valueset:{vs}"})


@predicate("text_matched_order", "An order of the value set was recognised by its name, not its code.")
def _text_matched(args: Any, ctx: CompileContext) -> Node:
    a = _args(args, {"valueset"}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))

    def run(env: Env, _a: dict[str, Any]) -> Result:
        found = [o for o in env.facts.orders_in(vs) if o.drug.matched_by == "text"]
        return Result(
            bool(found),
            bind={"text_orders": [_med_view(env, o) for o in found]},
            evidence=[o.ref for o in found],
        )

    return Leaf("text_matched_order", run, {"vs": vs}, {f"valueset:{vs}"})


# -- dosing -------------------------------------------------------------------------------------
# A weight outside this range is a recording error, not a patient: the mg/kg check asks again.
MIN_WEIGHT_KG, MAX_WEIGHT_KG = 1.0, 400.0


@predicate(
    "dose_per_kg",
    "Dose of an order of the value set per kg body weight (weight no older than `weight_within_days`), "
    "compared with gt/gte/lt/lte; unknown without a recent weight or a dose in mg.",
)
def _dose_per_kg(args: Any, ctx: CompileContext) -> Node:
    a = _args(args, {"valueset", "routes", "weight_within_days", *COMPARATORS}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    routes = tuple(ctx.value(a.get("routes")) or ())
    within = ctx.number(a, "weight_within_days", 30)
    cmp = {k: ctx.number(a, k) for k in COMPARATORS if k in a}

    def run(env: Env, _a: dict[str, Any]) -> Result:
        orders = [o for o in env.facts.orders_in(vs) if not routes or o.route in routes]
        if not orders:
            return Result(False)
        weight = env.facts.latest("weight", within_days=within)
        if weight is not None and weight.value is None:  # recorded in a unit that cannot be read as kg
            return Result(None, missing=[Missing("weight", "body weight in a known unit (kg, g, lb, oz)")])
        if weight is not None and not (weight.value and MIN_WEIGHT_KG <= weight.value <= MAX_WEIGHT_KG):
            return Result(
                None, missing=[Missing("weight", f"a plausible body weight (recorded: {weight.value})")]
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
                        None, missing=[Missing("weight", f"body weight within the last {within:g} days")]
                    )
                per_kg = o.dose / weight.value
                mg = o.dose
            results.append((o, per_kg, mg))
        o, per_kg, mg = max(results, key=lambda r: r[1])
        bind = {
            "dose_mg": clinical_number(mg, "mg") if mg is not None else None,
            "dose_mg_per_kg": num(round(per_kg, 2)),
            "weight": _obs_view(weight) if weight else None,
            "order": _med_view(env, o),
        }
        evidence = [o.ref] + ([weight.ref] if weight else [])
        return Result(_compare(per_kg, cmp), bind=bind, evidence=evidence)

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
    a = _args(args, {"valueset", "routes", "not_in", *COMPARATORS}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    routes = tuple(ctx.value(a.get("routes")) or ())
    cmp = {k: ctx.number(a, k) for k in COMPARATORS if k in a}
    not_in = tuple(ctx.value(a.get("not_in")) or ())
    if any(not isinstance(v, int | float) or isinstance(v, bool) for v in not_in):
        raise CompileError("not_in must be a list of numbers", ("not_in",))

    def run(env: Env, _a: dict[str, Any]) -> Result:
        orders = [o for o in env.facts.orders_in(vs) if not routes or o.route in routes]
        if not orders:
            return Result(False)
        for o in orders:
            if o.dose is None or o.dose_unit != "mg":
                return Result(None, missing=[Missing("order-dose", "the dose in mg on the order")])
        hits = [
            o
            for o in orders
            if _compare(o.dose or 0, cmp)
            and (not not_in or all(abs((o.dose or 0) - v) > 1e-6 for v in not_in))
        ]
        top = max(orders, key=lambda o: o.dose or 0)
        return Result(
            bool(hits),
            bind={"dose_mg": num(top.dose), "order": _med_view(env, top)},
            evidence=[o.ref for o in orders],
        )

    return Leaf("dose_mg", run, {"vs": vs, "routes": routes, "not_in": not_in, **cmp}, {f"valueset:{vs}"})


@predicate(
    "infusion_minutes",
    "Infusion duration on an order of the value set compared with gt/gte/lt/lte; unknown when not stated.",
)
def _infusion_minutes(args: Any, ctx: CompileContext) -> Node:
    a = _args(args, {"valueset", "routes", *COMPARATORS}, {"valueset"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    routes = tuple(ctx.value(a.get("routes")) or ())
    cmp = {k: ctx.number(a, k) for k in COMPARATORS if k in a}

    def run(env: Env, _a: dict[str, Any]) -> Result:
        orders = [o for o in env.facts.orders_in(vs) if not routes or o.route in routes]
        if not orders:
            return Result(False)
        for o in orders:
            if o.infusion_minutes is None:
                return Result(None, missing=[Missing("infusion-time", "the infusion duration on the order")])
        shortest = min(orders, key=lambda o: o.infusion_minutes or 0)
        value = shortest.infusion_minutes or 0
        return Result(_compare(value, cmp), bind={"infusion_minutes": round(value)}, evidence=[shortest.ref])

    return Leaf("infusion_minutes", run, {"vs": vs, "routes": routes, **cmp}, {f"valueset:{vs}"})


@predicate(
    "first_session",
    "No administration of the value set's drugs before (the order would be day 1 of a course).",
)
def _first_session(args: Any, ctx: CompileContext) -> Node:
    a = _args(args, {"valueset", "course_gap_days"}, {"valueset"})
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
    a = _args(args, {"valueset", "phases", "course_gap_days"}, {"valueset", "phases"})
    vs = ctx.valueset(a["valueset"], "medication", ("valueset",))
    phases = ctx.value(a["phases"], ("phases",))
    gap = ctx.number(a, "course_gap_days", 60)
    if not isinstance(phases, list) or not phases:
        raise CompileError("phases must be a non-empty list", ("phases",))

    def run(env: Env, _a: dict[str, Any]) -> Result:
        orders = env.facts.orders_in(vs)
        if not orders:
            return Result(False)
        course = _current_course(env.facts.sessions(vs), env.facts.today, int(gap))
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


def _current_course(sessions: list[MedUse], today: date, gap_days: int) -> list[MedUse]:
    """The latest run of sessions with no gap longer than ``gap_days`` (ending no earlier than that)."""
    course: list[MedUse] = []
    last = today
    for s in reversed(sessions):
        if s.start is None or (last - s.start).days > gap_days:
            break
        course.append(s)
        last = s.start
    return list(reversed(course))


# -- treatment-resistant depression -------------------------------------------------------------
NON_RESPONSE_WORDS = (
    "inadequate response",
    "non-response",
    "nonresponse",
    "no response",
    "not respond",
    "lack of efficacy",
    "ineffective",
)
INTOLERANCE_WORDS = ("intoler", "side effect", "adverse", "nausea", "rash", "sexual dysfunction", "allerg")


@predicate(
    "trd",
    "Treatment-resistant depression from the medication record: at least `min_trials` distinct "
    "antidepressants (value set) tried in the current episode for at least `min_duration_days`, "
    "at an adequate dose where `adequate_doses` (mg/day by ingredient) says, and without a response "
    "(score improvement of at least `response_improvement_pct` on `score_kinds`). Ongoing trials and "
    "trials stopped for intolerance are listed but not counted.",
)
def _trd(args: Any, ctx: CompileContext) -> Node:
    allowed = {
        "valueset",
        "episode_valueset",
        "min_trials",
        "min_duration_days",
        "response_improvement_pct",
        "lookback_months",
        "adequate_doses",
        "adequate_doses_source",
        "score_kinds",
        "remission_below",
        "remission_days",
        "untreated_gap_days",
    }
    a = _args(args, allowed, {"valueset", "episode_valueset"})
    spec = {
        "vs": ctx.valueset(a["valueset"], "medication", ("valueset",)),
        "episode_vs": ctx.valueset(a["episode_valueset"], "condition", ("episode_valueset",)),
        "min_trials": ctx.number(a, "min_trials", 2),
        "min_days": ctx.number(a, "min_duration_days", 28),
        "response_pct": ctx.number(a, "response_improvement_pct", 25),
        "lookback_months": ctx.number(a, "lookback_months", 24),
        "doses": ctx.value(a.get("adequate_doses") or {}, ("adequate_doses",)),
        "score_kinds": tuple(ctx.value(a.get("score_kinds") or ["phq9", "madrs"])),
        "doses_source": ctx.value(
            a.get("adequate_doses_source") or "site dose table", ("adequate_doses_source",)
        ),
        "remission_below": ctx.value(a.get("remission_below") or {}, ("remission_below",)),
        "remission_days": ctx.number(a, "remission_days", 60),
        "untreated_gap_days": ctx.number(a, "untreated_gap_days", 365),
    }
    for k in spec["score_kinds"]:
        ctx.kind(k, ("score_kinds",))
    for k in spec["remission_below"]:
        ctx.kind(k, ("remission_below",))

    def run(env: Env, s: dict[str, Any]) -> Result:
        summary = assess_trd(env.facts, s)
        return Result(
            summary["met"],
            bind={"trd": summary},
            evidence=[r for t in summary["counted"] for r in t["refs"]],
            reason=f"{len(summary['counted'])} adequate failed trial(s)",
        )

    return Leaf("trd", run, spec, {f"valueset:{spec['vs']}", f"valueset:{spec['episode_vs']}"})


def assess_trd(facts: Facts, s: dict[str, Any]) -> dict[str, Any]:
    """Sort each antidepressant trial into counted / not counted, with the reason for each."""
    episodes = [c for c in facts.conditions_in(s["episode_vs"]) if c.active]
    onsets = [c.onset for c in episodes if c.onset]
    if onsets:
        episode_start, episode_basis = max(onsets), "onset of the recorded depressive episode"
    else:
        episode_start = facts.today - timedelta(days=int(s["lookback_months"] * 30.4))
        episode_basis = f"no episode onset recorded: looked back {s['lookback_months']:g} months"
    # DSM-5: episodes are separate when >= 2 months pass without meeting criteria. A recurrent-MDD
    # onset is often the first-ever diagnosis, so a later remission starts a new episode.
    remission = _last_remission(facts, s)
    earlier_episode = None
    if remission is not None and remission["end"] > episode_start:
        episode_start = remission["end"]
        episode_basis = f"after {remission['why']} (DSM-5: ≥ 2 months without an episode separates episodes)"
        earlier_episode = remission
    counted: list[dict[str, Any]] = []
    not_counted: list[dict[str, Any]] = []
    by_ingredient: dict[str, list[Trial]] = {}
    for trial in facts.trials(s["vs"]):
        by_ingredient.setdefault(trial.ingredient, []).append(trial)
    for ingredient, trials in by_ingredient.items():
        best: dict[str, Any] | None = None
        reasons: list[str] = []
        for t in trials:
            view = _trial_view(facts, t)
            if t.end < episode_start:
                if earlier_episode is not None:
                    reasons.append(
                        f"earlier episode: ended {t.end.isoformat()}, before {earlier_episode['why']}"
                    )
                else:
                    reasons.append(f"ended before the current episode ({episode_start.isoformat()})")
                continue
            attested = any(w in r.lower() for r in t.stop_reasons for w in NON_RESPONSE_WORDS)
            if t.ongoing and not attested:
                reasons.append(
                    f"ongoing ({t.weeks} wk): outcome not yet known (a clinician can attest non-response)"
                )
                continue
            if any(w in r.lower() for r in t.stop_reasons for w in INTOLERANCE_WORDS):
                reasons.append(f"stopped for intolerance after {t.days} d (intolerance is not resistance)")
                continue
            if t.days < s["min_days"]:
                reasons.append(f"{t.days} d is shorter than the adequate {s['min_days']:g} d")
                continue
            minimum = (s["doses"] or {}).get(ingredient)
            if minimum is not None and t.max_daily_dose is not None and t.max_daily_dose < minimum:
                reasons.append(
                    f"{num(t.max_daily_dose)} mg/day is below the minimal adequate dose of "
                    f"{num(minimum)} mg/day ({s['doses_source']})"
                )
                continue
            change = _score_change(facts, t, s["score_kinds"])
            if change is not None and change["improvement_pct"] >= s["response_pct"]:
                reasons.append(
                    f"{change['kind']} improved {change['improvement_pct']:.0f}% (response, not failure)"
                )
                continue
            view["dose_assessed"] = minimum is not None and t.max_daily_dose is not None
            view["dose_note"] = (
                f"dose ≥ {num(minimum)} mg/day ({s['doses_source']})"
                if view["dose_assessed"]
                else "dose not recorded: adequacy not assessed"
                if minimum is not None
                else f"not in the {s['doses_source']}: dose adequacy not rated"
            )
            view["outcome"] = (
                "clinician-attested non-response"
                if attested and change is None
                else f"{change['kind']} {change['start']}→{change['end']}"
                if change
                else "no scores recorded: failure presumed from the switch"
            )
            best = view
            break
        if best is not None:
            counted.append(best)
        else:
            last = _trial_view(facts, trials[-1])
            last["why"] = reasons[-1] if reasons else "not assessable"
            not_counted.append(last)
    counted.sort(key=lambda v: v["start"])
    not_counted.sort(key=lambda v: v["start"])
    return {
        "met": len(counted) >= s["min_trials"],
        "count": len(counted),
        "min_trials": s["min_trials"],
        "min_days": s["min_days"],
        "counted": counted,
        "not_counted": not_counted,
        "episode_start": episode_start.isoformat(),
        "episode_basis": episode_basis,
        "earlier_left_out": [v for v in not_counted if v["why"].startswith("earlier episode")],
        "text_matched": any(v["text_matched"] for v in counted + not_counted),
    }


def _last_remission(facts: Facts, s: dict[str, Any]) -> dict[str, Any] | None:
    """The latest stretch of >= ``remission_days`` without a depressive episode, if the record shows one.

    Evidence: consecutive scores below the remission threshold spanning that long, or a stretch with
    no antidepressant that has only remission scores in it (or, when ``untreated_gap_days`` long,
    no scores at all). Returns its end (the current episode's earliest start) and a sentence.
    """
    thresholds = s["remission_below"] or {}
    scores = sorted(
        (o.when.date(), kind, o.value)
        for kind in thresholds
        for o in facts.series(kind)
        if o.value is not None and o.when.date() <= facts.today
    )
    found: list[tuple[date, date, str]] = []
    run: list[tuple[date, str, float]] = []
    for day, kind, value in [*scores, (facts.today, "", float("inf"))]:
        if kind and value < thresholds[kind]:
            run.append((day, kind, value))
            continue
        if run and (run[-1][0] - run[0][0]).days >= s["remission_days"]:
            label = run[0][1].upper().replace("PHQ9", "PHQ-9")
            found.append(
                (
                    run[0][0],
                    run[-1][0],
                    f"remission from {run[0][0].isoformat()} to {run[-1][0].isoformat()} "
                    f"({label} below {num(thresholds[run[0][1]])} throughout)",
                )
            )
        run = []
    # stretches without any antidepressant
    trials = sorted(facts.trials(s["vs"]), key=lambda t: t.start)
    covered_until: date | None = None
    # each stretch off antidepressants ends at the next trial, or (after the last) at the first
    # score showing depression again, or today
    ends = [t.start for t in trials[1:]] + [facts.today] if trials else []  # no trials: no stretch
    for t, next_start in zip(trials, ends, strict=True):
        covered_until = max(covered_until or t.end, t.end)
        if any(u.start <= covered_until < u.end for u in trials if u is not t):
            continue
        depressed = [d for d, k, v in scores if covered_until < d <= next_start and v >= thresholds[k]]
        gap_start, gap_end = covered_until, min([next_start, *depressed])
        if (gap_end - gap_start).days >= s["remission_days"]:
            inside = [(d, k, v) for d, k, v in scores if gap_start < d < gap_end]
            days = (gap_end - gap_start).days
            if inside and all(v < thresholds[k] for _, k, v in inside):
                found.append(
                    (
                        gap_start,
                        gap_end,
                        f"{days // 30} months off antidepressants in remission "
                        f"({gap_start.isoformat()} to {gap_end.isoformat()})",
                    )
                )
            elif not inside and days >= s["untreated_gap_days"]:
                found.append(
                    (
                        gap_start,
                        gap_end,
                        f"{days // 30} months without antidepressants or depression "
                        f"scores ({gap_start.isoformat()} to {gap_end.isoformat()})",
                    )
                )
    if not found:
        return None
    start, end, why = max(found, key=lambda f: f[1])
    return {"start": start, "end": end, "why": why}


def _trial_view(facts: Facts, t: Trial) -> dict[str, Any]:
    return {
        "ingredient": t.ingredient,
        "name": facts.t.display(t.ingredient),
        "start": t.start.isoformat(),
        "end": None if t.ongoing else t.end.isoformat(),
        "weeks": t.weeks,
        "days": t.days,
        "ongoing": t.ongoing,
        "max_daily_dose": num(t.max_daily_dose),
        "refs": list(t.refs),
        "text_matched": t.text_matched,
    }


def _score_change(facts: Facts, t: Trial, kinds: tuple[str, ...]) -> dict[str, Any] | None:
    for kind in kinds:
        series = facts.series(kind)
        base = _nearest(series, t.start, before=21, after=7)
        end = _nearest(series, t.end, before=21, after=14)
        if base and end and base is not end and base.value and end.value is not None:
            pct = (base.value - end.value) / base.value * 100
            return {
                "kind": kind.upper().replace("PHQ9", "PHQ-9"),
                "start": f"{base.value:g}",
                "end": f"{end.value:g}",
                "improvement_pct": pct,
            }
    return None


def _nearest(series: list[ObservationFact], day: date, *, before: int, after: int) -> ObservationFact | None:
    best = None
    for o in series:
        delta = (o.when.date() - day).days
        if (
            -before <= delta <= after
            and o.value is not None
            and (best is None or abs(delta) < abs((best.when.date() - day).days))
        ):
            best = o
    return best


# -- line of therapy (local "sixth-line" pathway) -----------------------------------------------
@predicate(
    "pathway_steps",
    "Counts line-of-therapy steps from the record: failed trials in `ssri_valueset` (need `min_ssri`), "
    "an antidepressant of another class, an augmentation agent, a combination of two antidepressants "
    "overlapping `combination_days`, and ECT. True when every step is found.",
)
def _pathway(args: Any, ctx: CompileContext) -> Node:
    allowed = {
        "antidepressant_valueset",
        "ssri_valueset",
        "augmentation_valueset",
        "ect_valueset",
        "min_ssri",
        "combination_days",
        "min_duration_days",
    }
    a = _args(args, allowed, allowed - {"min_ssri", "combination_days", "min_duration_days"})
    spec = {
        "ad": ctx.valueset(a["antidepressant_valueset"], "medication", ("antidepressant_valueset",)),
        "ssri": ctx.valueset(a["ssri_valueset"], "medication", ("ssri_valueset",)),
        "aug": ctx.valueset(a["augmentation_valueset"], "medication", ("augmentation_valueset",)),
        "ect": ctx.valueset(a["ect_valueset"], "procedure", ("ect_valueset",)),
        "min_ssri": ctx.number(a, "min_ssri", 2),
        "combo": ctx.number(a, "combination_days", 28),
        "min_days": ctx.number(a, "min_duration_days", 28),
    }

    def run(env: Env, s: dict[str, Any]) -> Result:
        f = env.facts
        ad_trials = [t for t in f.trials(s["ad"]) if t.days >= s["min_days"]]
        ssri = {t.ingredient for t in f.trials(s["ssri"]) if t.days >= s["min_days"]}
        other = {t.ingredient for t in ad_trials} - ssri
        aug = {t.ingredient for t in f.trials(s["aug"]) if t.days >= s["min_days"]}
        combination = any(
            a.ingredient != b.ingredient and (min(a.end, b.end) - max(a.start, b.start)).days >= s["combo"]
            for i, a in enumerate(ad_trials)
            for b in ad_trials[i + 1 :]
        )
        ect = bool(f.procedures_in(s["ect"]))
        steps = {
            f"{s['min_ssri']:g} SSRIs": len(ssri) >= s["min_ssri"],
            "another antidepressant class": bool(other),
            "augmentation": bool(aug),
            "combination of antidepressants": combination,
            "ECT": ect,
        }
        done = [k for k, v in steps.items() if v]
        missing = [k for k, v in steps.items() if not v]
        return Result(not missing, bind={"pathway": {"done": done, "missing": missing, "count": len(done)}})

    return Leaf("pathway_steps", run, spec, {f"valueset:{spec['ad']}"})


# -- course tracking ----------------------------------------------------------------------------
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
    a = _args(args, allowed, {"valueset"})
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
        course = _current_course(env.facts.sessions(s["vs"]), env.facts.today, int(s["gap"]))
        if len(course) < s["min"]:
            return Result(False)
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


# -- data quality -------------------------------------------------------------------------------
@predicate("unreadable_resources", "Resources in the request that were malformed and skipped.")
def _unreadable(args: Any, ctx: CompileContext) -> Node:
    def run(env: Env, _a: dict[str, Any]) -> Result:
        # The problems found in what the rules read (this rule runs last); resources no rule
        # needed are never validated, so they cannot mislead anyone.
        f = env.facts
        _ = (f.patient, f.medication_uses, f.orders)
        problems = f.record.problems
        return Result(
            bool(problems),
            bind={
                "problems": [
                    {"resource": p.resource, "where": p.where, "message": p.message} for p in problems
                ]
            },
        )

    return Leaf("unreadable_resources", run, {}, set())
