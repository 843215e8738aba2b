"""Shown-card rows written in batches: one transaction per ~half second per process, not one per call.

Every CDS call records the cards it returned (``shown_cards``: statistics, and the rule id a later
feedback entry is joined to). Committing that per call cost a SQLite write transaction (4
statements, a WAL append, ~0.1 ms of CPU and ~0.4 ms during which a gevent worker serves nobody)
or a PostgreSQL round trip. The rows are now kept in memory and written by a background thread
(a greenlet under gevent) in one transaction when ``max_delay`` seconds have passed since the
first pending row, or as soon as ``max_rows`` are pending (a call adding rows beyond four times
that, when the database is slower than the calls, writes them itself).

Durability (what was chosen and why): the rows survive a graceful stop — ``close()``, interpreter
exit (gunicorn's SIGTERM/SIGHUP/max-requests restarts end a worker with ``sys.exit``) — and a
failed write is retried on the next flush (at most ``MAX_PENDING`` rows are kept). A worker killed
outright (SIGKILL, out of memory) loses the rows of at most its last ``max_delay`` seconds. These
are statistics, never an acknowledged write (feedback is still committed durably before its 200,
``synchronous=FULL``); before, a power loss could already lose the last commits (``synchronous=
NORMAL``, PostgreSQL ``synchronous_commit=off``). Feedback for a card comes seconds or minutes
after the card, and the join is made when statistics are read, which flushes this process first.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from .errors import StorageUnavailable

log = logging.getLogger(__name__)

Row = tuple[Any, ...]

#: How long a shown-card row may wait for its batch's transaction.
MAX_DELAY_SECONDS = 0.5
#: Rows kept while the database cannot be written; beyond this the oldest are dropped (and logged).
MAX_PENDING = 20_000

#: Pending rows beyond this many times ``max_rows`` are written by the call that adds them.
BACKLOG_FACTOR = 4
#: A flusher thread with nothing to write for this long ends (a test suite builds many apps).
IDLE_EXIT_SECONDS = 30.0

_LIVE: weakref.WeakSet[ShownCardBuffer] = weakref.WeakSet()


class ShownCardBuffer:
    """Rows handed to ``write(rows)`` (one transaction; raises StorageUnavailable) in batches."""

    def __init__(
        self, write: Callable[[list[Row]], None], *, max_delay: float | None = None, max_rows: int = 256
    ) -> None:
        self._write = write
        self.max_delay = MAX_DELAY_SECONDS if max_delay is None else max_delay
        self.max_rows = max_rows
        self._closed = False
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        """Fresh per-process state (at start and in a forked child: the parent's thread is gone)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one writer at a time; rows keep their order
        self._pending: list[Row] = []
        self._wake = threading.Event()  # rows are pending
        self._full = threading.Event()  # max_rows are pending: write without waiting out max_delay
        self._thread: threading.Thread | None = None

    def add(self, rows: list[Row]) -> None:
        if not rows:
            return
        with self._lock:
            self._pending.extend(rows)
            count = len(self._pending)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="shown-cards", daemon=True)
                self._thread.start()
        if self._closed or count >= BACKLOG_FACTOR * self.max_rows:
            self.flush()  # closed, or the thread cannot keep up: this call writes
            return
        # Event.set takes its lock and notifies even when the flag is already set (every call but the
        # first of a batch): a set flag has no waiter to wake, so only a clear one is set
        if count >= self.max_rows and not self._full.is_set():
            self._full.set()
        if not self._wake.is_set():
            self._wake.set()

    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Write what is pending now (errors are logged; the rows are kept for the next flush)."""
        with self._flushing:
            with self._lock:
                rows, self._pending = self._pending, []
                self._wake.clear()
                self._full.clear()
            if not rows:
                return
            try:
                self._write(rows)
            except Exception as exc:  # noqa: BLE001 - whatever failed, the rows are kept, the thread lives
                with self._lock:
                    self._pending[:0] = rows
                    dropped = len(self._pending) - MAX_PENDING
                    if dropped > 0:
                        del self._pending[:dropped]
                # StorageUnavailable's text names the backend and the error class only; another
                # error's text could quote a row, so only its class
                reason = str(exc) if isinstance(exc, StorageUnavailable) else type(exc).__name__
                log.error(
                    "shown cards not recorded yet (%d rows kept for the next attempt%s): %s",
                    min(len(rows), MAX_PENDING),
                    f", {dropped} oldest dropped" if dropped > 0 else "",
                    reason,
                )

    def _run(self) -> None:
        try:
            while not self._closed:
                if not self._wake.wait(IDLE_EXIT_SECONDS):
                    with self._lock:
                        if not self._pending:  # idle: end; the next add() starts a new thread
                            return
                self._full.wait(self.max_delay)  # let the rows of the next calls join this transaction
                self.flush()
        finally:  # however this thread ends, the next add() starts another
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def close(self) -> None:
        self._closed = True
        self.flush()
        self._full.set()  # the thread sees _closed and ends after its (empty) flush
        self._wake.set()


@atexit.register
def _flush_all() -> None:
    """Interpreter exit (a gunicorn worker's graceful end): nothing pending is left behind."""
    for buffer in list(_LIVE):
        if buffer._pid == os.getpid():
            buffer.flush()


def _after_fork() -> None:
    """In a forked child (a gunicorn worker): no thread, no rows of the parent's, fresh locks —
    before any of its threads can add a row."""
    for buffer in list(_LIVE):
        buffer._reset()


os.register_at_fork(after_in_child=_after_fork)
