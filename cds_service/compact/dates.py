"""Compact dates: relative to the evaluation time (``-6d``, ``today``, ``2025-03``), ages and birth dates."""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime, timedelta
from typing import Any

from .errors import CaseError

# -- dates ------------------------------------------------------------------------------------------
_RELATIVE = re.compile(r"^([+-]\d+)([dwmy])$")
_PARTIAL = re.compile(r"^\d{4}(-\d{2})?$")
_TIME = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2}))?$")
_AGE = re.compile(r"^(\d+)y(?:\s*(\d+)d)?$")


def parse_now(value: Any) -> datetime:
    """The case's evaluation time (a dateTime with a time zone; ``Z`` allowed)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise CaseError(f"now: expected a dateTime string, got {value!r}")
    if dt.tzinfo is None:
        raise CaseError(f"now: {value!r} has no time zone")
    return dt


def format_datetime(dt: datetime) -> str:
    """ISO 8601 with seconds; UTC written as ``Z``."""
    text = dt.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def add_months(day: date, months: int) -> date:
    """Calendar months; the day is clamped to the target month's length (31 Mar - 1m = 28/29 Feb)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def resolve_date(value: Any, now: datetime) -> str:
    """A compact date as a FHIR date string: absolute (``YYYY[-MM[-DD]]``, kept at its precision),
    a dateTime (kept), or relative to ``now`` (``today``, ``-3d``, ``-15w``, ``-2m``, ``-1y``)."""
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if not isinstance(value, str):
        raise CaseError(f"date: expected a string, got {value!r}")
    text = value.strip()
    if text == "today":
        return now.date().isoformat()
    m = _RELATIVE.match(text)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        today = now.date()
        if unit == "d":
            return (today + timedelta(days=n)).isoformat()
        if unit == "w":
            return (today + timedelta(weeks=n)).isoformat()
        return add_months(today, n if unit == "m" else 12 * n).isoformat()
    if _PARTIAL.match(text):
        return text
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    try:
        return format_datetime(parse_now(text))
    except (ValueError, CaseError):
        raise CaseError(f"date: cannot read {value!r}") from None


def to_date(value: str) -> date:
    """The first day a resolved FHIR date/dateTime can mean (``2024-11`` → 2024-11-01)."""
    if len(value) == 4:
        return date(int(value), 1, 1)
    if len(value) == 7:
        return date(int(value[:4]), int(value[5:7]), 1)
    return date.fromisoformat(value[:10])


def resolve_datetime(value: Any, now: datetime, time: Any = None) -> str:
    """A date plus a clock time as a FHIR dateTime. Without ``time`` the clock time is 15 minutes
    before ``now``'s, so a reading dated ``today`` precedes the hook."""
    resolved = resolve_date(value, now)
    if "T" in resolved or len(resolved) < 10:
        return resolved
    day = date.fromisoformat(resolved)
    if time is None:
        clock = (now - timedelta(minutes=15)).timetz()
    else:
        m = _TIME.match(str(time))
        if not m:
            raise CaseError(f"time: expected HH:MM, got {time!r}")
        clock = now.timetz().replace(
            hour=int(m.group(1)), minute=int(m.group(2)), second=int(m.group(3) or 0), microsecond=0
        )
    return format_datetime(datetime.combine(day, clock))


def birth_date_for_age(age: Any, now: datetime) -> str:
    """A birthDate giving ``age`` at ``now``: an integer age puts the last birthday four months
    before ``now``; ``"17y364d"`` means exactly 17 years and 364 days old (18 tomorrow)."""
    today = now.date()
    if isinstance(age, bool):
        raise CaseError(f"patient.age: expected years or 'NyMd', got {age!r}")
    if isinstance(age, int):
        years, days, months_back = age, 0, 4
    else:
        m = _AGE.match(str(age).replace(" ", ""))
        if not m:
            raise CaseError(f"patient.age: expected years or 'NyMd', got {age!r}")
        years, days, months_back = int(m.group(1)), int(m.group(2) or 0), 0
    anniversary = add_months(today, -12 * years)
    return (add_months(anniversary, -months_back) - timedelta(days=days)).isoformat()


def age_at(birth_date: str, now: datetime) -> int:
    """Completed years at ``now`` (the same arithmetic the facts layer uses)."""
    born, today = to_date(birth_date), now.date()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))
