"""Declared reads: the elements of one resource type that a fact reads, compiled against R4B.

Each fact declares what it reads (:class:`Reads`); only those elements are validated
(:mod:`.element_walk`), and :func:`error_for` says which of them is invalid, naming elements,
never their values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from .element_checks import SHAPE, Field, Leaf, fields_of, leaf_for, modified, verdict

COMPILED: dict[str, Any] = {}  # element_walk's walk of each resource type, made when first used


@dataclass(frozen=True)
class _Check:
    path: str  # as declared, for messages ("dosageInstruction.doseAndRate")
    steps: tuple[Field, ...]  # intermediate complex elements walked to reach the leaf
    leaves: tuple[Leaf, ...]  # the element itself (several keys for a choice element ``value[x]``)


REGISTRY: dict[str, list[Reads]] = {}


class Reads:
    """The elements of one resource type that a fact reads, compiled against R4B at import.

    Paths are dotted from the resource: ``"status"``, ``"effective[x]"`` (every choice type),
    ``"dosageInstruction.doseAndRate"`` (arrays on the way are walked item by item). A path that
    R4B does not define raises ``ValueError`` at import, so a typo cannot pass silently.
    """

    def __init__(self, rtype: str, *paths: str, modifiers_ok: bool = False) -> None:
        self.rtype = rtype
        self.paths = paths
        # True: a modifierExtension on the resource itself does not make these elements unreadable
        # (a draft order's drug: the order being decided is checked as written; the extension is
        # reported as ignored)
        self.modifiers_ok = modifiers_ok
        self.checks = tuple(self._compile(p) for p in paths)
        self.nodes: frozenset[int] = frozenset()  # set when the type's walk is compiled
        self.check_nodes: tuple[frozenset[int], ...] = ()
        REGISTRY.setdefault(rtype, []).append(self)
        COMPILED.pop(rtype, None)  # the type's walk now has more to read: compiled again when used

    def __repr__(self) -> str:
        return f"Reads({self.rtype!r}, {', '.join(map(repr, self.paths))})"

    def _compile(self, path: str) -> _Check:
        model = get_fhir_model_class(self.rtype)
        *heads, last = path.split(".")
        steps = []
        for name in heads:
            f = fields_of(model).get(name)
            if f is None or f.model is None:
                raise ValueError(
                    f"{self.rtype}: {path}: {name!r} is not a complex element of {model.__name__}"
                )
            steps.append(f)
            model = f.model
        known = fields_of(model)
        if last.endswith("[x]"):
            stem = last[:-3]
            keys = [k for k in known if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]
        else:
            keys = [last] if last in known else []
        if not keys:
            raise ValueError(f"{self.rtype}: {path}: {model.__name__} has no element {last!r}")
        return _Check(path, tuple(steps), tuple(leaf_for(k, known[k]) for k in keys))


def all_reads() -> list[Reads]:
    """Every :class:`Reads` declared so far (for tests that check all of them)."""
    return [r for rs in REGISTRY.values() for r in rs]


MODIFIED = "a modifierExtension changes its meaning and is not understood here"


def error_for(resource: dict[str, Any], reads: Reads, failing: frozenset[int]) -> str | None:
    """Why an element ``reads`` names is not valid R4B, given what :func:`walk` found failing
    (``"dosageInstruction[0].timing.repeat.frequency: Input should be a valid integer"``), or None.
    Messages name elements, never their values. A ``modifierExtension`` on the resource, or on an
    element read or walked through, is an error too: FHIR forbids reading such an element as if
    it meant what it normally means."""
    if "modifierExtension" in resource and not reads.modifiers_ok:
        return f"modifierExtension: {MODIFIED}"
    if not failing or failing.isdisjoint(reads.nodes):
        return None
    for check, nodes in zip(reads.checks, reads.check_nodes, strict=True):  # in declared order
        if not failing.isdisjoint(nodes):
            return _locate(resource, check) or f"{check.path}: invalid"
    return None


def _locate(resource: dict[str, Any], check: _Check) -> str | None:
    """The message for a failing check, naming the element (the slow path)."""
    objects: list[tuple[str, dict[str, Any]]] = [("", resource)]
    for step in check.steps:
        nxt = []
        for where, obj in objects:
            value = obj.get(step.key)
            if value is None:
                continue
            here = f"{where}{step.key}"
            if step.many != isinstance(value, list):
                return f"{here}: {SHAPE[step.many]}"
            for i, item in enumerate(value if step.many else [value]):
                at = f"{here}[{i}]" if step.many else here
                if not isinstance(item, dict):
                    return f"{at}: expected an object"
                if "modifierExtension" in item:
                    return f"{at}.modifierExtension: {MODIFIED}"
                nxt.append((f"{at}.", item))
        objects = nxt
    for where, obj in objects:
        for leaf in check.leaves:
            if leaf.key in obj:
                error = verdict(leaf, obj[leaf.key])
                if error is not None:
                    return f"{where}{leaf.key}{error[0]}: {error[1]}"
                if modified(obj[leaf.key]):
                    return f"{where}{leaf.key}: {MODIFIED}"
    return None
