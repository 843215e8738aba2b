"""Predicates over the call's context (hook, jurisdiction) and the patient's demographics."""

from __future__ import annotations

from typing import Any

from ...reading.elements import Reads
from ...reading.facts import BIRTH_DATE, GENDER
from .core import (
    COMPARATORS,
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
def patient_gap(env: Env, reads: Reads, what: str, absent: Missing | None = None) -> Missing:
    """``absent`` when the Patient lacks the element; when it holds it but it cannot be read (a
    ``modifierExtension``, an invalid value), a gap saying what and why, by element name only
    (``unreadable:Patient``: the data-gaps card groups these apart from missing data). Without
    ``absent`` (an element whose absence is an answer, ``deceased[x]``) the gap is the unreadable one."""
    why = env.facts.patient_unreadable(reads)
    if why is None and absent is not None:
        return absent
    element = why or reads.paths[0]  # (why is known: callers ask only after the element failed)
    return Missing("unreadable:Patient", f"{what} — could not be read: Patient.{element.rstrip('.')}")


@predicate(
    "age",
    "Age in whole years at the hook's time compared with gt/gte/lt/lte/eq; unknown without a birth date.",
)
def _age(args: Any, ctx: CompileContext) -> Node:
    a = check_args(args, COMPARATORS)
    a = {k: ctx.number(a, k) for k in a}

    def run(env: Env, a: dict[str, Any]) -> Result:
        age = env.facts.age
        if age is None:
            low, high = env.facts.age_range
            if low is None or high is None:
                gap = patient_gap(env, BIRTH_DATE, "date of birth", Missing("birth-date", "date of birth"))
                return Result(None, missing=[gap])
            # a partial birth date: a verdict only when both possible ages agree
            verdict = compare(low, a)
            if verdict != compare(high, a):
                partial = Missing("birth-date-partial", "full date of birth (only part recorded)")
                return Result(None, missing=[partial])
            return Result(verdict, bind={"age": f"{low}–{high}"}, reason=f"age {low}–{high}")
        return Result(compare(age, a), bind={"age": age}, reason=f"age {age}")

    return Leaf("age", run, a, set())


@predicate("sex", "Administrative gender equals the value (female, male); unknown when not recorded.")
def _sex(args: Any, ctx: CompileContext) -> Node:
    def run(env: Env, a: dict[str, Any]) -> Result:
        sex = env.facts.sex
        if sex is None:
            gap = patient_gap(env, GENDER, "administrative sex", Missing("sex", "administrative sex"))
            return Result(None, missing=[gap])
        return Result(sex == a["sex"], bind={"sex": sex})

    return Leaf("sex", run, {"sex": args}, set())
