"""R4B datatype checks without building models: the fast path of element validation.

Building a ``fhir.resources`` model costs tens of microseconds per element, and a record reads a
few hundred elements per call. Most elements are plainly valid (a code of ASCII letters, a
``dateTime`` written the usual way, a CodeableConcept of codings), so :func:`compiled` checks
the value against the same rules ``fhir.resources`` R4B applies (its own regexes from
``fhir_core.types``, its field tables, required elements and ``[x]`` choices), walking the JSON
directly. It answers only *True* (the model would accept it) or *False* (not certain); on False
the caller builds the model, which is the judge and writes the message. So this module can make
validation faster, never more lenient: ``tests/test_datatypes.py`` runs both over many valid and
invalid shapes and checks that every value accepted here is accepted by the model.

What is never accepted here (and always left to the model): values whose Python type pydantic
would coerce (``"1"`` for an integer, ``1`` for a boolean), primitive extensions (``_x``), nulls,
leap seconds, non-ASCII codes and ids, base64, uuid and oid values, and any key the model does not
declare.
"""

from __future__ import annotations

import re
import types
import typing
from calendar import monthrange
from collections.abc import Callable
from datetime import date
from functools import lru_cache
from typing import Any

from fhir_core.constraints import FHIR_PRIMITIVES_MAPS, TYPES_ID_MAX_LENGTH
from fhir_core.types import Decimal as _Decimal

Check = Callable[[Any], bool]

# -- primitives -------------------------------------------------------------------------------------
# Subsets of the model's rules, chosen so that a match is certainly valid there too:
# string: the model's pattern "[ \r\n\t\S]+" is a search, so one ASCII printable, tab, CR or LF
# anywhere is enough; code: "^[^\s]+(\s[^\s]+)*$", here with ASCII non-space characters only.
_STRING = re.compile(r"[ -~\t\r\n]")
_CODE = re.compile(r"[!-~]+(?: [!-~]+)*")
_ID = re.compile(rf"[A-Za-z0-9\-.]{{1,{TYPES_ID_MAX_LENGTH or 64}}}")
# date, dateTime, instant: the model's patterns (fhir_core.types) less the year 0000 and leap seconds
# (both refused or re-parsed there) and with at most nine fraction digits, written without the
# model's alternation over the year, which costs twice as much to match. The tests check that
# every value matched here matches the model's pattern and passes its parser.
_YEAR, _MONTH, _DAY = r"(?!0000)[0-9]{4}", r"-(?:0[1-9]|1[0-2])", r"-(?:0[1-9]|[12][0-9]|3[01])"
_CLOCK = r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
_ZONE = r"(?:Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_DATE = re.compile(f"{_YEAR}(?:{_MONTH}(?:{_DAY})?)?")
_DATETIME = re.compile(f"{_YEAR}(?:{_MONTH}(?:{_DAY}(?:{_CLOCK}{_ZONE})?)?)?")
_INSTANT = re.compile(f"{_YEAR}{_MONTH}{_DAY}{_CLOCK}{_ZONE}")
_FULL_DATE = re.compile(f"{_YEAR}{_MONTH}{_DAY}")  # YYYY-MM-DD alone
_TIME = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?")
_DECIMAL = _Decimal.pattern
_INT32 = (-(2**31), 2**31 - 1)


def _calendar_day(value: str) -> bool:
    """The YYYY-MM-DD at the start of ``value`` is a real day (the regexes allow 31 in any month)."""
    return value[8:10] <= "28" or int(value[8:10]) <= monthrange(int(value[:4]), int(value[5:7]))[1]


def _full_date(v: str) -> bool:
    """A 10-character ``YYYY-MM-DD`` that is a real day, by the C parser (a regex costs ten times
    as much, and this is the commonest date there is). With both dashes in place, 3.11's
    ``date.fromisoformat`` reads nothing else in 10 characters (its week form ``YYYY-Www-D`` has
    no dash at [7]), only ASCII digits, and no year 0000 — what the model's pattern allows."""
    if v[4] != "-" or v[7] != "-":
        return False
    try:
        _from_iso(v)
    except ValueError:
        return False
    return True


_from_iso = date.fromisoformat


def _date(v: Any) -> bool:
    if type(v) is not str:
        return False
    if len(v) == 10:
        return _full_date(v)
    return _DATE.fullmatch(v) is not None and len(v) < 10


def _datetime(v: Any) -> bool:
    if type(v) is not str:
        return False
    if len(v) == 10:  # a date alone, the most common dateTime (a dispense's whenHandedOver)
        return _full_date(v)
    return _DATETIME.fullmatch(v) is not None and (len(v) < 10 or _calendar_day(v))


def _instant(v: Any) -> bool:
    return type(v) is str and _INSTANT.fullmatch(v) is not None and _calendar_day(v)


def _time(v: Any) -> bool:
    return type(v) is str and _TIME.fullmatch(v) is not None


@lru_cache(maxsize=4096)
def _code(v: str) -> bool:
    """Codes repeat across every patient ("final", "mg", "active"): kept, a bounded LRU."""
    return _CODE.fullmatch(v) is not None


def _integer(low: int, high: int) -> Check:
    def check(v: Any) -> bool:
        return type(v) is int and low <= v <= high

    return check


def _decimal(v: Any) -> bool:
    # the model's own test: its regex on str(value); it never looks further for a JSON number
    return (type(v) is int or type(v) is float) and _DECIMAL.fullmatch(str(v)) is not None


def _any_string(v: Any) -> bool:
    return type(v) is str  # uri, url, canonical, markdown, xhtml: every string matches their rules


PRIMITIVES: dict[str, Check] = {
    "boolean": lambda v: type(v) is bool,
    "string": lambda v: type(v) is str and _STRING.search(v) is not None,
    "code": lambda v: type(v) is str and _code(v),
    "id": lambda v: type(v) is str and _ID.fullmatch(v) is not None,
    "uri": _any_string,
    "url": _any_string,
    "canonical": _any_string,
    "markdown": _any_string,
    "xhtml": _any_string,
    "integer": _integer(*_INT32),
    "unsignedInt": _integer(0, _INT32[1]),
    "positiveInt": _integer(1, _INT32[1]),
    "integer64": _integer(-(2**63) + 1, 2**63 - 1),
    "decimal": _decimal,
    "date": _date,
    "dateTime": _datetime,
    "instant": _instant,
    "time": _time,
    # base64Binary, uuid, oid: left to the model
}


# -- complex types ----------------------------------------------------------------------------------
def _item_type(annotation: Any) -> tuple[bool, Any]:
    """(is an array, the item type) of a field annotation such as ``Optional[List[X | None]]``;
    the item type is the annotation itself when it is a union of several types."""
    many = False
    t = annotation
    while True:
        origin = typing.get_origin(t)
        if origin is typing.Union or origin is types.UnionType:
            args = [a for a in typing.get_args(t) if a is not type(None)]
            if len(args) != 1:
                return many, t
            t = args[0]
        elif origin is list:
            many = True
            t = typing.get_args(t)[0]
        else:
            return many, t


_NEVER: Check = lambda v: False  # noqa: E731 - a type this module leaves to the model


class _Shape:
    """One complex type's rules, read from its model: keys, arrays, required elements, choices."""

    __slots__ = ("choices", "fields", "required")

    def __init__(self) -> None:
        self.fields: dict[str, tuple[bool, Check]] = {}
        self.required: frozenset[str] = frozenset()
        self.choices: tuple[tuple[frozenset[str], bool], ...] = ()

    def check(self, value: Any) -> bool:
        if type(value) is not dict:
            return False
        fields = self.fields
        for key, v in value.items():
            f = fields.get(key)
            if f is None or v is None:
                return False
            many, ok = f
            if many:
                if type(v) is not list:
                    return False
                for item in v:
                    if item is None or not ok(item):
                        return False
            elif not ok(v):
                return False
        if self.required and not self.required <= value.keys():
            return False
        for group, required in self.choices:  # set operations: Extension.value[x] has 50 types
            present = len(group & value.keys())
            if present > 1 or (required and not present):
                return False
        return True


_SHAPES: dict[Any, _Shape] = {}


def _shape(model: Any) -> _Shape:
    shape = _SHAPES.get(model)
    if shape is not None:
        return shape
    shape = _SHAPES[model] = _Shape()  # registered first: types refer to themselves (Extension)
    alias = {name: info.alias or name for name, info in model.model_fields.items()}
    for name, info in model.model_fields.items():
        key = alias[name]
        if name == "fhir_comments" or key.startswith("_") or key == "resourceType":
            continue  # left to the model: never accepted here
        many, item = _item_type(info.annotation)
        shape.fields[key] = (many, check_of(item))
    made = model.model_construct()
    required = {alias[name] for name, info in model.model_fields.items() if info.is_required()}
    required |= {alias[name] for name, _ext in made.get_required_fields()}
    shape.required = frozenset(required)
    choices = []
    for fields in made.get_one_of_many_fields().values():
        extra = model.model_fields[fields[0]].json_schema_extra or {}
        choices.append((frozenset(alias[f] for f in fields), extra.get("one_of_many_required") is True))
    shape.choices = tuple(choices)
    return shape


def check_of(item: Any) -> Check:
    """The fast check for one item type of a field (a primitive annotation or a complex type)."""
    kind = FHIR_PRIMITIVES_MAPS.get(item) if _hashable(item) else None
    if kind is not None:
        return PRIMITIVES.get(kind, _NEVER)
    get = getattr(item, "get_model_klass", None)
    if callable(get) and getattr(item, "_model_klass", "").rsplit(".", 1)[-1] not in ("Resource", "Element"):
        return _shape(get()).check
    return _NEVER  # a resource (``contained``), a union of types: the model decides


def _hashable(item: Any) -> bool:
    try:
        hash(item)
    except TypeError:
        return False
    return True


def kind_of(annotation: Any) -> str | None:
    """The primitive type's name ("code", "dateTime") of a field, None for a complex one."""
    item = _item_type(annotation)[1]
    return FHIR_PRIMITIVES_MAPS.get(item) if _hashable(item) else None


def item_check(annotation: Any) -> tuple[bool, Check]:
    """(is an array, the check of one non-null item) for a field declared as ``annotation``."""
    many, item = _item_type(annotation)
    return many, check_of(item)


def compiled(annotation: Any) -> Check:
    """Whether a value is certainly valid for a field declared as ``annotation`` (False: ask the
    model). ``None`` is never accepted here, though the model allows an absent element: callers
    do not validate what is absent."""
    many, ok = item_check(annotation)
    if not many:
        return lambda v: v is not None and ok(v)

    def check_list(v: Any) -> bool:
        if type(v) is not list:
            return False
        return all(x is not None and ok(x) for x in v)

    return check_list
