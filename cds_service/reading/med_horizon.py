"""How far back the rules read medication records, and which records lie beyond it.

The rule set says (``engine/med_windows.py``) how many days back each medication value set is read
(an interaction's grace or washout days, a course's recent sessions) and which value sets are read
over the whole history (TRD trials, the pathway, ketamine courses). A record of a drug whose every
value set is read within windows, and whose validated end lies before the longest of them plus a
margin, can change no answer. It is validated as any record (an unreadable one is reported and
makes its checks unknown; its ignored elements are counted), then left out of the medication uses:
no use, dosage, grouping or question about it. Anything uncertain (no end) is kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any

from .lazy import lazy
from .record import PatientRecord
from .terminology import DrugMatch, Terminology
from .timeline import SUPPLY_KINDS

#: days beyond the longest window still kept: a day boundary in another time zone, and one more
MARGIN_DAYS = 2


class Horizon:
    """Per medication value set, the longest window (days) any rule reads it with; the value sets
    read over the whole history. A value set no rule reads has a window of 0 days."""

    __slots__ = ("windows", "history", "margin")

    def __init__(
        self, windows: Mapping[str, float], history: Iterable[str], margin: int = MARGIN_DAYS
    ) -> None:
        self.windows = dict(windows)
        self.history = frozenset(history)
        self.margin = margin

    def __repr__(self) -> str:
        return f"Horizon({self.windows!r}, history={sorted(self.history)!r})"

    def days(self, valuesets: Iterable[str]) -> float | None:
        """The longest window of these value sets; None when one is read over the whole history."""
        longest = 0.0
        windows, history = self.windows, self.history
        for vs in valuesets:
            if vs in history:
                return None
            days = windows.get(vs, 0.0)
            if days > longest:
                longest = days
        return longest

    def cutoff(self, valuesets: Iterable[str], today: date) -> date | None:
        """The day before which a record of a drug in these value sets can matter to no rule
        (a record ended before it is left out); None when every record may matter."""
        days = self.days(valuesets)
        if days is None or math.isinf(days) or math.isnan(days):
            return None
        try:
            return today - timedelta(days=math.ceil(days) + self.margin)
        except OverflowError:
            return None


class HorizonFacts:
    """What the medication facts skip (a mixin of :class:`~.medication_use.MedicationFacts`)."""

    record: PatientRecord
    t: Terminology
    today: date
    #: how far back the rules read each medication value set (None: every record is kept)
    medication_horizon: Horizon | None = None

    @lazy
    def _ends_with_supply(self) -> set[str]:
        """Ingredients of the stopped or completed requests and statements used whose end is
        their last supply (no past end of their own): their dispenses are kept, however old."""
        return set()

    @lazy
    def _cutoffs(self) -> dict[tuple[frozenset[str], frozenset[str]], date | None]:
        return {}

    @lazy
    def _draft_ids(self) -> frozenset[str]:
        """The draft orders' ids: a record of the order being decided is always kept."""
        return frozenset(r["id"] for r in self.record.draft_orders if isinstance(r.get("id"), str))

    def _cutoff_of(self, drug: DrugMatch) -> date | None:
        """The day before which a record of this drug can matter to no rule (see
        :mod:`.med_horizon`); None when every record of it may (or without a horizon)."""
        horizon = self.medication_horizon
        if horizon is None or not drug.ingredients:
            return None
        key = (drug.ingredients, drug.products)
        cutoffs = self._cutoffs
        if key in cutoffs:
            return cutoffs[key]
        cut = cutoffs[key] = horizon.cutoff(self.t.valuesets_of(drug), self.today)
        return cut

    def _beyond_horizon(
        self, res: dict[str, Any], rtype: str, drug: DrugMatch, start: date | None, end: date | None
    ) -> bool:
        """Whether a validated record (its dates ``start``, ``end``) is left out of the uses: what
        :attr:`~.medication_use.MedicationFacts.medication_uses` decides inline for the rest."""
        cutoff = self._cutoff_of(drug)
        if cutoff is None or end is None or end >= cutoff:
            return False
        if rtype in SUPPLY_KINDS:
            if start is None or start >= cutoff:
                return False
            stopped = self._ends_with_supply
            if stopped and not stopped.isdisjoint(drug.ingredients):
                return False
        rid = res.get("id")
        return not (rid.__class__ is str and rid in self._draft_ids)
