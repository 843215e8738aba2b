"""A sweep for 500s: any element of any resource written as the wrong JSON type never crashes a call.

For a handful of example requests and Sandbox captures that hold every kind of record the rules
read (trials, pregnancy, blood pressure, a benzodiazepine, an MAOI, an age limit, missing data),
each element of one resource of each type and shape, at its top level and one level down
(``status``, ``clinicalStatus.coding``, ``dosageInstruction[0].timing``), is replaced in turn by
an object, an array and a number. Medication records are swept twice: as sent, and with their drug
as a ``medicationReference`` nothing resolves. Every variant must answer: cards, never an exception.

It fails on 5e0c2fc with two of the 500s found in session 14: a record whose ``status`` is an
object or an array while its drug reference is unresolved, and a Condition whose
``clinicalStatus.coding`` (or ``verificationStatus.coding``) is a number. The third, a fetched
Medication whose ``id`` is an object, needs a FHIR server: tests/test_medication_identity.py.
What the cards say about such records is the other sweeps' and tests' business.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from .test_unread_elements_sweep import REQUESTS, _outcome, resources

SWEPT = [
    "v01-clear-trd-eligible.json",
    "v04-pregnancy.json",
    "v06-uncontrolled-bp.json",
    "v07-daily-lorazepam.json",
    "v08-phenelzine.json",
    "v10b-age-17y364d.json",
    "v13-missing-data.json",
    "sandbox/order-select-v04-esketamine-treating-3-bid.json",
    "sandbox/patient-view-v04.json",
]
WRONG = ({"x": {"y": 1}}, [{"x": 1}, 7], 17)  # an object, an array, a number
MEDICATION_RECORDS = {
    "MedicationRequest",
    "MedicationStatement",
    "MedicationDispense",
    "MedicationAdministration",
}


def _unresolved(request: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The request with its ``index``-th resource's drug a reference nothing resolves (None: that
    resource is no medication record)."""
    variant = copy.deepcopy(request)
    res = list(resources(variant))[index][1]
    if res.get("resourceType") not in MEDICATION_RECORDS:
        return None
    res.pop("medicationCodeableConcept", None)
    res["medicationReference"] = {"reference": "Medication/nowhere"}
    return variant


def _paths(res: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """Each element's path, top level and one level down (an array's first item)."""
    for key, value in res.items():
        if key == "resourceType":
            continue
        yield (key,)
        if isinstance(value, dict):
            yield from ((key, k) for k in value)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            yield from ((key, 0, k) for k in value[0])


def _shapes(request: dict[str, Any]) -> list[int]:
    """One resource of each type and set of keys (a record's monthly dispenses are read alike)."""
    seen: dict[tuple[Any, ...], int] = {}
    for index, (_where, res) in enumerate(resources(request)):
        seen.setdefault((res.get("resourceType"), *sorted(res)), index)
    return list(seen.values())


def _variants(request: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(what was changed, the request): each one restored before the next is made."""
    for index in _shapes(request):
        bases = [("as sent", copy.deepcopy(request)), ("unresolved drug", _unresolved(request, index))]
        for how, base in bases:
            if base is None:
                continue
            res = list(resources(base))[index][1]
            for path in list(_paths(res)):
                holder: Any = res
                for step in path[:-1]:
                    holder = holder[step]
                if path[-1] not in holder:  # the unresolved drug took it away
                    continue
                kept = holder[path[-1]]
                for wrong in WRONG:
                    holder[path[-1]] = wrong
                    yield f"{res.get('resourceType')}.{'.'.join(map(str, path))} = {wrong!r} ({how})", base
                holder[path[-1]] = kept


@pytest.mark.parametrize("name", SWEPT)
def test_no_element_of_the_wrong_type_makes_a_500(name: str) -> None:
    failures = []
    count = 0
    for what, variant in _variants(REQUESTS[name]):
        count += 1
        try:
            outcome = _outcome(variant)
        except Exception as exc:  # noqa: BLE001 — every crash is a finding, listed below
            failures.append(f"{what}: {type(exc).__name__}: {exc}")
            continue
        assert isinstance(outcome.response.get("cards"), list), what
    assert count > 300, "the sweep changed too little to prove anything"
    assert not failures, "\n".join(failures[:20])
