"""Medication use: every medication record as a :class:`MedUse`, trials, sessions, draft orders.

Which drug a record names is :mod:`.medications`' job (inline code, contained, included or fetched
Medication); this module reads what the record says about its use.

A record is read in two parts, each validated on its own (:class:`~.elements.Reads`): what it is
and when (drug, status, intent, dates, stop reasons) and how it is dosed (dose, rate, timing,
route). An unreadable first part makes the record unknown (a rule that would have read it asks for
it); an unreadable dosage leaves the record known with its dose, route and duration unknown.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from datetime import date
from functools import cached_property, lru_cache
from typing import Any

import orjson

from .dates import parse_date
from .elements import Reads
from .medications import MedicationResolver
from .raw import add_days, as_dict, as_float, as_list
from .record import PatientRecord, ref
from .terminology import DrugMatch, Terminology, concept_text
from .timeline import NEVER_TAKEN_MED_STATUS, in_effect
from .units import dose as dose_of
from .units import rate as rate_of
from .units import ratio_rate

ROUTES = {
    "iv": ("intravenous", "iv", "i.v."),
    "im": ("intramuscular", "im", "i.m."),
    "sc": ("subcutaneous", "sc", "s.c.", "subcut"),
    "nasal": ("nasal", "intranasal"),
    "oral": ("oral", "po", "by mouth", "sublingual"),
    "transdermal": ("transdermal", "topical"),
}
FORM_ROUTE = {"nasal": "nasal", "oral": "oral", "transdermal": "transdermal"}
INACTIVE_MED_STATUS = {"completed", "stopped", "cancelled", "entered-in-error", "not-taken", "ended"}

_DOSAGE = ("doseAndRate", "timing", "route", "text")
# What each kind of record is read for: (identity, status and dates; dosage).
READS: dict[str, tuple[Reads, Reads]] = {
    "MedicationRequest": (
        Reads(
            "MedicationRequest",
            "status",
            "intent",
            "medication[x]",
            "authoredOn",
            "dispenseRequest.validityPeriod",
            "dosageInstruction.timing.repeat.bounds[x]",
            "statusReason",
            "note",
        ),
        Reads("MedicationRequest", *(f"dosageInstruction.{e}" for e in _DOSAGE)),
    ),
    "MedicationStatement": (
        Reads(
            "MedicationStatement",
            "status",
            "medication[x]",
            "effective[x]",
            "dateAsserted",
            "statusReason",
            "note",
        ),
        Reads("MedicationStatement", *(f"dosage.{e}" for e in _DOSAGE)),
    ),
    "MedicationDispense": (
        Reads(
            "MedicationDispense",
            "status",
            "medication[x]",
            "whenHandedOver",
            "whenPrepared",
            "daysSupply",
            "note",
        ),
        Reads("MedicationDispense", *(f"dosageInstruction.{e}" for e in _DOSAGE)),
    ),
    "MedicationAdministration": (
        Reads("MedicationAdministration", "status", "medication[x]", "effective[x]", "statusReason", "note"),
        Reads("MedicationAdministration", "dosage.dose", "dosage.route", "dosage.rate[x]"),
    ),
}

# A draft order is read for its drug alone: it is the order being decided now, so no other element
# (an unreadable ``authoredOn`` or ``status``, say) may cost its safety checks. The rest of what a
# request is read for is validated apart: unreadable, it is reported and its dates and status unknown.
DRAFT_IDENTITY = Reads("MedicationRequest", "medication[x]", modifiers_ok=True)


# -- small parsers ----------------------------------------------------------------------------------
_ROUTE_PATTERNS = [
    (route, re.compile("|".join(rf"(?<![a-z]){re.escape(w)}(?![a-z])" for w in words)))
    for route, words in ROUTES.items()
]


def route_of(concept: Any) -> str | None:
    return _route_in(concept_text(concept))


@lru_cache(maxsize=4096)
def _route_in(text: str) -> str | None:
    """The route a text names ("IV infusion" → iv); memoised: orders repeat a few route texts."""
    text = text.lower()
    if not text:
        return None
    for route, pattern in _ROUTE_PATTERNS:
        if pattern.search(text):
            return route
    return None


def minutes(value: Any, unit: Any) -> float | None:
    value = as_float(value)
    if value is None:
        return None
    factor = {"s": 1 / 60, "min": 1, "h": 60, "d": 1440}.get(str(unit))
    return float(value) * factor if factor else None


def infusion_minutes(
    dose: float | None, dose_unit: str | None, rate: dict[str, Any], stated: float | None
) -> float | None:
    """How long an infusion runs: the stated duration, or dose ÷ rate (``doseAndRate.rateQuantity``
    or ``rateRatio``: 35 mg at 140 mg/h is 15 minutes) when none is stated or the rate runs it
    faster by more than a minute (a pump runs at its rate)."""
    derived = None
    if "rateQuantity" not in rate and "rateRatio" not in rate:
        return stated
    per_min, per_unit = rate_of(rate.get("rateQuantity"))
    if per_min is None:
        per_min, per_unit = ratio_rate(rate.get("rateRatio"))
    if dose is not None and per_min and per_min > 0 and per_unit == f"{dose_unit}/min":
        derived = dose / per_min
    if stated is None or (derived is not None and derived < stated - 1):
        return derived
    return stated


def per_day(repeat: dict[str, Any]) -> float | None:
    freq, period, unit = (
        as_float(repeat.get("frequency")),
        as_float(repeat.get("period")),
        repeat.get("periodUnit"),
    )
    if freq is None or period is None or period <= 0:
        return None
    days = {"h": 1 / 24, "d": 1, "wk": 7, "mo": 30, "a": 365}.get(str(unit))
    return freq / (period * days) if days else None


# -- fact records -----------------------------------------------------------------------------------
@dataclass
class _Dosing:
    dose: float | None = None
    dose_unit: str | None = None
    per_day: float | None = None
    route: str | None = None
    infusion: float | None = None


@dataclass
class MedUse:
    """One medication record (request, statement, dispense, administration or draft order).

    Its dosage (dose, rate, timing, route) is read and validated the first time a rule asks for it:
    most records of a long medication list are only ever asked whether they are in effect."""

    ref: str
    kind: str
    drug: DrugMatch
    status: str
    start: date | None
    end: date | None
    stop_reason: str = ""
    resource: dict[str, Any] = field(default_factory=dict, repr=False)
    read_dosing: Callable[[], _Dosing] | None = field(default=None, repr=False, compare=False)
    _dosing: _Dosing | None = field(default=None, repr=False, compare=False)

    @property
    def dosing(self) -> _Dosing:
        if self._dosing is None:
            self._dosing = self.read_dosing() if self.read_dosing is not None else _Dosing()
        return self._dosing

    @property
    def dose(self) -> float | None:
        return self.dosing.dose

    @property
    def dose_unit(self) -> str | None:
        return self.dosing.dose_unit

    @property
    def doses_per_day(self) -> float | None:
        return self.dosing.per_day

    @property
    def route(self) -> str | None:
        return self.dosing.route

    @property
    def infusion_minutes(self) -> float | None:
        return self.dosing.infusion

    @property
    def daily_dose(self) -> float | None:
        if self.dose is None or self.dose_unit != "mg":
            return None
        return self.dose * (self.doses_per_day or 1)

    def describe(self) -> str:
        name = self.drug.text or "/".join(sorted(self.drug.ingredients))
        return name[:80]


@dataclass
class Trial:
    """Use of one ingredient consolidated from every record of it (dose changes are one trial)."""

    ingredient: str
    start: date
    end: date
    ongoing: bool
    refs: list[str]
    max_daily_dose: float | None
    stop_reasons: list[str]
    text_matched: bool

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def weeks(self) -> int:
        return self.days // 7


# Dosage readings by (administration?, the dosage's JSON); values only, so no request is kept alive.
_DOSINGS: dict[tuple[bool, bytes], tuple[Any, ...]] = {}


def _dosage_key(element: Any) -> bytes | None:
    if not isinstance(element, dict):
        return None
    try:
        content = orjson.dumps(element)
    except (TypeError, ValueError, orjson.JSONEncodeError):
        return None
    return None if b'"bounds' in content else content


def _read_administered(adm: dict[str, Any]) -> _Dosing:
    dose, unit = dose_of(adm.get("dose"))
    return _Dosing(
        dose, unit, route=route_of(adm.get("route")), infusion=infusion_minutes(dose, unit, adm, None)
    )


def _read_dosage(element: Any) -> _Dosing:
    dosage = as_dict(element)
    if not dosage:
        return _Dosing()
    # Several entries are common (Epic: "admin-amount" in mL or tablets, "calculated" in mg,
    # "ordered", in any order): the dose is the first in mg or mg/kg, the rate the first rate.
    entries = [as_dict(e) for e in as_list(dosage.get("doseAndRate"))] or [{}]
    dose, unit = next(
        (d for e in entries if (d := dose_of(e.get("doseQuantity")))[0] is not None), (None, None)
    )
    rate = next((e for e in entries if "rateQuantity" in e or "rateRatio" in e), entries[0])
    repeat = as_dict(as_dict(dosage.get("timing")).get("repeat"))
    return _Dosing(
        dose,
        unit,
        per_day(repeat),
        route_of(dosage.get("route")) or route_of({"text": dosage.get("text", "")}),
        infusion_minutes(dose, unit, rate, minutes(repeat.get("duration"), repeat.get("durationUnit"))),
    )


def _place(item: tuple[int, MedUse]) -> int:
    return item[0]


# -- the medication half of Facts -------------------------------------------------------------------
class MedicationFacts:
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

    @cached_property
    def medication_uses(self) -> list[MedUse]:
        uses: list[MedUse] = []
        for rtype in READS:
            for res in self.record.resources(rtype):
                use = self._med_use(res, rtype)
                if use is not None:
                    uses.append(use)
        return uses

    @cached_property
    def medications(self) -> MedicationResolver:
        """Which drug each record names (inline, contained, included or fetched Medication)."""
        return MedicationResolver(self.record, self.t)

    @cached_property
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

    @cached_property
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
            start, end = self._dates(res, rtype)
            use = MedUse(ref(res), rtype, DrugMatch(), str(res.get("status") or ""), start, end)
            if rtype == "MedicationAdministration":
                if start and 0 <= (self.today - start).days <= max(grace_days, 1):
                    out.append(use.ref)
            elif in_effect(use, [], self.today, grace_days):
                out.append(use.ref)
        return out

    def unreadable_orders_in(self, valueset: str) -> list[str]:
        """References of unreadable draft orders of a drug in the value set."""
        _ = self.orders
        return [r for r, drug in self.malformed_orders if self.t.drug_in(drug, valueset)]

    def _med_use(self, res: dict[str, Any], kind: str) -> MedUse | None:
        identified = self.medications.identify(res)
        drug = identified.drug
        if not drug.ingredients:
            if kind == "draft":
                self.unidentified_orders.append(res)
            elif identified.reference and not drug.text:  # a Medication nothing could read, no name
                self.unresolved_meds.append(res)
            return None
        status = str(res.get("status") or "")
        if kind != "draft" and (
            status in ("entered-in-error", "draft")
            or res.get("intent") == "proposal"
            or res.get("doNotPerform") is True  # a request NOT to give the drug (a modifier element)
        ):
            return None
        rtype = "MedicationRequest" if kind == "draft" else kind
        core, dosing_reads = READS[rtype]
        if kind == "draft":
            core = DRAFT_IDENTITY
        if not self.record.readable(res, core):
            (self.malformed_orders if kind == "draft" else self.malformed_meds).append((ref(res), drug))
            return None
        rest_readable = kind != "draft" or self.record.readable(res, READS[rtype][0])
        start, end = self._dates(res, rtype) if rest_readable else (None, None)
        if not rest_readable:
            status = ""
        record = self.record  # not self: the MedUse is kept by Facts, a closure over it is a cycle

        def read_dosing() -> _Dosing:
            d = MedicationFacts._dosing(res, rtype) if record.readable(res, dosing_reads) else _Dosing()
            d.route = d.route or FORM_ROUTE.get(drug.form or "")
            if d.route is None and drug.form == "injection":
                d.route = "injection"
            return d

        stop_reason = ""
        if rest_readable and ("statusReason" in res or "note" in res):  # most records have neither
            status_reason = res.get("statusReason")
            reasons = status_reason if isinstance(status_reason, list) else [status_reason]
            reason = " ".join(concept_text(r) for r in reasons if isinstance(r, dict))
            note = as_list(res.get("note"))
            notes = " ".join(str(n.get("text", "")) for n in note if isinstance(n, dict))
            stop_reason = (reason + " " + notes).strip()
        return MedUse(ref(res), kind, drug, status, start, end, stop_reason, res, read_dosing)

    @staticmethod
    def _dates(res: dict[str, Any], rtype: str) -> tuple[date | None, date | None]:
        if rtype == "MedicationRequest":
            dosage = as_dict((as_list(res.get("dosageInstruction")) or [{}])[0])
            validity = as_dict(as_dict(res.get("dispenseRequest")).get("validityPeriod"))
            bounds = as_dict(as_dict(as_dict(dosage.get("timing")).get("repeat")).get("boundsPeriod"))
            start = parse_date(bounds.get("start")) or parse_date(validity.get("start"))
            return start or parse_date(res.get("authoredOn")), (
                parse_date(bounds.get("end")) or parse_date(validity.get("end"))
            )
        if rtype == "MedicationStatement":
            period = as_dict(res.get("effectivePeriod"))
            start = (
                parse_date(period.get("start"))
                or parse_date(res.get("effectiveDateTime"))
                or parse_date(res.get("dateAsserted"))
            )
            return start, parse_date(period.get("end"))
        if rtype == "MedicationDispense":
            start = parse_date(res.get("whenHandedOver")) or parse_date(res.get("whenPrepared"))
            days = as_float(as_dict(res.get("daysSupply")).get("value"), limit=3650)
            return start, (add_days(start, days) or start) if start and days is not None else start
        period = as_dict(res.get("effectivePeriod"))
        start = (
            parse_date(res.get("effectiveDateTime"))
            or parse_date(period.get("start"))
            or parse_date(period.get("end"))
        )
        return start, parse_date(period.get("end")) or start

    @staticmethod
    def _dosing(res: dict[str, Any], rtype: str) -> _Dosing:
        """What the record's (first) dosage says, read once per distinct dosage content: a drug's
        usual sig repeats across records and patients (a dosage with timing bounds, the patient's
        own dates, is read every time)."""
        if rtype == "MedicationAdministration":
            element: Any = res.get("dosage")
        else:
            key = "dosage" if rtype == "MedicationStatement" else "dosageInstruction"
            element = (as_list(res.get(key)) or [{}])[0]
        content = _dosage_key(element)
        if content is not None:
            hit = _DOSINGS.get((rtype == "MedicationAdministration", content))
            if hit is not None:
                return _Dosing(*hit)
        d = (
            _read_administered(as_dict(element))
            if rtype == "MedicationAdministration"
            else _read_dosage(element)
        )
        if content is not None:
            if len(_DOSINGS) >= 20_000:
                _DOSINGS.clear()
            _DOSINGS[(rtype == "MedicationAdministration", content)] = astuple(d)
        return d

    def drafts_in(self, valueset: str, *, excluding: MedUse | None = None) -> list[MedUse]:
        """Drafts of the value set in the request, the one ``excluding`` aside: orders signed
        together are concurrent medications."""
        return [u for u in self.drafts if u is not excluding and self.t.drug_in(u.drug, valueset)]

    @cached_property
    def _uses_by_drug(self) -> list[list[tuple[int, MedUse]]]:
        """The records grouped by what value-set membership depends on (ingredients and products),
        each with its place in the record: a long list holds a few drugs, asked about by many rules."""
        groups: dict[tuple[frozenset[str], frozenset[str]], list[tuple[int, MedUse]]] = {}
        for i, u in enumerate(self.medication_uses):
            groups.setdefault((u.drug.ingredients, u.drug.products), []).append((i, u))
        return list(groups.values())

    def uses_in(self, valueset: str) -> list[MedUse]:
        """Medication records of a drug in the value set, in record order (memoised per request)."""
        hit = self._uses_in.get(valueset)
        if hit is None:
            parts = [g for g in self._uses_by_drug if self.t.drug_in(g[0][1].drug, valueset)]
            if len(parts) == 1:
                hit = [u for _, u in parts[0]]
            else:
                hit = [u for _, u in sorted((x for g in parts for x in g), key=_place)]
            self._uses_in[valueset] = hit
        return hit

    def active_uses(self, valueset: str, *, grace_days: int = 0) -> list[MedUse]:
        """Medication records of a value set in effect today (not the draft orders)."""
        uses = self.uses_in(valueset)
        by_ingredient: dict[str, list[MedUse]] = {}
        for v in uses:
            for ing in v.drug.ingredients:
                by_ingredient.setdefault(ing, []).append(v)
        out = []
        for u in uses:
            if u.kind == "MedicationAdministration":
                if (
                    u.status not in NEVER_TAKEN_MED_STATUS
                    and u.start
                    and (self.today - u.start).days <= max(grace_days, 1)
                ):
                    out.append(u)
                continue
            # records of the same drug, read only when a stopped record needs its last supply
            same = (v for ing in u.drug.ingredients for v in by_ingredient.get(ing, ()))
            if in_effect(u, same, self.today, grace_days):
                out.append(u)
        return out

    def orders_in(self, valueset: str) -> list[MedUse]:
        return [o for o in self.orders if self.t.drug_in(o.drug, valueset)]

    def trials(self, valueset: str, *, merge_gap_days: int = 30) -> list[Trial]:
        """Use of each ingredient of a value set, consolidated into trials, oldest first.

        Records of one ingredient less than ``merge_gap_days`` apart are one trial (dose changes,
        refills). A stopped or completed prescription's own end date is the trial's end: the tail of
        the last dispensed supply does not lengthen it.
        """
        key = (valueset, merge_gap_days)
        if key in self._trials:
            return self._trials[key]
        spans: dict[str, list[MedUse]] = {}
        for u in self.medication_uses:
            if u.kind == "MedicationAdministration" or u.start is None:
                continue
            for ing in self.t.drug_in(u.drug, valueset):
                spans.setdefault(ing, []).append(u)
        trials: list[Trial] = []
        for ing, uses in spans.items():
            uses.sort(key=lambda u: u.start or date.min)
            groups: list[list[MedUse]] = []
            group_end = date.min
            for u in uses:
                assert u.start is not None
                if groups and (u.start - group_end).days <= merge_gap_days:
                    groups[-1].append(u)
                else:
                    groups.append([u])
                group_end = max(group_end if len(groups[-1]) > 1 else date.min, self._use_end(u))
            trials += [self._trial(ing, g) for g in groups]
        trials.sort(key=lambda t: t.start)
        self._trials[key] = trials
        return trials

    def _use_end(self, u: MedUse) -> date:
        assert u.start is not None
        end = u.end or (self.today if self._use_ongoing(u) else u.start)
        return min(end, self.today)

    def _use_ongoing(self, u: MedUse) -> bool:
        if u.kind == "MedicationDispense":
            return False
        return u.status not in INACTIVE_MED_STATUS and (u.end is None or u.end >= self.today)

    def _trial(self, ingredient: str, uses: list[MedUse]) -> Trial:
        ongoing = any(self._use_ongoing(u) for u in uses)
        end = max(self._use_end(u) for u in uses)
        explicit = [u.end for u in uses if u.kind != "MedicationDispense" and u.end is not None]
        if not ongoing and explicit:
            end = min(end, max(explicit))
        doses = [u.daily_dose for u in uses if u.daily_dose is not None]
        return Trial(
            ingredient,
            min(u.start for u in uses if u.start is not None),
            end,
            ongoing,
            [u.ref for u in uses],
            max(doses) if doses else None,
            [u.stop_reason for u in uses if u.stop_reason],
            any(u.drug.matched_by == "text" for u in uses),
        )

    def sessions(self, valueset: str) -> list[MedUse]:
        """Administrations of a drug (e.g. ketamine), oldest first, none in the future."""
        out = [
            u
            for u in self.medication_uses
            if u.kind == "MedicationAdministration"
            and u.start is not None
            and u.start <= self.today
            and u.status not in ("not-done", "entered-in-error", "stopped")
            and self.t.drug_in(u.drug, valueset)
        ]
        out.sort(key=lambda u: u.start or date.min)
        return out
