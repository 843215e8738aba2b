"""The body's nesting limit is checked on the parsed value (validation.depth_exceeds): it must give the
raw-bytes check's verdict (validation.nesting_exceeds, what was checked before parsing) for every JSON
text, empty containers, brackets inside strings and escaped quotes included, and parse_json must refuse
exactly the bodies it refused before, with the same message."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.errors import ApiError
from cds_service.validation import MAX_DEPTH, depth_exceeds, nesting_exceeds, parse_json

# strings heavy in what could fool a bracket count: brackets, quotes, backslashes
TRICKY = st.text(alphabet='[]{}"\\:, ax\u00e9', max_size=8)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), TRICKY)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TRICKY, children, max_size=3),
    max_leaves=40,
)


def nest(depth: int, leaf: Any, kinds: str) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if kinds[i % len(kinds)] == "l" else {"k[": value}
    return value


def raw_verdict(raw: bytes) -> tuple[int, str] | None:
    try:
        parse_json(raw)
    except ApiError as exc:
        return exc.status, exc.message
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON, limit=st.integers(0, 8))
def test_parsed_depth_agrees_with_the_raw_bytes(value: Any, limit: int) -> None:
    raw = orjson.dumps(value)
    assert depth_exceeds(orjson.loads(raw), limit) == nesting_exceeds(raw, limit)


@pytest.mark.parametrize("kinds", ["l", "d", "ld", "dl"])
@pytest.mark.parametrize("leaf", [1, "]]}}", [], {}, [[]], {"a": {}}])
@pytest.mark.parametrize("depth", [MAX_DEPTH + d for d in (-3, -2, -1, 0, 1)] + [3 * MAX_DEPTH])
def test_around_the_limit_the_verdict_is_the_raw_checks(depth: int, leaf: Any, kinds: str) -> None:
    """An empty container is a level (``[]`` is 1 deep), as the raw check counts it."""
    raw = json.dumps({"hook": "order-sign", "context": nest(depth, leaf, kinds)}).encode()
    expected = nesting_exceeds(raw, MAX_DEPTH)
    assert depth_exceeds(orjson.loads(raw), MAX_DEPTH) == expected
    verdict = raw_verdict(raw)
    if expected:
        assert verdict == (400, f"JSON nesting deeper than {MAX_DEPTH} levels")
    else:
        assert verdict is None


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # beyond orjson's own limit: refused by it, named by the raw check
        b"[" * 2_000,  # deep and unterminated
        b"[" * 70 + b"1,",  # too deep and malformed: the nesting is named, as before
    ],
)
def test_a_body_orjson_refuses_for_depth_gets_the_nesting_message(raw: bytes) -> None:
    assert raw_verdict(raw) == (400, f"JSON nesting deeper than {MAX_DEPTH} levels")


def test_malformed_but_shallow_is_malformed() -> None:
    verdict = raw_verdict(b'{"a": [1, 2}')
    assert verdict is not None and verdict[1].startswith("malformed JSON")


def test_wide_shallow_bodies_are_accepted() -> None:
    wide = {"entry": [{"resource": {"code": {"coding": [{"code": str(i)}]}}} for i in range(5_000)]}
    assert raw_verdict(orjson.dumps(wide)) is None
    assert not depth_exceeds(wide, 7) and depth_exceeds(wide, 6)
