"""The predicate machinery: results, the registry, compile context, memoised leaves.

Every predicate answers True, False or None (unknown: the record lacks what it needs). Unknown is
never read as "no problem": it carries the missing data so the rule can ask for it. Predicates
also bind what they found (the order, the drugs, the trial list …) for card templates and for the
explanation of why a card fired.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...reading.facts import Facts
from ..unread import keys_read, unread_keys


@dataclass(frozen=True, slots=True)
class Missing:
    """A piece of data a predicate needed and did not find (``id`` keys ``data_needs`` in
    ``rules/common.yaml``: its label and the order to suggest). ``specific``: the label says more
    than the generic data_needs one (a weight recorded in no known unit, a rule's own wording), so
    the data-gap card shows it instead. ``window``: how recent the data must be, as configured
    ("30 days", "24 hours"), for a data_needs label that says it (``{window}``). ``quality`` and
    ``why``: the data is there but not usable ("usable", "the latest has no unit"): the card says
    "a usable <label> — <why>", not that it is missing."""

    id: str
    label: str
    specific: bool = False
    window: str = ""
    quality: str = ""
    why: str = ""


@dataclass(slots=True)
class Result:
    """A predicate's answer. Read-only once returned: logic nodes and the per-request memo share
    a child's containers instead of copying them."""

    value: bool | None
    bind: dict[str, Any] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    reason: str = ""


def constant(value: bool | None, reason: str = "") -> Result:
    """A shared answer with nothing bound (what logic nodes return instead of a new one): its
    containers are immutable, so no consumer can change it for the next request."""
    return Result(value, MappingProxyType({}), (), (), reason)  # type: ignore[arg-type]


TRUE, FALSE = constant(True), constant(False)


def not_read(keys: list[str]) -> Result:
    """Unknown, because these prefetch keys could not be read (``data_needs`` ``not-read:<key>``)."""
    return Result(
        None, missing=[Missing(f"not-read:{k}", f"{k} (could not be retrieved from the EHR)") for k in keys]
    )


class CompileError(Exception):
    """A predicate written wrongly; ``path`` is relative to the predicate."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message, self.path = message, path


@dataclass(slots=True)
class Env:
    """What predicates see during one evaluation. ``refs``: the named definitions (nodes or
    their compiled evaluators); ``cache``: the request's memo of leaves and definitions;
    ``views``: of records (a drug ordered is shown by several rules, converted once)."""

    facts: Facts
    jurisdiction: str
    refs: Mapping[str, Callable[[Env], Result]]
    cache: dict[str, Result] = field(default_factory=dict)
    #: views of records built for card templates this request: id → (record, view)
    views: dict[int, tuple[Any, dict[str, Any]]] = field(default_factory=dict)


#: A compiled condition: one plain function call per node, no dispatch through ``__call__``.
Evaluator = Callable[[Env], Result]


class Node:
    """A condition. :meth:`compile` builds its evaluator once (closures over the children's
    evaluators and the compiled arguments); calling the node runs that evaluator."""

    name = ""
    _evaluator: Evaluator | None = None

    def compile(self) -> Evaluator:  # pragma: no cover - interface
        raise NotImplementedError

    def evaluator(self) -> Evaluator:
        fn = self._evaluator
        if fn is None:
            fn = self._evaluator = self.compile()
        return fn

    def __call__(self, env: Env) -> Result:
        return self.evaluator()(env)

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


def check_args(args: Any, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
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


_COMPARISONS = (
    ("gt", operator.gt),
    ("gte", operator.ge),
    ("lt", operator.lt),
    ("lte", operator.le),
    ("eq", operator.eq),
)


def compare(value: float, args: dict[str, Any]) -> bool:
    """Every bound given in ``args`` (gt, gte, lt, lte, eq) holds for ``value``."""
    for key, holds in _COMPARISONS:
        bound = args.get(key)
        if bound is not None and not holds(value, bound):
            return False
    return True


COMPARATORS = {"gt", "gte", "lt", "lte", "eq"}


class Leaf(Node):
    """A predicate over facts, memoised per request by its arguments."""

    def __init__(
        self, name: str, fn: Callable[[Env, dict[str, Any]], Result], args: dict[str, Any], needs: set[str]
    ) -> None:
        self.name, self.fn, self.args, self._needs = name, fn, args, needs
        self._key = f"{name}\x00{sorted(args.items())!r}"  # one string: its hash is computed once

    def compile(self) -> Evaluator:
        key, fn, args, name = self._key, self.fn, self.args, self.name
        if keys_read(name, args) == ():  # reads no prefetch key: an unread one cannot matter

            def leaf(env: Env) -> Result:
                cache = env.cache
                r = cache.get(key)
                if r is None:
                    r = cache[key] = fn(env, args)
                return r

            return leaf

        def leaf_reading(env: Env) -> Result:
            cache = env.cache
            r = cache.get(key)
            if r is None:
                r = fn(env, args)
                unread = env.facts.record.unread
                if unread:
                    keys = unread_keys(name, args, r.value, unread)
                    if keys:
                        r = not_read(keys)
                cache[key] = r
            return r

        return leaf_reading

    def needs(self) -> set[str]:
        return self._needs
