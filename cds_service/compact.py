"""Compact patients: a short YAML description of a case, built into FHIR R4 resources and a request.

A *case* (see ``docs/compact-format.md``) names a patient, their conditions, medication history,
observations, procedures and draft orders with short codes (``rx:312941``, ``icd:F33.2``) and
dates relative to the evaluation time (``-6d``, ``today``). :func:`build_request` turns it into the
CDS Hooks 2.0 request a real EHR would send, with every prefetch key of ``services.PREFETCH``
filled as a searchset Bundle and the ``ketamine-cds.evaluation-time`` extension set to ``now``.

Everything here is pure (no I/O except :func:`load_cases`) and deterministic: the same case always
gives byte-identical JSON. Codes are never looked up or invented: a coding carries a ``display``
only when the code is in :data:`DISPLAYS`, a table copied from the project's verified clinical sources.
"""

from __future__ import annotations

import calendar
import re
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from .services import PREFETCH

# -- code systems and displays ----------------------------------------------------------------------
SYSTEMS: dict[str, str] = {
    "rx": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "sct": "http://snomed.info/sct",
    "icd": "http://hl7.org/fhir/sid/icd-10-cm",
    "loinc": "http://loinc.org",
    "cpt": "http://www.ama-assn.org/go/cpt",
    "local": "http://ketamine-cds.local/CodeSystem/assessment",
}
UCUM = "http://unitsofmeasure.org"
TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"
DEFAULT_BASE = "https://fhir.example.org/r4"
DEFAULT_USER = "Practitioner/example"
EXTENSION_TIME = "ketamine-cds.evaluation-time"
HOOKS = ("patient-view", "order-select", "order-sign")
HOOK_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-5b7a-9c41-2e6d8f0a7b35")

# Displays copied verbatim from the project's shared clinical sources (value-set expansions unless
# noted); tests/test_compact.py checks every entry against them where a checkout has them
# (../shared). A code not listed gets no display.
DISPLAYS: dict[tuple[str, str], str] = {
    # RxNorm products (SCD/SBD): VSAC 196.12.1213 "Antidepressant Medication", 526.3.1566,
    # 1248.134 "CNS Depressants", CDC benzodiazepine-medications
    ("rx", "312938"): "sertraline 100 MG Oral Tablet",
    ("rx", "312941"): "sertraline 50 MG Oral Tablet",
    ("rx", "313585"): "24 HR venlafaxine 75 MG Extended Release Oral Capsule",
    ("rx", "596934"): "duloxetine 60 MG Delayed Release Oral Capsule",
    ("rx", "351250"): "escitalopram 20 MG Oral Tablet",
    ("rx", "310385"): "fluoxetine 20 MG Oral Capsule",
    ("rx", "313989"): "fluoxetine 40 MG Oral Capsule",
    ("rx", "200371"): "citalopram 20 MG Oral Tablet",
    ("rx", "993557"): "24 HR bupropion hydrochloride 300 MG Extended Release Oral Tablet",
    ("rx", "314111"): "mirtazapine 30 MG Oral Tablet",
    ("rx", "311726"): "mirtazapine 45 MG Oral Tablet",
    ("rx", "1439810"): "vortioxetine 20 MG Oral Tablet",
    ("rx", "312347"): "phenelzine 15 MG Oral Tablet",
    ("rx", "197901"): "lorazepam 1 MG Oral Tablet",
    ("rx", "198429"): "lamotrigine 200 MG Oral Tablet",
    ("rx", "312745"): "quetiapine 300 MG Oral Tablet",
    # RxNorm esketamine SBDF: knowledge.md Table 1 (S16, ndclist.com RxNorm mirror)
    ("rx", "2201625"): "esketamine Nasal Spray [Spravato]",
    # RxNorm ingredient (no product code verified for lithium): knowledge.md Table 1
    ("rx", "42351"): "lithium carbonate",
    # ICD-10-CM: VSAC 1029.314, 1029.332, 3157.4055
    ("icd", "F32.2"): "Major depressive disorder, single episode, severe without psychotic features",
    ("icd", "F33.1"): "Major depressive disorder, recurrent, moderate",
    ("icd", "F33.2"): "Major depressive disorder, recurrent severe without psychotic features",
    ("icd", "F33.3"): "Major depressive disorder, recurrent, severe with psychotic symptoms",
    ("icd", "F29"): "Unspecified psychosis not due to a substance or known physiological condition",
    ("icd", "F31.4"): "Bipolar disorder, current episode depressed, severe, without psychotic features",
    ("icd", "I10"): "Essential (primary) hypertension",
    ("icd", "Z33.1"): "Pregnant state, incidental",
    # SNOMED CT: VSAC 105.12.1007, 67.1.101.1.128, 526.3.378, 600.263
    ("sct", "36474008"): "Severe recurrent major depression without psychotic features (disorder)",
    ("sct", "371596008"): "Bipolar I disorder (disorder)",
    ("sct", "77386006"): "Pregnancy (finding)",
    ("sct", "59621000"): "Essential hypertension (disorder)",
    # LOINC: VSAC 1045.159, 1045.163, 67.1.101.1.263; answer LA15173-0: knowledge.md Table 4 (S11)
    ("loinc", "29463-7"): "Body weight",
    ("loinc", "8480-6"): "Systolic blood pressure",
    ("loinc", "44261-6"): "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]",
    (
        "loinc",
        "89204-2",
    ): "Patient Health Questionnaire-9: Modified for Teens total score [Reported.PHQ.Teen]",
    ("loinc", "LA15173-0"): "Pregnant",
    # the project's own local code system
    ("local", "madrs-total"): "MADRS total score",
}

# Human-readable text for codes that have no verified display (CodeableConcept.text, not display).
TEXTS: dict[tuple[str, str], str] = {
    ("loinc", "85354-9"): "Blood pressure panel",
    ("loinc", "8462-4"): "Diastolic blood pressure",
    ("loinc", "8867-4"): "Heart rate",
    ("loinc", "9279-1"): "Respiratory rate",
    ("loinc", "59408-5"): "Oxygen saturation by pulse oximetry",
    ("loinc", "2708-6"): "Oxygen saturation",
    ("loinc", "8302-2"): "Body height",
    ("loinc", "70274-6"): "GAD-7 total score",
    ("loinc", "82810-3"): "Pregnancy status",
    ("loinc", "93246-7"): "C-SSRS screen: wish to be dead",
    ("loinc", "93247-5"): "C-SSRS screen: non-specific active suicidal thoughts",
    ("loinc", "93248-3"): "C-SSRS screen: suicidal thoughts with method",
    ("loinc", "93249-1"): "C-SSRS screen: suicidal intent",
    ("cpt", "90870"): "Electroconvulsive therapy",
    ("rx", "238082"): "Ketamine HCl 50 mg/mL injection",
}

# Observation category and default UCUM unit by code.
VITAL_SIGNS = {"29463-7", "8302-2", "85354-9", "8480-6", "8462-4", "8867-4", "9279-1", "59408-5", "2708-6"}
SURVEYS = {"44261-6", "89204-2", "70274-6", "madrs-total", "93246-7", "93247-5", "93248-3", "93249-1"}
SOCIAL_HISTORY = {"82810-3"}
DEFAULT_UNITS = {
    "29463-7": "kg",
    "8302-2": "cm",
    "8867-4": "/min",
    "9279-1": "/min",
    "59408-5": "%",
    "2708-6": "%",
}
UNIT_TEXT = {"/min": "beats/minute", "mm[Hg]": "mmHg", "ug": "mcg"}
CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "survey": "Survey", "social-history": "Social History"}
CSSRS_ITEMS = ("93246-7", "93247-5", "93248-3", "93249-1")

ROUTES = {
    "iv": "intravenous",
    "nasal": "intranasal",
    "sc": "subcutaneous",
    "im": "intramuscular",
    "oral": "oral",
    "transdermal": "transdermal",
}
ESKETAMINE_PRODUCTS = {"2201623", "2201625"}
NAMED_FREQUENCIES = {"daily": "1/d", "qd": "1/d", "bid": "2/d", "tid": "3/d", "qid": "4/d", "weekly": "1/wk"}
TIMES_TEXT = {1: "once", 2: "twice", 3: "three times", 4: "four times"}
PERIOD_TEXT = {"d": "daily", "wk": "weekly", "h": "hourly"}

CONDITION_STATUS = {
    "active": "Active",
    "recurrence": "Recurrence",
    "relapse": "Relapse",
    "inactive": "Inactive",
    "remission": "Remission",
    "resolved": "Resolved",
}
MED_AS = {"request", "statement", "dispense", "administration"}

CASE_KEYS = {"id", "title", "description", "now", "hook", "site", "patient", "expect"} | {
    "conditions",
    "medications",
    "observations",
    "procedures",
    "orders",
    "allergies",
}
PATIENT_KEYS = {"id", "sex", "birthDate", "age", "name", "deceased"}
CONDITION_KEYS = {"code", "text", "onset", "abatement", "status", "verification", "recorded"}
_DOSAGE_KEYS = {"code", "text", "dose", "route", "frequency", "infusion_minutes", "note", "dosage_text"}
MEDICATION_KEYS = _DOSAGE_KEYS | {
    "as",
    "start",
    "end",
    "status",
    "dispenses",
    "reason",
    "date",
    "dates",
    "time",
}
OBSERVATION_KEYS = {"code", "text", "value", "systolic", "diastolic", "answer", "date", "time"} | {
    "category",
    "cssrs_screen",
    "status",
}
PROCEDURE_KEYS = {"code", "text", "date", "status"}
ALLERGY_KEYS = {"code", "text", "status", "verification", "criticality", "type", "reaction", "severity"}
ALLERGY_STATUS = ("active", "inactive", "resolved")
ALLERGY_VERIFICATION = ("unconfirmed", "confirmed", "refuted", "entered-in-error")
ORDER_KEYS = _DOSAGE_KEYS


class CaseError(ValueError):
    """A compact case that cannot be built; the message names the case and the entry."""


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


# -- codes, quantities, dosage ----------------------------------------------------------------------
def _split_code(token: str, where: str) -> tuple[str, str]:
    prefix, sep, code = str(token).partition(":")
    if not sep or prefix not in SYSTEMS or not code:
        raise CaseError(f"{where}: code {token!r} must be <prefix>:<code>, prefix one of {sorted(SYSTEMS)}")
    return prefix, code.strip()


def coding(token: str, where: str = "code") -> dict[str, str]:
    """``rx:312941`` → a Coding, with a display only when :data:`DISPLAYS` has one."""
    prefix, code = _split_code(token, where)
    out = {"system": SYSTEMS[prefix], "code": code}
    display = DISPLAYS.get((prefix, code))
    if display:
        out["display"] = display
    return out


def concept(codes: Any, text: str | None = None, where: str = "code") -> dict[str, Any]:
    """One or more shorthand codes → a CodeableConcept; ``text`` defaults to the first display."""
    tokens = codes if isinstance(codes, list) else [codes]
    if not tokens or any(not isinstance(t, str) for t in tokens):
        raise CaseError(f"{where}: expected a code or a list of codes, got {codes!r}")
    codings = [coding(t, where) for t in tokens]
    out: dict[str, Any] = {"coding": codings}
    if text is None:
        first = _split_code(tokens[0], where)
        text = DISPLAYS.get(first) or TEXTS.get(first)
    if text:
        out["text"] = str(text)
    return out


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(float(value), 4)


def quantity(value: Any, default_unit: str | None = None, where: str = "value") -> dict[str, Any]:
    """``"70 kg"`` / ``70`` (with a default unit) → a UCUM Quantity."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number, unit = float(value), default_unit
    else:
        m = re.match(r"^\s*(-?\d+(?:\.\d+)?)\s*(\S+)?\s*$", str(value))
        if not m:
            raise CaseError(f"{where}: cannot read quantity {value!r}")
        number, unit = float(m.group(1)), m.group(2) or default_unit
    if not unit:
        raise CaseError(f"{where}: {value!r} needs a unit")
    code = {"mcg": "ug", "mmHg": "mm[Hg]", "bpm": "/min"}.get(unit, unit)
    return {"value": _number(number), "unit": UNIT_TEXT.get(code, code), "system": UCUM, "code": code}


def _frequency(freq: Any, where: str) -> tuple[dict[str, Any], str]:
    """``"2/d"``, ``"1/wk"``, ``"once"``, ``"bid"`` → (timing.repeat, words)."""
    if freq is None:
        return {}, ""
    text = NAMED_FREQUENCIES.get(str(freq).strip().lower(), str(freq).strip())
    if text == "once":
        return {"count": 1}, "once"
    m = re.match(r"^(\d+)/(d|wk|h)$", text)
    if not m:
        raise CaseError(f"{where}: frequency {freq!r} must be N/d, N/wk, N/h, once, daily, bid, tid or qid")
    n, unit = int(m.group(1)), m.group(2)
    words = f"{TIMES_TEXT.get(n, f'{n} times')} {PERIOD_TEXT[unit]}"
    return {"frequency": n, "period": 1, "periodUnit": unit}, words


def _route(entry: dict[str, Any], medication: dict[str, Any], where: str) -> str | None:
    route = entry.get("route")
    if route is not None:
        if route not in ROUTES:
            raise CaseError(f"{where}: route {route!r} must be one of {sorted(ROUTES)}")
        return ROUTES[route]
    codes = {c["code"] for c in medication.get("coding", []) if c["system"] == SYSTEMS["rx"]}
    if codes & ESKETAMINE_PRODUCTS:
        return ROUTES["nasal"]
    label = " ".join(
        [medication.get("text", "")] + [c.get("display", "") for c in medication.get("coding", [])]
    )
    if re.search(r"\boral\b", label, re.IGNORECASE):
        return ROUTES["oral"]
    return None


def dosage(entry: dict[str, Any], medication: dict[str, Any], where: str) -> dict[str, Any] | None:
    """A Dosage from ``dose``, ``frequency``, ``route`` and ``infusion_minutes``."""
    repeat, words = _frequency(entry.get("frequency"), where)
    route = _route(entry, medication, where)
    minutes = entry.get("infusion_minutes")
    if minutes is not None:
        if not isinstance(minutes, int | float) or minutes <= 0:
            raise CaseError(f"{where}: infusion_minutes must be a positive number")
        repeat = {**repeat, "duration": _number(minutes), "durationUnit": "min"}
    out: dict[str, Any] = {}
    parts = []
    if entry.get("dose") is not None:
        dose_q = quantity(entry["dose"], "mg", f"{where}.dose")
        rate: dict[str, Any] = {"doseQuantity": dose_q}
        if minutes and dose_q["code"] == "mg":
            rate["rateQuantity"] = {
                "value": _number(round(dose_q["value"] / minutes, 3)),
                "unit": "mg/min",
                "system": UCUM,
                "code": "mg/min",
            }
        out["doseAndRate"] = [rate]
        parts.append(f"{dose_q['value']} {dose_q['unit']}")
    if route:
        parts.append(route)
    if minutes:
        parts.append(f"over {_number(minutes)} min")
    if words:
        parts.append(words)
    text = entry.get("dosage_text") or " ".join(parts)
    if text:
        out = {"text": text, **out}
    if repeat:
        out["timing"] = {"repeat": repeat}
    if route:
        out["route"] = {"text": route}
    return out or None


def _dispense_quantity(
    medication: dict[str, Any], dose: dict[str, Any] | None, per_day: float, days: int
) -> dict[str, Any] | None:
    """Tablets/capsules for a supply, when the product display gives one strength in MG."""
    display = next((c.get("display", "") for c in medication.get("coding", []) if c.get("display")), "")
    m = re.search(
        r"(\d+(?:\.\d+)?) MG (?:Extended Release |Delayed Release |Disintegrating )?Oral (Tablet|Capsule)$",
        display,
    )
    if not m or "/" in display or not dose or dose.get("code") != "mg":
        return None
    units_per_dose = dose["value"] / float(m.group(1))
    total = units_per_dose * per_day * days
    if not float(total).is_integer():
        return None
    return {"value": int(total), "unit": m.group(2).lower()}


def _duration_days(value: Any, where: str) -> int:
    m = re.match(r"^(\d+)d$", str(value).strip())
    if not m or int(m.group(1)) <= 0:
        raise CaseError(f"{where}: expected a number of days like 30d, got {value!r}")
    return int(m.group(1))


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


# -- the request ------------------------------------------------------------------------------------
def _sort_key(res: dict[str, Any]) -> str:
    return str(res.get("effectiveDateTime") or "")


def _category_codes(res: dict[str, Any]) -> set[str]:
    return {c.get("code") for cat in res.get("category") or [] for c in cat.get("coding") or []}


def _has_code(res: dict[str, Any], system: str, code: str) -> bool:
    return any(
        c.get("system") == system and c.get("code") == code
        for c in (res.get("code") or {}).get("coding") or []
    )


def _codes_of(res: dict[str, Any]) -> set[str]:
    return {f"{c.get('system')}|{c.get('code')}" for c in (res.get("code") or {}).get("coding") or []}


def _template_codes(template: str) -> set[str]:
    """The ``system|code`` (or bare ``code``: any system) tokens of a template's ``code=`` parameter."""
    query = template.partition("?")[2]
    return {v for part in query.split("&") if part.startswith("code=") for v in part[5:].split(",")}


def _matches_codes(res: dict[str, Any], tokens: set[str]) -> bool:
    """FHIR token search: ``system|code`` matches that coding, a bare ``code`` one of any system."""
    codings = (res.get("code") or {}).get("coding") or []
    return bool(_codes_of(res) & tokens) or any(c.get("code") in tokens for c in codings)


def select_for_key(key: str, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the prefetch query ``key`` would return from a server holding ``resources``."""

    def of(rtype: str) -> list[dict[str, Any]]:
        return [r for r in resources if r["resourceType"] == rtype]

    def newest_first(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # stable: equal times keep the case's order
        return sorted(items, key=_sort_key, reverse=True)

    observations = of("Observation")
    if key == "patient":
        return of("Patient")
    if key == "vitalSigns":
        return newest_first([o for o in observations if "vital-signs" in _category_codes(o)])
    if key == "assessments":  # by code, whatever the category
        tokens = _template_codes(PREFETCH[key])
        return newest_first([o for o in observations if _matches_codes(o, tokens)])
    if key == "pregnancyStatus":
        return newest_first([o for o in observations if _has_code(o, SYSTEMS["loinc"], "82810-3")])
    rtype = {
        "conditions": "Condition",
        "medicationRequests": "MedicationRequest",
        "medicationStatements": "MedicationStatement",
        "medicationDispenses": "MedicationDispense",
        "medicationAdministrations": "MedicationAdministration",
        "procedures": "Procedure",
        "allergies": "AllergyIntolerance",
    }.get(key)
    if rtype is None:
        raise CaseError(f"no selection rule for prefetch key {key!r}")
    return of(rtype)


def searchset(resources: list[dict[str, Any]], base: str, query: str) -> dict[str, Any]:
    """A searchset Bundle as a FHIR server returns it (no ``entry`` when nothing matched)."""
    out: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": f"{base}/{query}"}],
    }
    if resources:
        out["entry"] = [
            {
                "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ]
    return out


def hook_instance(case_id: str) -> str:
    """A stable hookInstance UUID (v5) derived from the case id."""
    return str(uuid.uuid5(HOOK_NAMESPACE, case_id))


def build_request(
    case: dict[str, Any], *, prefetch: bool = True, fhir_server: str | None = None
) -> dict[str, Any]:
    """The CDS Hooks 2.0 request for a case: context, every prefetch key, evaluation time."""
    b = _Builder(case)
    hook = case.get("hook")
    if hook not in HOOKS:
        raise CaseError(f"{b.cid}: hook must be one of {HOOKS}, got {hook!r}")
    orders = build_draft_orders(case)
    context: dict[str, Any] = {"userId": DEFAULT_USER, "patientId": b.pid}
    if hook == "patient-view":
        if orders:
            raise CaseError(f"{b.cid}: a patient-view case has no orders")
    else:
        if not orders:
            raise CaseError(f"{b.cid}: an {hook} case needs at least one order")
        context.update(order_context(hook, orders))
    request: dict[str, Any] = {
        "hook": hook,
        "hookInstance": hook_instance(b.cid),
        "context": context,
        "extension": {EXTENSION_TIME: format_datetime(b.now)},
    }
    if fhir_server:
        request["fhirServer"] = fhir_server
    if prefetch:
        resources = build_resources(case)
        base = (fhir_server or DEFAULT_BASE).rstrip("/")
        filled = {k: t.replace("{{context.patientId}}", b.pid) for k, t in PREFETCH.items()}
        request["prefetch"] = {
            key: (
                select_for_key(key, resources)[0]
                if key == "patient"
                else searchset(select_for_key(key, resources), base, filled[key])
            )
            for key in PREFETCH
        }
    return request


def load_cases(path: str | Path) -> list[dict[str, Any]]:
    """The cases of a YAML file whose top-level key ``cases`` holds the list."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise CaseError(f"{path}: expected a mapping with a 'cases' list")
    ids = [c.get("id") for c in data["cases"] if isinstance(c, dict)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CaseError(f"{path}: duplicate case ids {duplicates}")
    return data["cases"]
