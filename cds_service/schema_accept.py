"""A JSON Schema compiled to a plain yes/no check, so that a valid request skips jsonschema.

jsonschema pays ~8 µs for every subschema it descends into (~0.45 M instructions for a typical
order-sign's request envelope). :func:`compile_acceptor` turns a schema made of the few keywords the
request schema uses into nested closures that answer only "certainly valid" (True) or "not sure"
(False): it is never more lenient than the schema — each check is the keyword's own or stricter
(an ``integer`` must be an ``int``, where JSON Schema also accepts ``2.0``) — and a keyword it does
not know makes the whole schema uncompilable (:class:`Unsupported`), so the schema can grow without
this module silently skipping a new constraint. On False, jsonschema decides and names the field, so
an error message is always jsonschema's (``tests/test_request_validation.py`` compares verdicts).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

#: Keywords that constrain nothing (annotations) or that the caller has already resolved.
_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "$comment", "examples"})


class Unsupported(ValueError):
    """The schema uses a keyword (or a form of one) the acceptor does not implement."""


def _is_int(x: Any) -> bool:
    return type(x) is int


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda x: type(x) is dict,
    "array": lambda x: type(x) is list,
    "string": lambda x: type(x) is str,
    "integer": _is_int,
    "null": lambda x: x is None,
    "boolean": lambda x: type(x) is bool,
}


def compile_acceptor(schema: dict[str, Any]) -> Check:
    """A check that is True only for instances ``schema`` accepts; raises Unsupported."""
    if not isinstance(schema, dict):
        raise Unsupported(f"schema {schema!r}")
    checks: list[Check] = []
    unknown = set(schema) - _ANNOTATIONS - _KEYWORDS.keys()
    if unknown:
        raise Unsupported(", ".join(sorted(unknown)))
    for keyword, build in _KEYWORDS.items():
        if keyword in schema:
            checks.append(build(schema[keyword], schema))
    if not checks:
        return lambda _x: True
    if len(checks) == 1:
        return checks[0]
    first, *rest = checks  # the type check first: the others then assume the instance's type
    return lambda x: first(x) and all(c(x) for c in rest)


def _type(value: Any, _schema: dict[str, Any]) -> Check:
    names = value if isinstance(value, list) else [value]
    if any(n not in _TYPES for n in names):
        raise Unsupported(f"type {value!r}")
    tests = tuple(_TYPES[n] for n in names)
    return tests[0] if len(tests) == 1 else lambda x: any(t(x) for t in tests)


def _required(names: list[str], _schema: dict[str, Any]) -> Check:
    wanted = tuple(names)
    return lambda x: type(x) is not dict or all(n in x for n in wanted)


def _properties(props: dict[str, Any], _schema: dict[str, Any]) -> Check:
    compiled = tuple((name, compile_acceptor(sub)) for name, sub in props.items())

    def check(x: Any) -> bool:
        return type(x) is not dict or all(sub(x[name]) for name, sub in compiled if name in x)

    return check


def _additional(sub: Any, schema: dict[str, Any]) -> Check:
    if "patternProperties" in schema:
        raise Unsupported("patternProperties")
    declared = frozenset(schema.get("properties", {}))
    if sub is False:
        return lambda x: type(x) is not dict or declared.issuperset(x)
    check = compile_acceptor(sub)
    return lambda x: type(x) is not dict or all(check(v) for k, v in x.items() if k not in declared)


def _items(sub: Any, _schema: dict[str, Any]) -> Check:
    check = compile_acceptor(sub)
    return lambda x: type(x) is not list or all(check(v) for v in x)


def _pattern(pattern: str, _schema: dict[str, Any]) -> Check:
    search = re.compile(pattern).search  # jsonschema's own test: re.search
    return lambda x: type(x) is not str or search(x) is not None


def _const(value: Any, _schema: dict[str, Any]) -> Check:
    if type(value) is not str:  # JSON equality of numbers and booleans is subtler: not done here
        raise Unsupported(f"const {value!r}")
    return lambda x: type(x) is str and x == value


def _bound(kind: str) -> Callable[[Any, dict[str, Any]], Check]:
    def build(limit: Any, _schema: dict[str, Any]) -> Check:
        if not _is_int(limit):
            raise Unsupported(f"{kind} {limit!r}")
        if kind == "minLength":
            return lambda x: type(x) is not str or len(x) >= limit
        if kind == "maxLength":
            return lambda x: type(x) is not str or len(x) <= limit
        if kind == "maxItems":
            return lambda x: type(x) is not list or len(x) <= limit
        # minimum: only integers are certainly comparable as JSON Schema compares them
        return lambda x: type(x) is bool or not isinstance(x, int | float) or (_is_int(x) and x >= limit)

    return build


_KEYWORDS: dict[str, Callable[[Any, dict[str, Any]], Check]] = {
    "type": _type,  # first: see compile_acceptor
    "required": _required,
    "properties": _properties,
    "additionalProperties": _additional,
    "items": _items,
    "pattern": _pattern,
    "const": _const,
    "minLength": _bound("minLength"),
    "maxLength": _bound("maxLength"),
    "maxItems": _bound("maxItems"),
    "minimum": _bound("minimum"),
}
