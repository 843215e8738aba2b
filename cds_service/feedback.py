"""Feedback storage: which cards were shown, accepted and overridden, and why.

``FeedbackStore`` is the interface; ``SQLiteFeedbackStore`` the default implementation (WAL mode,
``synchronous=FULL`` for feedback so an acknowledged record survives a killed worker). A server
database can replace it by implementing the same four methods.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS shown_cards (
    card_uuid TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    indicator TEXT NOT NULL,
    hook_instance TEXT NOT NULL,
    shown_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    outcome_timestamp TEXT NOT NULL,
    override_code TEXT,
    override_display TEXT,
    user_comment TEXT,
    accepted_suggestions TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_card ON feedback(card_uuid);
"""


class FeedbackStore(Protocol):
    def record_shown(self, service: str, hook_instance: str, cards: Iterable[tuple[str, str, str]]) -> None:
        """Remember (card uuid, rule id, indicator) of cards returned to a client."""

    def add_feedback(self, service: str, entries: list[dict[str, Any]]) -> int:
        """Store feedback entries durably; return how many were stored."""

    def rule_stats(self) -> list[dict[str, Any]]:
        """Per rule: shown, accepted, overridden, and override reasons with counts."""

    def close(self) -> None: ...


class SQLiteFeedbackStore:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=10000")
            self._local.db = db
        return db

    def record_shown(self, service: str, hook_instance: str, cards: Iterable[tuple[str, str, str]]) -> None:
        now = time.time()
        rows = [(u, service, rule, ind, hook_instance, now) for u, rule, ind in cards]
        if not rows:
            return
        db = self._connect()
        with self._lock:
            # Shown-card counts may lose the last commits on power loss (not on a killed worker:
            # WAL keeps them); feedback below is synced to disk before it is acknowledged.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN")
            db.executemany("INSERT OR IGNORE INTO shown_cards VALUES (?,?,?,?,?,?)", rows)
            db.execute("COMMIT")

    def add_feedback(self, service: str, entries: list[dict[str, Any]]) -> int:
        now = time.time()
        rows = []
        for e in entries:
            reason = (e.get("overrideReason") or {}).get("reason") or {}
            rows.append(
                (
                    service,
                    e["card"],
                    e["outcome"],
                    e["outcomeTimestamp"],
                    reason.get("code"),
                    reason.get("display"),
                    (e.get("overrideReason") or {}).get("userComment"),
                    json.dumps([s.get("id") for s in e.get("acceptedSuggestions") or []]),
                    now,
                )
            )
        db = self._connect()
        with self._lock:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO feedback (service, card_uuid, outcome, outcome_timestamp, override_code,"
                " override_display, user_comment, accepted_suggestions, received_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )
            db.execute("COMMIT")
        return len(rows)

    def rule_stats(self) -> list[dict[str, Any]]:
        db = self._connect()
        stats: dict[str, dict[str, Any]] = {}
        for rule, shown in db.execute("SELECT rule_id, COUNT(*) FROM shown_cards GROUP BY rule_id"):
            stats[rule] = {"rule": rule, "shown": shown, "accepted": 0, "overridden": 0, "reasons": {}}
        query = (
            "SELECT COALESCE(s.rule_id, '(unknown card)'), f.outcome, f.override_code,"
            " f.override_display, COUNT(*)"
            " FROM feedback f LEFT JOIN shown_cards s ON s.card_uuid = f.card_uuid"
            " GROUP BY 1, 2, 3, 4"
        )
        for rule, outcome, code, display, n in db.execute(query):
            s = stats.setdefault(
                rule, {"rule": rule, "shown": 0, "accepted": 0, "overridden": 0, "reasons": {}}
            )
            if outcome == "accepted":
                s["accepted"] += n
            elif outcome == "overridden":
                s["overridden"] += n
                label = display or code or "(no reason given)"
                s["reasons"][label] = s["reasons"].get(label, 0) + n
        return sorted(stats.values(), key=lambda s: (-s["overridden"], s["rule"]))

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
