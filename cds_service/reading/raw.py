"""Defensive readers for raw FHIR JSON.

Facts are read from resources as dicts, some before the resource is validated (to decide whether
it is relevant at all) and some after — and a valid FHIR decimal can still be 1e400. These
helpers turn every wrong shape into "no value", so hostile input is skipped, never a 500.
"""

from __future__ import annotations

import math
import re
from datetime import date, timedelta
from typing import Any

_OPAQUE = (b'"note":', b'xtension":', b'"comment":')  # free text with more than a string's rules
_WRITTEN_NAMES = (b"text", b"patientInstruction")  # strings a person wrote
_WRITTEN_KEYS = tuple(b'"' + name + b'":' for name in _WRITTEN_NAMES)
#: JSON keys of free text, which can say anything about the patient (a sig's text, an instruction,
#: a reason or code written out, a note, an extension's value): content holding one is never kept
#: across calls as it is. A Coding's ``display`` is the code's name in its system, not among them.
FREE_TEXT_KEYS = _WRITTEN_KEYS + _OPAQUE


def holds_free_text(content: bytes) -> bool:
    """Whether a JSON text (``orjson.dumps`` of an element) has a free-text key anywhere."""
    return any(content.find(key) != -1 for key in FREE_TEXT_KEYS)


#: a written string the FHIR string check vouches for, after its key: no quote, no escape, and one
#: printable ASCII character (``[ \r\n\t\S]`` matches it), after any other bytes (UTF-8). One
#: pattern per key, each starting with the whole key: the regex engine then looks for the key
#: alone (a search for its first character, a quote, would try at every quote of the JSON).
_WORDS = tuple(
    (key, re.compile(re.escape(key) + rb'"[^ -~]*[ !#-\[\]-~][^"\\]*"'), key + b'"(written)"')
    for key in _WRITTEN_KEYS
)


def without_words(content: bytes) -> bytes | None:
    """An element's JSON (``orjson.dumps``) with every string a person wrote (``text``,
    ``patientInstruction``) replaced by a placeholder, to key what depends on such a string only
    through the FHIR string check; None when that cannot be vouched for (a text that is not a plain
    string, or notes, comments, extensions): then nothing may be kept by it. The same object back
    when it holds no written string.

    In compact JSON a key's quotes are never escaped, so ``"text":`` is always the key: every one
    must be followed by a string the check vouches for (one substitution in C, counted against
    the keys). ``find``/``count``, never ``in``: ``bytes in bytes`` first tries the needle as an
    integer and raises and clears a TypeError each time."""
    for marker in _OPAQUE:  # a loop, not any(): fewer calls
        if content.find(marker) != -1:
            return None
    for key, pattern, placeholder in _WORDS:
        keys = content.count(key)
        if keys:
            content, replaced = pattern.subn(placeholder, content)
            if replaced != keys:
                return None
    return content


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_float(value: Any, *, limit: float = 1e12) -> float | None:
    """A finite number within ±limit, else None (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except (OverflowError, ValueError):
        return None
    return f if math.isfinite(f) and abs(f) <= limit else None


def add_days(start: date, days: float) -> date | None:
    """``start + days``, or None when the result would leave the calendar."""
    try:
        return start + timedelta(days=days)
    except (OverflowError, ValueError):
        return None
