"""The compiled rule engine answers exactly as the tree it was compiled from (issue 8: speed).

Rule trees are compiled once into closures that share a child's result instead of copying it
(``engine/predicates/logic.py``). These tests hold the compiled ``all``/``any``/``not``/``assess``
to the plain definitions of three-valued logic written out below (what the engine did before it
was compiled), over every combination of child answers that bind, find and miss things; and
check the shared constant answers cannot be changed by a consumer.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cds_service.engine.predicates import Env, Leaf, Missing, Result
from cds_service.engine.predicates.core import FALSE, TRUE
from cds_service.engine.predicates.logic import All, Any_, Assess, Not


# -- the reference: three-valued logic with fresh containers, as the engine had it ------------------
def ref_all(results: list[Result]) -> Result:
    value: bool | None = True
    bind: dict[str, Any] = {}
    evidence: list[str] = []
    missing: list[Missing] = []
    for r in results:
        if r.value is False:
            return Result(False, {}, [], [], r.reason)
        if r.value is None:
            value = None
            missing += r.missing
        bind.update(r.bind)
        evidence += r.evidence
    return Result(value, bind, evidence, missing)


def ref_any(results: list[Result]) -> Result:
    hits = [r for r in results if r.value is True]
    unknown = [r for r in results if r.value is None]
    misses = [r for r in results if r.value is False]
    if hits:
        bind: dict[str, Any] = {}
        for r in hits + misses:
            for k, v in r.bind.items():
                bind.setdefault(k, v)
        return Result(True, bind, [e for r in hits for e in r.evidence], [])
    if unknown:
        return Result(None, {}, [], [m for r in unknown for m in r.missing])
    return Result(False, {}, [], [])


def ref_not(r: Result) -> Result:
    if r.value is None:
        return Result(None, missing=r.missing)
    return Result(not r.value, bind=r.bind, evidence=r.evidence)


def ref_assess(r: Result) -> Result:
    if r.value is None:
        return Result(None, missing=r.missing)
    return Result(True, bind=r.bind, evidence=r.evidence, reason=r.reason)


def same(a: Result, b: Result) -> bool:
    return (
        a.value is b.value
        and dict(a.bind) == dict(b.bind)
        and list(a.evidence) == list(b.evidence)
        and list(a.missing) == list(b.missing)
        and a.reason == b.reason
    )


# -- child answers: every value, with and without bindings, evidence, missing data, a reason ----------
def answers() -> list[Result]:
    out = []
    for i, (value, bind, evidence, missing, reason) in enumerate(
        itertools.product(
            (True, False, None),
            ({}, {"x": 1}),
            ([], ["Observation/1"]),
            ([], [Missing("weight", "body weight")]),
            ("", "age 45"),
        )
    ):
        out.append(
            Result(value, {**bind, **({"k": i} if bind else {})}, list(evidence), list(missing), reason)
        )
    return out


ANSWERS = answers()


def leaf(r: Result, n: int) -> Leaf:
    return Leaf("hook", lambda env, a, r=r: r, {"n": n}, set())  # a context-only name: reads no key


class _Record:
    unread: dict[str, str] = {}


class _Facts:
    record = _Record()


def env() -> Env:
    return Env(_Facts(), "US", {})  # type: ignore[arg-type]


PAIRS = list(itertools.product(ANSWERS, ANSWERS))


@pytest.mark.parametrize("node_class,ref", [(All, ref_all), (Any_, ref_any)])
def test_two_children_answer_as_three_valued_logic(node_class, ref):
    for a, b in PAIRS:
        got = node_class([leaf(a, 1), leaf(b, 2)])(env())
        assert same(got, ref([a, b])), (a, b, got)


@pytest.mark.parametrize("node_class,ref", [(All, ref_all), (Any_, ref_any)])
def test_one_and_three_children(node_class, ref):
    for a in ANSWERS:
        assert same(node_class([leaf(a, 1)])(env()), ref([a])), a
    for a, b, c in itertools.islice(itertools.product(ANSWERS, repeat=3), 0, None, 7):
        got = node_class([leaf(a, 1), leaf(b, 2), leaf(c, 3)])(env())
        assert same(got, ref([a, b, c])), (a, b, c, got)


def test_the_same_answer_twice_counts_twice():
    # one definition used twice in a rule: its evidence and missing data appear twice, as before
    r = Result(None, {"x": 1}, ["Observation/1"], [Missing("weight", "body weight")])
    same_leaf = leaf(r, 1)
    got = All([same_leaf, same_leaf])(env())
    assert same(got, ref_all([r, r])) and len(got.missing) == 2


@pytest.mark.parametrize("node_class,ref", [(Not, ref_not), (Assess, ref_assess)])
def test_not_and_assess(node_class, ref):
    for a in ANSWERS:
        assert same(node_class(leaf(a, 1))(env()), ref(a)), a


def test_shared_constants_cannot_be_changed():
    for constant in (TRUE, FALSE):
        with pytest.raises(TypeError):
            constant.bind["x"] = 1  # type: ignore[index]
        with pytest.raises(AttributeError):
            constant.evidence.append("x")  # type: ignore[attr-defined]
        with pytest.raises(AttributeError):
            constant.missing.append(Missing("a", "b"))  # type: ignore[attr-defined]


def test_a_leaf_runs_once_per_request():
    calls = []

    def run(env: Env, a: dict[str, Any]) -> Result:
        calls.append(1)
        return Result(True, {"x": 1})

    node = Leaf("hook", run, {}, set())
    e = env()
    assert All([node, Any_([node, Not(node)])])(e).value is True
    assert len(calls) == 1
    node(env())  # a new request evaluates again
    assert len(calls) == 2
