"""Clinical facts derived once per request from the patient record.

Facts are neutral observations about the record (age, latest vitals, conditions by value set,
medication use consolidated into trials, scores over time, ketamine sessions). They carry no
clinical thresholds: those live in the rules. Each fact keeps the FHIR references it came from so a
card can say why it fired. Properties are computed lazily, so a request the rules do not concern
pays only for the facts its gate needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import Any

from .allergies import Allergies, read_allergies
from .medications import MedicationResolver
from .raw import add_days, as_dict, as_float, as_list
from .record import PatientRecord, ref
from .terminology import DrugMatch, Terminology, codings, concept_text, norm_code
from .timeline import NEVER_TAKEN_MED_STATUS, in_effect

ROUTES = {
    "iv": ("intravenous", "iv", "i.v."),
    "im": ("intramuscular", "im", "i.m."),
    "sc": ("subcutaneous", "sc", "s.c.", "subcut"),
    "nasal": ("nasal", "intranasal"),
    "oral": ("oral", "po", "by mouth", "sublingual"),
    "transdermal": ("transdermal", "topical"),
}
FORM_ROUTE = {"nasal": "nasal", "oral": "oral", "transdermal": "transdermal"}
PRELIMINARY_OBS_STATUS = ("preliminary", "unknown")
INACTIVE_MED_STATUS = {"completed", "stopped", "cancelled", "entered-in-error", "not-taken", "ended"}


# -- small parsers ----------------------------------------------------------------------------------
def parse_date(value: Any) -> date | None:
    """A FHIR date/dateTime (any precision) as a date; partial dates take their first day."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) == 4:
            return date(int(value), 1, 1)
        if len(value) == 7:
            return date(int(value[:4]), int(value[5:7]), 1)
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def parse_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        d = parse_date(value)
        return datetime(d.year, d.month, d.day, tzinfo=UTC) if d else None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def age_on(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def quantity_mg(q: Any) -> tuple[float | None, str | None]:
    """(value, unit) of a dose Quantity, converted to mg when the unit is g/mcg; mg/kg kept."""
    value = as_float(q.get("value")) if isinstance(q, dict) else None
    if value is None:
        return None, None
    unit = str(q.get("code") or q.get("unit") or "").strip().lower()
    if unit in ("mg", "milligram", "milligrams"):
        return value, "mg"
    if unit in ("g", "gram"):
        return value * 1000, "mg"
    if unit in ("ug", "mcg", "microgram"):
        return value / 1000, "mg"
    if unit in ("mg/kg", "mg/kg/dose"):
        return value, "mg/kg"
    return value, unit or None


_ROUTE_PATTERNS = [
    (route, re.compile("|".join(rf"(?<![a-z]){re.escape(w)}(?![a-z])" for w in words)))
    for route, words in ROUTES.items()
]


def route_of(concept: Any) -> str | None:
    text = concept_text(concept).lower()
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
@dataclass(frozen=True)
class ConditionFact:
    ref: str
    concept: dict[str, Any]
    text: str
    active: bool
    onset: date | None
    abatement: date | None
    recorded: date | None


@dataclass(frozen=True)
class ObservationFact:
    ref: str
    kind: str
    when: datetime
    value: float | None = None
    unit: str | None = None
    code: tuple[str, str] | None = None  # coded answer (system, code)
    text: str = ""
    preliminary: bool = False  # status preliminary/unknown: a signal, never a clearance


@dataclass
class MedUse:
    """One medication record (request, statement, dispense, administration or draft order)."""

    ref: str
    kind: str
    drug: DrugMatch
    status: str
    start: date | None
    end: date | None
    dose: float | None = None
    dose_unit: str | None = None
    doses_per_day: float | None = None
    route: str | None = None
    infusion_minutes: float | None = None
    stop_reason: str = ""
    resource: dict[str, Any] = field(default_factory=dict, repr=False)

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


# -- the facts object -------------------------------------------------------------------------------
class Facts:
    def __init__(
        self,
        record: PatientRecord,
        terminology: Terminology,
        observation_kinds: dict[str, dict[str, Any]],
        now: datetime,
        hook: str,
    ) -> None:
        self.record = record
        self.t = terminology
        self.now = now
        self.today = now.date()
        self.hook = hook
        self._trials: dict[tuple[str, int], list[Trial]] = {}
        # Relevant records that failed validation: a rule that would have read them is unknown, not false.
        self.malformed_conditions: list[dict[str, Any]] = []
        self._condition_facts: dict[int, ConditionFact | None] = {}
        self.malformed_meds: list[tuple[str, DrugMatch]] = []
        self.malformed_orders: list[tuple[str, DrugMatch]] = []
        self.unidentified_orders: list[dict[str, Any]] = []  # draft orders whose drug is not known
        self._obs_codes: dict[tuple[str, str], str] = {}
        self.positive_answers: dict[str, set[tuple[str, str]]] = {}
        for kind, spec in observation_kinds.items():
            for c in spec.get("codes") or []:
                self._obs_codes[norm_code(c["system"], str(c["code"]))] = kind
            self.positive_answers[kind] = {
                norm_code(c["system"], str(c["code"])) for c in spec.get("positive_answers") or []
            }

    # patient ------------------------------------------------------------------------------------
    @cached_property
    def patient(self) -> dict[str, Any] | None:
        p = self.record.patient
        return p if p is not None and self.record.usable(p) else None

    @cached_property
    def birth_date(self) -> date | None:
        return parse_date((self.patient or {}).get("birthDate"))

    @cached_property
    def age(self) -> int | None:
        return age_on(self.birth_date, self.today) if self.birth_date else None

    @cached_property
    def sex(self) -> str | None:
        g = (self.patient or {}).get("gender")
        return g if g in ("male", "female", "other") else None

    # allergies ----------------------------------------------------------------------------------
    @cached_property
    def allergies(self) -> Allergies:
        return read_allergies(self.record, self.t)

    # conditions ---------------------------------------------------------------------------------
    # Conditions and observations are matched on their raw codes first and validated only when a
    # rule reads them: most of a large record is never relevant and never pays for validation.
    @cached_property
    def _coded_conditions(self) -> list[tuple[dict[str, Any], list[tuple[str, str]]]]:
        """(resource, its codings) for every coded Condition, codings read once per request."""
        return [(c, cs) for c in self.record.resources("Condition") if (cs := codings(c.get("code")))]

    def _condition_fact(self, c: dict[str, Any]) -> ConditionFact | None:
        """The validated fact of a Condition (None if malformed, refuted or entered in error)."""
        key = id(c)
        if key in self._condition_facts:
            return self._condition_facts[key]
        fact = None
        if not self.record.usable(c):
            self.malformed_conditions.append(c)
        elif _first_code(c.get("verificationStatus")) not in ("refuted", "entered-in-error"):
            clinical = _first_code(c.get("clinicalStatus"))
            abatement = parse_date(c.get("abatementDateTime")) or parse_date(
                (c.get("abatementPeriod") or {}).get("end")
            )
            active = clinical in ("active", "recurrence", "relapse") or (
                clinical is None and (abatement is None or abatement > self.today)
            )
            fact = ConditionFact(
                ref(c),
                c.get("code") or {},
                concept_text(c.get("code")),
                active,
                parse_date(c.get("onsetDateTime")) or parse_date((c.get("onsetPeriod") or {}).get("start")),
                abatement,
                parse_date(c.get("recordedDate")),
            )
        self._condition_facts[key] = fact
        return fact

    def conditions_in(self, valueset: str, *, active_only: bool = False) -> list[ConditionFact]:
        out = []
        for c, cs in self._coded_conditions:
            if self.t.codes_in(cs, valueset):
                fact = self._condition_fact(c)
                if fact is not None and (fact.active or not active_only):
                    out.append(fact)
        return out

    def unreadable_conditions_in(self, valueset: str) -> list[str]:
        """References of malformed Conditions whose code is in the value set."""
        self.conditions_in(valueset)
        return [ref(c) for c in self.malformed_conditions if self.t.concept_in(c.get("code"), valueset)]

    def unreadable_medications_in(self, valueset: str) -> list[str]:
        """References of malformed medication records of a drug in the value set."""
        _ = self.medication_uses
        return [r for r, drug in self.malformed_meds if self.t.drug_in(drug, valueset)]

    def unreadable_orders_in(self, valueset: str) -> list[str]:
        """References of malformed draft orders of a drug in the value set."""
        _ = self.orders
        return [r for r, drug in self.malformed_orders if self.t.drug_in(drug, valueset)]

    # observations -------------------------------------------------------------------------------
    @cached_property
    def _observation_candidates(self) -> dict[str, list[tuple[datetime, dict[str, Any], dict[str, Any]]]]:
        """(time, resource, element) by kind, newest first, not yet validated; BP panels contribute
        their components."""
        out: dict[str, list[tuple[datetime, dict[str, Any], dict[str, Any]]]] = {}
        for o in self.record.resources("Observation"):
            if o.get("status") in ("entered-in-error", "cancelled", "registered"):
                continue
            kinds = [self._obs_codes[c] for c in codings(o.get("code")) if c in self._obs_codes]
            components = []
            for comp in as_list(o.get("component")):
                if isinstance(comp, dict):
                    ck = [self._obs_codes[c] for c in codings(comp.get("code")) if c in self._obs_codes]
                    if ck:
                        components.append((ck[0], comp))
            if not kinds and not components:
                continue
            period = as_dict(o.get("effectivePeriod"))
            when = (
                parse_datetime(o.get("effectiveDateTime"))
                or parse_datetime(o.get("effectiveInstant"))
                or parse_datetime(period.get("start"))
                or parse_datetime(period.get("end"))
                or parse_datetime(o.get("issued"))
            )
            if when is None:
                self.record.usable(o)  # relevant but undated: validate now so a malformed one is reported
                continue
            if kinds:
                out.setdefault(kinds[0], []).append((when, o, o))
            for kind, comp in components:
                out.setdefault(kind, []).append((when, o, comp))
        for items in out.values():
            items.sort(key=lambda item: item[0], reverse=True)
        return out

    def _checked(
        self, kind: str, item: tuple[datetime, dict[str, Any], dict[str, Any]]
    ) -> ObservationFact | None:
        when, resource, element = item
        if not self.record.usable(resource):  # malformed: skipped and reported
            return None
        fact = _obs_fact(ref(resource), kind, when, element)
        if resource.get("status") in PRELIMINARY_OBS_STATUS:
            fact = replace(fact, preliminary=True)
        return fact

    def _recent(self, kind: str, within_days: float | None) -> Iterator[ObservationFact]:
        """Readable observations of a kind, newest first, within the window (none future-dated)."""
        for item in self._observation_candidates.get(kind, []):
            when = item[0]
            if when > self.now + timedelta(hours=1):
                continue  # a future-dated reading is not a current one
            if within_days is not None and (self.now - when) > timedelta(days=within_days):
                return
            fact = self._checked(kind, item)
            if fact is not None:
                yield fact

    def latest(self, kind: str, *, within_days: float | None = None) -> ObservationFact | None:
        """The newest readable *final* observation of a kind, optionally no older than ``within_days``
        (preliminary ones never clear a check: see :meth:`preliminary`)."""
        return next((f for f in self._recent(kind, within_days) if not f.preliminary), None)

    def preliminary(self, kind: str, *, within_days: float | None = None) -> list[ObservationFact]:
        """Preliminary readings newer than the latest final one in the window (safety signals)."""
        out = []
        for f in self._recent(kind, within_days):
            if not f.preliminary:
                break
            out.append(f)
        return out

    def series(self, kind: str) -> list[ObservationFact]:
        """Every readable final observation of a kind, oldest first (scores over time)."""
        facts = [
            f
            for item in self._observation_candidates.get(kind, [])
            if (f := self._checked(kind, item)) and not f.preliminary
        ]
        return facts[::-1]

    # medications --------------------------------------------------------------------------------
    @cached_property
    def medication_uses(self) -> list[MedUse]:
        uses: list[MedUse] = []
        for rtype in (
            "MedicationRequest",
            "MedicationStatement",
            "MedicationDispense",
            "MedicationAdministration",
        ):
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
            return [u for u in self.drafts if u.ref in selected]
        return list(self.drafts)

    def _med_use(self, res: dict[str, Any], kind: str) -> MedUse | None:
        drug = self.medications.identify(res).drug
        if not drug.ingredients:
            if kind == "draft":
                self.unidentified_orders.append(res)
            return None
        status = str(res.get("status") or "")
        if kind != "draft" and (status in ("entered-in-error", "draft") or res.get("intent") == "proposal"):
            return None
        if not self.record.usable(res):
            (self.malformed_orders if kind == "draft" else self.malformed_meds).append((ref(res), drug))
            return None
        start = end = None
        dose = dose_unit = per = infusion = None
        route = None
        if kind in ("MedicationRequest", "draft"):
            start = parse_date(res.get("authoredOn"))
            dosage = as_dict((as_list(res.get("dosageInstruction")) or [{}])[0])
            validity = (res.get("dispenseRequest") or {}).get("validityPeriod") or {}
            bounds = ((dosage.get("timing") or {}).get("repeat") or {}).get("boundsPeriod") or {}
            start = parse_date(bounds.get("start")) or parse_date(validity.get("start")) or start
            end = parse_date(bounds.get("end")) or parse_date(validity.get("end"))
        elif kind == "MedicationStatement":
            period = as_dict(res.get("effectivePeriod"))
            start = (
                parse_date(period.get("start"))
                or parse_date(res.get("effectiveDateTime"))
                or parse_date(res.get("dateAsserted"))
            )
            end = parse_date(period.get("end"))
            dosage = as_dict((as_list(res.get("dosage")) or [{}])[0])
        elif kind == "MedicationDispense":
            start = parse_date(res.get("whenHandedOver")) or parse_date(res.get("whenPrepared"))
            supply = (res.get("daysSupply") or {}).get("value")
            days = as_float(supply, limit=3650)
            end = (add_days(start, days) or start) if start and days is not None else start
            dosage = as_dict((as_list(res.get("dosageInstruction")) or [{}])[0])
        else:  # MedicationAdministration
            period = as_dict(res.get("effectivePeriod"))
            start = (
                parse_date(res.get("effectiveDateTime"))
                or parse_date(period.get("start"))
                or parse_date(period.get("end"))
            )
            end = parse_date(period.get("end")) or start
            adm = res.get("dosage") or {}
            dose, dose_unit = quantity_mg(adm.get("dose"))
            route = route_of(adm.get("route"))
            dosage = {}
        if dosage:
            dr = as_dict((as_list(dosage.get("doseAndRate")) or [{}])[0])
            dose, dose_unit = quantity_mg(dr.get("doseQuantity"))
            repeat = (dosage.get("timing") or {}).get("repeat") or {}
            per = per_day(repeat)
            infusion = minutes(repeat.get("duration"), repeat.get("durationUnit"))
            route = route_of(dosage.get("route")) or route_of({"text": dosage.get("text", "")})
        route = route or FORM_ROUTE.get(drug.form or "")
        if route is None and drug.form == "injection":
            route = "injection"
        status_reason = res.get("statusReason")
        reasons = status_reason if isinstance(status_reason, list) else [status_reason]
        reason = " ".join(concept_text(r) for r in reasons if isinstance(r, dict))
        notes = " ".join(str(n.get("text", "")) for n in as_list(res.get("note")) if isinstance(n, dict))
        return MedUse(
            ref(res),
            kind,
            drug,
            status,
            start,
            end,
            dose,
            dose_unit,
            per,
            route,
            infusion,
            (reason + " " + notes).strip(),
            res,
        )

    def drafts_in(self, valueset: str, *, excluding: MedUse | None = None) -> list[MedUse]:
        """Drafts of the value set in the request, the one ``excluding`` aside: orders signed
        together are concurrent medications."""
        return [u for u in self.drafts if u is not excluding and self.t.drug_in(u.drug, valueset)]

    def active_uses(self, valueset: str, *, grace_days: int = 0) -> list[MedUse]:
        """Medication records of a value set in effect today (not the draft orders)."""
        uses = [u for u in self.medication_uses if self.t.drug_in(u.drug, valueset)]
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
            same = [v for v in uses if v.drug.ingredients & u.drug.ingredients]
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

    # procedures ---------------------------------------------------------------------------------
    def procedures_in(self, valueset: str) -> list[tuple[str, date | None]]:
        out = []
        for p in self.record.resources("Procedure"):
            if p.get("status") in ("entered-in-error", "not-done", "preparation"):
                continue
            if self.t.concept_in(p.get("code"), valueset) and self.record.usable(p):
                when = parse_date(p.get("performedDateTime")) or parse_date(
                    (p.get("performedPeriod") or {}).get("start")
                )
                out.append((ref(p), when))
        return out

    # ketamine sessions --------------------------------------------------------------------------
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


def _first_code(concept: Any) -> str | None:
    for c in (concept or {}).get("coding") or [] if isinstance(concept, dict) else []:
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            return c["code"]
    return None


def _obs_fact(reference: str, kind: str, when: datetime, element: dict[str, Any]) -> ObservationFact:
    q = as_dict(element.get("valueQuantity"))
    for number in (
        as_float(q.get("value")),
        as_float(element.get("valueInteger")),
        as_float(element.get("valueDecimal")),
    ):
        if number is not None:
            return ObservationFact(reference, kind, when, number, q.get("code") or q.get("unit"))
    cc = element.get("valueCodeableConcept")
    if isinstance(cc, dict):
        cs = codings(cc)
        return ObservationFact(reference, kind, when, code=cs[0] if cs else None, text=concept_text(cc))
    if isinstance(element.get("valueString"), str):
        return ObservationFact(reference, kind, when, text=element["valueString"])
    return ObservationFact(reference, kind, when)
