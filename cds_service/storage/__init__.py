"""Shared state: shown cards, feedback and the JWT ``jti`` replay cache.

``--database`` picks the backend: a file path is SQLite (the embedded default, one host), a
``postgresql://`` URL is PostgreSQL (several instances behind a load balancer share it). The
schema is versioned (``migrations.py``) and migrated at start unless ``auto_migrate`` is off, in
which case ``ketamine-cds migrate`` does it and a behind schema refuses to start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from typing import Any

from .errors import SchemaError, StorageUnavailable
from .migrations import LATEST, MIGRATIONS
from .sqlite import SQLiteDatabase, SQLiteFeedbackStore, SqliteJtiCache

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "SQLiteDatabase",
    "SQLiteFeedbackStore",
    "SchemaError",
    "SqliteJtiCache",
    "Storage",
    "StorageUnavailable",
    "is_postgres",
    "open_database",
    "open_storage",
]

_PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(database: str | PathLike[str]) -> bool:
    return str(database).startswith(_PG_SCHEMES)


def open_database(database: str | PathLike[str], *, migrate: bool | None = True) -> Any:
    """A ``SQLiteDatabase`` or ``PostgresDatabase``, migrated (True), checked to be current (False)
    or just opened (None); raises SchemaError or StorageUnavailable."""
    if is_postgres(database):
        from .postgres import PostgresDatabase  # psycopg is imported only when it is used

        return PostgresDatabase(str(database), migrate=migrate)
    return SQLiteDatabase(database, migrate=migrate)


@dataclass
class Storage:
    database: Any  # SQLiteDatabase | PostgresDatabase
    feedback: Any  # a cds_service.feedback.FeedbackStore
    jti_cache: Any  # a cds_service.auth.JtiCache

    def close(self) -> None:
        self.feedback.close()  # writes the shown cards still pending (shown_buffer.py)
        self.database.close()


def open_storage(
    database: str | PathLike[str], *, migrate: bool | None = True, clock: Callable[[], float] = time.time
) -> Storage:
    """Feedback store and replay cache on one database."""
    db = open_database(database, migrate=migrate)
    if db.backend == "postgresql":
        from .postgres import PostgresFeedbackStore, PostgresJtiCache

        return Storage(db, PostgresFeedbackStore(db), PostgresJtiCache(db, clock=clock))
    return Storage(db, SQLiteFeedbackStore(db), SqliteJtiCache(db, clock=clock))
