"""Checks a CDS Hooks request against the JSON Schema and the hook's required context."""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .errors import ApiError
from .schema_accept import Unsupported, compile_acceptor
from .services import REQUIRED_CONTEXT, Service

MAX_DEPTH = 64


@cache
def schema_validator(name: str) -> Draft202012Validator:
    """A compiled validator for ``cds_service/schemas/<name>.schema.json`` (compiled once)."""
    text = resources.files("cds_service.schemas").joinpath(f"{name}.schema.json").read_text()
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@cache
def request_acceptor() -> Callable[[Any], bool]:
    """The request schema as a yes/no check that says yes only to a request the schema accepts
    (``cds_service/schema_accept.py``): a valid request skips jsonschema, which costs ~0.45 M
    instructions for a typical order-sign; any other goes to jsonschema, which names the field."""
    try:
        return compile_acceptor(schema_validator("request").schema)
    except Unsupported:  # a keyword draft-07 reads otherwise: jsonschema checks every request
        return _never


def _never(instance: Any) -> bool:
    return False


def field_path(error: ValidationError) -> str:
    """``context.draftOrders.entry[0]``-style name of where a schema error is."""
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = next((r for r in error.validator_value if r not in error.instance), None)
        if missing:
            out = f"{out}.{missing}" if out else missing
    return out or "(body)"


_TYPE_NAMES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def describe(error: ValidationError) -> str:
    """What is wrong, in the schema's terms only: never the submitted value (it may be a token,
    a patient id or clinical text), as jsonschema's own messages would quote it."""
    kind, expected = error.validator, error.validator_value
    if kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        return "must be " + " or ".join(_TYPE_NAMES.get(str(n), str(n)) for n in names)
    if kind == "required":
        return "is required"
    if kind in ("enum", "const"):
        options = expected if isinstance(expected, list) else [expected]
        shown = ", ".join(json.dumps(o) for o in options[:10]) + (", …" if len(options) > 10 else "")
        return f"must be one of {shown}"
    if kind in ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"):
        return f"violates {kind} {expected}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"violates {kind} {expected}"
    if kind in ("pattern", "format"):
        return "does not have the expected format"
    if kind == "additionalProperties":
        return "has a property that is not allowed here"
    return f"is not valid ({kind})"


def error_message(error: ValidationError) -> str:
    """``<field>: <what is wrong>`` for a 400 body."""
    return f"{field_path(error)}: {describe(error)}"


def first_error(validator: Draft202012Validator, instance: Any) -> ValidationError | None:
    """The most relevant error (shallowest path first) so messages are stable."""
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), e.path))
    return errors[0] if errors else None


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body; 400 on malformed or too deeply nested input.

    The depth is checked on the parsed value (:func:`depth_exceeds`: a few C calls per level, ~0.8 M
    instructions for a 200-resource order-sign) rather than on the raw bytes before parsing
    (:func:`nesting_exceeds`: one C pass per byte, ~1.9 M). orjson refuses, cleanly, anything
    nested beyond 1,024 levels, so parsing first is safe; a body orjson refuses is then checked on
    its bytes, so a too-deep body gets the nesting message whatever else is wrong with it, as before.
    """
    try:
        # orjson: strict RFC 8259 (no NaN/Infinity, no lone surrogates) and about twice as fast as
        # the standard library on multi-megabyte prefetch.
        value = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        if nesting_exceeds(raw, MAX_DEPTH):
            raise ApiError(400, f"JSON nesting deeper than {MAX_DEPTH} levels", "(body)") from None
        if isinstance(exc, RecursionError):
            raise ApiError(400, "JSON nesting is too deep", "(body)") from exc
        # orjson's message gives the position only, never the text around it
        raise ApiError(400, f"malformed JSON (not valid JSON per RFC 8259): {exc}"[:200], "(body)") from exc
    if depth_exceeds(value, MAX_DEPTH):
        raise ApiError(400, f"JSON nesting deeper than {MAX_DEPTH} levels", "(body)")
    return value


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests containers deeper than ``limit`` (``{}`` and ``{"a": 1}`` are 1).

    Level by level, breadth first, in C: ``gc.get_referents`` of every value on one level is every
    value on the next (a dict's values, a list's items; its string keys are not visited), and a
    string, number, boolean or null, not being a container the collector tracks, has none. After
    ``limit`` levels whatever remains is nested ``limit`` deep: the value is too deep if any of it
    is a container (an empty one included, as :func:`nesting_exceeds` counts it).
    """
    level = [value]
    for _ in range(limit):
        level = gc.get_referents(*level)
        if not level:
            return False
    return any(type(v) is dict or type(v) is list for v in level)


_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")
_ESCAPE = re.compile(rb"\\.", re.DOTALL)


def nesting_exceeds(raw: bytes, limit: int) -> bool:
    """Whether a JSON text nests containers deeper than ``limit``, checked on the raw bytes (for a
    body that does not parse: :func:`parse_json` checks a parsed one with :func:`depth_exceeds`).

    Fast path (a few ms for megabytes, all in C): keep only the brackets and peel innermost pairs
    one level per pass. Brackets inside strings can only make that answer larger or leave the
    brackets unbalanced; either way the exact path (strings removed first) decides.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    brackets = raw.translate(_SQUARE, _NOT_BRACKET)  # one pass: drop the rest, then {} → []
    passes = 0
    while brackets and passes <= limit:
        peeled = brackets.replace(b"[]", b"")
        if peeled == brackets:
            break
        brackets, passes = peeled, passes + 1
    if not brackets and passes <= limit:
        return False
    return exact_depth(raw) > limit


def exact_depth(raw: bytes) -> int:
    """Deepest container nesting outside strings (escapes dropped, then every other quote-split part)."""
    text = _ESCAPE.sub(b"", raw) if b"\\" in raw else raw
    outside = b"".join(text.split(b'"')[::2])
    depth = deepest = 0
    for b in outside.translate(None, _NOT_BRACKET):
        if b in (91, 123):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def validate_request(body: Any, service: Service) -> dict[str, Any]:
    """Raise ``ApiError(400)`` naming the offending field, or return the request."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", "(body)")
    if not request_acceptor()(body):
        error = first_error(schema_validator("request"), body)
        if error is not None:
            raise ApiError(400, error_message(error), field_path(error))
    if body["hook"] != service.hook:
        raise ApiError(400, f"hook does not match service {service.id!r} ({service.hook})", "hook")
    if "fhirAuthorization" in body and "fhirServer" not in body:
        raise ApiError(400, "fhirServer is required when fhirAuthorization is present", "fhirServer")
    context = body["context"]
    for name in REQUIRED_CONTEXT[service.hook]:
        if name not in context:
            raise ApiError(400, f"context.{name} is required for hook {service.hook}", f"context.{name}")
    return body
