"""PostgreSQL backend: one database shared by every instance behind the load balancer (psycopg 3).

Each process opens its own small connection pool on first use, after gunicorn's fork, never before.
Feedback commits with ``synchronous_commit`` on (flushed to the server's WAL before we answer);
shown cards and replay-cache claims with it off: visible to every instance at once, but a crash of
the database server may lose the last fraction of a second of them.
The replay check is one ``INSERT … ON CONFLICT`` statement, atomic across every instance.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from ..feedback import FEEDBACK_COLUMNS, FEEDBACK_PER_RULE_SQL, SHOWN_PER_RULE_SQL, feedback_rows, summarise
from .errors import StorageUnavailable
from .migrations import Migration, check_current, pending

SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)
#: pg_advisory_xact_lock key serialising migrations of instances that start together ("ketacds").
MIGRATION_LOCK = 0x6B657461636473


def _reason(exc: BaseException) -> str:
    """An error's class and first line (libpq's messages name host and user, never the password)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class PostgresDatabase:
    """A PostgreSQL database given by a libpq URL or conninfo (``postgresql://user@host:5432/db``).

    Settings absent from the URL come from libpq's environment (``PGPASSWORD``, ``PGPASSFILE``,
    ``PGSSLMODE`` …). ``max_connections`` bounds each process's pool.
    """

    backend = "postgresql"

    def __init__(self, url: str, *, migrate: bool | None = True, max_connections: int = 8) -> None:
        params = conninfo_to_dict(url)
        params.setdefault("connect_timeout", 5)
        params.setdefault("application_name", "ketamine-cds")
        self._conninfo = make_conninfo(**params)
        self._where = " ".join(
            f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if params.get(k) is not None
        )
        self.max_connections = max_connections
        self._pool: ConnectionPool | None = None
        self._pool_pid: int | None = None
        self._pool_lock = threading.Lock()
        with self._direct() as conn:
            if migrate:
                self._migrate(conn)
            elif migrate is not None:  # False: refuse a schema that is behind; None: just open
                check_current(self._applied(conn))

    def describe(self) -> str:
        return f"postgresql ({self._where or 'libpq defaults'})"

    @contextmanager
    def _direct(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection outside the pool (start-up and migrations run in gunicorn's parent)."""
        try:
            with psycopg.connect(self._conninfo) as conn:
                yield conn
        except psycopg.Error as exc:
            raise StorageUnavailable(f"{self.describe()}: {_reason(exc)}") from exc

    def _pool_here(self) -> ConnectionPool:
        pool = self._pool
        if pool is not None and self._pool_pid == os.getpid():
            return pool
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ConnectionPool(
                    self._conninfo,
                    min_size=1,
                    max_size=self.max_connections,
                    timeout=5,
                    check=ConnectionPool.check_connection,  # a server restart costs no request
                    name="ketamine-cds",
                    open=True,
                )
                self._pool_pid = os.getpid()
            return self._pool

    @contextmanager
    def transaction(self, *, synchronous_commit: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection, committed when the block ends."""
        try:
            with self._pool_here().connection() as conn, conn.transaction():
                if not synchronous_commit:
                    conn.execute("SET LOCAL synchronous_commit = off")
                yield conn
        except psycopg.Error as exc:
            raise StorageUnavailable(f"{self.describe()}: {_reason(exc)}") from exc

    @staticmethod
    def _applied(conn: psycopg.Connection[Any]) -> set[int]:
        row = conn.execute("SELECT to_regclass('schema_version')").fetchone()
        if row is None or row[0] is None:
            return set()
        return {v for (v,) in conn.execute("SELECT version FROM schema_version")}

    def applied_versions(self) -> set[int]:
        with self._direct() as conn:
            return self._applied(conn)

    def migrate(self) -> list[Migration]:
        with self._direct() as conn:
            return self._migrate(conn)

    def _migrate(self, conn: psycopg.Connection[Any]) -> list[Migration]:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(SCHEMA_VERSION_DDL)
            todo = pending({v for (v,) in conn.execute("SELECT version FROM schema_version")})
            for m in todo:
                for statement in m.postgres:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)", (m.version, m.name)
                )
        return todo

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            pool.close()


class PostgresFeedbackStore:
    """``FeedbackStore`` over PostgreSQL: every instance writes and counts the same rows."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    def record_shown(self, service: str, hook_instance: str, cards: Iterable[tuple[str, str, str]]) -> None:
        now = time.time()
        rows = [(u, service, rule, ind, hook_instance, now) for u, rule, ind in cards]
        if not rows:
            return
        with self.db.transaction(synchronous_commit=False) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO shown_cards (card_uuid, service, rule_id, indicator, hook_instance, shown_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (card_uuid) DO NOTHING",
                rows,
            )

    def add_feedback(self, service: str, entries: list[dict[str, Any]]) -> int:
        rows = feedback_rows(service, entries, time.time())
        with self.db.transaction() as conn, conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO feedback ({FEEDBACK_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                rows,
            )
        return len(rows)

    def rule_stats(self) -> list[dict[str, Any]]:
        with self.db.transaction() as conn:  # one snapshot for both queries
            shown = conn.execute(SHOWN_PER_RULE_SQL).fetchall()
            outcomes = conn.execute(FEEDBACK_PER_RULE_SQL).fetchall()
        return summarise(shown, outcomes)

    def close(self) -> None:
        self.db.close()


class PostgresJtiCache:
    """Replay cache shared by every instance: ``(iss, jti)`` is the primary key, and one
    ``INSERT … ON CONFLICT DO UPDATE … WHERE expired`` both checks and claims it, so of two
    instances receiving the same token at the same moment exactly one succeeds."""

    PURGE_EVERY = 256
    _CLAIM = (
        "INSERT INTO jti_seen (iss, jti, expires_at) VALUES (%s, %s, %s)"
        " ON CONFLICT (iss, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        " WHERE jti_seen.expires_at <= %s RETURNING 1"
    )

    def __init__(self, db: PostgresDatabase, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        self._adds = 0

    def add(self, iss: str, jti: str, expires_at: float) -> bool:
        now = self._clock()
        self._adds += 1
        if self._adds % self.PURGE_EVERY == 0:
            with self.db.transaction() as conn:
                conn.execute("DELETE FROM jti_seen WHERE expires_at <= %s", (now,))
        # Visible to every other instance as soon as it commits; asynchronous commit only means a
        # crash of the database server itself may forget the last claims (as SQLite's NORMAL does
        # on power loss), and saves every authenticated call a WAL flush (~4 ms here).
        with self.db.transaction(synchronous_commit=False) as conn:
            return conn.execute(self._CLAIM, (iss, jti, expires_at, now)).fetchone() is not None

    def close(self) -> None:
        self.db.close()
