"""A compact case's FHIR R4 resources: Patient, Conditions, medication records, Observations,
Procedures, AllergyIntolerances and the draft orders."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from .datatypes import _dispense_quantity, _duration_days, coding, concept, dosage, quantity
from .dates import birth_date_for_age, format_datetime, parse_now, resolve_date, resolve_datetime, to_date
from .errors import CaseError
from .vocabulary import (
    ALLERGY_KEYS,
    ALLERGY_STATUS,
    ALLERGY_VERIFICATION,
    CASE_KEYS,
    CATEGORY_DISPLAY,
    CONDITION_KEYS,
    CONDITION_STATUS,
    CSSRS_ITEMS,
    DEFAULT_UNITS,
    DEFAULT_USER,
    MED_AS,
    MEDICATION_KEYS,
    OBSERVATION_KEYS,
    ORDER_KEYS,
    PATIENT_KEYS,
    PROCEDURE_KEYS,
    SOCIAL_HISTORY,
    SURVEYS,
    TERMINOLOGY,
    UCUM,
    VITAL_SIGNS,
)


# -- resource builders ------------------------------------------------------------------------------
def _check_keys(entry: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise CaseError(f"{where}: expected a mapping, got {entry!r}")
    unknown = set(entry) - allowed
    if unknown:
        raise CaseError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return entry


class _Builder:
    def __init__(self, case: dict[str, Any]) -> None:
        _check_keys(case, CASE_KEYS, f"case {case.get('id', '?')!r}")
        self.case = case
        self.cid = str(case.get("id") or "")
        if not self.cid:
            raise CaseError("case without an id")
        self.now = parse_now(case.get("now"))
        patient = _check_keys(case.get("patient") or {}, PATIENT_KEYS, f"{self.cid}: patient")
        self.pid = str(patient.get("id") or "")
        if not re.match(r"^[A-Za-z0-9\-.]{1,40}$", self.pid):
            raise CaseError(f"{self.cid}: patient.id must be 1-40 of [A-Za-z0-9-.], got {self.pid!r}")
        self.subject = {"reference": f"Patient/{self.pid}"}
        self.counters: dict[str, int] = {}

    def next_id(self, kind: str) -> str:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        return f"{self.pid}-{kind}-{self.counters[kind]}"

    def where(self, section: str, index: int) -> str:
        return f"{self.cid}: {section}[{index}]"

    # patient --------------------------------------------------------------------------------------
    def patient(self) -> dict[str, Any]:
        p = self.case["patient"]
        where = f"{self.cid}: patient"
        sex = p.get("sex")
        if sex not in ("female", "male", "other", "unknown"):
            raise CaseError(f"{where}: sex must be female, male, other or unknown")
        if "birthDate" in p and "age" in p:
            raise CaseError(f"{where}: give birthDate or age, not both")
        if "birthDate" in p:
            birth = resolve_date(p["birthDate"], self.now)
        elif "age" in p:
            birth = birth_date_for_age(p["age"], self.now)
        else:
            raise CaseError(f"{where}: birthDate or age is required")
        given, _, family = str(p.get("name") or f"Case {self.pid.upper()}").rpartition(" ")
        return {
            "resourceType": "Patient",
            "id": self.pid,
            "identifier": [
                {"system": "http://ketamine-cds.local/NamingSystem/mrn", "value": self.pid.upper()}
            ],
            "active": True,
            "name": [{"use": "official", "family": family, "given": given.split() or [family]}],
            "gender": sex,
            "birthDate": birth,
            **self._deceased(p.get("deceased"), where),
        }

    def _deceased(self, value: Any, where: str) -> dict[str, Any]:
        """``deceased: true`` → deceasedBoolean; a date → deceasedDateTime; absent → nothing."""
        if value is None:
            return {}
        if isinstance(value, bool):
            return {"deceasedBoolean": value}
        return {"deceasedDateTime": resolve_datetime(value, self.now)}

    # conditions -----------------------------------------------------------------------------------
    def condition(self, entry: dict[str, Any], index: int) -> dict[str, Any]:
        where = self.where("conditions", index)
        _check_keys(entry, CONDITION_KEYS, where)
        if "code" not in entry:
            raise CaseError(f"{where}: code is required")
        status = entry.get("status", "active")
        if status not in CONDITION_STATUS:
            raise CaseError(f"{where}: status must be one of {sorted(CONDITION_STATUS)}")
        if entry.get("abatement") is not None and status in ("active", "recurrence", "relapse"):
            raise CaseError(f"{where}: an abated condition cannot be {status}")
        verification = entry.get("verification", "confirmed")
        out: dict[str, Any] = {
            "resourceType": "Condition",
            "id": self.next_id("cond"),
            "clinicalStatus": {
                "coding": [
                    {
                        "system": f"{TERMINOLOGY}/condition-clinical",
                        "code": status,
                        "display": CONDITION_STATUS[status],
                    }
                ]
            },
            "verificationStatus": {
                "coding": [
                    {
                        "system": f"{TERMINOLOGY}/condition-ver-status",
                        "code": verification,
                        "display": verification.replace("-", " ").capitalize(),
                    }
                ]
            },
            "category": [
                {
                    "coding": [
                        {
                            "system": f"{TERMINOLOGY}/condition-category",
                            "code": "problem-list-item",
                            "display": "Problem List Item",
                        }
                    ]
                }
            ],
            "code": concept(entry["code"], entry.get("text"), where),
            "subject": self.subject,
        }
        if entry.get("onset") is not None:
            out["onsetDateTime"] = resolve_date(entry["onset"], self.now)
        if entry.get("abatement") is not None:
            out["abatementDateTime"] = resolve_date(entry["abatement"], self.now)
        recorded = entry.get("recorded", entry.get("onset"))
        if recorded is not None:
            out["recordedDate"] = resolve_date(recorded, self.now)
        return out

    # medications ----------------------------------------------------------------------------------
    def medication(self, entry: dict[str, Any], index: int) -> list[dict[str, Any]]:
        where = self.where("medications", index)
        _check_keys(entry, MEDICATION_KEYS, where)
        kind = entry.get("as", "request")
        if kind not in MED_AS:
            raise CaseError(f"{where}: as must be one of {sorted(MED_AS)}")
        if "code" not in entry:
            raise CaseError(f"{where}: code is required")
        med = concept(entry["code"], entry.get("text"), where)
        dose_instr = dosage(entry, med, where)
        if kind == "administration":
            return self._administrations(entry, med, dose_instr, where)
        if entry.get("start") is None:
            raise CaseError(f"{where}: start is required")
        start = resolve_date(entry["start"], self.now)
        end = resolve_date(entry["end"], self.now) if entry.get("end") is not None else None
        if end and to_date(end) < to_date(start):
            raise CaseError(f"{where}: end {end} is before start {start}")
        ended = end is not None and to_date(end) < self.now.date()
        status = entry.get("status") or ("completed" if ended else "active")
        out: list[dict[str, Any]] = []
        request_ref = None
        if kind == "request":
            req = self._request(entry, med, dose_instr, start, end, status)
            request_ref = {"reference": f"MedicationRequest/{req['id']}"}
            out.append(req)
        elif kind == "statement":
            out.append(self._statement(entry, med, dose_instr, start, end, status))
        elif entry.get("dispenses") is None:
            raise CaseError(f"{where}: as: dispense needs dispenses")
        if entry.get("dispenses") is not None:
            out += self._dispenses(entry, med, dose_instr, start, end, request_ref, where)
        return out

    def _request(
        self,
        entry: dict[str, Any],
        med: dict[str, Any],
        dose_instr: dict[str, Any] | None,
        start: str,
        end: str | None,
        status: str,
    ) -> dict[str, Any]:
        period = {"start": start, **({"end": end} if end else {})}
        out: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": self.next_id("med"),
            "status": status,
            "intent": "order",
            "medicationCodeableConcept": med,
            "subject": self.subject,
            "authoredOn": start,
            "requester": {"reference": DEFAULT_USER},
        }
        if entry.get("reason"):
            out["statusReason"] = {"text": str(entry["reason"])}
        if dose_instr:
            timing = dose_instr.get("timing", {"repeat": {}})
            instr = {**dose_instr, "timing": {"repeat": {"boundsPeriod": period, **timing["repeat"]}}}
            out["dosageInstruction"] = [{"sequence": 1, **instr}]
        dispense: dict[str, Any] = {"validityPeriod": period}
        if entry.get("dispenses") is not None:
            _, supply = self._dispense_plan(entry["dispenses"], "dispenses")
            dispense["expectedSupplyDuration"] = {
                "value": supply,
                "unit": "days",
                "system": UCUM,
                "code": "d",
            }
        out["dispenseRequest"] = dispense
        if entry.get("note"):
            out["note"] = [{"text": str(entry["note"])}]
        return out

    def _statement(
        self,
        entry: dict[str, Any],
        med: dict[str, Any],
        dose_instr: dict[str, Any] | None,
        start: str,
        end: str | None,
        status: str,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resourceType": "MedicationStatement",
            "id": self.next_id("stmt"),
            "status": status,
            "medicationCodeableConcept": med,
            "subject": self.subject,
            "effectivePeriod": {"start": start, **({"end": end} if end else {})},
            "dateAsserted": self.now.date().isoformat(),
        }
        if entry.get("reason"):
            out["statusReason"] = [{"text": str(entry["reason"])}]
        if dose_instr:
            out["dosage"] = [{"sequence": 1, **dose_instr}]
        if entry.get("note"):
            out["note"] = [{"text": str(entry["note"])}]
        return out

    def _dispense_plan(self, value: Any, where: str) -> tuple[int, int]:
        if isinstance(value, dict):
            _check_keys(value, {"every", "supply"}, where)
            every = _duration_days(value.get("every"), f"{where}.every")
            supply = _duration_days(value.get("supply", value.get("every")), f"{where}.supply")
            return every, supply
        days = _duration_days(value, where)
        return days, days

    def _dispenses(
        self,
        entry: dict[str, Any],
        med: dict[str, Any],
        dose_instr: dict[str, Any] | None,
        start: str,
        end: str | None,
        request_ref: dict[str, str] | None,
        where: str,
    ) -> list[dict[str, Any]]:
        every, supply = self._dispense_plan(entry["dispenses"], f"{where}.dispenses")
        first = to_date(start)
        last = min(to_date(end), self.now.date()) if end else self.now.date()
        repeat = ((dose_instr or {}).get("timing") or {}).get("repeat") or {}
        per_day = 1.0
        if repeat.get("periodUnit") == "d":
            per_day = repeat["frequency"] / repeat["period"]
        elif repeat.get("periodUnit") == "wk":
            per_day = repeat["frequency"] / (7 * repeat["period"])
        dose_q = ((dose_instr or {}).get("doseAndRate") or [{}])[0].get("doseQuantity")
        amount = _dispense_quantity(med, dose_q, per_day, supply)
        out = []
        day = first
        while day <= last:
            disp: dict[str, Any] = {
                "resourceType": "MedicationDispense",
                "id": self.next_id("disp"),
                "status": "completed",
                "medicationCodeableConcept": med,
                "subject": self.subject,
            }
            if request_ref:
                disp["authorizingPrescription"] = [request_ref]
            if amount:
                disp["quantity"] = amount
            disp["daysSupply"] = {"value": supply, "unit": "days", "system": UCUM, "code": "d"}
            disp["whenHandedOver"] = day.isoformat()
            if dose_instr:
                disp["dosageInstruction"] = [{"sequence": 1, **dose_instr}]
            out.append(disp)
            day += timedelta(days=every)
        return out

    def _administrations(
        self,
        entry: dict[str, Any],
        med: dict[str, Any],
        dose_instr: dict[str, Any] | None,
        where: str,
    ) -> list[dict[str, Any]]:
        dates = entry.get("dates") if entry.get("dates") is not None else [entry.get("date")]
        if not isinstance(dates, list) or not dates or any(d is None for d in dates):
            raise CaseError(f"{where}: as: administration needs date or dates")
        out = []
        for d in dates:
            adm_dosage: dict[str, Any] = {}
            if dose_instr:
                if "text" in dose_instr:
                    adm_dosage["text"] = dose_instr["text"]
                if "route" in dose_instr:
                    adm_dosage["route"] = dose_instr["route"]
                rate = (dose_instr.get("doseAndRate") or [{}])[0]
                if "doseQuantity" in rate:
                    adm_dosage["dose"] = rate["doseQuantity"]
                if "rateQuantity" in rate:
                    adm_dosage["rateQuantity"] = rate["rateQuantity"]
            adm: dict[str, Any] = {
                "resourceType": "MedicationAdministration",
                "id": self.next_id("adm"),
                "status": entry.get("status", "completed"),
                "medicationCodeableConcept": med,
                "subject": self.subject,
                "effectiveDateTime": resolve_datetime(d, self.now, entry.get("time")),
            }
            if entry.get("note"):
                adm["note"] = [{"text": str(entry["note"])}]
            if adm_dosage:
                adm["dosage"] = adm_dosage
            out.append(adm)
        return out

    # observations ---------------------------------------------------------------------------------
    def observation(self, entry: dict[str, Any], index: int) -> list[dict[str, Any]]:
        where = self.where("observations", index)
        _check_keys(entry, OBSERVATION_KEYS, where)
        if entry.get("date") is None:
            raise CaseError(f"{where}: date is required")
        when = resolve_datetime(entry["date"], self.now, entry.get("time"))
        if "cssrs_screen" in entry:
            return self._cssrs(entry, when, where)
        if "code" not in entry:
            raise CaseError(f"{where}: code or cssrs_screen is required")
        code = concept(entry["code"], entry.get("text"), where)
        first = code["coding"][0]["code"]
        category = entry.get("category") or self._category(first, where)
        out: dict[str, Any] = {
            "resourceType": "Observation",
            "id": self.next_id("obs"),
            "status": entry.get("status", "final"),
            "category": [self._category_concept(category)],
            "code": code,
            "subject": self.subject,
            "effectiveDateTime": when,
        }
        if "systolic" in entry or "diastolic" in entry:
            if "systolic" not in entry or "diastolic" not in entry:
                raise CaseError(f"{where}: a blood pressure needs systolic and diastolic")
            out["component"] = [
                {
                    "code": concept("loinc:8480-6"),
                    "valueQuantity": quantity(entry["systolic"], "mm[Hg]", where),
                },
                {
                    "code": concept("loinc:8462-4"),
                    "valueQuantity": quantity(entry["diastolic"], "mm[Hg]", where),
                },
            ]
        elif "answer" in entry:
            out["valueCodeableConcept"] = self._answer(entry["answer"])
        elif "value" in entry:
            value = entry["value"]
            unit = DEFAULT_UNITS.get(first)
            if isinstance(value, int) and not isinstance(value, bool) and unit is None:
                out["valueInteger"] = value
            else:
                out["valueQuantity"] = quantity(value, unit, where)
        else:
            raise CaseError(f"{where}: value, answer or systolic/diastolic is required")
        return [out]

    def _cssrs(self, entry: dict[str, Any], when: str, where: str) -> list[dict[str, Any]]:
        screen = entry["cssrs_screen"]
        if screen == "negative":
            answers = dict.fromkeys(CSSRS_ITEMS, "No")
        elif isinstance(screen, dict) and set(screen) <= set(CSSRS_ITEMS):
            answers = {k: str(v) for k, v in screen.items()}
        else:
            raise CaseError(
                f"{where}: cssrs_screen must be 'negative' or a mapping of {CSSRS_ITEMS} to answers"
            )
        out = []
        for item, answer in answers.items():
            out.append(
                {
                    "resourceType": "Observation",
                    "id": self.next_id("obs"),
                    "status": "final",
                    "category": [self._category_concept("survey")],
                    "code": concept(f"loinc:{item}"),
                    "subject": self.subject,
                    "effectiveDateTime": when,
                    "valueCodeableConcept": {"text": answer},
                }
            )
        return out

    @staticmethod
    def _category(code: str, where: str) -> str:
        if code in VITAL_SIGNS:
            return "vital-signs"
        if code in SURVEYS:
            return "survey"
        if code in SOCIAL_HISTORY:
            return "social-history"
        raise CaseError(f"{where}: no default category for {code}; give category:")

    @staticmethod
    def _category_concept(category: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "coding": [{"system": f"{TERMINOLOGY}/observation-category", "code": category}]
        }
        if category in CATEGORY_DISPLAY:
            out["coding"][0]["display"] = CATEGORY_DISPLAY[category]
        return out

    @staticmethod
    def _answer(answer: Any) -> dict[str, Any]:
        """``"LA15173-0 Pregnant"`` → a LOINC answer coding; any other text → text only."""
        m = re.match(r"^(LA\d+-\d)(?:\s+(.*))?$", str(answer).strip())
        if not m:
            return {"text": str(answer)}
        c = coding(f"loinc:{m.group(1)}")
        return {"coding": [c], "text": m.group(2) or c.get("display", m.group(1))}

    # procedures -----------------------------------------------------------------------------------
    def procedure(self, entry: dict[str, Any], index: int) -> dict[str, Any]:
        where = self.where("procedures", index)
        _check_keys(entry, PROCEDURE_KEYS, where)
        if "code" not in entry or entry.get("date") is None:
            raise CaseError(f"{where}: code and date are required")
        return {
            "resourceType": "Procedure",
            "id": self.next_id("proc"),
            "status": entry.get("status", "completed"),
            "code": concept(entry["code"], entry.get("text"), where),
            "subject": self.subject,
            "performedDateTime": resolve_datetime(entry["date"], self.now),
        }

    # allergies ------------------------------------------------------------------------------------
    def allergy(self, entry: dict[str, Any], index: int) -> dict[str, Any]:
        where = self.where("allergies", index)
        _check_keys(entry, ALLERGY_KEYS, where)
        if "code" in entry:
            substance = concept(entry["code"], entry.get("text"), where)
        elif entry.get("text"):
            substance = {"text": str(entry["text"])}
        else:
            raise CaseError(f"{where}: code or text is required")
        out: dict[str, Any] = {"resourceType": "AllergyIntolerance", "id": self.next_id("allergy")}
        status = entry.get("status", "active")
        if status is not None:  # status: null leaves clinicalStatus out, as some EHRs do
            if status not in ALLERGY_STATUS:
                raise CaseError(f"{where}: status must be one of {list(ALLERGY_STATUS)} or null")
            out["clinicalStatus"] = {
                "coding": [{"system": f"{TERMINOLOGY}/allergyintolerance-clinical", "code": status}]
            }
        verification = entry.get("verification", "confirmed")
        if verification not in ALLERGY_VERIFICATION:
            raise CaseError(f"{where}: verification must be one of {list(ALLERGY_VERIFICATION)}")
        out["verificationStatus"] = {
            "coding": [{"system": f"{TERMINOLOGY}/allergyintolerance-verification", "code": verification}]
        }
        out["type"] = entry.get("type", "allergy")
        out["category"] = ["medication"]
        if entry.get("criticality") is not None:
            out["criticality"] = str(entry["criticality"])
        out["code"] = substance
        out["patient"] = self.subject
        if entry.get("reaction"):
            reaction: dict[str, Any] = {"manifestation": [{"text": str(entry["reaction"])}]}
            if entry.get("severity"):
                reaction["severity"] = str(entry["severity"])
            out["reaction"] = [reaction]
        return out

    # draft orders ---------------------------------------------------------------------------------
    def order(self, entry: dict[str, Any], index: int) -> dict[str, Any]:
        where = self.where("orders", index)
        _check_keys(entry, ORDER_KEYS, where)
        if "code" in entry:
            med = concept(entry["code"], entry.get("text"), where)
        elif entry.get("text"):  # an uncoded order, as some EHRs send: the service matches its name
            med = {"text": str(entry["text"])}
        else:
            raise CaseError(f"{where}: code or text is required")
        out: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": self.next_id("order"),
            "status": "draft",
            "intent": "order",
            "medicationCodeableConcept": med,
            "subject": self.subject,
            "authoredOn": format_datetime(self.now),
            "requester": {"reference": DEFAULT_USER},
        }
        instr = dosage(entry, med, where)
        if instr:
            out["dosageInstruction"] = [{"sequence": 1, **instr}]
        if entry.get("note"):
            out["note"] = [{"text": str(entry["note"])}]
        return out


def _entries(case: dict[str, Any], key: str) -> list[Any]:
    value = case.get(key) or []
    if not isinstance(value, list):
        raise CaseError(f"{case.get('id', '?')}: {key} must be a list")
    return value


def build_resources(case: dict[str, Any]) -> list[dict[str, Any]]:
    """The patient's record as FHIR R4 resources: Patient first, then conditions, medications,
    observations and procedures in the order the case lists them (draft orders excluded)."""
    b = _Builder(case)
    out = [b.patient()]
    out += [b.condition(e, i) for i, e in enumerate(_entries(case, "conditions"))]
    for i, e in enumerate(_entries(case, "medications")):
        out += b.medication(e, i)
    for i, e in enumerate(_entries(case, "observations")):
        out += b.observation(e, i)
    out += [b.procedure(e, i) for i, e in enumerate(_entries(case, "procedures"))]
    out += [b.allergy(e, i) for i, e in enumerate(_entries(case, "allergies"))]
    return out


def order_context(hook: str, orders: list[dict[str, Any]]) -> dict[str, Any]:
    """The order hooks' context fields: ``draftOrders`` (a collection Bundle) and, for
    order-select, ``selections`` naming the first order."""
    context: dict[str, Any] = {
        "draftOrders": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": o} for o in orders],
        }
    }
    if hook == "order-select":
        context["selections"] = [f"MedicationRequest/{orders[0]['id']}"]
    return context


def build_draft_orders(case: dict[str, Any]) -> list[dict[str, Any]]:
    """The draft MedicationRequests of ``context.draftOrders`` (ids ``<patient>-order-N``)."""
    b = _Builder(case)
    return [b.order(e, i) for i, e in enumerate(_entries(case, "orders"))]
