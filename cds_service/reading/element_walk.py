"""The walk: one pass per resource over every element any fact reads in its type.

It returns the elements that failed (as node numbers: a :class:`~.reads.Reads` is readable when
none of its nodes failed) and what was ignored: elements no fact reads get only a shallow shape
check (known name, array or single value), reported as (element path, reason), never a value.

Per resource shape (the same keys with the same JSON types, as an EHR writes every patient's
resources) a plan is made once. The keys whose content a record repeats (a dispense's status,
drug code, days supply and sig, the same every month) are walked as one, remembered for the
request by their JSON, and across calls by their JSON without the patient's words or dates
(:mod:`.kept`, :mod:`.element_dates`); dates, references and notes are checked every time.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class

from .element_checks import BY_OK, LEAVES, SHAPE, fields_of
from .element_dates import APART, dated_dosage, undated_dosage
from .kept import MISS, Kept, key_of
from .raw import without_words
from .reads import COMPILED, REGISTRY, Reads, error_for

# Repeating backbone types (a drug's usual sig, the same on every refill): walked with the codes.
_REPEATING = frozenset({"Dosage", "MedicationAdministrationDosage"})


class _Table:
    """What the walk does with each key of one element (or the resource): for a key some fact
    reads, the leaves to check there and the table to walk below it; for any other key of the
    model, a shape check; a key the model lacks is reported."""

    __slots__ = ("actions", "kept", "name", "plans", "repeats", "report", "shared")

    def __init__(self, model: Any, report: bool, repeats: bool) -> None:
        self.name = model.__name__
        self.report = report  # False below an element read as a whole: its validation covers it
        self.repeats = repeats  # a backbone a record repeats as it is (a drug's usual sig)
        self.kept: Kept | None = None  # a resource's: what was found in its shared keys, by content
        # a resource's keys whose content a record repeats (status, drug code, days supply, the
        # sig): walked as one, remembered for the request by their JSON (see :func:`walk`)
        self.shared: frozenset[str] = frozenset()
        self.plans = Kept(1024)  # by the resource's shape: (keys, JSON types)
        # key -> whether it is an array, for an element no fact reads; for one a fact reads:
        # (leaves: ((ok, node), ...), step: (node, many, table) or None); no key: not an element
        self.actions: dict[str, bool | tuple[tuple[tuple[Callable[[Any], bool], int], ...], Any]] = {
            k: f.many for k, f in fields_of(model).items()
        }

    def read(self, key: str) -> tuple[tuple[tuple[Callable[[Any], bool], int], ...], Any]:
        act = self.actions.get(key)
        return act if isinstance(act, tuple) else ((), None)


@dataclass
class _Compiled:
    table: _Table
    reads: list[Reads]


_NODES: dict[str, dict[tuple[str, ...], int]] = {}


def _compiled(rtype: str) -> _Compiled | None:
    done = COMPILED.get(rtype)
    if done is not None:
        return done
    reads = REGISTRY.get(rtype)
    if not reads:
        return None
    model = get_fhir_model_class(rtype)
    nodes = _NODES.setdefault(rtype, {})  # numbers never change: a record may hold older ones

    def node(path: tuple[str, ...]) -> int:
        return nodes.setdefault(path, len(nodes))

    # every path any fact reads, as a tree: key -> ({leaf: node}, {step key: subtree} | None)
    root = _Table(model, report=True, repeats=False)
    whole: set[tuple[str, ...]] = set()  # element paths read as a whole
    for r in reads:
        for check in r.checks:
            prefix = tuple(s.key for s in check.steps)
            whole.update(prefix + (leaf.key,) for leaf in check.leaves)
    for r in reads:
        check_nodes = []
        for check in r.checks:
            mine: set[int] = set()
            table = root
            path: tuple[str, ...] = ()
            for step in check.steps:
                path += (step.key,)
                n = node(("step", *path))
                mine.add(n)
                leaves, below = table.read(step.key)
                if below is None:
                    kind = getattr(step.model, "__name__", "")
                    covered = not table.report or path in whole
                    sub = _Table(step.model, report=not covered, repeats=kind in _REPEATING)
                    below = (n, step.many, sub)
                    table.actions[step.key] = (leaves, below)
                table = below[2]
            for leaf in check.leaves:
                n = node(("leaf", *path, leaf.key))
                mine.add(n)
                leaves, below = table.read(leaf.key)
                if all(n != m for _, m in leaves):
                    leaves = (*leaves, (leaf.ok, n))
                table.actions[leaf.key] = (leaves, below)
            check_nodes.append(frozenset(mine))
        r.check_nodes = tuple(check_nodes)
        r.nodes = frozenset().union(*check_nodes)
    shareable = {leaf.ok for leaf in LEAVES.values() if leaf.shareable}
    shared = []
    for key, act in root.actions.items():
        if isinstance(act, tuple):
            leaves, step = act
            if all(ok in shareable for ok, _ in leaves) and (step is None or step[2].repeats):
                shared.append(key)
    root.shared = frozenset(shared)
    root.kept = Kept()
    done = COMPILED[rtype] = _Compiled(root, list(reads))
    return done


_NOTHING: tuple[frozenset[int], list[tuple[str, str]]] = (frozenset(), [])  # never changed


def walk(
    resource: dict[str, Any], rtype: str, memo: dict[Any, Any] | None = None
) -> tuple[frozenset[int], list[tuple[str, str]]]:
    """One pass over a resource: (the nodes, of any :class:`Reads` of ``rtype``, that fail; the
    ignored elements as (path, reason), a modifierExtension on the resource included).

    ``memo``: one request's own dict (:class:`~.record.PatientRecord`), where what the walk found in
    content the record repeats is remembered by that content; it dies with the request, so it
    may hold anything the record says. The elements whose content patients share (a dispense's
    status, drug code, days supply and sig) are walked as one (:func:`_shared`); the rest (dates,
    references) are checked one by one."""
    done = COMPILED.get(rtype) or _compiled(rtype)
    if done is None:
        return _NOTHING
    table = done.table
    # the plan of the resource's shape (its keys and their JSON types): its shape check is done
    shape = (tuple(resource), tuple(map(type, resource.values())))
    plan = table.plans.data.get(shape)
    if plan is None:  # a hit is not moved up: the shapes a site sends are few (first in, first out)
        plan = _plan_of(table, *shape)
        if plan is None:  # a key R4B does not define: the full walk reports it
            fail: list[int] = []
            out: list[tuple[str, str]] = []
            _walk(resource, table, "", fail, out, True, table.actions)
            return _result(resource, fail, out)
        table.plans.put(shape, plan)
    fails: tuple[int, ...] = ()
    ignored: tuple[tuple[str, str], ...] = plan.ignored
    if plan.values is not None:  # the content a record repeats: once per request, by its JSON
        values = plan.values(resource)
        try:
            content: bytes | None = orjson.dumps(values)
        except (TypeError, orjson.JSONEncodeError):
            content = None  # not JSON (a caller's own dict): walked, nothing remembered
        key = (plan.number, content)
        found = memo.get(key) if memo is not None and content is not None else None
        if found is None:
            found = _shared(resource, plan, table, values, content)
            if memo is not None and content is not None:
                memo[key] = found
        fails, inner = found
        if inner:
            ignored = (*ignored, *inner)
    for k, fast, model_ok, n, act in plan.rest:  # dates, references: one by one, every time
        value = resource[k]
        if fast is not None:
            if not fast(value) and not model_ok(value):
                fails = (*fails, n)
            continue
        more_fail: list[int] = []
        more_out: list[tuple[str, str]] = []
        _read(k, value, act, "", more_fail, more_out)
        if more_fail:
            fails = (*fails, *more_fail)
        if more_out:
            ignored = (*ignored, *more_out)
    if not fails and not ignored and "modifierExtension" not in resource:
        return _NOTHING
    return _result(resource, fails, ignored)


def _result(
    resource: dict[str, Any], fails: Any, ignored: Any
) -> tuple[frozenset[int], list[tuple[str, str]]]:
    ignored = list(ignored)
    if "modifierExtension" in resource:
        ignored.append(("modifierExtension", "not understood"))
    if not fails and not ignored:
        return _NOTHING
    return frozenset(fails), ignored


_NONE = type(None)


class _Plan:
    """How to walk resources of one shape (the same keys, in order, with the same JSON types): an
    EHR writes every patient's resources the same way, so this is worked out once per shape.

    It holds what the shape check alone finds (an array where one value goes), the keys whose
    content patients share (looked up together by their JSON), and the other keys facts read."""

    __slots__ = ("dated", "ignored", "number", "rest", "shared", "values")

    def __init__(self) -> None:
        self.ignored: tuple[tuple[str, str], ...] = ()
        self.shared: tuple[str, ...] = ()
        self.values: Callable[[dict[str, Any]], Any] | None = None  # the shared keys' values
        self.dated: tuple[str, ...] = ()  # dosages among them (which may hold the patient's dates)
        # (key, fast check, model check, node, action): the other keys facts read; the checks
        # are None for a key with more than one plain leaf (the action is walked then)
        self.rest: tuple[tuple[str, Any, Any, int, Any], ...] = ()
        self.number = next(_PLAN_NUMBERS)


_PLAN_NUMBERS = itertools.count()


def _plan_of(table: _Table, keys: tuple[str, ...], types: tuple[type, ...]) -> _Plan | None:
    """The plan for one shape; None when a key is not an element of R4B (such a key may be free
    text: never kept, the full walk reports it)."""
    plan = _Plan()
    ignored, shared, rest = [], [], []
    actions = table.actions
    for key, kind in zip(keys, types, strict=True):
        act = actions.get(key)
        if act is None:
            if key == "resourceType":
                continue
            return None
        if kind is _NONE:
            continue
        if act is True or act is False:
            if (kind is list) is not act:
                ignored.append((key, SHAPE[act]))
        elif key in table.shared:
            if act[1] is not None:
                plan.dated += (key,)
            shared.append(key)
        else:
            leaves, step = act
            leaf = BY_OK[leaves[0][0]] if len(leaves) == 1 and step is None else None
            if leaf is not None and not leaf.modifiable and leaf.kept is None:
                rest.append((key, leaf.present, leaf.model_ok, leaves[0][1], act))
            else:
                rest.append((key, None, None, -1, act))
    plan.ignored, plan.shared, plan.rest = tuple(ignored), tuple(shared), tuple(rest)
    if len(shared) > 1:
        plan.values = operator.itemgetter(*shared)
    elif shared:
        plan.values = lambda r, k=shared[0]: (r[k],)
    return plan


def _shared(
    resource: dict[str, Any], plan: _Plan, table: _Table, values: tuple[Any, ...], content: bytes | None
) -> tuple[tuple[int, ...], tuple[tuple[str, str], ...]]:
    """What the walk finds in the keys whose content patients share, kept across calls by their
    JSON without the patient's words (:func:`~.raw.without_words`); a dosage holding the patient's
    own dates (a period of use) is left out of that key and walked apart, every time."""
    apart: list[str] = []
    if plan.dated:
        undated: dict[str, Any] = {}
        for k in plan.dated:
            if dated_dosage(resource[k]):
                plain = undated_dosage(resource[k])
                if plain is None:
                    apart.append(k)
                else:
                    undated[k] = plain
        if undated or apart:
            keyed = tuple(
                APART if k in apart else undated.get(k, v) for k, v in zip(plan.shared, values, strict=True)
            )
            words_free = key_of(keyed)
            if apart:
                values = tuple(APART if k in apart else v for k, v in zip(plan.shared, values, strict=True))
        else:
            words_free = None if content is None else without_words(content)
    else:
        words_free = None if content is None else without_words(content)
    kept = table.kept
    assert kept is not None  # a resource's table (the walk's root)
    found = MISS if words_free is None else kept.get((plan.number, words_free))
    if found is MISS:
        fail: list[int] = []
        out: list[tuple[str, str]] = []
        part = {k: v for k, v in zip(plan.shared, values, strict=True) if v is not APART}
        _walk(part, table, "", fail, out, True, table.actions)
        found = (tuple(fail), tuple(out))
        if words_free is not None and not fail and not out:  # what it found may be words or dates
            kept.put((plan.number, words_free), found)  # under a key R4B does not define: not kept
    if apart:
        fail, out = list(found[0]), list(found[1])
        for k in apart:
            _read(k, resource[k], table.actions[k], "", fail, out)
        found = (tuple(fail), tuple(out))
    return found  # type: ignore[no-any-return]


def _walk(
    obj: dict[str, Any],
    table: _Table,
    prefix: str,
    fail: list[int],
    out: list[tuple[str, str]],
    top: bool,
    actions: dict[str, Any],
) -> None:
    for key, value in obj.items():
        act = actions.get(key)
        if act is None:  # not an element of the model
            if table.report and not (top and key == "resourceType"):
                out.append((f"{prefix}{_name(key)}", "not an element of R4B " + table.name))
            continue
        if value is None:
            continue
        if act is True or act is False:  # an element no fact reads: its shape only
            if (type(value) is list) is not act and table.report:
                out.append((f"{prefix}{key}", SHAPE[act]))
            continue
        _read(key, value, act, prefix, fail, out)


def _read(key: str, value: Any, act: Any, prefix: str, fail: list[int], out: list[tuple[str, str]]) -> None:
    """Check an element some fact reads: its leaves, then what is read below it."""
    leaves, step = act
    for ok, n in leaves:
        if not ok(value):
            fail.append(n)
    if step is None:
        return
    n, many, below = step
    if (type(value) is list) is not many:
        fail.append(n)
        if below.report:  # not when the element is also read as a whole: validated as such
            out.append((f"{prefix}{key}", SHAPE[many]))
        return
    _walk_step(value, n, many, below, f"{prefix}{key}.", fail, out)


def _walk_step(
    value: Any, n: int, many: bool, below: _Table, prefix: str, fail: list[int], out: list[tuple[str, str]]
) -> None:
    for item in value if many else (value,):
        if type(item) is not dict:
            fail.append(n)
            continue
        if "modifierExtension" in item:
            fail.append(n)
        _walk(item, below, prefix, fail, out, False, below.actions)


def first_error(resource: dict[str, Any], reads: Reads) -> str | None:
    """:func:`error_for` after its own :func:`walk` (a record walks each resource once)."""
    return error_for(resource, reads, walk(resource, reads.rtype)[0])


def ignored_elements(resource: dict[str, Any], rtype: str) -> Counter[tuple[str, str]]:
    """Elements of a resource no fact reads whose shape is wrong, as (element path, reason) counts.

    Only a shallow check (a name R4B defines, an array where R4B wants one and only there), walked
    along the elements that facts read; the content of unread elements is never validated."""
    return Counter(walk(resource, rtype)[1])


_ELEMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _name(key: str) -> str:
    """An unknown key as reported: FHIR-name-shaped keys as they are, anything else (free text that
    might carry data) replaced, so a report never repeats what a sender put in a key."""
    return key if _ELEMENT_NAME.fullmatch(key) else "(a key that is not an element name)"
