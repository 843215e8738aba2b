"""Verdicts kept across calls: bounded LRU tables keyed by content that real patients share.

A new patient's record mostly holds what others' hold too (a code, a unit, a drug's usual sig), so
what the element checks found in such content is kept by that content, across calls, in tables of
at most :data:`VERDICT_LIMIT` entries. A key never holds the patient's words (:func:`key_of`,
:func:`~.raw.without_words`) nor dates (callers never key one). The tables are shared by a
worker's threads: every step is one atomic dict operation (:func:`touch`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson

from .raw import without_words

VERDICT_LIMIT = 4096  # entries per LRU table


def touch(data: OrderedDict[Any, Any], key: Any) -> None:
    """Marks a hit as recently used. The tables are shared by a worker's threads: another one may
    have evicted the entry since this one read it, which only means it is no longer kept."""
    try:  # noqa: SIM105 - on every hit of the walk: contextlib.suppress costs a context manager
        data.move_to_end(key)
    except KeyError:
        pass


def key_of(v: Any) -> bytes | None:
    """The JSON an element's verdict is kept by, holding none of the patient's words
    (:func:`~.raw.without_words`: the verdict depends on a written string through the string check
    alone); None when that cannot be vouched for or the element is not JSON: it is then checked
    afresh and nothing is kept."""
    try:
        return without_words(orjson.dumps(v))
    except (TypeError, ValueError, orjson.JSONEncodeError):
        return None


class Kept:
    """Verdicts by content, a bounded LRU: a hit moves to the end, the least recently used entry
    leaves first (an ``OrderedDict``; the walk probes ``data`` itself, without a call). Shared by
    the threads of a worker: every step is one atomic dict operation, and a hit another thread
    evicted meanwhile is still the verdict it was (:func:`touch`)."""

    __slots__ = ("data", "limit")

    def __init__(self, limit: int = VERDICT_LIMIT) -> None:
        self.data: OrderedDict[Any, Any] = OrderedDict()
        self.limit = limit

    def get(self, key: Any) -> Any:
        hit = self.data.get(key, MISS)
        if hit is not MISS:
            touch(self.data, key)
        return hit

    def put(self, key: Any, value: Any) -> None:
        self.data[key] = value
        if len(self.data) > self.limit:
            self.data.popitem(last=False)


MISS = object()
