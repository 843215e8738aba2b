"""One medication record read as a :class:`MedUse`: what it is and when, and (lazily) its dosage.

A record is read in two parts, each validated on its own (:class:`~.elements.Reads`): what it is
and when (drug, status, intent, dates, stop reasons) and how it is dosed (dose, rate, timing,
route). An unreadable first part makes the record unknown (a rule that would have read it asks for
it); an unreadable dosage leaves the record known with its dose, route and duration unknown. The
dosage is read and validated the first time a rule asks for it: most records of a long medication
list are only ever asked whether they are in effect.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from .dates import parse_date
from .dosage import Dosing, Memo, dose_unread, dosing_of, first_dosage, states_dose
from .elements import Reads
from .raw import add_days, as_dict, as_float, as_list
from .record import PatientRecord, ref
from .terminology import DrugMatch, concept_text

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

_INDEX = re.compile(r"\[\d+\]")  # "dosageInstruction[0].timing" -> "dosageInstruction.timing"


class Reading:
    """Where a kind of record's dosage is read, shared by the uses of one request: the record
    (which validates ``dosage_reads`` when first asked) and the request's dosage readings
    (``memo``). It refers to no use, so a use kept by the facts makes no reference cycle."""

    __slots__ = ("record", "dosage_reads", "memo")

    def __init__(self, record: PatientRecord, dosage_reads: Reads, memo: Memo | None) -> None:
        self.record, self.dosage_reads, self.memo = record, dosage_reads, memo


class MedUse:
    """One medication record (request, statement, dispense, administration or draft order).

    ``reading`` is where its dosage is read when first asked for (none: no dosage known).
    Its reference (``ref``) is written out when first asked for (evidence, mostly)."""

    __slots__ = (
        "_ref",
        "kind",
        "drug",
        "status",
        "start",
        "end",
        "stop_reason",
        "resource",
        "_reading",
        "_dosing",
        "seq",
    )

    def __init__(
        self,
        ref: str | None,
        kind: str,
        drug: DrugMatch,
        status: str,
        start: date | None,
        end: date | None,
        stop_reason: str = "",
        resource: dict[str, Any] | None = None,
        reading: Reading | None = None,
    ) -> None:
        self._ref = ref
        self.kind = kind
        self.drug = drug
        self.status = status
        self.start = start
        self.end = end
        self.stop_reason = stop_reason
        self.resource: dict[str, Any] = resource if resource is not None else {}
        self._reading = reading
        self._dosing: Dosing | None = None
        self.seq = 0  # its place among the request's records (numbered when they are grouped)

    def __repr__(self) -> str:
        return f"MedUse({self.ref!r}, {self.kind!r}, {self.status!r}, {self.start}, {self.end})"

    @property
    def ref(self) -> str:
        r = self._ref
        if r is None:  # record.ref's, written out for the common case (a string id)
            res = self.resource
            rid = res.get("id")
            r = self._ref = f"{res.get('resourceType', '?')}/{rid}" if isinstance(rid, str) else ref(res)
        return r

    @property
    def dosing(self) -> Dosing:
        d = self._dosing
        if d is None:
            reading = self._reading
            if reading is not None and reading.record.readable(self.resource, reading.dosage_reads):
                d = dosing_of(self.resource, reading.dosage_reads.rtype, reading.memo, self.drug.form)
            else:  # no dosage known: at most the route the drug's form implies
                d = dosing_of({}, self.kind, None, self.drug.form)
            self._dosing = d
        return d

    @property
    def dose(self) -> float | None:
        return (self._dosing or self.dosing).dose

    @property
    def dose_unit(self) -> str | None:
        return (self._dosing or self.dosing).dose_unit

    @property
    def doses_per_day(self) -> float | None:
        return (self._dosing or self.dosing).per_day

    @property
    def route(self) -> str | None:
        return (self._dosing or self.dosing).route

    @property
    def infusion_minutes(self) -> float | None:
        return (self._dosing or self.dosing).infusion

    @property
    def daily_dose(self) -> float | None:
        d = self._dosing or self.dosing
        if d.dose is None or d.dose_unit != "mg":
            return None
        return d.dose * (d.per_day or 1)

    @property
    def daily_dose_unread(self) -> str | None:
        """Why the dose this record states could not be read as a daily dose in mg (words for a
        card, never a value nor an id: see :func:`~.dosage.dose_unread`); None when it was read,
        or when the record states no dose (no dosage, or one with neither a dose nor a sig).
        Asked only where a daily dose is missing (an antidepressant trial's): never on the path
        every record takes."""
        if self.daily_dose is not None:
            return None
        element = first_dosage(self.resource, self.kind)
        reading = self._reading
        if not isinstance(element, dict) or not states_dose(element) or reading is None:
            return None  # no dose recorded: an invalid route or timing beside it is no unread dose
        if not reading.record.readable(self.resource, reading.dosage_reads):
            why = reading.record.unreadable_because(self.resource, reading.dosage_reads) or ""
            element_name = _INDEX.sub("", why.split(": ", 1)[0]) or "its dosage"
            return f"a dosage with {element_name} not readable"
        return dose_unread(element, self.dosing)

    def describe(self) -> str:
        name = self.drug.text or "/".join(sorted(self.drug.ingredients))
        return name[:80]


# -- when a record was in effect ----------------------------------------------------------------------
def _request_dates(res: dict[str, Any]) -> tuple[date | None, date | None]:
    """The first dosage's timing bounds, else the dispense validity period; started, else, when
    authored."""
    start = end = None
    dosages = res.get("dosageInstruction")
    if isinstance(dosages, list) and dosages and isinstance(dosages[0], dict):
        timing = dosages[0].get("timing")
        repeat = timing.get("repeat") if isinstance(timing, dict) else None
        bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
        if isinstance(bounds, dict):
            start, end = parse_date(bounds.get("start")), parse_date(bounds.get("end"))
    request = res.get("dispenseRequest")
    if isinstance(request, dict) and (start is None or end is None):
        validity = request.get("validityPeriod")
        if isinstance(validity, dict):
            if start is None:
                start = parse_date(validity.get("start"))
            if end is None:
                end = parse_date(validity.get("end"))
    if start is None:
        start = parse_date(res.get("authoredOn"))
    return start, end


def _statement_dates(res: dict[str, Any]) -> tuple[date | None, date | None]:
    period = as_dict(res.get("effectivePeriod"))
    start = (
        parse_date(period.get("start"))
        or parse_date(res.get("effectiveDateTime"))
        or parse_date(res.get("dateAsserted"))
    )
    return start, parse_date(period.get("end"))


def _dispense_dates(res: dict[str, Any]) -> tuple[date | None, date | None]:
    when = res.get("whenHandedOver")
    if when.__class__ is str and len(when) == 10:  # most dispenses: a full date (parse_date's fast case)
        try:
            start: date | None = _fromisoformat(when)
        except ValueError:
            start = None
    else:
        start = parse_date(when)
    if start is None:
        start = parse_date(res.get("whenPrepared"))
        if start is None:
            return None, None
    supply = res.get("daysSupply")
    value = supply.get("value") if isinstance(supply, dict) else None
    if value.__class__ is int and 0 <= value <= 3650:  # most supplies: whole days
        try:
            return start, start + _DAYS[value]
        except OverflowError:  # handed over on 9999-12-31
            return start, start
    days = as_float(value, limit=3650)
    return start, (add_days(start, days) or start) if days is not None else start


_fromisoformat = date.fromisoformat
_DAYS = tuple(timedelta(days=n) for n in range(3651))  # a supply's whole days (~3,600 small objects)


def _administration_dates(res: dict[str, Any]) -> tuple[date | None, date | None]:
    period = as_dict(res.get("effectivePeriod"))
    start = (
        parse_date(res.get("effectiveDateTime"))
        or parse_date(period.get("start"))
        or parse_date(period.get("end"))
    )
    return start, parse_date(period.get("end")) or start


DATES: dict[str, Callable[[dict[str, Any]], tuple[date | None, date | None]]] = {
    "MedicationRequest": _request_dates,
    "MedicationStatement": _statement_dates,
    "MedicationDispense": _dispense_dates,
    "MedicationAdministration": _administration_dates,
}


def stop_reason(res: dict[str, Any]) -> str:
    """``statusReason`` and ``note`` texts, joined (most records have neither)."""
    if "statusReason" not in res and "note" not in res:
        return ""
    status_reason = res.get("statusReason")
    reasons = status_reason if isinstance(status_reason, list) else [status_reason]
    reason = " ".join(concept_text(r) for r in reasons if isinstance(r, dict))
    notes = " ".join(str(n.get("text", "")) for n in as_list(res.get("note")) if isinstance(n, dict))
    return (reason + " " + notes).strip()
