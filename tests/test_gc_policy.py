"""The collector's policy around calls (cds_service/gc_policy.py, issue 8)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cds_service import gc_policy


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """Generations collected while the test runs."""
    seen: list[int] = []

    def cb(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(cb)
    enabled, threshold = gc.isenabled(), gc.get_threshold()
    gc.enable()
    try:
        yield seen
    finally:
        gc.callbacks.remove(cb)
        gc.set_threshold(*threshold)
        (gc.enable if enabled else gc.disable)()


def test_no_collection_inside_a_call_and_the_collector_back_on_after(collections: list[int]) -> None:
    gc.collect()
    gc.set_threshold(1_000, 10, 10)
    collections.clear()

    @gc_policy.without_collection
    def view() -> int:
        assert not gc.isenabled()
        keep = [[i] for i in range(20_000)]  # 20 thresholds' worth of containers, all alive
        return len(keep)

    assert view() == 20_000
    assert gc.isenabled()
    # the call's lists were freed when it returned: nothing was due, nothing was walked
    assert collections == []


def test_what_is_due_is_collected_when_a_call_ends(collections: list[int]) -> None:
    gc.set_threshold(100, 10, 10)
    kept: list[Any] = []

    @gc_policy.without_collection
    def view() -> None:
        for _ in range(300):  # survivors: the young generation's count ends past its threshold
            cycle: list[Any] = []
            cycle.append(cycle)
            kept.append([cycle])

    view()
    assert collections and collections[0] == 0
    assert gc.get_count()[0] < 100


def test_overlapping_calls_turn_it_on_only_when_the_last_ends() -> None:
    inside, release = threading.Event(), threading.Event()

    @gc_policy.without_collection
    def slow() -> None:
        inside.set()
        release.wait(5)

    t = threading.Thread(target=slow)
    t.start()
    assert inside.wait(5)

    @gc_policy.without_collection
    def quick() -> bool:
        return gc.isenabled()

    assert quick() is False
    assert not gc.isenabled()  # the slow call still runs
    release.set()
    t.join(5)
    assert gc.isenabled()


def test_a_collector_switched_off_by_the_host_stays_off() -> None:
    gc.disable()
    try:
        gc_policy.without_collection(lambda: None)()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_due_generation_follows_cpythons_order() -> None:
    threshold = gc.get_threshold()
    gc.disable()  # counts only: no automatic collection resets them
    try:
        gc.collect()
        gc.set_threshold(10**9, 10, 10)
        assert gc_policy.due_generation() is None
        gc.set_threshold(1, 10, 10)
        junk = [[] for _ in range(50)]
        assert gc_policy.due_generation() == 0
        del junk
    finally:
        gc.set_threshold(*threshold)
        gc.enable()
