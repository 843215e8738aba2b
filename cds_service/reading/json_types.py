"""FHIR JSON's own type for each primitive of an element, checked before the R4B model judges it.

The ``fhir.resources`` models validate in pydantic's lax mode, which coerces: ``"no"``, ``"yes"``
and ``0`` pass as a boolean, ``"70"`` as a decimal, ``"2"``, ``2.0`` and ``true`` as an integer.
FHIR's JSON format has one JSON type per primitive (https://hl7.org/fhir/R4/json.html#primitive):
``boolean`` is JSON true/false, ``integer``/``positiveInt``/``unsignedInt`` a JSON number without a
fraction, ``decimal`` a JSON number, every other primitive a JSON string. An element a fact reads is
read as FHIR JSON types it: a wrong JSON type makes it unreadable, never coerced. (pydantic's strict
mode is no substitute: it refuses every date written as a string and still takes ``"70"`` for a
decimal.) Only the JSON types are checked here; the model still judges everything else.
"""

from __future__ import annotations

from typing import Any

from .datatypes import _item_type, kind_of

_NUMBER = (int, float)
_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt"})
_NOT_STRINGS = _INTEGERS | {"boolean", "decimal", "integer64"}  # integer64 (R5) is left to the model


def _expected(kind: str, value: Any) -> str | None:
    """The JSON type a primitive of ``kind`` must have, if ``value`` has another; else None."""
    t = type(value)
    if kind == "boolean":
        return None if t is bool else "expected a JSON boolean"
    if kind in _INTEGERS:
        return None if t is int else "expected a JSON integer (a number without a fraction)"
    if kind == "decimal":
        return None if t in _NUMBER else "expected a JSON number"
    if kind not in _NOT_STRINGS:
        return None if t is str else "expected a JSON string"
    return None


#: Keys inside an element read as a whole that no reader reads (an extension, ``Coding.userSelected``,
#: a timing's counts, maxima and offset): their JSON type is left to the model, as before, so a
#: ``"userSelected": "true"`` never costs the drug its code (the order's safety checks).
_UNREAD: dict[str, frozenset[str]] = {
    "Coding": frozenset({"userSelected"}),
    "TimingRepeat": frozenset({"count", "countMax", "durationMax", "frequencyMax", "periodMax", "offset"}),
}
_NOTHING_UNREAD: frozenset[str] = frozenset()

_FIELDS: dict[Any, dict[str, Any]] = {}


def _fields(model: Any) -> dict[str, Any]:
    """A complex type's annotations by JSON key, but for keys no reader reads (:data:`_UNREAD`)."""
    known = _FIELDS.get(model)
    if known is None:
        unread = _UNREAD.get(model.__name__, _NOTHING_UNREAD)
        known = {
            key: info.annotation
            for name, info in model.model_fields.items()
            if (key := info.alias or name) not in unread and key not in ("extension", "modifierExtension")
        }
        _FIELDS[model] = known
    return known


def wrong_json_type(annotation: Any, value: Any, where: str = "") -> tuple[str, str] | None:
    """(location inside the element, message) of the first primitive in ``value`` whose JSON type
    is not the one FHIR gives it, or None. Messages name the type expected, never the value. Shapes
    the model refuses anyway (an object for a primitive, an array for one value, unknown keys) are
    left to it."""
    if value is None:
        return None
    many, item = _item_type(annotation)
    if many:
        if type(value) is not list:
            return None
        for i, v in enumerate(value):
            found = wrong_json_type(item, v, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    kind = kind_of(item)
    if kind is not None:
        message = _expected(kind, value)
        return None if message is None else (where, message)
    get = getattr(item, "get_model_klass", None)
    if not callable(get) or type(value) is not dict:
        return None  # a union of types, a contained resource, a shape the model refuses
    fields = _fields(get())
    for key, v in value.items():
        annotation_of = fields.get(key)
        if annotation_of is not None and key != "resourceType":
            found = wrong_json_type(annotation_of, v, f"{where}.{key}")
            if found is not None:
                return found
    return None
