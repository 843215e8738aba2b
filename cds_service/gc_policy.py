"""When CPython's cyclic garbage collector runs in the service (issue 8).

What a CDS call builds is acyclic (``tests/test_request_garbage.py``): reference counting frees it
when the call ends, and a collection during the call only walks objects that are all still alive.
A 5,000-resource prefetch parses into ~10^6 containers, which with the default thresholds meant
dozens of collections inside one call (≈ 10 ms of its ≈ 130 ms). So:

* :func:`settle` after start-up: everything built so far (the FHIR model classes, the compiled
  rules) is moved out of the collector's reach (``gc.freeze``), and the young generation's
  threshold is raised;
* :func:`without_collection` on the call's view function: automatic collection is off while any
  call runs; whenever one ends, the generations whose counts are past their thresholds are
  collected, as CPython itself would have done (so calls that keep overlapping — threads, FHIR
  fetches — cannot put collection off for ever), and the last one to end turns it back on.
"""

from __future__ import annotations

import functools
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

YOUNG_THRESHOLD = 50_000

_lock = threading.Lock()
_active = 0
_resume = False  # whether the collector was on when the first running call paused it


def settle() -> None:
    """After start-up (and before gunicorn forks): freeze what lives for the process's lifetime."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, YOUNG_THRESHOLD), max(gen1, 20), max(gen2, 20))


def due_generation() -> int | None:
    """The oldest generation whose count is past its threshold (None: nothing is due)."""
    counts, thresholds = gc.get_count(), gc.get_threshold()
    due = None
    for generation in range(3):
        if thresholds[generation] and counts[generation] > thresholds[generation]:
            due = generation
        elif generation:  # an older generation is only due when the younger one is
            break
    return due


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection while the block runs; what is due is collected when it ends.

    Wrap a whole view function (:func:`without_collection`), so that its locals — the parsed
    request, the record, the facts — are already freed when the due generations are collected."""
    global _active, _resume
    with _lock:
        if _active == 0:
            _resume = gc.isenabled()
            gc.disable()
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _resume:
                gc.enable()
            generation = due_generation() if _resume else None
        if generation is not None:
            gc.collect(generation)


def without_collection(view: Callable[P, R]) -> Callable[P, R]:
    """``view`` runs :func:`paused`."""

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with paused():
            return view(*args, **kwargs)

    return wrapper
