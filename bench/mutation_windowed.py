"""Records of drugs read only within windows, for bench/mutations.py: what a medication horizon
must get right (session 9, HZ: an old record is read only as far as telling that it is old).

One medication record of a windowed drug (the project's own records of gabapentin, pregabalin,
lorazepam, lamotrigine, phenelzine, tranylcypromine: transplanted from the pool, an existing one
moved, or its concept made into a statement or an administration) is dated so that its use ends
on either side of the horizon's cutoff day (``cutoff-1d``, ``cutoff+0d``, ``cutoff+1d``), long
before it (``old``) or lately (``recent``), then given one defect:

- ``clean``: none;
- an element no horizon decides on made unreadable (``dose-*``, ``quantity-*``, ``frequency-*``,
  ``supply-duration-*``, ``dose-wrapped``, ``dosage-single``: for a dispense, statement or
  administration its dosage decides nothing);
- an element it decides on made unreadable (``end-*`` the date its end is read from, ``status-*``,
  ``coding-*`` the drug's identity, ``intent-number``, ``supply-*`` a dispense's daysSupply);
- an unknown key (``vendor-*``: at the top, nested in the dosage, in the concept's coding, in the
  element the end is read from; ``underscore-status``).

The label is ``windowed:<type>:<drug>:<where>:<defect>``. Which of these may differ between
reading every record in full and a horizon that reads an old one only as far as telling it is
old: only ``where`` in (``cutoff-1d``, ``old``) with a non-deciding defect (asked for → ignored
report); the harness says nothing about that itself (bench/differential.py prints every
difference), tests/test_review9.py checks the cutoff days below against the rule set's horizon.
"""

from __future__ import annotations

import copy
import random
from datetime import datetime, timedelta
from typing import Any

from mutation_base import Pool, _now, _rtype, bundles, resources

#: Days before today whose start is the horizon's cutoff day for a record of each drug (the rule
#: set's longest window of its value sets + the horizon's 2-day margin: gabapentinoids and
#: benzodiazepines 7 d, lamotrigine in effect today 1 d); None: kept however old (MAOIs are read
#: 14 d, but also antidepressants, read over the whole history; dated as if 14 + 2 d).
CUTOFF_DAYS: dict[str, int | None] = {
    "gabapentin": 9,
    "pregabalin": 9,
    "lorazepam": 9,
    "lamotrigine": 3,
    "phenelzine": None,
    "tranylcypromine": None,
}
#: Where the record's use ends, relative to the cutoff day (drawn this often; see ``_end_offset``).
WHERE = ("cutoff-1d", "cutoff-1d", "cutoff+0d", "cutoff+0d", "cutoff+1d", "old", "old", "recent")
NOT_DECIDING = (
    "dose-string",
    "dose-number-unit",
    "dose-wrapped",
    "quantity-string",
    "frequency-string",
    "supply-duration-string",
    "dosage-single",
)
DECIDING = (
    "end-feb30",
    "end-slash",
    "end-no-zone",
    "status-number",
    "status-list",
    "coding-object",
    "coding-code-number",
    "intent-number",
    "supply-string",
)
UNKNOWN = ("vendor-top", "vendor-dosage", "vendor-coding", "vendor-end", "underscore-status")
DEFECTS = ("clean", "clean", *NOT_DECIDING, *DECIDING, *UNKNOWN)
BUNDLE = {
    "MedicationRequest": "medicationRequests",
    "MedicationStatement": "medicationStatements",
    "MedicationDispense": "medicationDispenses",
    "MedicationAdministration": "medicationAdministrations",
}
UCUM = "http://unitsofmeasure.org"


def drug_of(res: dict[str, Any]) -> str | None:
    """The windowed drug a record names by its concept's text or displays (None: another)."""
    concept = res.get("medicationCodeableConcept")
    if not isinstance(concept, dict):
        return None
    names = [concept.get("text")]
    codings = concept.get("coding")
    if isinstance(codings, list):
        names += [c.get("display") for c in codings if isinstance(c, dict)]
    text = " ".join(n for n in names if isinstance(n, str)).lower()
    return next((d for d in CUTOFF_DAYS if d in text), None)


def _stamp(day: datetime, rng: random.Random) -> str:
    """The day as a date mostly, else a dateTime in UTC or far west/east (the same local day)."""
    how = rng.choice(["date", "date", "date", "utc", "west", "east"])
    if how == "date":
        return day.date().isoformat()
    if how == "utc":
        return day.strftime("%Y-%m-%dT12:00:00Z")
    return day.strftime("%Y-%m-%dT") + ("23:30:00-10:00" if how == "west" else "00:30:00+14:00")


def _end_offset(where: str, cut: int, rng: random.Random) -> int:
    """Days from the cutoff day to the use's end (negative: before it, the record is beyond)."""
    if where.startswith("cutoff"):
        return int(where[6:-1])
    if where == "old":
        return -rng.choice([2, 30, 200, 800])
    return cut - rng.choice([0, 1, 2]) + rng.choice([0, 0, 30])  # ends about today or later


def _record(rng: random.Random, request: dict[str, Any], pool: Pool) -> dict[str, Any] | None:
    """A record of a windowed drug now in the request: one of its own, or one of the pool's
    (as it is, or its concept as a statement or an administration)."""
    own = [
        r
        for key, r in resources(request)
        if key != "draftOrders" and _rtype(r) in BUNDLE and drug_of(r) and r.get("status") != "draft"
    ]
    if own and rng.random() < 0.4:
        return rng.choice(own)
    source = [m for m in pool.medications if drug_of(m)]
    if not source:
        return None
    res = copy.deepcopy(rng.choice(source))
    rtype = rng.choice([_rtype(res), _rtype(res), "MedicationStatement", "MedicationAdministration"])
    if rtype != _rtype(res):
        dosage = (res.get("dosageInstruction") or [None])[0]
        made: dict[str, Any] = {"resourceType": rtype, "status": "completed"}
        made["medicationCodeableConcept"] = res["medicationCodeableConcept"]
        if rtype == "MedicationStatement" and isinstance(dosage, dict):
            made["dosage"] = [dosage]
        elif isinstance(dosage, dict):
            dose = ((dosage.get("doseAndRate") or [{}])[0] or {}).get("doseQuantity")
            made["dosage"] = {"text": dosage.get("text"), **({"dose": dose} if dose else {})}
        res = made
    patient = (request.get("context") or {}).get("patientId")
    res["subject"] = {"reference": f"Patient/{patient}"}
    res["id"] = f"hz{rng.randrange(10**6)}"
    bundle = dict(bundles(request)).get(BUNDLE[rtype])
    if bundle is None:
        return None
    bundle.setdefault("entry", []).append({"resource": res})
    return res


def _date(res: dict[str, Any], start: datetime, end: datetime, rng: random.Random) -> list[Any]:
    """Dates the record so that its use runs from ``start`` to ``end``; the (parent, key) its
    end is read from."""
    rtype = _rtype(res)
    if rtype == "MedicationDispense":
        supply = rng.choice([1, 7, 30, 90])
        res.pop("whenPrepared", None)
        res["whenHandedOver"] = _stamp(end - timedelta(days=supply), rng)
        res["daysSupply"] = {"value": supply, "unit": "days", "system": UCUM, "code": "d"}
        res["status"] = rng.choice(["completed", "completed", "in-progress"])
        return [res, "whenHandedOver"]
    if rtype == "MedicationAdministration":
        res.pop("effectiveDateTime", None)
        res.pop("effectivePeriod", None)
        res["status"] = rng.choice(["completed", "completed", "in-progress"])
        if rng.random() < 0.5:
            res["effectiveDateTime"] = _stamp(end, rng)
            return [res, "effectiveDateTime"]
        res["effectivePeriod"] = {"start": _stamp(start, rng), "end": _stamp(end, rng)}
        return [res["effectivePeriod"], "end"]
    if rtype == "MedicationStatement":
        res.pop("effectiveDateTime", None)
        res["effectivePeriod"] = {"start": _stamp(start, rng), "end": _stamp(end, rng)}
        res["status"] = rng.choice(["completed", "completed", "stopped", "active"])
        return [res["effectivePeriod"], "end"]
    res["status"] = rng.choice(["completed", "completed", "stopped", "active"])
    res["authoredOn"] = _stamp(start, rng)
    bounds = {"start": _stamp(start, rng), "end": _stamp(end, rng)}
    validity = copy.deepcopy(bounds)
    dosages = res.get("dosageInstruction")
    where: list[Any] = [validity, "end"]
    if isinstance(dosages, list) and dosages and isinstance(dosages[0], dict):
        timing = dosages[0].setdefault("timing", {})
        if isinstance(timing, dict) and isinstance(timing.setdefault("repeat", {}), dict):
            timing["repeat"]["boundsPeriod"] = bounds
            where = [bounds, "end"]  # the first dosage's bounds are read first
    part = res.setdefault("dispenseRequest", {})
    if isinstance(part, dict):
        part["validityPeriod"] = validity
    return where


def _dosage(res: dict[str, Any]) -> dict[str, Any] | None:
    dosage = res.get("dosageInstruction") if "dosageInstruction" in res else res.get("dosage")
    if isinstance(dosage, list):
        dosage = dosage[0] if dosage else None
    return dosage if isinstance(dosage, dict) else None


def _dose(res: dict[str, Any]) -> dict[str, Any] | None:
    dosage = _dosage(res)
    if dosage is None:
        return None
    if isinstance(dosage.get("dose"), dict):
        return dosage["dose"]
    rates = dosage.get("doseAndRate")
    rate = rates[0] if isinstance(rates, list) and rates else None
    dose = rate.get("doseQuantity") if isinstance(rate, dict) else None
    return dose if isinstance(dose, dict) else None


def _defect(res: dict[str, Any], how: str, end_at: list[Any], rng: random.Random) -> bool:
    """Gives the record the defect ``how``; False when it has no element for it."""
    rtype = _rtype(res)
    parent, key = end_at
    dose, dosage = _dose(res), _dosage(res)
    part, instructions = res.get("dispenseRequest"), res.get("dosageInstruction")
    concept = res.get("medicationCodeableConcept")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    coding = codings[0] if isinstance(codings, list) and codings and isinstance(codings[0], dict) else None
    if how == "clean":
        return True
    if how == "dose-string" and dose is not None:
        dose["value"] = str(dose.get("value"))
    elif how == "dose-number-unit" and dose is not None:
        dose["unit"] = 5
    elif how == "dose-wrapped" and dose is not None and isinstance(dosage, dict):
        if "dose" in dosage:
            dosage["dose"] = [dose]
        else:
            dosage["doseAndRate"][0]["doseQuantity"] = [dose]
    elif how == "quantity-string" and rtype == "MedicationDispense":
        res["quantity"] = {"value": "ninety", "unit": "tablet"}
    elif how == "quantity-string" and rtype == "MedicationRequest" and isinstance(part, dict):
        part["quantity"] = {"value": "ninety", "unit": "tablet"}
    elif how == "frequency-string" and isinstance(dosage, dict) and isinstance(dosage.get("timing"), dict):
        repeat = dosage["timing"].get("repeat")
        if not isinstance(repeat, dict):
            return False
        repeat["frequency"] = "three"
    elif how == "supply-duration-string" and isinstance(part, dict):
        part["expectedSupplyDuration"] = {"value": "30", "unit": "days", "system": UCUM, "code": "d"}
    elif how == "dosage-single" and isinstance(instructions, list) and instructions:
        if rtype == "MedicationRequest":
            return False  # a request's first dosage holds its bounds: that would decide
        res["dosageInstruction"] = instructions[0]
    elif how == "dosage-single" and isinstance(res.get("dosage"), list) and res["dosage"]:
        res["dosage"] = res["dosage"][0]
    elif how == "end-feb30":
        parent[key] = parent[key][:4] + "-02-30" + parent[key][10:]
    elif how == "end-slash":
        text = parent[key]
        parent[key] = f"{text[5:7]}/{text[8:10]}/{text[:4]}"
    elif how == "end-no-zone":
        parent[key] = parent[key][:10] + " 10:00"
    elif how == "status-number":
        res["status"] = 3
    elif how == "status-list":
        res["status"] = [res["status"]]
    elif how == "coding-object" and coding is not None:
        concept["coding"] = coding
    elif how == "coding-code-number" and coding is not None and str(coding.get("code", "")).isdigit():
        coding["code"] = int(coding["code"])
    elif how == "intent-number" and rtype == "MedicationRequest":
        res["intent"] = 1
    elif how == "supply-string" and rtype == "MedicationDispense":
        res["daysSupply"]["value"] = str(res["daysSupply"]["value"])
    elif how == "vendor-top":
        res["vendorSpecificField"] = {"a": [1, {"b": "c"}]}
    elif how == "vendor-dosage" and isinstance(dosage, dict):
        target = dosage.get("timing") if isinstance(dosage.get("timing"), dict) else dosage
        target["vendorSpecificField"] = {"a": 1}
    elif how == "vendor-coding" and coding is not None:
        coding["vendorSpecificField"] = "x"
    elif how == "vendor-end" and isinstance(parent, dict) and parent is not res:
        parent["vendorSpecificField"] = {"a": 1}
    elif how == "underscore-status":
        res["_status"] = {"extension": [{"url": "http://example.org/vendor-status", "valueString": "x"}]}
    else:
        return False
    return True


def windowed_record(
    rng: random.Random, request: dict[str, Any], pool: Pool
) -> tuple[dict[str, Any], str] | None:
    """The record :func:`m_windowed` dated and gave its defect, and the label."""
    res = _record(rng, request, pool)
    if res is None:
        return None
    drug = drug_of(res) or "?"
    cut = CUTOFF_DAYS.get(drug) or 16
    where = rng.choice(WHERE)
    now = _now(request)
    today = datetime(now.year, now.month, now.day, 12)
    end = today - timedelta(days=cut) + timedelta(days=_end_offset(where, cut, rng))
    start = end - timedelta(days=rng.choice([1, 30, 90, 400]))
    end_at = _date(res, start, end, rng)
    how = rng.choice(DEFECTS)
    if not _defect(res, how, end_at, rng):
        how = "clean"
    return res, f"windowed:{_rtype(res)}:{drug}:{where}:{how}"


def m_windowed(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """A record of a windowed drug ending on either side of the horizon's cutoff day, long before
    or lately, with one defect (none, a non-deciding or deciding element unreadable, an unknown key)."""
    got = windowed_record(rng, request, pool)
    return None if got is None else got[1]
