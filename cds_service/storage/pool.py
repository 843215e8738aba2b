"""A small per-process connection pool shared by the SQLite and PostgreSQL backends.

Why not thread-locals: under gunicorn's gevent worker every request is a greenlet, and
``threading.local`` (monkey-patched) would give each request a connection of its own, opened and
leaked per call. Why not psycopg_pool: after an outage its reconnect backoff (doubling up to
minutes) kept requests failing long after the database was back. This pool opens a connection
when none is idle, reuses idle ones last-in first-out, drops one that is broken, and holds at most
``size``; its locks are the threading ones, which gevent makes cooperative. After a fork the child
starts with an empty pool (the parent's connections are the parent's).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from .errors import StorageUnavailable

C = TypeVar("C")


class ConnectionPool(Generic[C]):
    def __init__(
        self,
        connect: Callable[[], C],
        *,
        usable: Callable[[C], bool],
        close: Callable[[C], None],
        size: int,
        what: str,
    ) -> None:
        self._connect, self._usable, self._close = connect, usable, close
        self.size = size
        self._what = what
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._idle: list[C] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.size)

    @contextmanager
    def connection(self, wait: float) -> Iterator[tuple[C, bool]]:
        """(a connection, whether it was just opened), for the block's duration; waits at most
        ``wait`` seconds for a free slot. Errors from ``connect`` propagate."""
        if self._pid != os.getpid():
            self._reset()
        slots = self._slots
        if not slots.acquire(timeout=wait):
            raise StorageUnavailable(f"{self._what}: all {self.size} connections of this process busy")
        conn: C | None = None
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            fresh = conn is None
            if conn is None:
                conn = self._connect()
            yield conn, fresh
        finally:
            if conn is not None:
                if self._pid == os.getpid() and self._usable(conn):
                    with self._lock:
                        self._idle.append(conn)
                else:
                    self._discard(conn)
            slots.release()

    def _discard(self, conn: C) -> None:
        with contextlib.suppress(Exception):  # a broken connection may fail to close; it is gone anyway
            self._close(conn)

    def release(self) -> None:
        """Close the idle connections (at start-up, before gunicorn forks; and at close)."""
        if self._pid != os.getpid():
            self._reset()
            return
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)
