"""Checks a CDS Hooks request against the JSON Schema and the hook's required context."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from importlib import resources
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .errors import ApiError
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
def envelope_validator() -> Draft202012Validator:
    """The request schema without its per-entry checks of FHIR resources: each ``prefetch`` value
    an object or null, each ``context.draftOrders.entry`` an object whose ``resource`` is one.

    jsonschema pays ~8 µs per subschema it descends into, and those checks were 13 of a typical
    order-sign's 23 descents. :func:`validate_request` uses this schema only when
    :func:`resources_are_objects` has shown that those checks hold, so the verdict and the first
    error are the full schema's (``tests/test_request_validation.py`` checks that they agree).
    """
    schema = copy.deepcopy(schema_validator("request").schema)
    del schema["properties"]["prefetch"]["additionalProperties"]
    del schema["properties"]["context"]["properties"]["draftOrders"]["properties"]["entry"]["items"]
    return Draft202012Validator(schema)


def resources_are_objects(body: dict[str, Any]) -> bool:
    """What the full request schema checks beyond :func:`envelope_validator`'s, for this body:
    every prefetch value is an object or null, every draft-order entry an object whose
    ``resource`` (if any) is an object. False when a value is not of the shape either check
    expects: the full schema then decides and names the field."""
    prefetch = body.get("prefetch")
    if prefetch is not None:
        if not isinstance(prefetch, dict):
            return False
        for value in prefetch.values():
            if value is not None and not isinstance(value, dict):
                return False
    context = body.get("context")
    orders = context.get("draftOrders") if isinstance(context, dict) else None
    entries = orders.get("entry") if isinstance(orders, dict) else None
    if entries is not None:
        if not isinstance(entries, list):
            return False
        for entry in entries:
            if not isinstance(entry, dict):
                return False
            if "resource" in entry and not isinstance(entry["resource"], dict):
                return False
    return True


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
    """Decode a JSON body; 400 on malformed or too deeply nested input."""
    if nesting_exceeds(raw, MAX_DEPTH):
        raise ApiError(400, f"JSON nesting deeper than {MAX_DEPTH} levels", "(body)")
    try:
        # orjson: strict RFC 8259 (no NaN/Infinity, no lone surrogates) and about twice as fast as
        # the standard library on multi-megabyte prefetch.
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson's message gives the position only, never the text around it
        raise ApiError(400, f"malformed JSON (not valid JSON per RFC 8259): {exc}"[:200], "(body)") from exc
    except RecursionError as exc:
        raise ApiError(400, "JSON nesting is too deep", "(body)") from exc
    return value


_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")
_ESCAPE = re.compile(rb"\\.", re.DOTALL)


def nesting_exceeds(raw: bytes, limit: int) -> bool:
    """Whether a JSON text nests containers deeper than ``limit``, checked on the raw bytes.

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
    validator = envelope_validator() if resources_are_objects(body) else schema_validator("request")
    error = first_error(validator, body)
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
