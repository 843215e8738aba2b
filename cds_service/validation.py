"""Checks a CDS Hooks request against the JSON Schema and the hook's required context."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

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


def first_error(validator: Draft202012Validator, instance: Any) -> ValidationError | None:
    """The most relevant error (shallowest path first) so messages are stable."""
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), e.path))
    return errors[0] if errors else None


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body; 400 on malformed or too deeply nested input."""
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise ApiError(400, "JSON nesting is too deep", "(body)") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}", "(body)") from exc
    if _depth(value) > MAX_DEPTH:
        raise ApiError(400, f"JSON nesting deeper than {MAX_DEPTH} levels", "(body)")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        nxt: list[Any] = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, list):
                nxt.extend(v)
        level = nxt
        if depth - 1 > MAX_DEPTH:
            break
    return depth - 1


def validate_request(body: Any, service: Service) -> dict[str, Any]:
    """Raise ``ApiError(400)`` naming the offending field, or return the request."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", "(body)")
    error = first_error(schema_validator("request"), body)
    if error is not None:
        raise ApiError(400, f"{field_path(error)}: {error.message[:300]}", field_path(error))
    if body["hook"] != service.hook:
        raise ApiError(
            400, f"hook {body['hook']!r} does not match service {service.id!r} ({service.hook})", "hook"
        )
    if "fhirAuthorization" in body and "fhirServer" not in body:
        raise ApiError(400, "fhirServer is required when fhirAuthorization is present", "fhirServer")
    context = body["context"]
    for name in REQUIRED_CONTEXT[service.hook]:
        if name not in context:
            raise ApiError(400, f"context.{name} is required for hook {service.hook}", f"context.{name}")
    return body
