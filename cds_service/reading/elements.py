"""Element-level validation: check what a fact reads against FHIR R4B, tolerate the rest.

EHRs send slightly invalid FHIR every day (the CDS Hooks Sandbox writes ``MedicationRequest.category``
as one object instead of an array). A resource is therefore never judged as a whole: each fact
declares the elements it reads (:class:`Reads`), and only those are validated, each against the
``fhir.resources`` R4B type of that element (``Dosage.doseAndRate`` as ``DosageDoseAndRate``,
``Observation.effectiveDateTime`` as a ``dateTime``). An invalid element that a fact reads makes
that fact unknown; elements no fact reads get only a shallow shape check (known name, array or
single value), and what it finds is reported as *ignored* (resource type, element path, count:
never a value).

One pass per resource (:func:`walk`) does both, for every element any fact reads in that type of
resource: it returns the elements that failed (as node numbers) and what was ignored; a
:class:`Reads` is then readable when none of its nodes failed. Values are checked by
:mod:`.datatypes` (the model's own rules, no model built) and only what that cannot vouch for is
given to the R4B model, which also writes the message. Verdicts are kept across calls only for
content that different patients share (codes, quantities, a drug's usual dosage), in bounded LRU
tables; a date, a reference or a note is checked afresh every time.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import TypeAdapter, ValidationError

from . import datatypes
from .raw import without_words

# -- the R4B model, per element ---------------------------------------------------------------------


def _complex_model(item: Any) -> Any | None:
    """The model class behind a complex element type (``DosageType`` → ``Dosage``), else None."""
    get = getattr(item, "get_model_klass", None)
    return get() if callable(get) else None


@dataclass(frozen=True)
class _Field:
    key: str  # the JSON name
    many: bool
    model: Any | None  # the complex type's model class; None for a primitive
    annotation: Any


_FIELDS: dict[Any, dict[str, _Field]] = {}


def fields_of(model: Any) -> dict[str, _Field]:
    """Every JSON key a model allows (primitive extensions ``_x`` included), by key."""
    known = _FIELDS.get(model)
    if known is None:
        known = {}
        for name, info in model.model_fields.items():
            if name == "fhir_comments":
                continue
            key = info.alias or name
            many, item = datatypes._item_type(info.annotation)
            known[key] = _Field(key, many, _complex_model(item), info.annotation)
        _FIELDS[model] = known
    return known


# -- one element's verdict --------------------------------------------------------------------------
# Element types whose content real patients share (codes, units, a usual dose) and which never hold
# a date: their verdicts are kept by content. Everything else (dates, periods, references, notes,
# an observation's value) is checked afresh every time.
_SHARED = frozenset(
    {"CodeableConcept", "Coding", "Quantity", "Duration", "Ratio", "Range", "DosageDoseAndRate", "Timing"}
)
_SHARED_PRIMITIVES = frozenset({"code", "boolean"})  # statuses, intents, yes/no: what every patient has
VERDICT_LIMIT = 4096  # entries per LRU table


def touch(data: OrderedDict[Any, Any], key: Any) -> None:
    """Marks a hit as recently used. The tables are shared by a worker's threads: another one may
    have evicted the entry since this one read it, which only means it is no longer kept."""
    try:  # noqa: SIM105 - on every hit of the walk: contextlib.suppress costs a context manager
        data.move_to_end(key)
    except KeyError:
        pass


def key_of(v: Any) -> bytes | None:
    """The JSON an element's verdict is kept by, holding none of the patient's words
    (:func:`~.raw.without_words`: the verdict depends on a written string through the string check
    alone); None when that cannot be vouched for or the element is not JSON: it is then checked
    afresh and nothing is kept."""
    try:
        return without_words(orjson.dumps(v))
    except (TypeError, ValueError, orjson.JSONEncodeError):
        return None


class Kept:
    """Verdicts by content, a bounded LRU: a hit moves to the end, the least recently used entry
    leaves first (an ``OrderedDict``; the walk probes ``data`` itself, without a call). Shared by
    the threads of a worker: every step is one atomic dict operation, and a hit another thread
    evicted meanwhile is still the verdict it was (:func:`touch`)."""

    __slots__ = ("data", "limit")

    def __init__(self, limit: int = VERDICT_LIMIT) -> None:
        self.data: OrderedDict[Any, Any] = OrderedDict()
        self.limit = limit

    def get(self, key: Any) -> Any:
        hit = self.data.get(key, MISS)
        if hit is not MISS:
            touch(self.data, key)
        return hit

    def put(self, key: Any, value: Any) -> None:
        self.data[key] = value
        if len(self.data) > self.limit:
            self.data.popitem(last=False)


MISS = object()
_ALL_KEPT: list[Kept] = []


@dataclass(frozen=True, eq=False)
class _Leaf:
    """An element read as a whole, and how to check it."""

    key: str
    annotation: Any
    fast: datatypes.Check  # True: certainly valid (datatypes.py); False: ask the model
    kept: Kept | None  # content patients share: verdicts kept by the element's JSON
    shareable: bool  # content patients share (a kept type, or a code): may join a resource's key
    modifiable: bool  # its type allows a modifierExtension (which makes it unreadable)
    ok: Callable[[Any], bool]  # the walk's test of a present (non-null) value: _verdict(...) is None
    present: datatypes.Check  # ``fast`` for a present (non-null) value, without the null test

    def model_ok(self, value: Any) -> bool:
        return _model_verdict(self, value) is None


_LEAVES: dict[tuple[str, int], _Leaf] = {}
_BY_OK: dict[Callable[[Any], bool], _Leaf] = {}
_ADAPTERS: dict[int, TypeAdapter[Any]] = {}


def _leaf(key: str, field: _Field) -> _Leaf:
    found = _LEAVES.get((key, id(field.annotation)))
    if found is None:
        name = getattr(field.model, "__name__", "")
        modifiable = field.model is not None and "modifierExtension" in fields_of(field.model)
        fast = datatypes.compiled(field.annotation)
        kept = None
        # an observation's measured value is the patient's own (a coded answer is not)
        measured = key.startswith("value") and name not in ("CodeableConcept", "Coding")
        if name in _SHARED and not measured:
            kept = Kept()
            _ALL_KEPT.append(kept)
        holder: list[_Leaf] = []
        many, item_ok = datatypes.item_check(field.annotation)
        # never given None; a Timing may hold dates (event, repeat.bounds[x]): checked per value
        ok = _ok_function(holder, fast if many else item_ok, kept, modifiable, name == "Timing")
        shareable = kept is not None or datatypes.kind_of(field.annotation) in _SHARED_PRIMITIVES
        found = _Leaf(key, field.annotation, fast, kept, shareable, modifiable, ok, fast if many else item_ok)
        holder.append(found)
        _LEAVES[(key, id(field.annotation))] = found
        _BY_OK[ok] = found
    return found


def _ok_function(
    holder: list[_Leaf], fast: datatypes.Check, kept: Kept | None, modifiable: bool, dated: bool = False
) -> Callable[[Any], bool]:
    """The walk's test of one element, with as few calls in between as it can: the kept verdict
    by content, or the fast check of :mod:`.datatypes`; the model only when neither answers."""
    if kept is not None:
        data = kept.data

        def ok(v: Any) -> bool:
            if fast(v):  # certainly valid: no key to build, nothing kept
                return True
            if dated and _dated_timing(v):  # a timing with the patient's own dates: never kept
                return _model_verdict(holder[0], v) is None
            content = key_of(v)
            if content is None:
                return _model_verdict(holder[0], v) is None
            hit = data.get(content, MISS)
            if hit is MISS:
                hit = _model_verdict(holder[0], v) is None
                kept.put(content, hit)
            else:
                touch(data, content)
            return hit  # type: ignore[no-any-return]

    else:

        def ok(v: Any) -> bool:
            return fast(v) or _model_verdict(holder[0], v) is None

    if not modifiable:
        return ok
    return lambda v: ok(v) and not _modified(v)


def _model_verdict(leaf: _Leaf, value: Any) -> tuple[str, str] | None:
    """The R4B model's verdict: None when valid, else (location inside the element, message)."""
    adapter = _ADAPTERS.get(id(leaf.annotation))
    if adapter is None:
        adapter = _ADAPTERS[id(leaf.annotation)] = TypeAdapter(leaf.annotation)
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.get("loc", ()))
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return (loc, msg[:160])
    except (ValueError, TypeError, RecursionError) as exc:
        return ("", f"invalid ({type(exc).__name__})")
    return None


def _verdict(leaf: _Leaf, value: Any) -> tuple[str, str] | None:
    """None when ``value`` is valid for the element (absent counts as valid), else why not (for
    messages: the walk asks ``leaf.ok``, which answers the same without a message)."""
    if value is None or leaf.fast(value):
        return None
    return _model_verdict(leaf, value)


def _dated_timing(timing: Any) -> bool:
    """A Timing (or anything in its place) that holds the patient's own dates, or may."""
    if type(timing) is not dict:
        return timing is not None  # not a Timing at all: never kept (the model will say why)
    if "event" in timing:
        return True
    repeat = timing.get("repeat")
    return type(repeat) is dict and (
        "boundsPeriod" in repeat or "boundsDuration" in repeat or "boundsRange" in repeat
    )


_TIMING, _REPEAT = fields_of(get_fhir_model_class("Timing")), fields_of(get_fhir_model_class("TimingRepeat"))
#: the fast checks of a timing's dates (datatypes.py: True only when certainly valid)
_EVENTS = datatypes.compiled(_TIMING["event"].annotation)
_BOUNDS = {
    k: datatypes.compiled(_REPEAT[k].annotation) for k in ("boundsDuration", "boundsRange", "boundsPeriod")
}


def _modified(value: Any) -> bool:
    """A read element (or an item of it) that carries a modifierExtension."""
    if isinstance(value, dict):
        return "modifierExtension" in value
    return isinstance(value, list) and any(isinstance(v, dict) and "modifierExtension" in v for v in value)


# -- declared reads ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Check:
    path: str  # as declared, for messages ("dosageInstruction.doseAndRate")
    steps: tuple[_Field, ...]  # intermediate complex elements walked to reach the leaf
    leaves: tuple[_Leaf, ...]  # the element itself (several keys for a choice element ``value[x]``)


_REGISTRY: dict[str, list[Reads]] = {}


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
        _REGISTRY.setdefault(rtype, []).append(self)
        _TYPES.pop(rtype, None)  # the type's walk now has more to read: compiled again when used

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
        return _Check(path, tuple(steps), tuple(_leaf(k, known[k]) for k in keys))


def all_reads() -> list[Reads]:
    """Every :class:`Reads` declared so far (for tests that check all of them)."""
    return [r for rs in _REGISTRY.values() for r in rs]


# -- the walk, compiled per resource type -----------------------------------------------------------
# Repeating backbone types (a drug's usual sig, the same on every refill): walked with the codes.
_REPEATING = frozenset({"Dosage", "MedicationAdministrationDosage"})
_SHAPE = {True: "expected an array", False: "expected a single value, got an array"}


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
        # sig): walked as one, remembered for the request by their JSON (see :func:`_walk_planned`)
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


_TYPES: dict[str, _Compiled] = {}
_NODES: dict[str, dict[tuple[str, ...], int]] = {}


def _compiled(rtype: str) -> _Compiled | None:
    done = _TYPES.get(rtype)
    if done is not None:
        return done
    reads = _REGISTRY.get(rtype)
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
    shareable = {leaf.ok for leaf in _LEAVES.values() if leaf.shareable}
    shared = []
    for key, act in root.actions.items():
        if isinstance(act, tuple):
            leaves, step = act
            if all(ok in shareable for ok, _ in leaves) and (step is None or step[2].repeats):
                shared.append(key)
    root.shared = frozenset(shared)
    root.kept = Kept()
    done = _TYPES[rtype] = _Compiled(root, list(reads))
    return done


_NOTHING: tuple[frozenset[int], list[tuple[str, str]]] = (frozenset(), [])  # never changed


def walk(
    resource: dict[str, Any], rtype: str, memo: dict[Any, Any] | None = None
) -> tuple[frozenset[int], list[tuple[str, str]]]:
    """One pass over a resource: (the nodes, of any :class:`Reads` of ``rtype``, that fail; the
    ignored elements as (path, reason), a modifierExtension on the resource included).

    ``memo``: one request's own dict (:class:`~.record.PatientRecord`), where what the walk found in
    content the record repeats is remembered by that content; it dies with the request, so it
    may hold anything the record says."""
    done = _TYPES.get(rtype) or _compiled(rtype)
    if done is None:
        return _NOTHING
    table = done.table
    found = _walk_planned(resource, table, memo)
    if found is None:
        fail: list[int] = []
        out: list[tuple[str, str]] = []
        _walk(resource, table, "", fail, out, True, table.actions)
        found = (fail, out)
    fails, ignored = found
    if "modifierExtension" in resource:
        ignored = (*ignored, ("modifierExtension", "not understood"))
    if not fails and not ignored:
        return _NOTHING
    return frozenset(fails), list(ignored)


_NONE = type(None)
_APART = "(read apart)"  # in a key, where a dosage with the patient's own dates was


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
                ignored.append((key, _SHAPE[act]))
        elif key in table.shared:
            if act[1] is not None:
                plan.dated += (key,)
            shared.append(key)
        else:
            leaves, step = act
            leaf = _BY_OK[leaves[0][0]] if len(leaves) == 1 and step is None else None
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


def _walk_planned(
    resource: dict[str, Any], table: _Table, memo: dict[Any, Any] | None
) -> tuple[Any, Any] | None:
    """(failing nodes, ignored) by the plan of the resource's shape: the shape check is the plan's;
    the elements whose content a patient's resources repeat (a dispense's status, drug code, days
    supply and sig, the same every month) are walked as one and remembered for the request by
    their JSON in ``memo``; the rest (dates, references) are checked one by one. None when the
    resource has a key R4B does not define (the full walk reports it)."""
    shape = (tuple(resource), tuple(map(type, resource.values())))
    plans = table.plans.data
    plan = plans.get(shape)
    if plan is None:  # a hit is not moved up: the shapes a site sends are few (first in, first out)
        plan = _plan_of(table, *shape)
        if plan is None:
            return None
        table.plans.put(shape, plan)
    fails: tuple[int, ...] = ()
    out: tuple[tuple[str, str], ...] = plan.ignored
    if plan.values is not None:
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
            out = (*out, *inner)
    for key, fast, model_ok, n, act in plan.rest:
        value = resource[key]
        if fast is not None:
            if not fast(value) and not model_ok(value):
                fails = (*fails, n)
            continue
        more_fail: list[int] = []
        more_out: list[tuple[str, str]] = []
        _read(key, value, act, "", more_fail, more_out)
        if more_fail:
            fails = (*fails, *more_fail)
        if more_out:
            out = (*out, *more_out)
    return fails, out


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
            if _dated(resource[k]):
                plain = _undated(resource[k])
                if plain is None:
                    apart.append(k)
                else:
                    undated[k] = plain
        if undated or apart:
            keyed = tuple(
                _APART if k in apart else undated.get(k, v) for k, v in zip(plan.shared, values, strict=True)
            )
            words_free = key_of(keyed)
            if apart:
                values = tuple(_APART if k in apart else v for k, v in zip(plan.shared, values, strict=True))
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
        part = {k: v for k, v in zip(plan.shared, values, strict=True) if v is not _APART}
        _walk(part, table, "", fail, out, True, table.actions)
        found = (tuple(fail), tuple(out))
        if words_free is not None:
            kept.put((plan.number, words_free), found)
    if apart:
        fail, out = list(found[0]), list(found[1])
        for k in apart:
            _read(k, resource[k], table.actions[k], "", fail, out)
        found = (tuple(fail), tuple(out))
    return found  # type: ignore[no-any-return]


def _undated(value: Any) -> Any | None:
    """A dosage (or several) with its dates (``timing.event``, ``timing.repeat.bounds[x]``) as
    placeholders, for a key: when every such date is certainly valid (:mod:`.datatypes`), what the
    walk finds in the dosage is the same whichever valid dates it holds. None when one is not
    (the dosage is then walked apart, every time)."""
    out = []
    for item in value if type(value) is list else (value,):
        timing = item.get("timing") if type(item) is dict else None
        if timing is not None:
            if type(timing) is not dict:
                return None
            if "event" in timing:
                if not _EVENTS(timing["event"]):
                    return None
                timing = {**timing, "event": _APART}
            repeat = timing.get("repeat")
            if type(repeat) is dict:
                for k, ok in _BOUNDS.items():
                    if k in repeat:
                        if not ok(repeat[k]):
                            return None
                        repeat = {**repeat, k: _APART}
                timing = {**timing, "repeat": repeat}
            item = {**item, "timing": timing}
        out.append(item)
    return out if type(value) is list else out[0]


def _dated(value: Any) -> bool:
    """A dosage whose timing holds the patient's own dates (``event``, ``repeat.bounds[x]``)."""
    for item in value if type(value) is list else (value,):
        if type(item) is dict and _dated_timing(item.get("timing")):
            return True
    return False


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
                out.append((f"{prefix}{key}", _SHAPE[act]))
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
            out.append((f"{prefix}{key}", _SHAPE[many]))
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


# -- messages and the older entry points ------------------------------------------------------------
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


def first_error(resource: dict[str, Any], reads: Reads) -> str | None:
    """:func:`error_for` after its own :func:`walk` (a record walks each resource once)."""
    return error_for(resource, reads, walk(resource, reads.rtype)[0])


def ignored_elements(resource: dict[str, Any], rtype: str) -> Counter[tuple[str, str]]:
    """Elements of a resource no fact reads whose shape is wrong, as (element path, reason) counts.

    Only a shallow check (a name R4B defines, an array where R4B wants one and only there), walked
    along the elements that facts read; the content of unread elements is never validated."""
    return Counter(walk(resource, rtype)[1])


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
                return f"{here}: {_SHAPE[step.many]}"
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
                error = _verdict(leaf, obj[leaf.key])
                if error is not None:
                    return f"{where}{leaf.key}{error[0]}: {error[1]}"
                if _modified(obj[leaf.key]):
                    return f"{where}{leaf.key}: {MODIFIED}"
    return None


_ELEMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _name(key: str) -> str:
    """An unknown key as reported: FHIR-name-shaped keys as they are, anything else (free text that
    might carry data) replaced, so a report never repeats what a sender put in a key."""
    return key if _ELEMENT_NAME.fullmatch(key) else "(a key that is not an element name)"
