"""Medication use: every medication record as a :class:`MedUse`, trials, sessions, draft orders.

Which drug a record names is :mod:`.medications`' job (inline code, contained, included or fetched
Medication); how one record is read (validated parts, dates, lazily its dosage) is
:mod:`.medication_records`'; this module gathers the records of a request and answers the rules'
questions about them. The records are grouped once per request by drug (ingredients and products),
and each question about a value set reads only the groups of its drugs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

import orjson
from orjson import dumps

from .dosage import ROUTES, Dosing, Memo, infusion_minutes, minutes, per_day, route_of
from .lazy import lazy
from .med_horizon import HorizonFacts
from .medication_records import DATES, DRAFT_IDENTITY, READS, MedUse, Reading, stop_reason
from .medications import MedicationResolver
from .record import PatientRecord, ref
from .terminology import DrugMatch, Terminology
from .timeline import ENDED_MED_STATUS, NEVER_TAKEN_MED_STATUS, SUPPLY_KINDS, in_effect

__all__ = [
    "READS",
    "ROUTES",
    "Dosing",
    "MedUse",
    "MedicationFacts",
    "Trial",
    "infusion_minutes",
    "minutes",
    "per_day",
    "route_of",
]

_NOT_A_USE = frozenset({"entered-in-error", "draft"})  # a record's status that is no use of the drug
INACTIVE_MED_STATUS = {"completed", "stopped", "cancelled", "entered-in-error", "not-taken", "ended"}


#: why a daily dose is only a lower bound: a dose in mg without how often (a timing code alone, none)
FREQUENCY_UNREAD = "a dose without how often it is taken"


class Trial:
    """Use of one ingredient consolidated from every record of it (dose changes are one trial).

    Its dose is read when first asked for (:attr:`max_daily_dose`): most trials a rule looks at
    are left out before their dose matters (ended before the episode, too short, stopped for
    intolerance)."""

    __slots__ = (
        "ingredient",
        "start",
        "end",
        "ongoing",
        "refs",
        "stop_reasons",
        "text_matched",
        "_uses",
        "_dose",
    )

    def __init__(
        self,
        ingredient: str,
        start: date,
        end: date,
        ongoing: bool,
        uses: list[MedUse],
    ) -> None:
        self.ingredient = ingredient
        self.start = start
        self.end = end
        self.ongoing = ongoing
        self._uses = uses
        self.refs: list[str] = [u.ref for u in uses]
        self.stop_reasons: list[str] = [u.stop_reason for u in uses if u.stop_reason]
        self.text_matched = any(u.drug.matched_by == "text" for u in uses)
        self._dose: tuple[float | None, tuple[str, ...], list[str]] | None = None

    def __repr__(self) -> str:
        return f"Trial({self.ingredient!r}, {self.start}, {self.end}, ongoing={self.ongoing})"

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def weeks(self) -> int:
        return self.days // 7

    def _doses(self) -> tuple[float | None, tuple[str, ...], list[str]]:
        d = self._dose
        if d is None:
            doses: list[float] = []
            unread: dict[str, None] = {}
            unread_refs: list[str] = []
            for u in self._uses:
                daily = u.daily_dose
                if daily is not None:
                    doses.append(daily)
                    if u.doses_per_day is None:  # the dose once a day: at least that (a lower bound)
                        unread[FREQUENCY_UNREAD] = None
                        unread_refs.append(u.ref)
                    continue
                why = u.daily_dose_unread
                if why is not None:
                    unread[why] = None
                    unread_refs.append(u.ref)
            d = self._dose = (max(doses) if doses else None, tuple(unread), unread_refs)
        return d

    @property
    def max_daily_dose(self) -> float | None:
        """The highest daily dose in mg its records state and that could be read (None: none); a
        dose without a frequency counts once a day, as a lower bound (see :attr:`dose_unread`)."""
        return self._doses()[0]

    @property
    def dose_unread(self) -> tuple[str, ...]:
        """Why doses its records state could not be read as mg/day (each reason once, in record
        order; see :attr:`MedUse.daily_dose_unread`, :data:`FREQUENCY_UNREAD`): then
        :attr:`max_daily_dose` is only a lower bound (or None), and "no dose recorded" is not
        true. Empty when every stated dose was read."""
        return self._doses()[1]

    @property
    def dose_unread_refs(self) -> list[str]:
        """The records whose stated dose could not be read."""
        return self._doses()[2]


_start = attrgetter("start")  # a sort key for records (and trials) that all have a start
_seq = attrgetter("seq")  # a record's place in the record (see MedicationFacts._uses_by_drug)
_Span = tuple[date, date, bool, MedUse]  # a record's start, end (no later than today), ongoing
_first = itemgetter(0)


def _trial(ingredient: str, spans: list[_Span]) -> Trial:
    """One trial of the records ``spans`` (by start): ongoing when any is, ending at the latest
    end, or, ended, no later than the last end a prescription or statement itself recorded."""
    ongoing = any(s[2] for s in spans)
    end = max(s[1] for s in spans)
    uses = [s[3] for s in spans]
    if not ongoing:
        explicit = [u.end for u in uses if u.kind != "MedicationDispense" and u.end is not None]
        if explicit:
            end = min(end, max(explicit))
    return Trial(ingredient, spans[0][0], end, ongoing, uses)


# -- the medication half of Facts -------------------------------------------------------------------
class MedicationFacts(HorizonFacts):
    """Medication records, trials and sessions (a mixin of :class:`~.facts.Facts`)."""

    record: PatientRecord
    t: Terminology
    today: date
    hook: str
    malformed_meds: list[tuple[str, DrugMatch]]
    malformed_orders: list[tuple[str, DrugMatch]]
    unidentified_orders: list[dict[str, Any]]
    unresolved_meds: list[dict[str, Any]]
    _trials: dict[tuple[str, int], list[Trial]]
    _uses_in: dict[str, list[MedUse]]

    @lazy
    def medication_uses(self) -> list[MedUse]:
        """Every medication record read (drafts aside), in record order: one loop per kind with
        the common shape inline (the drug inline, a status string), as it runs for every record
        of a long medication list; :meth:`_med_use` reads the rest alike.

        A record is validated (and reported) as always; one no rule can need is then left out of
        the uses (:mod:`.med_horizon`): its drug is read only within windows and its validated
        dates end before the longest of them. Not so a dispense or administration of a drug a
        stopped or completed record here shares, when that record ends with its last supply
        (``timeline.ended_on``), nor a record of a draft order's id."""
        uses: list[MedUse] = []
        append = uses.append
        record = self.record
        readable = record.readable
        drugs = self._drugs
        match = self.t.match_drug
        malformed = self.malformed_meds
        horizon = self.medication_horizon
        cutoff_of = self._cutoff_of
        drafts = self._draft_ids if horizon is not None else frozenset()
        stopped = self._ends_with_supply
        today = self.today
        # A course's records follow one another with one concept: equal to the last one (a C
        # comparison), it names the same drug. Safe as a key: match_drug reads only its strings
        # (codes, systems, text, displays; another type is skipped), and equal dicts have equal
        # strings. (Not so for a dosage, whose reading tells 1 from 1.0 and True.)
        last_concept: Any = None
        last_drug = DrugMatch()
        cutoff: date | None = None  # last_drug's (see _cutoff_of)
        for rtype, (core, dosage_reads) in READS.items():
            resources = record.resources(rtype)
            if not resources:
                continue
            dates = DATES[rtype]
            reading = Reading(record, dosage_reads, self._dosings)
            supply = rtype in SUPPLY_KINDS  # (requests and statements come first: READS' order)
            for res in resources:
                concept = res.get("medicationCodeableConcept")
                status = res.get("status")
                if not isinstance(concept, dict) or status.__class__ is not str:
                    use = self._med_use(res, rtype)
                    if use is not None:
                        append(use)
                        if (
                            not supply
                            and use.status in ENDED_MED_STATUS
                            and (use.end is None or use.end > today)
                        ):
                            stopped.update(use.drug.ingredients)
                    continue
                if concept == last_concept:
                    drug = last_drug
                else:
                    try:  # the drug, by the concept's JSON (what _drug_of does)
                        content = dumps(concept)
                    except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
                        drug = match(concept)
                    else:
                        drug = drugs.get(content)
                        if drug is None:
                            drug = drugs[content] = match(concept)
                    last_concept, last_drug = concept, drug
                    cutoff = cutoff_of(drug) if horizon is not None else None
                if not drug.ingredients or status in _NOT_A_USE:
                    continue
                if ("intent" in res or "doNotPerform" in res) and (
                    res.get("intent") == "proposal" or res.get("doNotPerform") is True
                ):
                    continue
                if not readable(res, core):
                    malformed.append((ref(res), drug))
                    continue
                start, end = dates(res)
                if (
                    cutoff is not None
                    and end is not None
                    and end < cutoff
                    and (not supply or (start is not None and start < cutoff))
                    and not (supply and stopped and not stopped.isdisjoint(drug.ingredients))
                    and not (drafts and (rid := res.get("id")).__class__ is str and rid in drafts)
                ):
                    continue  # validated, and no rule can need it: no use made of it
                reason = stop_reason(res) if "statusReason" in res or "note" in res else ""
                append(MedUse(None, rtype, drug, status, start, end, reason, res, reading))
                if not supply and status in ENDED_MED_STATUS and (end is None or end > today):
                    stopped.update(drug.ingredients)
        return uses

    @lazy
    def medications(self) -> MedicationResolver:
        """Which drug each record names (inline, contained, included or fetched Medication)."""
        return MedicationResolver(self.record, self.t)

    @lazy
    def drafts(self) -> list[MedUse]:
        """Every draft MedicationRequest of the request (the whole order set), identified."""
        out = []
        for res in self.record.draft_orders:
            if res.get("resourceType") != "MedicationRequest":
                continue
            use = self._med_use(res, "draft")
            if use is not None:
                out.append(use)
        return out

    @lazy
    def orders(self) -> list[MedUse]:
        """The orders being decided on: the selected draft orders (order-select) or all of them."""
        selected = set(self.record.selections)
        if self.hook == "order-select" and selected:
            by_url = self.record.full_urls

            def named(res: dict[str, Any]) -> bool:
                r = ref(res)
                return any(s == r or s.endswith("/" + r) or by_url.get(s) is res for s in selected)

            chosen = [u for u in self.drafts if named(u.resource)]
            if chosen or any(named(d) for d in self.record.draft_orders):
                return chosen
            # selections that name no entry of draftOrders (another form of reference, a draft
            # without id): every draft is checked rather than none
            return list(self.drafts)
        return list(self.drafts)

    def unreadable_medications_in(self, valueset: str) -> list[str]:
        """References of unreadable medication records of a drug in the value set."""
        _ = self.medication_uses
        return [r for r, drug in self.malformed_meds if self.t.drug_in(drug, valueset)]

    def unresolved_in_effect(self, grace_days: int = 0) -> list[str]:
        """References of records in effect today whose drug is not known at all (a
        ``medicationReference`` nothing could read, without a display): "is the patient taking X?"
        cannot be answered "no" while they are there."""
        _ = self.medication_uses
        out = []
        for res in self.unresolved_meds:
            rtype = str(res.get("resourceType"))
            if rtype not in READS or not self.record.readable(res, READS[rtype][0]):
                continue
            start, end = DATES[rtype](res)
            use = MedUse(ref(res), rtype, DrugMatch(), str(res.get("status") or ""), start, end)
            if rtype == "MedicationAdministration":
                if start and 0 <= (self.today - start).days <= max(grace_days, 1):
                    out.append(use.ref)
            elif in_effect(use, [], self.today, grace_days):
                out.append(use.ref)
        return out

    def unidentified_uses(self) -> list[str]:
        """References of the records (drafts aside) that could be a use of some drug but whose drug
        is not known at all (a ``medicationReference`` nothing could read, without a display):
        any drug, an antidepressant included. Not those entered in error, drafts, not taken,
        proposals or orders not to give the drug (no use of any drug)."""
        _ = self.medication_uses
        out = []
        for res in self.unresolved_meds:
            status = res.get("status")
            if (
                # a status that is no code (invalid) cannot say the record is no use: it may be one
                (status.__class__ is str and (status in _NOT_A_USE or status in NEVER_TAKEN_MED_STATUS))
                or res.get("intent") == "proposal"
                or res.get("doNotPerform") is True
            ):
                continue
            out.append(ref(res))
        return out

    def unreadable_orders_in(self, valueset: str) -> list[str]:
        """References of unreadable draft orders of a drug in the value set."""
        _ = self.orders
        return [r for r, drug in self.malformed_orders if self.t.drug_in(drug, valueset)]

    @lazy
    def _drugs(self) -> dict[bytes, DrugMatch]:
        """This request's drug matches by the concept's JSON (a course's request and dispenses
        repeat one concept); words and all, as it lives only as long as the request."""
        return {}

    @lazy
    def _dosings(self) -> Memo:
        """This request's dosage readings (see :func:`~.dosage.dosing_of`), read with the rule
        set's timing codes."""
        return Memo(self.t.timing)

    def _drug_of(self, concept: dict[str, Any]) -> DrugMatch:
        try:
            content = orjson.dumps(concept)
        except (TypeError, ValueError, orjson.JSONEncodeError):
            return self.t.match_drug(concept)
        drugs = self._drugs
        drug = drugs.get(content)
        if drug is None:
            drug = drugs[content] = self.t.match_drug(concept)
        return drug

    def _med_use(self, res: dict[str, Any], kind: str) -> MedUse | None:
        concept = res.get("medicationCodeableConcept")
        if isinstance(concept, dict):  # most records: the drug inline (what identify() does first)
            drug = self._drug_of(concept)
            if not drug.ingredients:
                if kind == "draft":
                    self.unidentified_orders.append(res)
                return None
        else:
            identified = self.medications.identify(res)
            drug = identified.drug
            if not drug.ingredients:
                if kind == "draft":
                    self.unidentified_orders.append(res)
                elif identified.reference and not drug.text:  # a Medication nothing could read, no name
                    self.unresolved_meds.append(res)
                return None
        status = res.get("status")
        if not isinstance(status, str):
            status = str(status or "")
        record = self.record
        if kind == "draft":
            if not record.readable(res, DRAFT_IDENTITY):
                self.malformed_orders.append((ref(res), drug))
                return None
            core, dosage_reads = READS["MedicationRequest"]
            if not record.readable(res, core):
                reading = Reading(record, dosage_reads, self._dosings)
                return MedUse(None, kind, drug, "", None, None, "", res, reading)
            start, end = DATES["MedicationRequest"](res)
        else:
            if (
                status in ("entered-in-error", "draft")
                or res.get("intent") == "proposal"
                or res.get("doNotPerform") is True  # a request NOT to give the drug (a modifier element)
            ):
                return None
            core, dosage_reads = READS[kind]
            if not record.readable(res, core):
                self.malformed_meds.append((ref(res), drug))
                return None
            start, end = DATES[kind](res)
            if self.medication_horizon is not None and self._beyond_horizon(res, kind, drug, start, end):
                return None  # validated, and no rule can need it: no use made of it
        reason = stop_reason(res) if "statusReason" in res or "note" in res else ""
        reading = Reading(record, dosage_reads, self._dosings)
        return MedUse(None, kind, drug, status, start, end, reason, res, reading)

    def drafts_in(self, valueset: str, *, excluding: MedUse | None = None) -> list[MedUse]:
        """Drafts of the value set in the request, the one ``excluding`` aside: orders signed
        together are concurrent medications."""
        return [u for u in self.drafts if u is not excluding and self.t.drug_in(u.drug, valueset)]

    @lazy
    def _uses_by_drug(self) -> list[list[MedUse]]:
        """The records grouped by what value-set membership depends on (ingredients and products),
        each numbered with its place in the record (``seq``): a long list holds a few drugs, asked
        about by many rules, and a course's records follow one another with one drug."""
        groups: dict[tuple[frozenset[str], frozenset[str]], list[MedUse]] = {}
        last: DrugMatch | None = None
        members: list[MedUse] = []
        for i, u in enumerate(self.medication_uses):
            u.seq = i
            drug = u.drug
            if drug is not last:
                last = drug
                key = (drug.ingredients, drug.products)
                found = groups.get(key)
                members = groups[key] = [] if found is None else found
            members.append(u)
        return list(groups.values())

    @lazy
    def _groups_in(self) -> dict[str, list[list[MedUse]]]:
        """The groups of :attr:`_uses_by_drug` by the medication value sets their drug is in."""
        index: dict[str, list[list[MedUse]]] = {}
        valuesets_of = self.t.valuesets_of
        for group in self._uses_by_drug:
            for vs in valuesets_of(group[0].drug):
                index.setdefault(vs, []).append(group)
        return index

    def uses_in(self, valueset: str) -> list[MedUse]:
        """Medication records of a drug in the value set, in record order (memoised per request;
        read it, never change it)."""
        hit = self._uses_in.get(valueset)
        if hit is None:
            parts = self._groups_in.get(valueset)
            if not parts:
                hit = []
            elif len(parts) == 1:
                hit = parts[0]
            else:
                hit = sorted(chain.from_iterable(parts), key=_seq)  # places are unique
            self._uses_in[valueset] = hit
        return hit

    def active_uses(self, valueset: str, *, grace_days: int = 0) -> list[MedUse]:
        """Medication records of a value set in effect today (not the draft orders)."""
        uses = self.uses_in(valueset)
        if not uses:
            return []
        by_ingredient: dict[str, list[MedUse]] | None = None
        today = self.today
        window = max(grace_days, 1)
        try:  # ended more than grace_days ago: ended before this day
            cutoff = today - timedelta(days=grace_days)
        except OverflowError:
            cutoff = date.min if grace_days > 0 else date.max
        out = []
        for u in uses:
            kind, status = u.kind, u.status
            if kind == "MedicationAdministration":
                if status not in NEVER_TAKEN_MED_STATUS and u.start and (today - u.start).days <= window:
                    out.append(u)
            elif status in ENDED_MED_STATUS and kind != "MedicationDispense":
                # the supplies of the same drug: a stopped record counts until its last supply
                # (all that ended_on reads of the other records)
                if by_ingredient is None:
                    by_ingredient = {}
                    for v in uses:
                        if v.kind in SUPPLY_KINDS:
                            for ing in v.drug.ingredients:
                                by_ingredient.setdefault(ing, []).append(v)
                ingredients = u.drug.ingredients
                if len(ingredients) == 1:
                    same: Iterable[MedUse] = by_ingredient.get(next(iter(ingredients)), ())
                else:
                    same = [v for ing in ingredients for v in by_ingredient.get(ing, ())]
                if in_effect(u, same, today, grace_days):
                    out.append(u)
            # in_effect of a record not ended, inline (most of a long list): neither never
            # taken, nor yet to start, nor ended before the grace window
            elif not (
                status in NEVER_TAKEN_MED_STATUS
                or (u.start is not None and u.start > today)
                or (u.end is not None and u.end < cutoff)
            ):
                out.append(u)
        return out

    def orders_in(self, valueset: str) -> list[MedUse]:
        """The orders of a drug in the value set (memoised per request: rules of one drug ask
        again and again; read it, never change it)."""
        hit = self._orders_in.get(valueset)
        if hit is None:
            drug_in = self.t.drug_in
            hit = self._orders_in[valueset] = [o for o in self.orders if drug_in(o.drug, valueset)]
        return hit

    @lazy
    def _orders_in(self) -> dict[str, list[MedUse]]:
        return {}

    def trials(self, valueset: str, *, merge_gap_days: int = 30) -> list[Trial]:
        """Use of each ingredient of a value set, consolidated into trials, oldest first.

        Records of one ingredient less than ``merge_gap_days`` apart are one trial (dose changes,
        refills). A stopped or completed prescription's own end date is the trial's end: the tail of
        the last dispensed supply does not lengthen it.
        """
        key = (valueset, merge_gap_days)
        hit = self._trials.get(key)
        if hit is not None:
            return hit
        today = self.today
        # each record's span once: (start, end as far as today, ongoing, the record)
        spans: dict[str, list[_Span]] = {}
        drug_in = self.t.drug_in
        last: DrugMatch | None = None
        ingredients: frozenset[str] = frozenset()
        for u in self.uses_in(valueset):
            start, kind = u.start, u.kind
            if start is None or kind == "MedicationAdministration":
                continue
            end = u.end
            ongoing = (
                kind != "MedicationDispense"
                and u.status not in INACTIVE_MED_STATUS
                and (end is None or end >= today)
            )
            if end is None:
                end = today if ongoing else start
            span = (start, end if end < today else today, ongoing, u)
            if u.drug is not last:  # a course's records follow one another, one drug
                last = u.drug
                ingredients = drug_in(last, valueset)
            for ing in ingredients:
                spans.setdefault(ing, []).append(span)
        trials: list[Trial] = []
        for ing, items in spans.items():
            items.sort(key=_first)  # by start alone: records starting the same day keep their order
            group = [items[0]]
            group_end = items[0][1]
            for span in items[1:]:
                if (span[0] - group_end).days <= merge_gap_days:
                    group.append(span)
                    if span[1] > group_end:
                        group_end = span[1]
                else:
                    trials.append(_trial(ing, group))
                    group = [span]
                    group_end = span[1]
            trials.append(_trial(ing, group))
        trials.sort(key=_start)
        self._trials[key] = trials
        return trials

    def sessions(self, valueset: str) -> list[MedUse]:
        """Administrations of a drug (e.g. ketamine), oldest first, none in the future."""
        today = self.today
        out = [
            u
            for u in self.uses_in(valueset)
            if u.kind == "MedicationAdministration"
            and u.start is not None
            and u.start <= today
            and u.status not in ("not-done", "entered-in-error", "stopped")
        ]
        out.sort(key=_start)
        return out
