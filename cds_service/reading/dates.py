"""FHIR date and dateTime values read defensively: any precision, never an exception."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any


def parse_date(value: Any) -> date | None:
    """A FHIR date/dateTime (any precision) as a date; partial dates take their first day."""
    if not isinstance(value, str):
        return None
    try:
        if len(value) == 10:  # the commonest by far (YYYY-MM-DD): no slice
            return date.fromisoformat(value)
        if len(value) < 4:
            return None
        if len(value) == 4:
            return date(int(value), 1, 1)
        if len(value) == 7:
            return date(int(value[:4]), int(value[5:7]), 1)
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def parse_datetime(value: Any) -> datetime | None:
    """A FHIR dateTime/instant as an aware datetime (UTC when it has no zone); a date or a partial
    date as the start of its first day, in UTC. Python 3.11 reads the "Z" zone itself."""
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        d = parse_date(value)
        return datetime(d.year, d.month, d.day, tzinfo=UTC) if d else None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def age_on(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
