"""SQLite backend: the embedded default, one file shared by the processes of one host.

WAL mode, so readers never block the writer and a killed worker loses no committed row. Feedback
is committed with ``synchronous=FULL`` (on disk before it is acknowledged); shown cards and the
replay cache with ``NORMAL`` (they survive a killed process, may lose the last commits on power loss);
shown cards are written in batches, every half second (shown_buffer.py, which says what that risks).
Connections come from a small per-process pool (pool.py), never carried across gunicorn's fork.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..feedback import FEEDBACK_COLUMNS, FEEDBACK_PER_RULE_SQL, SHOWN_PER_RULE_SQL, feedback_rows, summarise
from .errors import StorageUnavailable
from .migrations import Migration, check_current, pending
from .pool import ConnectionPool
from .shown_buffer import ShownCardBuffer

SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " applied_at TEXT NOT NULL)"
)


BUSY_TIMEOUT = 10.0  # seconds a statement waits for another connection's lock


def _switch_to_wal(db: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, waiting for other writers as long as busy_timeout would.

    On a file still in rollback mode (a new one) the switch reads the header under a shared lock and
    then upgrades to a write lock; SQLite refuses that upgrade with SQLITE_BUSY at once, without
    calling the busy handler (it could deadlock), while another connection holds RESERVED, e.g. an
    instance migrating the same new file. So retry here; once the file is in WAL mode the switch
    takes no write lock and answers at once.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


class SQLiteDatabase:
    """A SQLite file (or ``:memory:``, private to this object) with a small pool of connections."""

    backend = "sqlite"
    MAX_CONNECTIONS = 8

    def __init__(self, path: Path | str, *, migrate: bool | None = True) -> None:
        self.path = str(path)
        self._uri = self.path == ":memory:"
        if self._uri:  # one in-memory database for every connection of this object, none other
            self._target = f"file:ketamine-cds-{uuid.uuid4().hex}?mode=memory&cache=shared"
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._target = self.path
        self.write_lock = threading.Lock()  # one writer per process; other processes wait on busy_timeout
        self._pool = ConnectionPool(
            self._open,
            usable=lambda db: not db.in_transaction,
            close=lambda db: db.close(),
            size=self.MAX_CONNECTIONS,
            what=self.describe(),
        )
        self._keeper = self._open() if self._uri else None  # keeps the in-memory database alive
        if migrate:
            self.migrate()
        elif migrate is not None:  # False: refuse a schema that is behind; None: just open
            check_current(self.applied_versions())

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._target, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False, uri=self._uri
        )
        try:
            if not self._uri:
                _switch_to_wal(db)
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._pool.connection(wait=10) as (db, _fresh):
                yield db
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"sqlite: {type(exc).__name__}") from exc

    @contextmanager
    def transaction(self, *, synchronous: str = "NORMAL") -> Iterator[sqlite3.Connection]:
        """One write transaction, committed before the block's result is used; errors → StorageUnavailable."""
        with self.connection() as db, self.write_lock:
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def ping(self) -> None:
        """Read the schema table once (the file, not just a pooled handle); StorageUnavailable if not."""
        with self.connection() as db:
            db.execute("SELECT COUNT(*) FROM schema_version").fetchone()

    def applied_versions(self) -> set[int]:
        with self.connection() as db:
            exists = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
            return {v for (v,) in db.execute("SELECT version FROM schema_version")} if exists else set()

    def migrate(self) -> list[Migration]:
        """Apply the pending migrations in one transaction; return them."""
        with self.transaction(synchronous="FULL") as db:
            db.execute(SCHEMA_VERSION_DDL)
            todo = pending({v for (v,) in db.execute("SELECT version FROM schema_version")})
            for m in todo:
                for statement in m.sqlite:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, datetime.now(UTC).isoformat(timespec="seconds")),
                )
        return todo

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def release(self) -> None:
        """Close the idle connections (the in-memory keeper stays); the next use reopens them.
        Called once the service is set up, so gunicorn's fork carries no open connection."""
        self._pool.release()

    def close(self) -> None:
        self._pool.release()
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None


def _database(target: SQLiteDatabase | Path | str) -> SQLiteDatabase:
    return target if isinstance(target, SQLiteDatabase) else SQLiteDatabase(target)


class SQLiteFeedbackStore:
    """``FeedbackStore`` over a SQLite file (a path, or a ``SQLiteDatabase`` shared with the jti cache)."""

    def __init__(self, target: SQLiteDatabase | Path | str) -> None:
        self.db = _database(target)
        self.path = self.db.path
        self.shown = ShownCardBuffer(self._insert_shown)

    def record_shown(self, service: str, hook_instance: str, cards: Iterable[tuple[str, str, str]]) -> None:
        """Buffered: written with other calls' rows within half a second (storage/shown_buffer.py)."""
        now = time.time()
        self.shown.add([(u, service, rule, ind, hook_instance, now) for u, rule, ind in cards])

    def _insert_shown(self, rows: list[tuple[Any, ...]]) -> None:
        with self.db.transaction(synchronous="NORMAL") as db:
            db.executemany("INSERT OR IGNORE INTO shown_cards VALUES (?,?,?,?,?,?)", rows)

    def add_feedback(self, service: str, entries: list[dict[str, Any]]) -> int:
        rows = feedback_rows(service, entries, time.time())
        with self.db.transaction(synchronous="FULL") as db:
            db.executemany(
                f"INSERT OR IGNORE INTO feedback ({FEEDBACK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows
            )
        return len(rows)

    def rule_stats(self) -> list[dict[str, Any]]:
        self.shown.flush()  # this process's statistics include the cards it has just shown
        with self.db.connection() as db:
            return summarise(db.execute(SHOWN_PER_RULE_SQL).fetchall(), db.execute(FEEDBACK_PER_RULE_SQL))

    def close(self) -> None:
        self.shown.close()
        self.db.close()


class SqliteJtiCache:
    """Replay cache shared by every process on one host (gunicorn workers) through a SQLite file.

    The check-and-insert runs in one ``BEGIN IMMEDIATE`` transaction, so two workers racing with
    the same jti cannot both succeed. Not shared across hosts: use ``PostgresJtiCache`` for that.
    """

    PURGE_EVERY = 256

    def __init__(self, target: SQLiteDatabase | Path | str, clock: Callable[[], float] = time.time) -> None:
        self.db = _database(target)
        self.path = self.db.path
        self._clock = clock
        self._adds = 0

    def add(self, iss: str, jti: str, expires_at: float) -> bool:
        now = self._clock()
        self._adds += 1
        with self.db.transaction(synchronous="NORMAL") as db:
            if self._adds % self.PURGE_EVERY == 0:
                db.execute("DELETE FROM jti_seen WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM jti_seen WHERE iss = ? AND jti = ? AND expires_at <= ?", (iss, jti, now))
            cur = db.execute(
                "INSERT OR IGNORE INTO jti_seen (iss, jti, expires_at) VALUES (?, ?, ?)",
                (iss, jti, expires_at),
            )
            return cur.rowcount == 1

    def close(self) -> None:
        self.db.close()
