"""Logic over conditions: all, any, not, assess and named definitions (ref)."""

from __future__ import annotations

from typing import Any

from .core import CompileContext, CompileError, Env, Node, Result, compile_node, predicate


class All(Node):
    def __init__(self, children: list[Node]) -> None:
        self.children = children

    def __call__(self, env: Env) -> Result:
        value: bool | None = True
        bind: dict[str, Any] = {}
        evidence: list[str] = []
        missing: list[Any] = []
        for child in self.children:
            r = child(env)
            v = r.value
            if v is False:
                return Result(False, {}, [], [], r.reason)
            if v is None:
                value = None
                missing += r.missing
            if r.bind:
                bind.update(r.bind)
            if r.evidence:
                evidence += r.evidence
        return Result(value, bind, evidence, missing)

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
            bind: dict[str, Any] = {}
            for r in hits + misses:  # what the false branches found is context too (e.g. the other BP value)
                for k, v in r.bind.items():
                    bind.setdefault(k, v)  # the first branch to bind a name wins
            evidence = [e for r in hits for e in r.evidence]
            return Result(True, bind, evidence, [])
        if unknown:
            return Result(None, {}, [], [m for r in unknown for m in r.missing])
        return Result(False, {}, [], [])

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
        self._key = f"\x01ref\x00{name}"  # never a Leaf's key (those start with a predicate name)

    def __call__(self, env: Env) -> Result:
        r = env.cache.get(self._key)
        if r is None:
            r = env.cache[self._key] = env.refs[self.ref](env)
        return r


@predicate("ref", "A named condition from rules/common.yaml `definitions` (evaluated once per request).")
def _ref(args: Any, ctx: CompileContext) -> Node:
    if args not in ctx.ref_names:
        raise CompileError(f"unknown definition {args!r}")
    return Ref(args)
