"""One element's verdict: the fast check of :mod:`.datatypes`, else the R4B model.

Each element a fact reads is checked against the ``fhir.resources`` R4B type of that element
(``Dosage.doseAndRate`` as ``DosageDoseAndRate``, ``Observation.effectiveDateTime`` as a
``dateTime``). :mod:`.datatypes` answers "certainly valid" straight on the JSON; only what it cannot
vouch for is given to the model, which also writes the message. For element types whose content
patients share (codes, quantities, a usual dose) the model's verdict is kept by content
(:mod:`.kept`); a key is built only when the model must be asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from . import datatypes
from .element_dates import dated_timing
from .json_types import wrong_json_type
from .kept import MISS, Kept, key_of, touch


def _complex_model(item: Any) -> Any | None:
    """The model class behind a complex element type (``DosageType`` → ``Dosage``), else None."""
    get = getattr(item, "get_model_klass", None)
    return get() if callable(get) else None


@dataclass(frozen=True)
class Field:
    key: str  # the JSON name
    many: bool
    model: Any | None  # the complex type's model class; None for a primitive
    annotation: Any


_FIELDS: dict[Any, dict[str, Field]] = {}


def fields_of(model: Any) -> dict[str, Field]:
    """Every JSON key a model allows (primitive extensions ``_x`` included), by key."""
    known = _FIELDS.get(model)
    if known is None:
        known = {}
        for name, info in model.model_fields.items():
            if name == "fhir_comments":
                continue
            key = info.alias or name
            many, item = datatypes._item_type(info.annotation)
            known[key] = Field(key, many, _complex_model(item), info.annotation)
        _FIELDS[model] = known
    return known


# Element types whose content real patients share (codes, units, a usual dose) and which never hold
# a date: their verdicts are kept by content. Everything else (dates, periods, references, notes,
# an observation's value) is checked afresh every time.
_SHARED = frozenset(
    {"CodeableConcept", "Coding", "Quantity", "Duration", "Ratio", "Range", "DosageDoseAndRate", "Timing"}
)


_SHARED_PRIMITIVES = frozenset({"code", "boolean"})  # statuses, intents, yes/no: what every patient has


ALL_KEPT: list[Kept] = []


@dataclass(frozen=True, eq=False)
class Leaf:
    """An element read as a whole, and how to check it."""

    key: str
    annotation: Any
    fast: datatypes.Check  # True: certainly valid (datatypes.py); False: ask the model
    kept: Kept | None  # content patients share: verdicts kept by the element's JSON
    shareable: bool  # content patients share (a kept type, or a code): may join a resource's key
    modifiable: bool  # its type allows a modifierExtension (which makes it unreadable)
    ok: Callable[[Any], bool]  # the walk's test of a present (non-null) value: verdict(...) is None
    present: datatypes.Check  # ``fast`` for a present (non-null) value, without the null test

    def model_ok(self, value: Any) -> bool:
        return _model_verdict(self, value) is None


LEAVES: dict[tuple[str, int], Leaf] = {}


BY_OK: dict[Callable[[Any], bool], Leaf] = {}


_ADAPTERS: dict[int, TypeAdapter[Any]] = {}


def leaf_for(key: str, field: Field) -> Leaf:
    found = LEAVES.get((key, id(field.annotation)))
    if found is None:
        name = getattr(field.model, "__name__", "")
        modifiable = field.model is not None and "modifierExtension" in fields_of(field.model)
        fast = datatypes.compiled(field.annotation)
        kept = None
        # an observation's measured value is the patient's own (a coded answer is not)
        measured = key.startswith("value") and name not in ("CodeableConcept", "Coding")
        if name in _SHARED and not measured:
            kept = Kept()
            ALL_KEPT.append(kept)
        holder: list[Leaf] = []
        many, item_ok = datatypes.item_check(field.annotation)
        # never given None; a Timing may hold dates (event, repeat.bounds[x]): checked per value
        ok = _ok_function(holder, fast if many else item_ok, kept, modifiable, name == "Timing")
        shareable = kept is not None or datatypes.kind_of(field.annotation) in _SHARED_PRIMITIVES
        found = Leaf(key, field.annotation, fast, kept, shareable, modifiable, ok, fast if many else item_ok)
        holder.append(found)
        LEAVES[(key, id(field.annotation))] = found
        BY_OK[ok] = found
    return found


def _ok_function(
    holder: list[Leaf], fast: datatypes.Check, kept: Kept | None, modifiable: bool, dated: bool = False
) -> Callable[[Any], bool]:
    """The walk's test of one element, with as few calls in between as it can: the kept verdict
    by content, or the fast check of :mod:`.datatypes`; the model only when neither answers."""
    if kept is not None:
        data = kept.data

        def ok(v: Any) -> bool:
            if fast(v):  # certainly valid: no key to build, nothing kept
                return True
            if dated and dated_timing(v):  # a timing with the patient's own dates: never kept
                return _model_verdict(holder[0], v) is None
            content = key_of(v)
            if content is None:
                return _model_verdict(holder[0], v) is None
            hit = data.get(content, MISS)
            if hit is MISS:
                hit = _model_verdict(holder[0], v) is None
                if hit:  # only valid content is a key: an invalid one may hold an undeclared key's words
                    kept.put(content, hit)
            else:
                touch(data, content)
            return hit  # type: ignore[no-any-return]

    else:

        def ok(v: Any) -> bool:
            return fast(v) or _model_verdict(holder[0], v) is None

    if not modifiable:
        return ok
    return lambda v: ok(v) and not modified(v)


def _model_verdict(leaf: Leaf, value: Any) -> tuple[str, str] | None:
    """The R4B model's verdict: None when valid, else (location inside the element, message).
    A primitive of the wrong JSON type is invalid before the model, which would coerce it
    (``"no"`` for a boolean: json_types.py)."""
    wrong = wrong_json_type(leaf.annotation, value)
    if wrong is not None:
        return wrong
    adapter = _ADAPTERS.get(id(leaf.annotation))
    if adapter is None:
        adapter = _ADAPTERS[id(leaf.annotation)] = TypeAdapter(leaf.annotation)
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        return (_fhir_location(first.get("loc", ())), _fhir_message(first)[:160])
    except (ValueError, TypeError, RecursionError) as exc:
        return ("", f"invalid ({type(exc).__name__})")
    return None


def _fhir_location(loc: tuple[Any, ...]) -> str:
    """pydantic's location as FHIR's path: ``root`` (a root model's value, pydantic's word) dropped."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc if p != "root")


def _fhir_message(error: Any) -> str:
    """pydantic's message, in FHIR JSON's words where it names a Python class or a model."""
    kind = error.get("type")
    # "Value is expected from the instance of X, but got type <class 'list'>"
    if kind == "model_validation_format":
        got = (error.get("ctx") or {}).get("type")
        return SHAPE[False] if got is list else "expected an object"
    if kind == "model_type":  # "Input should be a valid dictionary or instance of X"
        return "expected an object"
    if kind == "list_type":
        return SHAPE[True]
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def verdict(leaf: Leaf, value: Any) -> tuple[str, str] | None:
    """None when ``value`` is valid for the element (absent counts as valid), else why not (for
    messages: the walk asks ``leaf.ok``, which answers the same without a message)."""
    if value is None or leaf.fast(value):
        return None
    return _model_verdict(leaf, value)


def modified(value: Any) -> bool:
    """A read element (or an item of it) that carries a modifierExtension."""
    if isinstance(value, dict):
        return "modifierExtension" in value
    return isinstance(value, list) and any(isinstance(v, dict) and "modifierExtension" in v for v in value)


SHAPE = {True: "expected an array", False: "expected a single value, got an array"}
