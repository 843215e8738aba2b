"""The fast datatype checks (reading/datatypes.py) never accept what the R4B model rejects.

Both paths run over every element the facts read in every example record (fhir_examples, the
Sandbox's captured requests, the benchmark's records) and over many mutations of them (wrong
types, unknown keys, arrays for single values, nulls, two choices at once, bad dates and codes),
plus hand-picked primitive edge cases. A value the fast path accepts must be one the model
accepts; the other direction is not required (the fast path then asks the model), but the test
also checks that the common shapes *are* accepted fast, so the speed-up is real.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

import cds_service.pipeline  # noqa: F401 - declares every Reads the facts use
from cds_service.reading import datatypes
from cds_service.reading.elements import Reads, all_reads

ROOT = Path(__file__).resolve().parents[1]
_ADAPTERS: dict[int, TypeAdapter[Any]] = {}


def model_accepts(annotation: Any, value: Any) -> bool:
    adapter = _ADAPTERS.setdefault(id(annotation), TypeAdapter(annotation))
    try:
        adapter.validate_python(value)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


PRIMITIVE_CASES: dict[str, list[Any]] = {
    "string": ["a", " ", "\n", "\t", "", "\x0b", "\x1c", "\x00", "\u00a0", "\u2028", "é", 1, None, True],
    "code": ["a", "a b", "a  b", " a", "a ", "a\n", "a\nb", "é", "a\u00a0b", "a\x00", "", 1, "final"],
    "id": ["a" * 64, "a" * 65, "a" * 255, "a" * 256, "a_b", "a.b-1", "a\n", "", 7],
    "uri": ["", " ", "a b", "\n", "http://loinc.org", 1],
    "url": ["", "a b", "http://x", 2],
    "canonical": ["", "http://x|1", 3],
    "markdown": ["", " ", "\x00", 4],
    "boolean": [True, False, "true", 1, 0, "yes", None],
    "integer": [1, 0, -1, True, 1.0, "1", 2**31, 2**31 - 1, -(2**31), -(2**31) - 1, 1.5],
    "positiveInt": [0, 1, -1, "1", 2**31],
    "unsignedInt": [0, -1, 1, 2**31],
    "decimal": [1, 0, -0.0, 1.5, True, "1.5", 1e-7, 1e300, "01", 10**30, 0.1, -3, [1]],
    "date": [
        "2024",
        "2024-13",
        "2024-02-30",
        "2024-02-29",
        "2023-02-29",
        "0000",
        "2024-1-01",
        "2024-01-01T00:00:00Z",
        "2024-01-01\n",
        "2024-04-31",
        "2024-12-31",
        2024,
        "1900-02-29",
    ],
    "dateTime": [
        "2024",
        "2024-02",
        "2024-02-29",
        "2024-02-30",
        "2024-01-01T10:00:00Z",
        "2024-01-01T10:00:00",
        "2024-01-01T10:00:00.1234567+01:00",
        "2024-01-01T10:00:00.123456789Z",
        "2024-01-01T10:00:00.1234567890Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T23:59:60Z",
        "2024-01-01T10:00Z",
        "2024-01-01T10:00:00+14:00",
        "2024-01-01T10:00:00-13:59",
        "2024-01-01T10:00:00+14:01",
        "9999-12-31T23:59:59+14:00",
        "0001-01-01T00:00:00-13:00",
        "2024-01-01T10:00:00Z\n",
        "2023-02-29T10:00:00Z",
        "2024-06-31T10:00:00Z",
        "2026-05-04T09:00:00Z",
        20240101,
    ],
    "instant": [
        "2024-01-01T10:00:00Z",
        "2024-01-01",
        "2024-01-01T10:00:00.000Z",
        "2024-02-30T10:00:00Z",
        "2024-01-01T23:59:60Z",
    ],
    "time": ["10:00:00", "10:00", "24:00:00", "23:59:60", "10:00:00.5", "10:00:00Z"],
}


@pytest.mark.parametrize("kind", sorted(PRIMITIVE_CASES))
def test_primitive_fast_checks_never_accept_what_the_model_rejects(kind: str) -> None:
    from fhir.resources.R4B import fhirtypes

    annotation = getattr(fhirtypes, f"{kind[0].upper()}{kind[1:]}Type")
    check = datatypes.check_of(annotation)
    accepted = 0
    for value in PRIMITIVE_CASES[kind]:
        if check(value):
            accepted += 1
            assert model_accepts(annotation, value), (kind, value)
    assert accepted, f"the fast path accepts no {kind} at all"


def _dates() -> list[str]:
    """Dates and times around every boundary the rules have (month lengths, leap years, hours,
    leap seconds, fraction digits, zone offsets)."""
    days = [
        f"{y}-{m}-{d}"
        for y in ("0000", "0001", "1900", "2000", "2023", "2024", "9999")
        for m in ("00", "01", "02", "04", "12", "13")
        for d in ("00", "01", "28", "29", "30", "31", "32")
    ]
    clocks = [
        "T00:00:00",
        "T23:59:59",
        "T24:00:00",
        "T23:60:00",
        "T23:59:60",
        "T12:00",
        "T12:00:00.5",
        "T12:00:00.123456789",
        "T12:00:00.1234567890",
        "T12:00:00.",
    ]
    zones = ["Z", "+14:00", "+14:01", "-13:59", "+13:60", "", "+0100", "z"]
    out = [*days, "2024", "0000", "2024-02", "2024-13", "24", "2024-1", "２０２４"]
    # 10 characters that date.fromisoformat (the full-date fast check) might read otherwise
    out += [
        "2024-W01-1",
        "2024W011xx",
        "20240101ab",
        "2024-0\u0661-01",
        "\uff12024-01-01",
        " 024-01-01",
        "+024-01-01",
        "2024-1--01",
        "2024-01-1 ",
        "2024-01-1Z",
        "2024_01_01",
        "0000-02-29",
    ]
    out += [d + c + z for d in days[::3] for c in clocks for z in zones]
    return out


@pytest.mark.parametrize("kind", ["date", "dateTime", "instant"])
def test_date_fast_checks_agree_with_the_model_on_every_boundary(kind: str) -> None:
    from fhir.resources.R4B import fhirtypes

    annotation = getattr(fhirtypes, f"{kind[0].upper()}{kind[1:]}Type")
    check = datatypes.check_of(annotation)
    accepted = 0
    for value in _dates():
        if check(value):
            accepted += 1
            assert model_accepts(annotation, value), value
    assert accepted > 20


def _example_resources() -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import records  # bench/records.py

        requests = [records.build_request(n, h) for n in (200, 1000) for h in ("order-sign", "patient-view")]
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for path in sorted((ROOT / "fhir_examples").glob("*.json")) + sorted(
        (ROOT / "tests" / "fixtures" / "sandbox").glob("*.json")
    ):
        requests.append(json.loads(path.read_text()))
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("resourceType"), str) and node["resourceType"] != "Bundle":
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for request in requests:
        walk(request)
    return found


def _read_elements() -> list[tuple[Any, Any]]:
    """(annotation, value) of every element some Reads reads, in every example resource."""
    by_type: dict[str, list[Reads]] = {}
    for reads in all_reads():
        by_type.setdefault(reads.rtype, []).append(reads)
    out: list[tuple[Any, Any]] = []
    seen: set[tuple[int, str]] = set()
    for res in _example_resources():
        for reads in by_type.get(res["resourceType"], []):
            for check in reads.checks:
                objects = [res]
                for step in check.steps:
                    nxt = []
                    for obj in objects:
                        v = obj.get(step.key)
                        nxt += [x for x in (v if isinstance(v, list) else [v]) if isinstance(x, dict)]
                    objects = nxt
                for obj in objects:
                    for leaf in check.leaves:
                        if leaf.key in obj:
                            key = (id(leaf.annotation), json.dumps(obj[leaf.key], sort_keys=True))
                            if key not in seen:
                                seen.add(key)
                                out.append((leaf.annotation, obj[leaf.key]))
    return out


def _mutations(value: Any) -> list[Any]:
    """Wrong variants of a valid element: each changes one thing, at every depth."""
    out: list[Any] = [None, [value], {"x": value}, "", 0, [], {}, [None], True]
    if isinstance(value, list):
        out += [value[0] if value else None, [*value, None], [*value, value]]
        for i, item in enumerate(value):
            for m in _mutations(item):
                out.append([*value[:i], m, *value[i + 1 :]])
    elif isinstance(value, dict):
        out.append({**value, "unknownElement": 1})
        out.append({**value, "_status": {"extension": []}})
        out.append({**value, "resourceType": "Coding"})
        out.append({**value, "fhir_comments": ["x"]})
        for k, v in value.items():
            out.append({kk: vv for kk, vv in value.items() if kk != k})  # a required element dropped
            for m in _mutations(v):
                out.append({**value, k: m})
        # two choices of one [x] at once
        for k in list(value):
            for prefix in ("value", "dose", "rate", "bounds", "effective", "medication", "onset", "item"):
                if k.startswith(prefix) and k[len(prefix) : len(prefix) + 1].isupper():
                    for other, v in (
                        ("Quantity", {"value": 1}),
                        ("String", "x"),
                        ("Boolean", True),
                        ("DateTime", "2024"),
                        ("Range", {}),
                        ("CodeableConcept", {"text": "x"}),
                    ):
                        if prefix + other != k:
                            out.append({**value, prefix + other: v})
    elif isinstance(value, str):
        out += [
            value + " ",
            " " + value,
            value + "\n",
            value.replace("-", "/"),
            value[:-1],
            value + "Z",
            value.replace("T", " "),
            value * 2,
            int(value) if value.isdigit() else 3,
        ]
    elif isinstance(value, bool):
        out += ["true", 1]
    elif isinstance(value, int | float):
        out += [str(value), float(value), -value, True, 2**40]
    return out


def test_complex_fast_checks_never_accept_what_the_model_rejects() -> None:
    elements = _read_elements()
    assert {r.rtype for r in all_reads()} >= {"Observation", "MedicationRequest", "Condition", "Patient"}
    assert len(elements) > 200
    fast_valid = checked = 0
    for annotation, value in elements:
        check = datatypes.compiled(annotation)
        if check(value):
            fast_valid += 1
            assert model_accepts(annotation, value), value
        for wrong in _mutations(copy.deepcopy(value)):
            checked += 1
            if check(wrong):
                assert model_accepts(annotation, wrong), (value, wrong)
    assert checked > 5000
    # the examples are valid FHIR: nearly all of them must take the fast path, or it buys nothing
    valid = sum(model_accepts(a, v) for a, v in elements)
    assert fast_valid >= 0.95 * valid, (fast_valid, valid)
