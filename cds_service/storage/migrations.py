"""The database schema as an ordered list of numbered migrations, for SQLite and PostgreSQL alike.

A database records the versions applied to it in ``schema_version``. Migrations only ever move
forward and are never edited once released: to change the schema, append one. Version 1 uses
``IF NOT EXISTS`` so that feedback files written before versioning existed are adopted as they are.
Each backend applies the pending ones in one transaction under a lock (``BEGIN IMMEDIATE`` in
SQLite, an advisory lock in PostgreSQL), so instances starting together migrate once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SchemaError


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_DEDUP_FEEDBACK = (
    "DELETE FROM feedback WHERE id NOT IN (SELECT MIN(id) FROM feedback"
    " GROUP BY service, card_uuid, outcome, outcome_timestamp)"
)
_FEEDBACK_UNIQUE = (
    "CREATE UNIQUE INDEX IF NOT EXISTS feedback_once"
    " ON feedback(service, card_uuid, outcome, outcome_timestamp)"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "shown cards and feedback",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS shown_cards (card_uuid TEXT PRIMARY KEY, service TEXT NOT NULL,"
            " rule_id TEXT NOT NULL, indicator TEXT NOT NULL, hook_instance TEXT NOT NULL,"
            " shown_at REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " service TEXT NOT NULL, card_uuid TEXT NOT NULL, outcome TEXT NOT NULL,"
            " outcome_timestamp TEXT NOT NULL, override_code TEXT, override_display TEXT,"
            " user_comment TEXT, accepted_suggestions TEXT, received_at REAL NOT NULL)",
            "CREATE INDEX IF NOT EXISTS feedback_card ON feedback(card_uuid)",
        ),
        postgres=(
            "CREATE TABLE IF NOT EXISTS shown_cards (card_uuid TEXT PRIMARY KEY, service TEXT NOT NULL,"
            " rule_id TEXT NOT NULL, indicator TEXT NOT NULL, hook_instance TEXT NOT NULL,"
            " shown_at DOUBLE PRECISION NOT NULL)",
            "CREATE TABLE IF NOT EXISTS feedback (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " service TEXT NOT NULL, card_uuid TEXT NOT NULL, outcome TEXT NOT NULL,"
            " outcome_timestamp TEXT NOT NULL, override_code TEXT, override_display TEXT,"
            " user_comment TEXT, accepted_suggestions TEXT, received_at DOUBLE PRECISION NOT NULL)",
            "CREATE INDEX IF NOT EXISTS feedback_card ON feedback(card_uuid)",
        ),
    ),
    Migration(
        2,
        "jti replay cache",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS jti_seen (iss TEXT NOT NULL, jti TEXT NOT NULL,"
            " expires_at REAL NOT NULL, PRIMARY KEY (iss, jti)) WITHOUT ROWID",
            "CREATE INDEX IF NOT EXISTS jti_seen_exp ON jti_seen(expires_at)",
        ),
        postgres=(
            "CREATE TABLE IF NOT EXISTS jti_seen (iss TEXT NOT NULL, jti TEXT NOT NULL,"
            " expires_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (iss, jti))",
            "CREATE INDEX IF NOT EXISTS jti_seen_exp ON jti_seen(expires_at)",
        ),
    ),
    Migration(
        3,
        "feedback counted once (a client or load balancer retrying a POST)",
        sqlite=(_DEDUP_FEEDBACK, _FEEDBACK_UNIQUE),
        postgres=(_DEDUP_FEEDBACK, _FEEDBACK_UNIQUE),
    ),
)

LATEST = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1)), "migrations must be numbered 1..N"


def pending(applied: set[int]) -> list[Migration]:
    """The migrations still to apply; refuses a database migrated by a newer release."""
    newest = max(applied, default=0)
    if newest > LATEST:
        raise SchemaError(
            f"database schema is at version {newest}, newer than this ketamine-cds knows ({LATEST}): "
            "upgrade ketamine-cds on this instance"
        )
    return [m for m in MIGRATIONS if m.version not in applied]


def check_current(applied: set[int]) -> None:
    """For ``auto_migrate=False``: refuse to run on a schema that is behind."""
    todo = pending(applied)
    if todo:
        raise SchemaError(
            f"database schema is at version {max(applied, default=0)}, this ketamine-cds needs {LATEST}: "
            "run `ketamine-cds migrate --database …` (or leave KETAMINE_CDS_AUTO_MIGRATE on)"
        )
