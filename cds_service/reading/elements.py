"""Element-level validation: check what a fact reads against FHIR R4B, tolerate the rest.

EHRs send slightly invalid FHIR every day (the CDS Hooks Sandbox writes ``MedicationRequest.category``
as one object instead of an array). A resource is therefore never judged as a whole: each fact
declares the elements it reads (:class:`Reads`), and only those are validated, each with the
``fhir.resources`` R4B type of that element (``Dosage.doseAndRate`` with ``DosageDoseAndRate``,
``Observation.effectiveDateTime`` with the ``dateTime`` primitive …). An invalid element that a fact
reads makes that fact unknown; elements no fact reads get only a shallow shape check (known name,
array or single value), and what it finds is reported as *ignored* (resource type, element path,
count: never a value).

Validation verdicts are cached by the element's content: codes, units and dosages repeat across
patients and hook calls, so most elements are checked once per process.
"""

from __future__ import annotations

import re
import types
import typing
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import TypeAdapter, ValidationError

# -- the R4B model, per element ---------------------------------------------------------------------


def _model(name: str) -> Any:
    return get_fhir_model_class(name)


def _item_type(annotation: Any) -> tuple[bool, Any]:
    """(is an array, the element's item type) of a field annotation such as Optional[List[X]]."""
    many = False
    t = annotation
    while True:
        origin = typing.get_origin(t)
        if origin is typing.Union or origin is types.UnionType:
            args = [a for a in typing.get_args(t) if a is not type(None)]
            t = args[0] if len(args) == 1 else t
            if len(args) != 1:
                return many, t
        elif origin is list:
            many = True
            t = typing.get_args(t)[0]
        else:
            return many, t


def _complex_model(item: Any) -> Any | None:
    """The model class behind a complex element type (``abc.DosageType`` → ``Dosage``), else None."""
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
            many, item = _item_type(info.annotation)
            known[key] = _Field(key, many, _complex_model(item), info.annotation)
        _FIELDS[model] = known
    return known


# -- declared reads ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Leaf:
    key: str
    adapter: TypeAdapter[Any]
    verdicts: dict[bytes | str, tuple[str, str] | None]  # the adapter's verdicts by content


@dataclass(frozen=True)
class _Plan:
    """Every check of a :class:`Reads` merged into one tree of keys, so the fast path walks a
    resource once and only along the keys it has (a set intersection picks them)."""

    keys: frozenset[str]
    leaves: dict[str, tuple[_Leaf, ...]]
    steps: dict[str, tuple[bool, _Plan]]  # key -> (is an array, what is read below it)
    # whether anything below fails, by the element's JSON; only for elements whose content real
    # patients share (a dosage: "300 mg oral three times daily"), None for the others (a BP
    # component's value, a period's dates: a new patient's differ, a table would only fill up)
    verdicts: dict[bytes, bool] | None
    # key -> (the leaves read there, (is an array, the plan below) or None): one probe per key
    actions: dict[str, tuple[tuple[_Leaf, ...], tuple[bool, _Plan] | None]]


@dataclass(frozen=True)
class _Check:
    path: str  # as declared, for messages ("dosageInstruction.doseAndRate")
    steps: tuple[_Field, ...]  # intermediate complex elements walked to reach the leaf
    leaves: tuple[_Leaf, ...]  # the element itself (several keys for a choice element ``value[x]``)


# Every element any fact reads, by resource type, as a tree of keys: the shallow check skips these.
_READ_TREE: dict[str, dict[str, Any]] = {}
_ADAPTERS: dict[int, TypeAdapter[Any]] = {}


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    key = id(annotation)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = TypeAdapter(annotation)
    return _ADAPTERS[key]


def _leaf(key: str, annotation: Any) -> _Leaf:
    adapter = _adapter(annotation)
    return _Leaf(key, adapter, _VERDICTS.setdefault(id(adapter), {}))


# Element types whose content repeats across patients (a drug's usual sig), worth a verdict table.
_REPEATING = frozenset({"Dosage", "MedicationAdministrationDosage"})


def _dated(check: _Check) -> bool:
    return any(leaf.key.startswith("bounds") for leaf in check.leaves)


def _plan(checks: tuple[_Check, ...], depth: int = 0, repeats: bool = False) -> _Plan:
    leaves: dict[str, list[_Leaf]] = {}
    below: dict[str, tuple[bool, bool, list[_Check]]] = {}
    for check in checks:
        if depth == len(check.steps):
            for leaf in check.leaves:
                leaves.setdefault(leaf.key, []).append(leaf)
        else:
            step = check.steps[depth]
            kind = getattr(step.model, "__name__", "")
            below.setdefault(step.key, (step.many, kind in _REPEATING, []))[2].append(check)
    steps = {
        # an element whose only reads are dates (timing.repeat.bounds[x]) never repeats: no table
        k: (many, _plan(tuple(cs), depth + 1, rep and not all(_dated(c) for c in cs)))
        for k, (many, rep, cs) in below.items()
    }
    verdicts: dict[bytes, bool] | None = None
    if repeats:
        verdicts = {}
        _STEP_VERDICTS.append(verdicts)
    read = {k: tuple(v) for k, v in leaves.items()}
    keys = frozenset(leaves) | frozenset(steps)
    actions = {k: (read.get(k, ()), steps.get(k)) for k in keys}
    return _Plan(keys, read, steps, verdicts, actions)


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
        self.plan = _plan(self.checks)

    def __repr__(self) -> str:
        return f"Reads({self.rtype!r}, {', '.join(map(repr, self.paths))})"

    def _compile(self, path: str) -> _Check:
        model = _model(self.rtype)
        tree = _READ_TREE.setdefault(self.rtype, {})
        *heads, last = path.split(".")
        steps = []
        node: dict[str, Any] | None = tree
        for name in heads:
            f = fields_of(model).get(name)
            if f is None or f.model is None:
                raise ValueError(
                    f"{self.rtype}: {path}: {name!r} is not a complex element of {model.__name__}"
                )
            steps.append(f)
            model = f.model
            # None: another fact reads this whole element, which covers everything below it
            node = node.setdefault(name, {}) if node is not None else None
        known = fields_of(model)
        if last.endswith("[x]"):
            stem = last[:-3]
            keys = [k for k in known if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]
        else:
            keys = [last] if last in known else []
        if not keys:
            raise ValueError(f"{self.rtype}: {path}: {model.__name__} has no element {last!r}")
        if node is not None:
            for k in keys:
                node[k] = None  # read as a whole: validated when read, never shallow-checked
        _ACTIONS.clear()
        return _Check(path, tuple(steps), tuple(_leaf(k, known[k].annotation) for k in keys))


# -- validation -------------------------------------------------------------------------------------
# Verdicts by element type (its adapter) and content: None when valid, else (location inside the
# element, message). Content is the string itself or the element's JSON: codes, units and dosages
# repeat across patients. Bounded: every table is emptied when together they hold _VERDICT_LIMIT
# (a dict probe is all a hit costs).
_VERDICTS: dict[int, dict[bytes | str, tuple[str, str] | None]] = {}
_VERDICT_LIMIT = 50_000
_STEP_VERDICTS: list[dict[bytes, bool]] = []  # each plan step's table (_Plan.verdicts)
_verdict_count = 0
_MISS = object()
_SHAPE = {True: "expected an array", False: "expected a single value, got an array"}


def _verdict(leaf: _Leaf, value: Any) -> tuple[str, str] | None:
    content: bytes | str | None
    if type(value) is str:
        content = value
    else:
        try:
            content = orjson.dumps(value)
        except (TypeError, ValueError, orjson.JSONEncodeError):
            content = None
    if content is not None:
        hit = leaf.verdicts.get(content, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
    error: tuple[str, str] | None = None
    try:
        leaf.adapter.validate_python(value)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.get("loc", ()))
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        error = (loc, msg[:160])
    except (ValueError, TypeError, RecursionError) as exc:
        error = ("", f"invalid ({type(exc).__name__})")
    if content is not None:
        _count_verdict()
        leaf.verdicts[content] = error
    return error


def _count_verdict() -> None:
    global _verdict_count
    if _verdict_count >= _VERDICT_LIMIT:
        for table in (*_VERDICTS.values(), *_STEP_VERDICTS):
            table.clear()
        _verdict_count = 0
    _verdict_count += 1


MODIFIED = "a modifierExtension changes its meaning and is not understood here"


def first_error(resource: dict[str, Any], reads: Reads) -> str | None:
    """Why an element ``reads`` names is not valid R4B (``"dosageInstruction[0].timing.repeat.frequency:
    Input should be a valid integer"``), or None. An absent element is not an error: the fact simply
    has no value for it. Messages name elements, never their values.

    A ``modifierExtension`` on the resource, or on an element read or walked through, is an error too:
    FHIR forbids reading such an element as if it meant what it normally means."""
    if "modifierExtension" in resource and not reads.modifiers_ok:
        return f"modifierExtension: {MODIFIED}"
    if not _fails(resource, reads.plan):
        return None
    for check in reads.checks:  # the first failing check, in the order the paths were declared
        if _check_fails(resource, check):
            return _locate(resource, check)
    return None


def _fails(obj: dict[str, Any], plan: _Plan) -> bool:
    """The fast path of :func:`first_error`: whether any check fails (no messages, no paths)."""
    actions = plan.actions
    for key in plan.keys & obj.keys():
        value = obj[key]
        leaves, step = actions[key]
        if leaves:
            if type(value) is str:  # most leaves: a code, a date (the verdict probe inlined)
                for leaf in leaves:
                    hit = leaf.verdicts.get(value, _MISS)
                    if hit is not None and (hit is not _MISS or _verdict(leaf, value) is not None):
                        return True
            else:
                for leaf in leaves:
                    if _verdict(leaf, value) is not None:
                        return True
                if _modified(value):
                    return True
        if step is not None and value is not None and _step_fails(value, *step):
            return True
    return False


def _step_fails(value: Any, many: bool, below: _Plan) -> bool:
    """Whether what is read inside one element fails (by the element's content when it was seen,
    for the element types in :data:`_REPEATING`)."""
    content: bytes | None = None
    if below.verdicts is not None:
        content = _content(value)  # None for timing.repeat.bounds[x]: the patient's own dates
        if content is not None:
            hit = below.verdicts.get(content)
            if hit is not None:
                return hit
    if many:
        fails = not isinstance(value, list) or any(
            not isinstance(item, dict) or "modifierExtension" in item for item in value
        )
        fails = fails or any(_fails(item, below) for item in value)
    else:
        fails = not isinstance(value, dict) or "modifierExtension" in value or _fails(value, below)
    if content is not None and below.verdicts is not None:
        _count_verdict()
        below.verdicts[content] = fails
    return fails


def _check_fails(resource: dict[str, Any], check: _Check) -> bool:
    """Whether one check fails (to find which one, once :func:`_fails` said one does)."""
    objects = [resource]
    for step in check.steps:
        nxt: list[dict[str, Any]] = []
        for obj in objects:
            value = obj.get(step.key)
            if value is None:
                continue
            if step.many:
                if not isinstance(value, list):
                    return True
                for item in value:
                    if not isinstance(item, dict) or "modifierExtension" in item:
                        return True
                nxt += value
            elif isinstance(value, dict) and "modifierExtension" not in value:
                nxt.append(value)
            else:
                return True
        objects = nxt
    for obj in objects:
        for leaf in check.leaves:
            if leaf.key in obj and (_verdict(leaf, obj[leaf.key]) is not None or _modified(obj[leaf.key])):
                return True
    return False


def _modified(value: Any) -> bool:
    """A read element (or an item of it) that carries a modifierExtension."""
    if isinstance(value, dict):
        return "modifierExtension" in value
    return isinstance(value, list) and any(isinstance(v, dict) and "modifierExtension" in v for v in value)


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


def ignored_elements(resource: dict[str, Any], rtype: str) -> Counter[tuple[str, str]]:
    """Elements of a resource no fact reads whose shape is wrong, as (element path, reason) counts.

    Only a shallow check (a name R4B defines, an array where R4B wants one and only there), walked
    along the elements that facts read; the content of unread elements is never validated."""
    try:
        model = _model(rtype)
    except (KeyError, ValueError, TypeError, AttributeError):
        return Counter()
    found: list[tuple[str, str]] = []
    _shallow(resource, model, _READ_TREE.get(rtype, {}), "", found, top=True)
    if "modifierExtension" in resource:
        found.append(("modifierExtension", "not understood"))
    return Counter(found) if found else _NOTHING


_NOTHING: Counter[tuple[str, str]] = Counter()  # what most resources give (never changed: callers read it)


# (model, read tree) -> JSON key -> None (a leaf facts read: skip) or (is an array, model to look
# inside or None, subtree); a key missing from the table is not an element of the model.
_ACTIONS: dict[tuple[Any, int], dict[str, Any]] = {}
_SKIP = object()


def _actions(model: Any, tree: dict[str, Any]) -> dict[str, Any]:
    key = (model, id(tree))
    table = _ACTIONS.get(key)
    if table is None:
        table = {}
        for k, f in fields_of(model).items():
            sub = tree.get(k, False)
            if sub is None:
                table[k] = _SKIP
            else:
                inner = f.model if sub else None
                memo: dict[bytes, tuple[tuple[str, str], ...]] | None = None
                if inner is not None and inner.__name__ in _REPEATING:
                    memo = {}
                    _STEP_VERDICTS.append(memo)  # type: ignore[arg-type]  (emptied with the verdicts)
                table[k] = (f.many, inner, sub or {}, memo)
        _ACTIONS[key] = table
    return table


_ELEMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _name(key: str) -> str:
    """An unknown key as reported: FHIR-name-shaped keys as they are, anything else (free text that
    might carry data) replaced, so a report never repeats what a sender put in a key."""
    return key if _ELEMENT_NAME.fullmatch(key) else "(a key that is not an element name)"


def _shallow(
    obj: dict[str, Any],
    model: Any,
    tree: dict[str, Any],
    prefix: str,
    out: list[tuple[str, str]],
    top: bool,
) -> None:
    table = _actions(model, tree)
    for key, value in obj.items():
        act = table.get(key)
        if act is _SKIP:
            continue  # a leaf a fact reads: validated when read
        if act is None:
            if not (top and key == "resourceType"):
                out.append((f"{prefix}{_name(key)}", "not an element of R4B " + model.__name__))
            continue
        if value is None:
            continue
        many, inner, sub, memo = act
        if isinstance(value, list) != many:
            out.append((f"{prefix}{key}", _SHAPE[many]))
            continue
        if inner is None:
            continue
        # an element on the way to what facts read: look inside (a dosage: by its content, once)
        content = _content(value) if memo is not None else None
        found = memo.get(content) if memo is not None and content is not None else None
        if found is None:
            inside: list[tuple[str, str]] = []
            for item in value if many else (value,):
                if isinstance(item, dict):
                    _shallow(item, inner, sub, "", inside, top=False)
            found = tuple(inside)
            if memo is not None and content is not None:
                _count_verdict()
                memo[content] = found
        for path, reason in found:
            out.append((f"{prefix}{key}.{path}", reason))


def _content(value: Any) -> bytes | None:
    """An element's JSON as a table key, unless it holds a patient's own dates (timing bounds)."""
    try:
        content = orjson.dumps(value)
    except (TypeError, ValueError, orjson.JSONEncodeError):
        return None
    return None if b'"bounds' in content else content
