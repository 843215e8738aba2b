"""Feedback: which cards were shown, accepted and overridden, and why.

``FeedbackStore`` is the interface the API uses; the implementations live in ``cds_service.storage``
(SQLite, the embedded default, and PostgreSQL for several instances). What they share, turning
CDS Hooks feedback entries into rows and rows into per-rule statistics, is here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol


class FeedbackStore(Protocol):
    def record_shown(self, service: str, hook_instance: str, cards: Iterable[tuple[str, str, str]]) -> None:
        """Remember (card uuid, rule id, indicator) of cards returned to a client."""

    def add_feedback(self, service: str, entries: list[dict[str, Any]]) -> int:
        """Store feedback entries durably (committed before returning); return how many are stored.
        An entry already stored (same service, card, outcome and outcome timestamp: a retried POST)
        is counted as stored but kept once."""

    def rule_stats(self) -> list[dict[str, Any]]:
        """Per rule: shown, accepted, overridden, and override reasons with counts."""

    def close(self) -> None: ...


FEEDBACK_COLUMNS = (
    "service, card_uuid, outcome, outcome_timestamp, override_code, override_display, user_comment,"
    " accepted_suggestions, received_at"
)

#: Both statistics queries are plain SQL that SQLite and PostgreSQL run alike.
SHOWN_PER_RULE_SQL = "SELECT rule_id, COUNT(*) FROM shown_cards GROUP BY rule_id"
FEEDBACK_PER_RULE_SQL = (
    "SELECT COALESCE(s.rule_id, '(unknown card)'), f.outcome, f.override_code, f.override_display, COUNT(*)"
    " FROM feedback f LEFT JOIN shown_cards s ON s.card_uuid = f.card_uuid"
    " GROUP BY 1, 2, 3, 4"
)


def feedback_rows(service: str, entries: list[dict[str, Any]], now: float) -> list[tuple[Any, ...]]:
    """Validated feedback entries as rows in ``FEEDBACK_COLUMNS`` order."""
    rows = []
    for e in entries:
        override = e.get("overrideReason") or {}
        reason = override.get("reason") or {}
        rows.append(
            (
                service,
                e["card"],
                e["outcome"],
                e["outcomeTimestamp"],
                reason.get("code"),
                reason.get("display"),
                override.get("userComment"),
                json.dumps([s.get("id") for s in e.get("acceptedSuggestions") or []]),
                now,
            )
        )
    return rows


def summarise(shown: Iterable[tuple[str, int]], outcomes: Iterable[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Per-rule statistics from the rows of the two queries above, most overridden first."""
    stats: dict[str, dict[str, Any]] = {}

    def entry(rule: str) -> dict[str, Any]:
        blank = {"rule": rule, "shown": 0, "accepted": 0, "overridden": 0, "reasons": {}}
        return stats.setdefault(rule, blank)

    for rule, n in shown:
        entry(rule)["shown"] = n
    for rule, outcome, code, display, n in outcomes:
        s = entry(rule)
        if outcome == "accepted":
            s["accepted"] += n
        elif outcome == "overridden":
            s["overridden"] += n
            label = display or code or "(no reason given)"
            s["reasons"][label] = s["reasons"].get(label, 0) + n
    return sorted(stats.values(), key=lambda s: (-s["overridden"], s["rule"]))
