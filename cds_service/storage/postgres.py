"""PostgreSQL backend: one database shared by every instance behind the load balancer (psycopg 3).

Each process opens its connections on first use, after gunicorn's fork, never before.
Feedback commits with ``synchronous_commit`` on (flushed to the server's WAL before we answer);
shown cards and replay-cache claims with it off: visible to every instance at once, but a crash of
the database server may lose the last fraction of a second of them.
The replay check is one ``INSERT … ON CONFLICT`` statement, atomic across every instance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

from ..feedback import FEEDBACK_COLUMNS, FEEDBACK_PER_RULE_SQL, SHOWN_PER_RULE_SQL, feedback_rows, summarise
from .errors import StorageUnavailable
from .migrations import Migration, check_current, pending
from .pool import ConnectionPool
from .shown_buffer import ShownCardBuffer

SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)
#: pg_advisory_xact_lock key serialising migrations of instances that start together ("ketacds").
MIGRATION_LOCK = 0x6B657461636473
T = TypeVar("T")


def _reason(exc: BaseException) -> str:
    """An error's class and first line (libpq's messages name host and user, never the password)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _idle_and_healthy(conn: psycopg.Connection[Any]) -> bool:
    return not (conn.closed or conn.broken) and conn.info.transaction_status == TransactionStatus.IDLE


class PostgresDatabase:
    """A PostgreSQL database given by a libpq URL or conninfo (``postgresql://user@host:5432/db``).

    Settings absent from the URL come from libpq's environment (``PGPASSWORD``, ``PGPASSFILE``,
    ``PGSSLMODE`` …). Connections come from a small per-process pool (pool.py), opened on first
    use (so never before gunicorn forks) and replaced when the server drops them: the first
    request after an outage reconnects.
    """

    backend = "postgresql"
    #: Per process: under gevent, many greenlets share these; under gthread, at most one per thread.
    MAX_CONNECTIONS = 8
    #: No statement may hold a request longer than this (locks, a struggling server).
    STATEMENT_TIMEOUT_MS = 5000

    def __init__(self, url: str, *, migrate: bool | None = True) -> None:
        params = conninfo_to_dict(url)
        params.setdefault("connect_timeout", 3)
        params.setdefault("application_name", "ketamine-cds")
        self._conninfo = make_conninfo(**params)
        self._where = " ".join(
            f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if params.get(k) is not None
        )
        self._pool = ConnectionPool(
            self._open,
            usable=lambda c: (
                not (c.closed or c.broken) and c.info.transaction_status == TransactionStatus.IDLE
            ),
            close=lambda c: c.close(),
            size=self.MAX_CONNECTIONS,
            what=self.describe(),
        )
        with self._direct() as conn:
            if migrate:
                self._migrate(conn)
            elif migrate is not None:  # False: refuse a schema that is behind; None: just open
                check_current(self._applied(conn))

    def describe(self) -> str:
        return f"postgresql ({self._where or 'libpq defaults'})"

    def _unavailable(self, exc: BaseException) -> StorageUnavailable:
        return StorageUnavailable(f"{self.describe()}: {_reason(exc)}")

    @contextmanager
    def _direct(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own, no statement timeout (start-up and migrations)."""
        try:
            with psycopg.connect(self._conninfo) as conn:
                yield conn
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc

    def _open(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._conninfo)
        conn.execute(f"SET statement_timeout = {self.STATEMENT_TIMEOUT_MS}")
        conn.commit()
        return conn

    def run(
        self,
        work: Callable[[psycopg.Connection[Any]], T],
        *,
        synchronous_commit: bool = True,
        wait: float = 3.0,
    ) -> T:
        """``work(conn)`` in one transaction, committed before this returns; waits at most ``wait``
        s for a connection. A pooled connection the server dropped (restart, failover, idle
        timeout) is replaced and the work run once more, so its statements must be safe to repeat
        (ours are: ON CONFLICT). Errors → StorageUnavailable."""
        for attempt in (1, 2):
            try:
                with self._pool.connection(wait) as (conn, fresh):
                    try:
                        with conn.transaction():
                            if not synchronous_commit:
                                conn.execute("SET LOCAL synchronous_commit = off")
                            return work(conn)
                    except psycopg.OperationalError:
                        if attempt == 1 and not fresh and (conn.broken or conn.closed):
                            continue  # the dead connection is dropped on leaving the block
                        raise
            except psycopg.Error as exc:
                raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")

    def ping(self, wait: float = 1.0) -> None:
        """One ``SELECT 1`` on a pooled connection (for /healthz); StorageUnavailable if not."""
        self.run(lambda conn: conn.execute("SELECT 1").fetchone(), wait=wait)

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

    def release(self) -> None:
        """Close the idle connections (the next use opens new ones); before gunicorn forks."""
        self._pool.release()

    close = release


class PostgresFeedbackStore:
    """``FeedbackStore`` over PostgreSQL: every instance writes and counts the same rows."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        self.shown = ShownCardBuffer(self._insert_shown)

    def record_shown(self, service: str, hook_instance: str, cards: Iterable[tuple[str, str, str]]) -> None:
        """Buffered: written with other calls' rows within half a second (storage/shown_buffer.py)."""
        now = time.time()
        self.shown.add([(u, service, rule, ind, hook_instance, now) for u, rule, ind in cards])

    def _insert_shown(self, rows: list[tuple[Any, ...]]) -> None:
        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO shown_cards"
                    " (card_uuid, service, rule_id, indicator, hook_instance, shown_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (card_uuid) DO NOTHING",
                    rows,
                )

        # With the database down, the cards must not wait long for their statistics.
        self.db.run(insert, synchronous_commit=False, wait=0.5)

    def add_feedback(self, service: str, entries: list[dict[str, Any]]) -> int:
        rows = feedback_rows(service, entries, time.time())

        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO feedback ({FEEDBACK_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    rows,
                )

        self.db.run(insert)
        return len(rows)

    def rule_stats(self) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:  # one snapshot for both
            shown = conn.execute(SHOWN_PER_RULE_SQL).fetchall()
            return summarise(shown, conn.execute(FEEDBACK_PER_RULE_SQL).fetchall())

        self.shown.flush()  # this process's statistics include the cards it has just shown
        return self.db.run(query)

    def close(self) -> None:
        self.shown.close()
        self.db.close()


class PostgresJtiCache:
    """Replay cache shared by every instance: ``(iss, jti)`` is the primary key, and one
    ``INSERT … ON CONFLICT DO UPDATE … WHERE expired`` both checks and claims it, so of two
    instances receiving the same token at the same moment exactly one succeeds.

    The claim commits asynchronously: visible to every other instance as soon as it commits, but
    a crash of the database server itself may forget the last claims (as SQLite's NORMAL may on
    power loss); it spares every authenticated call a WAL flush (~4 ms on the test machine)."""

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
            self.db.run(lambda conn: conn.execute("DELETE FROM jti_seen WHERE expires_at <= %s", (now,)))
        # A retry after a dropped connection may find its own first claim and answer "replayed":
        # that fails closed (401; the EHR signs a new token), which is the safe side.
        return self.db.run(
            lambda conn: conn.execute(self._CLAIM, (iss, jti, expires_at, now)).fetchone() is not None,
            synchronous_commit=False,
        )

    def close(self) -> None:
        self.db.close()
