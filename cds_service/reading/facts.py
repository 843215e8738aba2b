"""Clinical facts derived once per request from the patient record.

Facts are neutral observations about the record (age, latest vitals, conditions by value set,
medication use consolidated into trials, scores over time, ketamine sessions). They carry no
clinical thresholds: those live in the rules. Each fact keeps the FHIR references it came from so a
card can say why it fired. Properties are computed lazily, so a request the rules do not concern
pays only for the facts its gate needs.

Each fact reads named elements and has them validated first (:class:`~.elements.Reads`,
:meth:`~.record.PatientRecord.readable`): a fact rests only on valid elements, and an element no
fact reads never costs a resource. One module per concept: :mod:`.conditions`,
:mod:`.observations`, :mod:`.medication_use` (drug identity: :mod:`.medications`); demographics
and procedures are here.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from .allergies import Allergies, read_allergies
from .conditions import ConditionFact, ConditionFacts
from .dates import age_on, parse_date, parse_datetime
from .elements import Reads
from .lazy import lazy
from .med_horizon import Horizon
from .medication_use import MedicationFacts, MedUse, Trial
from .observations import ObservationFact, ObservationFacts, ObservationKinds
from .record import PatientRecord, ref
from .terminology import DrugMatch, Terminology

__all__ = [
    "ConditionFact",
    "Facts",
    "MedUse",
    "ObservationFact",
    "Trial",
    "age_on",
    "parse_date",
    "parse_datetime",
]

BIRTH_DATE = Reads("Patient", "birthDate")
GENDER = Reads("Patient", "gender")
DECEASED = Reads("Patient", "deceased[x]")
PROCEDURE = Reads("Procedure", "status", "code", "performed[x]")


class Facts(ConditionFacts, ObservationFacts, MedicationFacts):
    def __init__(
        self,
        record: PatientRecord,
        terminology: Terminology,
        observation_kinds: dict[str, dict[str, Any]],
        now: datetime,
        hook: str,
        medication_horizon: Horizon | None = None,
    ) -> None:
        """``medication_horizon``: how far back the rules read medication records
        (``engine/med_windows.py``); records beyond it are validated, then left out. None: every
        record is kept."""
        self.record = record
        self.medication_horizon = medication_horizon
        self.t = terminology
        self.now = now
        self.today = now.date()
        self.hook = hook
        self._trials = {}
        # Relevant records that could not be read: a rule that would have read them is unknown, not false.
        self.malformed_conditions: list[dict[str, Any]] = []
        self._condition_facts = {}
        self._conditions_by_valueset = {}
        self._candidates_by_kind = {}
        self._observed = {}
        self._checked_facts = {}
        self._newest = {}
        self._series = {}
        self._undated_unreadable = {}
        self.malformed_meds: list[tuple[str, DrugMatch]] = []
        self.malformed_orders: list[tuple[str, DrugMatch]] = []
        self.unidentified_orders: list[dict[str, Any]] = []  # draft orders whose drug is not known
        self.unresolved_meds: list[dict[str, Any]] = []  # records whose Medication could not be read
        self._uses_in: dict[str, list[MedUse]] = {}
        kinds = ObservationKinds.of(observation_kinds)
        self._kinds = kinds
        self._obs_units = kinds.units
        self.positive_answers = kinds.positive_answers
        self.positive_words = kinds.positive_words

    # patient ------------------------------------------------------------------------------------
    @property
    def patient(self) -> dict[str, Any] | None:
        """The Patient resource as sent (its elements are validated by the facts that read them)."""
        return self.record.patient

    def patient_unreadable(self, reads: Reads) -> str | None:
        """Why the Patient's elements ``reads`` names could not be read ("modifierExtension: …",
        "birthDate: …": element names, never values); None when they could, or without a Patient."""
        p = self.record.patient
        if p is None or self.record.readable(p, reads):
            return None
        return self.record.unreadable_because(p, reads)

    @lazy
    def birth_date(self) -> date | None:
        p = self.record.patient
        if p is None or not self.record.readable(p, BIRTH_DATE):
            return None
        return parse_date(p.get("birthDate"))

    @lazy
    def age(self) -> int | None:
        """Age in whole years; None when unknown, or when a partial birth date ("2008", "2008-09")
        leaves it between two values (see :attr:`age_range`)."""
        low, high = self.age_range
        return low if low == high else None

    @lazy
    def age_range(self) -> tuple[int | None, int | None]:
        """(youngest, oldest) the patient can be: a birth date recorded as a year or a month could be
        any day in it, so "2008" on 2026-05-04 is 17 or 18 — never assumed to be 1 January."""
        born = self.birth_date
        if born is None:
            return None, None
        raw = str(self.record.patient.get("birthDate")) if self.record.patient else ""
        latest = born
        if len(raw) == 4:
            latest = date(born.year, 12, 31)
        elif len(raw) == 7:
            latest = (date(born.year + born.month // 12, born.month % 12 + 1, 1)) - timedelta(days=1)
        return age_on(latest, self.today), age_on(born, self.today)

    @lazy
    def sex(self) -> str | None:
        p = self.record.patient
        if p is None or not self.record.readable(p, GENDER):
            return None
        g = p.get("gender")
        return g if g in ("male", "female", "other") else None

    @lazy
    def deceased(self) -> tuple[bool | None, date | None]:
        """(deceased?, on which day) from ``Patient.deceased[x]``; (None, None) when unreadable.

        No Patient or no ``deceased[x]`` reads as alive (False): FHIR records a death, not life."""
        p = self.record.patient
        if p is None:
            return False, None
        if not self.record.readable(p, DECEASED):
            return None, None
        if p.get("deceasedBoolean") is True:
            return True, None
        when = parse_datetime(p.get("deceasedDateTime"))
        if when is not None and when <= self.now:
            return True, when.date()
        return False, None

    # allergies ----------------------------------------------------------------------------------
    @lazy
    def allergies(self) -> Allergies:
        return read_allergies(self.record, self.t)

    # procedures ---------------------------------------------------------------------------------
    def procedures_in(self, valueset: str) -> list[tuple[str, date | None]]:
        out = []
        for p in self.record.resources("Procedure"):
            if p.get("status") in ("entered-in-error", "not-done", "preparation"):
                continue
            if self.t.concept_in(p.get("code"), valueset) and self.record.readable(p, PROCEDURE):
                period = p.get("performedPeriod") if isinstance(p.get("performedPeriod"), dict) else {}
                when = (
                    parse_date(p.get("performedDateTime"))
                    or parse_date(period.get("start"))
                    or parse_date(period.get("end"))
                )
                out.append((ref(p), when))
        return out
