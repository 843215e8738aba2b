"""The ``jti`` replay cache: its protocol and the in-memory one (SQLite/PostgreSQL: cds_service.storage)."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from typing import Protocol


# -- replay cache ----------------------------------------------------------------------------------
class JtiCache(Protocol):
    def add(self, iss: str, jti: str, expires_at: float) -> bool:
        """Remember (iss, jti) until ``expires_at`` (epoch seconds); False if already seen."""
        ...


class ReplayCacheFull(Exception):
    """The in-memory replay cache is at capacity; we refuse rather than forget a live jti."""


class MemoryJtiCache:
    """Per-process replay cache: thread-safe, bounded, entries dropped once the token has expired.

    Only catches replays to the same process; see ``cds_service.storage`` for caches shared by
    several workers (SQLite) and several instances (PostgreSQL).
    """

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._expiry: list[tuple[float, tuple[str, str]]] = []
        self._lock = threading.Lock()

    def add(self, iss: str, jti: str, expires_at: float) -> bool:
        key = (iss, jti)
        with self._lock:
            now = self._clock()
            while self._expiry and self._expiry[0][0] <= now:
                _, old = heapq.heappop(self._expiry)
                if self._seen.get(old, now + 1) <= now:
                    del self._seen[old]
            if key in self._seen:
                return False
            if len(self._seen) >= self.max_entries:
                raise ReplayCacheFull
            self._seen[key] = expires_at
            heapq.heappush(self._expiry, (expires_at, key))
            return True

    def __len__(self) -> int:
        return len(self._seen)
