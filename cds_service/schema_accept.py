"""A JSON Schema as a plain yes/no check, compiled by fastjsonschema, so a valid request skips jsonschema.

jsonschema pays ~8 µs for every subschema it descends into (~0.45 M instructions for a typical
order-sign's request envelope); fastjsonschema compiles a schema to straight Python (~65 k). It knows
drafts 04/06/07, and the request schema is written for 2020-12: the keywords in
:data:`SAME_IN_DRAFT_7` mean the same in both, so the schema is compiled as draft-07; any other
keyword (a 2020-12 one that draft-07 would silently ignore, ``$ref``, a list-valued ``items``) makes
it :class:`Unsupported`, and the caller then validates with jsonschema alone. fastjsonschema writes
a pattern's ``$`` as ``\\Z`` (no trailing newline, stricter than ``re.search``); that direction is
safe: the check says yes only to instances the schema accepts, and on no, or on any error,
jsonschema decides and names the field (``tests/test_schema_accept.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastjsonschema

Check = Callable[[Any], bool]

DRAFT_7 = "http://json-schema.org/draft-07/schema#"
#: Keywords whose meaning is the same in draft-07 and 2020-12 (annotations included).
SAME_IN_DRAFT_7 = frozenset(
    {
        "$schema", "$id", "$comment", "title", "description", "examples",
        "type", "required", "properties", "additionalProperties", "items", "const", "enum", "pattern",
        "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
        "minimum", "maximum",
    }
)  # fmt: skip


class Unsupported(ValueError):
    """The schema uses a keyword (or a form of one) that does not mean the same in draft-07."""


def compile_acceptor(schema: dict[str, Any]) -> Check:
    """A check that is True only for instances ``schema`` accepts; raises Unsupported."""
    _same_in_draft_7(schema, "#")
    try:
        validate = fastjsonschema.compile(
            {**schema, "$schema": DRAFT_7}, use_default=False, use_formats=False
        )
    except fastjsonschema.JsonSchemaDefinitionException as exc:
        raise Unsupported(str(exc)) from None

    def accepts(instance: Any) -> bool:
        try:
            validate(instance)
        except Exception:  # noqa: BLE001 - invalid, or anything unforeseen: jsonschema decides
            return False
        return True

    return accepts


def _same_in_draft_7(schema: Any, where: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise Unsupported(f"{where}: not a schema")
    unknown = set(schema) - SAME_IN_DRAFT_7
    if unknown:
        raise Unsupported(f"{where}: {', '.join(sorted(unknown))}")
    # JSON equality tells 1 from true and 1.0; Python's ``==`` (fastjsonschema's) does not: strings only
    values = ([schema["const"]] if "const" in schema else []) + list(schema.get("enum") or [])
    if any(type(v) is not str for v in values):
        raise Unsupported(f"{where}: a const or enum value that is not a string")
    for name, sub in (schema.get("properties") or {}).items():
        _same_in_draft_7(sub, f"{where}/properties/{name}")
    if "additionalProperties" in schema:
        _same_in_draft_7(schema["additionalProperties"], f"{where}/additionalProperties")
    if "items" in schema:
        if not isinstance(schema["items"], dict | bool):  # a list: tuple items in draft-07 only
            raise Unsupported(f"{where}/items: a list")
        _same_in_draft_7(schema["items"], f"{where}/items")
