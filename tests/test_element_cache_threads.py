"""The element walk's cross-call LRU tables (kept.Kept: a type's plans and shared-content results,
a leaf's model verdicts) are shared by gunicorn's 4 threads, and a hit is ``data.get(key)``
followed by ``data.move_to_end(key)``. Another thread's put() may evict that very entry in between
(popitem(last=False) of a full table): then move_to_end raised KeyError out of walk(), a 500 (a
reviewer showed it with real threads); here the other thread's eviction is placed between the two
calls deterministically."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import cds_service.reading.medication_records  # noqa: F401  (declares the Reads)
from cds_service.reading import element_checks, element_walk, elements

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


class EvictedAfterGet(OrderedDict):  # type: ignore[type-arg]
    """An LRU table whose entry another thread evicts right after this thread's get() hit it."""

    def get(self, key: Any, default: Any = None) -> Any:
        value = super().get(key, default)
        if key in self:
            self.pop(key)  # what Kept.put's popitem(last=False) does in the other thread
        return value


def _resource(i: int, code: str = "6470") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": f"m{i}",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
        "authoredOn": "2024-01-01",
    }


def test_a_hit_evicted_by_another_thread_is_not_a_500() -> None:
    elements.walk(_resource(0), "MedicationRequest")  # compiled, the shape's plan kept
    table = element_walk.COMPILED["MedicationRequest"].table
    saved_plans, saved_shared = table.plans.data, table.kept.data
    saved_kept = [k.data for k in element_checks.ALL_KEPT]
    try:
        table.plans.data = EvictedAfterGet(table.plans.data)
        elements.walk(_resource(1), "MedicationRequest")  # KeyError on main
        table.kept.data = EvictedAfterGet(table.kept.data)
        elements.walk(_resource(2), "MedicationRequest")  # the status, intent and drug code: kept
        # a code the fast check cannot vouch for (not ASCII): the model's verdict is kept by content
        for kept in element_checks.ALL_KEPT:
            kept.data = EvictedAfterGet(kept.data)
        for i in (3, 4):
            assert elements.walk(_resource(i, "6470\u00e9"), "MedicationRequest")[0] == frozenset()
    finally:
        table.plans.data, table.kept.data = saved_plans, saved_shared
        for kept, data in zip(element_checks.ALL_KEPT, saved_kept, strict=True):
            kept.data = data


def test_kept_get_survives_an_eviction_between_get_and_move() -> None:
    kept = elements.Kept(limit=4)
    kept.put("a", True)
    kept.data = EvictedAfterGet(kept.data)
    assert kept.get("a") in (True, elements.MISS)  # KeyError on main
