"""cards._jsonable against its definition, on random bound facts (issue 8).

A plain dict with text keys is converted by copying it and deleting what is left out (no dict built
key by key): the JSON form must be the same value, in the same key order, as the definition's
(kept here as it was), for any nesting of dicts, lists, tuples, scalars, empty values, other objects
and keys that are not text; and a container shared by several facts is converted once per memo."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.cards import _jsonable

FAST = settings(max_examples=300, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_SCALARS = (str, int, float, bool)


def definition(value: Any) -> Any:
    """_jsonable as main had it (af824b0), without the memo."""
    t = type(value)
    if t in _SCALARS:
        return value
    if t is dict or isinstance(value, dict):
        out: Any = {}
        for k, v in value.items():
            tv = type(v)
            if tv is str:
                if not v:
                    continue
            elif tv is int or tv is float or tv is bool:
                pass
            elif v is None:
                continue
            elif tv is list:
                if not v:
                    continue
                v = definition(v)
            elif v != [] and v != "":
                v = definition(v)
            else:
                continue
            out[k if type(k) is str else str(k)] = v
    elif isinstance(value, list | tuple):
        out = [v if type(v) in _SCALARS else definition(v) for v in value]
    elif isinstance(value, _SCALARS):
        return value
    else:
        return str(value)
    return out


class Text(str):
    pass


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False),
    st.sampled_from(["", "a", "Condition/c1"]),
    st.just(date(2025, 3, 1)),
    st.just(Text("t")),
)
KEYS = st.one_of(st.sampled_from(["ref", "dose", "name", "1", "None"]), st.integers(0, 2), st.none())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from(["ref", "dose", "name", "why", "refs"]), inner, max_size=5),
        st.dictionaries(KEYS, inner, max_size=4),
    ),
    max_leaves=20,
)


def ordered(value: Any) -> str:
    return json.dumps(value, default=repr)  # key order included


@FAST
@given(value=VALUES)
def test_jsonable_is_its_definition(value: Any) -> None:
    want = definition(value)
    assert ordered(_jsonable(value)) == ordered(want)
    assert ordered(_jsonable(value, {})) == ordered(want)


@FAST
@given(value=st.dictionaries(st.sampled_from(["ref", "dose", "name", "why"]), VALUES, max_size=5))
def test_a_shared_fact_is_converted_once_and_the_same(value: Any) -> None:
    memo: dict[int, Any] = {}
    first = _jsonable({"a": value, "b": [value]}, memo)
    assert ordered(first) == ordered(definition({"a": value, "b": [value]}))
    if "a" in first and type(value) is dict:
        assert _jsonable(value, memo) is first["a"]


def test_the_fact_is_left_as_it_was() -> None:
    fact = {"ref": "Condition/c1", "end": None, "refs": [], "note": "", "trials": [{"days": 3, "why": None}]}
    before = json.dumps(fact)
    assert _jsonable(fact, {}) == {"ref": "Condition/c1", "trials": [{"days": 3}]}
    assert json.dumps(fact) == before
