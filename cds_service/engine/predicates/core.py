"""The predicate machinery: results, the registry, compile context, memoised leaves.

Every predicate answers True, False or None (unknown: the record lacks what it needs). Unknown is
never read as "no problem": it carries the missing data so the rule can ask for it. Predicates
also bind what they found (the order, the drugs, the trial list …) for card templates and for the
explanation of why a card fired.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...reading.facts import Facts
from ..unread import unread_keys


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


@dataclass
class Env:
    """What predicates see during one evaluation."""

    facts: Facts
    jurisdiction: str
    refs: dict[str, Node]
    cache: dict[str, Result] = field(default_factory=dict)


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


def compare(value: float, args: dict[str, Any]) -> bool:
    checks = {
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
        "eq": lambda a, b: a == b,
    }
    return all(fn(value, args[k]) for k, fn in checks.items() if args.get(k) is not None)


COMPARATORS = {"gt", "gte", "lt", "lte", "eq"}


class Leaf(Node):
    """A predicate over facts, memoised per request by its arguments."""

    def __init__(
        self, name: str, fn: Callable[[Env, dict[str, Any]], Result], args: dict[str, Any], needs: set[str]
    ) -> None:
        self.name, self.fn, self.args, self._needs = name, fn, args, needs
        self._key = f"{name}\x00{sorted(args.items())!r}"  # one string: its hash is computed once

    def __call__(self, env: Env) -> Result:
        r = env.cache.get(self._key)
        if r is None:
            result = self.fn(env, self.args)
            unread = unread_keys(self.name, self.args, result.value, env.facts.record.unread)
            r = env.cache[self._key] = not_read(unread) if unread else result
        return r

    def needs(self) -> set[str]:
        return self._needs
