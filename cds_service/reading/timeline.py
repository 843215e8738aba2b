"""When a medication record was in effect: start, end, and how long after its end it still counts.

A stopped or completed prescription or statement still matters for interactions with a washout
(an MAOI stopped ten days ago): it counts until its end plus the rule's grace window. Its end is the
record's own end date when that is past; otherwise the end of the last supply dispensed or the last
administration of the same drug; otherwise, when its recorded end is still ahead (stopped early on
an unknown day), the day the record was last updated (``meta.lastUpdated``: stopping an order updates
it), else today — the safe reading; otherwise its start.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Protocol

from .dates import parse_date

# Taken, then ended: counts until its end plus the washout/grace window.
ENDED_MED_STATUS = frozenset({"completed", "stopped"})
# Never taken or never handed over: never counts.
NEVER_TAKEN_MED_STATUS = frozenset({"cancelled", "entered-in-error", "not-taken", "declined", "not-done"})
# The records that say when a supply ran out or a dose was given (what ended_on reads of the others).
SUPPLY_KINDS = frozenset({"MedicationDispense", "MedicationAdministration"})


class Use(Protocol):  # the parts of facts.MedUse this module reads
    kind: str
    status: str
    start: date | None
    end: date | None

    @property
    def drug(self) -> object: ...


def ended_on(use: Use, same_drug: Iterable[Use], today: date) -> date | None:
    """The day a stopped/completed record's use ended (see the module docstring)."""
    if use.end is not None and use.end <= today:
        return use.end
    supply = [
        min(d, today)
        for u in same_drug
        if u.kind in SUPPLY_KINDS
        and (d := u.end or u.start) is not None
        and (use.start is None or d >= use.start)
    ]
    if supply:
        return max(supply)
    if use.end is not None:  # recorded end still ahead, yet stopped: the day is not recorded
        updated = _last_updated(use)
        if updated is not None and (use.start is None or updated >= use.start):
            return min(updated, today)
        return today
    return use.start


def _last_updated(use: Use) -> date | None:
    """``meta.lastUpdated`` of the record, if readable (a wrong value only falls back to today)."""
    meta = getattr(use, "resource", {}).get("meta")
    return parse_date(meta.get("lastUpdated")) if isinstance(meta, dict) else None


def in_effect(use: Use, same_drug: Iterable[Use], today: date, grace_days: int) -> bool:
    """Whether a (non-draft, non-administration) record counts today, ``grace_days`` after its end."""
    if use.status in NEVER_TAKEN_MED_STATUS:
        return False
    if use.start and use.start > today:
        return False
    if use.status in ENDED_MED_STATUS and use.kind != "MedicationDispense":
        end = ended_on(use, same_drug, today)
        return end is not None and (today - end).days <= grace_days
    return not (use.end and (today - use.end).days > grace_days)
