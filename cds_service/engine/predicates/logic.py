"""Logic over conditions: all, any, not, assess and named definitions (ref).

Each node compiles to a closure over its children's evaluators (:meth:`Node.compile`), so a
rule's tree costs one plain call per node. Results are read-only: a node passes a child's
``bind``/``evidence``/``missing`` on as they are when only that child contributes.
"""

from __future__ import annotations

from typing import Any

from .core import (
    FALSE,
    TRUE,
    CompileContext,
    CompileError,
    Env,
    Evaluator,
    Missing,
    Node,
    Result,
    compile_node,
    predicate,
)

#: The memo key of a node that is not memoised: never in a request's cache.
NO_KEY = "\x02"


def _keyed(node: Node) -> tuple[str, Evaluator]:
    """A child's memo key (leaves and refs are memoised per request; its evaluator would look
    there first) and its evaluator: a parent looks the key up itself, saving a call per hit."""
    return getattr(node, "_key", NO_KEY), node.evaluator()


class All(Node):
    def __init__(self, children: list[Node]) -> None:
        self.children = children

    def compile(self) -> Evaluator:
        keyed = tuple(_keyed(c) for c in self.children)
        if len(keyed) == 2:  # the common shape (a gate, then the condition): no loop
            (k1, first), (k2, second) = keyed

            def all_2(env: Env) -> Result:
                cache = env.cache
                r1 = cache.get(k1) or first(env)
                if r1.value is False:
                    return FALSE if not r1.reason else Result(False, {}, [], [], r1.reason)
                r2 = cache.get(k2) or second(env)
                v2 = r2.value
                if v2 is False:
                    return FALSE if not r2.reason else Result(False, {}, [], [], r2.reason)
                if r1.value is True and v2 is True:  # _merge_all's answer, most often
                    c1 = bool(r1.bind or r1.evidence)
                    c2 = bool(r2.bind or r2.evidence)
                    if not c1 and not c2:
                        return TRUE
                    if c1 is not c2:
                        only = r1 if c1 else r2
                        if not only.reason and not only.missing:
                            return only
                return _merge_all((r1, r2))

            return all_2

        def all_(env: Env) -> Result:
            cache = env.cache
            results = []
            for key, fn in keyed:
                r = cache.get(key) or fn(env)
                if r.value is False:
                    return FALSE if not r.reason else Result(False, {}, [], [], r.reason)
                results.append(r)
            return _merge_all(results)

        return all_

    def needs(self) -> set[str]:
        return set().union(*(c.needs() for c in self.children))


def _merge_all(results: tuple[Result, ...] | list[Result]) -> Result:
    """All of children none of which is false: true, or unknown if any is unknown; what they
    bound and found, and what the unknown ones miss."""
    value: bool | None = True
    bind: dict[str, Any] | None = None
    evidence: list[str] | None = None
    missing: list[Missing] | None = None
    only: Result | None = None  # the one child that contributed anything, if only one did
    contributors = 0
    for r in results:
        contributed = False
        if r.value is None:
            value = None
            if r.missing:
                missing = r.missing if missing is None else [*missing, *r.missing]
                contributed = True
        if r.bind:
            bind = r.bind if bind is None else bind | r.bind
            contributed = True
        if r.evidence:
            evidence = r.evidence if evidence is None else [*evidence, *r.evidence]
            contributed = True
        if contributed:
            contributors += 1
            only = r
    if contributors == 0:
        return TRUE if value else Result(None, {}, [], [])
    if (  # what All would build from its one contributor is equal to that result
        contributors == 1
        and only is not None
        and only.value is value
        and not only.reason
        and (value is None or not only.missing)
    ):
        return only
    return Result(
        value,
        {} if bind is None else bind,
        [] if evidence is None else evidence,
        [] if missing is None else missing,
    )


class Any_(Node):
    def __init__(self, children: list[Node]) -> None:
        self.children = children

    def compile(self) -> Evaluator:
        keyed = tuple(_keyed(c) for c in self.children)
        if len(keyed) == 2:
            (k1, first), (k2, second) = keyed

            def any_2(env: Env) -> Result:
                cache = env.cache
                r1 = cache.get(k1) or first(env)
                r2 = cache.get(k2) or second(env)
                v1, v2 = r1.value, r2.value
                if v1 is True or v2 is True:
                    return _merge_any([r1, r2], (v1 is True) + (v2 is True))
                if v1 is None or v2 is None:
                    return Result(None, {}, [], [m for r in (r1, r2) if r.value is None for m in r.missing])
                return FALSE

            return any_2

        def any_(env: Env) -> Result:
            cache = env.cache
            results = []  # every branch: what the false ones find is context too
            hits = 0
            unknown = False
            for key, fn in keyed:
                r = cache.get(key) or fn(env)
                results.append(r)
                v = r.value
                if v is True:
                    hits += 1
                elif v is None:
                    unknown = True
            if hits:
                return _merge_any(results, hits)
            if unknown:
                return Result(None, {}, [], [m for r in results if r.value is None for m in r.missing])
            return FALSE

        return any_

    def needs(self) -> set[str]:
        return set().union(*(c.needs() for c in self.children))


def _merge_any(results: list[Result], hits: int) -> Result:
    """Any with a true branch: what the true branches bound, then the false ones (the first
    branch to bind a name wins; e.g. the other BP value), and what the true ones found."""
    true = [r for r in results if r.value is True]
    found = [r for r in results if r.value is False and r.bind]
    if hits == 1 and not found:
        (hit,) = true
        if not hit.reason and not hit.missing:  # what Any would build equals it
            return hit
    bind: dict[str, Any] = {}
    for r in true + found:
        for k, v in r.bind.items():
            bind.setdefault(k, v)
    return Result(True, bind, [e for r in true for e in r.evidence], [])


class Not(Node):
    def __init__(self, child: Node) -> None:
        self.child = child

    def compile(self) -> Evaluator:
        fn = self.child.evaluator()

        def not_(env: Env) -> Result:
            r = fn(env)
            if r.value is None:
                return Result(None, missing=r.missing)
            if not r.bind and not r.evidence:
                return FALSE if r.value else TRUE
            return Result(not r.value, bind=r.bind, evidence=r.evidence)

        return not_

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

    def compile(self) -> Evaluator:
        fn = self.child.evaluator()

        def assess(env: Env) -> Result:
            r = fn(env)
            if r.value is None:
                return Result(None, missing=r.missing)
            return Result(True, bind=r.bind, evidence=r.evidence, reason=r.reason)

        return assess

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
        self._key = f"\x01ref\x00{name}"  # never a Leaf's key (those start with a predicate name)

    def compile(self) -> Evaluator:
        key, name = self._key, self.ref

        def ref(env: Env) -> Result:
            cache = env.cache
            r = cache.get(key)
            if r is None:
                r = cache[key] = env.refs[name](env)
            return r

        return ref


@predicate("ref", "A named condition from rules/common.yaml `definitions` (evaluated once per request).")
def _ref(args: Any, ctx: CompileContext) -> Node:
    if args not in ctx.ref_names:
        raise CompileError(f"unknown definition {args!r}")
    return Ref(args)
