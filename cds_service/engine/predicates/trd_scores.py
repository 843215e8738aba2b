"""Depression scores of TRD: the change of score that decides a trial's outcome, and the scores
that could not be read (or are not numbers) which, read, could change it."""

from __future__ import annotations

from datetime import date
from typing import Any

from ...reading.facts import Facts, ObservationFact, Trial

#: days (before, after) a trial's start and end in which its outcome scores are read
START_WINDOW, END_WINDOW = (21, 7), (21, 14)


def unread_scores(facts: Facts, s: dict[str, Any]) -> list[tuple[str, date | None, str]]:
    """(reference, day or None when it could not be read, kind) of each depression score not read,
    of the kinds that separate episodes or show a trial's response, up to today: the readings that
    could not be read, and those read whose value is not a number (a valueString "19": valid FHIR,
    but nothing the thresholds compare)."""
    out: list[tuple[str, date | None, str]] = []
    for kind in weighed_kinds(s):
        for r, when in facts.unread_readings(kind):
            day = when.date() if when is not None else None
            if day is None or day <= facts.today:
                out.append((r, day, kind))
        out.extend((o.ref, o.when.date(), kind) for o in not_numbers(facts, kind))
    return out


def weighed_kinds(s: dict[str, Any]) -> dict[str, None]:
    """The score kinds TRD reads: those that separate episodes, then those of trials' outcomes."""
    return dict.fromkeys([*(s["remission_below"] or {}), *s["score_kinds"]])


def not_numbers(facts: Facts, kind: str) -> list[ObservationFact]:
    """The readings of a kind whose value is there but is not a number (text or a code). One with
    no value at all holds no score: it is not weighed."""
    return [
        o
        for o in facts.series(kind)
        if o.value is None and (o.text or o.code) and o.when.date() <= facts.today
    ]


def trial_span(facts: Facts, view: dict[str, Any]) -> tuple[date, date]:
    """A counted trial's start and end (an ongoing one's: today), from its view."""
    end = date.fromisoformat(view["end"]) if view["end"] else facts.today
    return date.fromisoformat(view["start"]), end


def windows(span: tuple[date, date]) -> tuple[tuple[date, tuple[int, int]], ...]:
    return (span[0], START_WINDOW), (span[1], END_WINDOW)


def in_window(day: date, anchor: date, window: tuple[int, int]) -> bool:
    return -window[0] <= (day - anchor).days <= window[1]


def unread_near(
    s: dict[str, Any], span: tuple[date, date], unread: list[tuple[str, date | None, str]]
) -> bool:
    """Whether a dated score not read lies where a trial's outcome scores are read."""
    return any(
        kind in s["score_kinds"]
        and day is not None
        and any(in_window(day, anchor, window) for anchor, window in windows(span))
        for _, day, kind in unread
    )


def could_change(
    facts: Facts, s: dict[str, Any], span: tuple[date, date], unread: list[tuple[str, date | None, str]]
) -> list[str]:
    """The unread scores that, read, could change a trial's score change (:func:`score_change`):
    of a kind read before any kind whose readable scores make a pair (that pair decides), in the
    window of its start or end and at least as near as the score read there (undated: anywhere),
    and with a score, read or not, at the other end to make a pair with."""
    out: list[str] = []
    for kind in s["score_kinds"]:
        series = facts.series(kind)
        read: list[ObservationFact | None] = []
        near: list[list[str]] = []
        for anchor, window in windows(span):
            got = nearest(series, anchor, window)
            read.append(got)
            near.append(
                [r for r, day, k in unread if k == kind and could_be_nearest(day, anchor, window, got)]
            )
        ends = [bool(read[i]) or bool(near[i]) for i in (0, 1)]
        pair = all(ends) and (read[0] or read[1] or len(set(near[0]) | set(near[1])) >= 2)
        if pair and (near[0] or near[1]):
            out.extend(r for r in near[0] + near[1] if r not in out)
        if makes_pair(read[0], read[1]):
            break  # this kind's readable pair decides: later kinds are never read for this trial
    return out


def could_be_nearest(
    day: date | None, anchor: date, window: tuple[int, int], read: ObservationFact | None
) -> bool:
    """Whether a score not read, on ``day`` (None: not known), could be the one read at ``anchor``."""
    if day is None:
        return True
    if not in_window(day, anchor, window):
        return False
    return read is None or abs((day - anchor).days) <= abs((read.when.date() - anchor).days)


def score_change(facts: Facts, t: Trial, kinds: tuple[str, ...]) -> dict[str, Any] | None:
    """The change between the scores nearest a trial's start and end, of the first kind that has a
    pair (:func:`makes_pair`)."""
    for kind in kinds:
        series = facts.series(kind)
        base, end = nearest(series, t.start, START_WINDOW), nearest(series, t.end, END_WINDOW)
        if makes_pair(base, end):
            pct = (base.value - end.value) / base.value * 100
            return {
                "kind": kind.upper().replace("PHQ9", "PHQ-9"),
                "start": f"{base.value:g}",
                "end": f"{end.value:g}",
                "improvement_pct": pct,
            }
    return None


def makes_pair(base: ObservationFact | None, end: ObservationFact | None) -> bool:
    """Whether two scores make a change of score: two of them, the first not 0 (no percentage)."""
    return (
        base is not None
        and end is not None
        and base is not end
        and bool(base.value)
        and end.value is not None
    )


def nearest(series: list[ObservationFact], day: date, window: tuple[int, int]) -> ObservationFact | None:
    best = None
    for o in series:
        delta = (o.when.date() - day).days
        if (
            -window[0] <= delta <= window[1]
            and o.value is not None
            and (best is None or abs(delta) < abs((best.when.date() - day).days))
        ):
            best = o
    return best
