"""Mutations of CDS Hooks requests the way EHRs vary them, for bench/differential.py.

Each mutator takes a random generator and a request (changed in place) and returns a short label
of what it did (``kind:detail``), or None when the request has nothing it can change. Labels name
resource types, element names and values the project itself wrote, never anything else. The same
seed gives the same mutations (everything is drawn from the ``random.Random`` passed in).
"""

from __future__ import annotations

import contextlib
import copy
import random
import re
from datetime import datetime, timedelta
from typing import Any

from mutation_base import (
    CHOICE_DATES,
    CLINICAL,
    PERIOD_KEYS,
    SHIFTS,
    STATUSES,
    VERIFICATION,
    Mutator,
    Pool,
    _date_nodes,
    _name,
    _now,
    _pick_resource,
    _rtype,
    _safe_shift,
    bundles,
    nodes,
    resources,
    shift_date,
    words,
)
from mutation_shapes import (
    m_array_single,
    m_dosage,
    m_entries,
    m_extra,
    m_invalid,
    m_observation,
    m_patient,
    m_prefetch_key,
    m_remove,
)
from mutation_windowed import m_windowed

__all__ = ["MUTATORS", "WEIGHTS", "Pool", "mutate", "resources", "shift_date"]


def m_date_shift(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """Every date of one resource moved by the same number of days (into or out of a window)."""
    got = _pick_resource(rng, request, lambda r: bool(_date_nodes(r)))
    if not got:
        return None
    _, res = got
    days = rng.choice(SHIFTS)
    for _, parent, k, v in _date_nodes(res):
        with contextlib.suppress(ValueError):
            parent[k] = shift_date(v, days)
    return f"date-shift:{_rtype(res)}:{days:+d}d"


def m_date_one(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """One date element moved, made coarser (month, year), given an offset, or made invalid."""
    found = [(r, n) for _, r in resources(request) for n in _date_nodes(r)]
    if not found:
        return None
    res, (path, parent, k, v) = rng.choice(found)
    how = rng.choice(
        ["shift", "month", "year", "day", "offset", "no-zone", "invalid", "number", "feb30", "seconds"]
    )
    if how == "shift":
        days = rng.choice(SHIFTS)
        parent[k] = shift_date(v, days)
        how = f"shift{days:+d}d"
    elif how == "month":
        parent[k] = v[:7]
    elif how == "year":
        parent[k] = v[:4]
    elif how == "day":
        parent[k] = v[:10]
    elif how == "offset" and len(v) > 10:
        parent[k] = re.sub(r"(Z|[+-]\d{2}:\d{2})$", "", v) + rng.choice(["+05:00", "-08:00", "+14:00"])
    elif how == "no-zone" and len(v) > 10:
        parent[k] = re.sub(r"(Z|[+-]\d{2}:\d{2})$", "", v)
    elif how == "seconds" and len(v) > 16:
        parent[k] = re.sub(r"(Z|[+-]\d{2}:\d{2})$", "", v[:19]) + ".123Z"
    elif how == "invalid":
        parent[k] = rng.choice(["yesterday", "2026-13-01", "01/02/2026", ""])
    elif how == "number":
        parent[k] = 20260101
    elif how == "feb30":
        parent[k] = v[:4] + "-02-30" + v[10:]
    else:
        parent[k] = v[:10]
        how = "day"
    return f"date-{how}:{_rtype(res)}.{_name(path)}"


def m_date_period(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """A dateTime choice written as a Period (start, start+end, end only), or a Period as a dateTime."""

    def has(r: dict) -> bool:
        return any(k in r for k in CHOICE_DATES) or any(k in r for k in PERIOD_KEYS.values())

    got = _pick_resource(rng, request, has)
    if not got:
        return None
    _, res = got
    for key in CHOICE_DATES:
        if key in res and isinstance(res[key], str):
            v = res.pop(key)
            shape = rng.choice(["start", "start-end", "end", "start-end-later"])
            period: dict[str, Any] = {}
            if shape != "end":
                period["start"] = v
            if shape != "start":
                period["end"] = (
                    v if shape in ("start-end", "end") else _safe_shift(v, rng.choice([1, 14, 60, 400]))
                )
            res[PERIOD_KEYS[key]] = period
            return f"date-period:{_rtype(res)}.{key}->{shape}"
    for key, pkey in PERIOD_KEYS.items():
        if isinstance(res.get(pkey), dict):
            period = res.pop(pkey)
            pick = period.get("start") or period.get("end")
            if pick:
                res[key] = pick
            return f"date-unperiod:{_rtype(res)}.{pkey}"
    return None


def m_date_remove(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    found = [(r, n) for _, r in resources(request) for n in _date_nodes(r)]
    if not found:
        return None
    res, (path, parent, k, _) = rng.choice(found)
    del parent[k]
    return f"date-remove:{_rtype(res)}.{_name(path)}"


def m_record_shift(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """Every date of the record (drafts too, not the evaluation time) moved by the same days."""
    days = rng.choice(SHIFTS)
    for _, res in resources(request):
        if res.get("resourceType") == "Patient":
            continue
        for _, parent, k, v in _date_nodes(res):
            parent[k] = _safe_shift(v, days)
    return f"record-shift:{days:+d}d"


# -- statuses --------------------------------------------------------------------------------------


def m_status(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    got = _pick_resource(
        rng, request, lambda r: _rtype(r) in STATUSES or _rtype(r) in ("Condition", "AllergyIntolerance")
    )
    if not got:
        return None
    key, res = got
    rtype = _rtype(res)
    if rtype in STATUSES:
        if key == "draftOrders" and rng.random() < 0.7:
            return None  # a draft keeps draft mostly; mutate the record instead
        value = rng.choice(STATUSES[rtype])
        res["status"] = value
        return f"status:{rtype}:{value}"
    element = rng.choice(["clinicalStatus", "verificationStatus"])
    value = rng.choice(CLINICAL if element == "clinicalStatus" else VERIFICATION)
    how = rng.choice(["coded", "text", "remove"])
    if how == "remove":
        res.pop(element, None)
    elif how == "text":
        res[element] = {"text": value}
    else:
        system = "http://terminology.hl7.org/CodeSystem/" + (
            ("condition-" if rtype == "Condition" else "allergyintolerance-")
            + ("clinical" if element == "clinicalStatus" else "ver-status")
        )
        res[element] = {"coding": [{"system": system, "code": value}]}
    return f"status:{rtype}.{element}:{how}:{value}"


def m_stopped_recent(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """A medication record stopped or completed a few days ago (inside a washout or grace window)."""
    got = _pick_resource(
        rng,
        request,
        lambda r: _rtype(r) in ("MedicationRequest", "MedicationStatement") and r.get("status") != "draft",
    )
    if not got:
        return None
    _, res = got
    res["status"] = rng.choice(["stopped", "completed"])
    now = _now(request)
    days = rng.choice([1, 3, 7, 10, 13, 14, 15, 20, 28, 35, 60, 200])
    end = (now - timedelta(days=days)).date().isoformat()
    start = (now - timedelta(days=days + rng.choice([20, 60, 120]))).date().isoformat()
    if _rtype(res) == "MedicationStatement":
        res.pop("effectiveDateTime", None)
        res["effectivePeriod"] = {"start": start, "end": end}
    else:
        res["authoredOn"] = start
        for dosage in res.get("dosageInstruction") or []:
            repeat = ((dosage or {}).get("timing") or {}).get("repeat")
            if isinstance(repeat, dict) and "boundsPeriod" in repeat:
                repeat["boundsPeriod"] = {"start": start, "end": end}
        request_part = res.get("dispenseRequest")
        validity = request_part.get("validityPeriod") if isinstance(request_part, dict) else None
        if isinstance(validity, dict):
            validity.update(start=start, end=end)
    return f"stopped-recent:{_rtype(res)}:{res['status']}:{days}d"


# -- quantities ------------------------------------------------------------------------------------

UNIT_CHANGES: dict[str, list[tuple[str, float]]] = {
    "mg": [("g", 0.001), ("ug", 1000.0), ("mg/kg", 1.0), ("MG", 1.0), ("{tbl}", 1.0)],
    "kg": [("g", 1000.0), ("[lb_av]", 2.20462), ("[oz_av]", 35.274), ("lb", 2.20462), ("KG", 1.0)],
    "mm[Hg]": [("kPa", 0.133322), ("mmHg", 1.0), ("cm[H2O]", 1.35951)],
    "mg/h": [("mg/min", 1 / 60), ("ug/min", 1000 / 60)],
    "d": [("wk", 1 / 7), ("h", 24.0), ("days", 1.0)],
}


def m_unit(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    found = [
        (r, p, q)
        for _, r in resources(request)
        for p, _, _, q in nodes(r)
        if isinstance(q, dict)
        and isinstance(q.get("value"), int | float)
        and not isinstance(q.get("value"), bool)
    ]
    if not found:
        return None
    res, path, q = rng.choice(found)
    code = q.get("code") or q.get("unit")
    how = rng.choice(
        words("convert convert no-code no-unit no-system bare string-value comparator negative zero huge")
    )
    if how == "convert" and code in UNIT_CHANGES:
        new, factor = rng.choice(UNIT_CHANGES[code])
        q["value"] = round(q["value"] * factor, 4)
        q["code"] = new
        q["unit"] = new
        how = f"{code}->{new}"
    elif how == "no-code":
        q.pop("code", None)
    elif how == "no-unit":
        q.pop("unit", None)
    elif how == "no-system":
        q.pop("system", None)
    elif how == "bare":
        for k in ("code", "unit", "system"):
            q.pop(k, None)
    elif how == "string-value":
        q["value"] = str(q["value"])
    elif how == "comparator":
        q["comparator"] = rng.choice(["<", ">=", "bogus"])
    elif how == "negative":
        q["value"] = -abs(q["value"])
    elif how == "zero":
        q["value"] = 0
    else:
        q["value"] = q["value"] * 1000 if how == "huge" else q["value"]
        how = "huge"
    return f"unit-{how}:{_rtype(res)}.{_name(path)}"


# -- medication identity ---------------------------------------------------------------------------


def m_med_reference(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """medicationCodeableConcept as a reference: contained, in a bundle, missing, or display only."""
    got = _pick_resource(rng, request, lambda r: isinstance(r.get("medicationCodeableConcept"), dict))
    if not got:
        return None
    key, res = got
    concept = res.pop("medicationCodeableConcept")
    how = rng.choice(["contained", "contained", "bundle", "missing", "display", "contained-no-hash"])
    mid = f"dm{rng.randrange(10**6)}"
    med = {"resourceType": "Medication", "id": mid, "code": concept}
    if how.startswith("contained"):
        res.setdefault("contained", []).append(med)
        res["medicationReference"] = {"reference": ("#" if how == "contained" else "") + mid}
    elif how == "bundle":
        bundle = dict(bundles(request))[key]
        bundle.setdefault("entry", []).append({"resource": med, "search": {"mode": "include"}})
        res["medicationReference"] = {"reference": f"Medication/{mid}"}
    elif how == "missing":
        res["medicationReference"] = {"reference": f"Medication/{mid}"}
    else:
        res["medicationReference"] = {"display": concept.get("text") or "?"}
    return f"med-reference:{_rtype(res)}:{how}"


def m_med_concept(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """The concept's coding dropped (text only), its text dropped, its system changed, or swapped."""
    got = _pick_resource(rng, request, lambda r: isinstance(r.get("medicationCodeableConcept"), dict))
    if not got:
        return None
    _, res = got
    concept = res["medicationCodeableConcept"]
    how = rng.choice(["text-only", "code-only", "no-display", "system-http", "upper-text", "swap"])
    if how == "text-only":
        concept.pop("coding", None)
    elif how == "code-only":
        concept.pop("text", None)
    elif how == "no-display":
        for c in concept.get("coding") or []:
            if isinstance(c, dict):
                c.pop("display", None)
    elif how == "system-http":
        for c in concept.get("coding") or []:
            if isinstance(c, dict) and "system" in c:
                c["system"] = c["system"].replace("http://", "https://")
    elif how == "upper-text" and isinstance(concept.get("text"), str):
        concept["text"] = concept["text"].upper()
    else:
        other = [m for m in pool.medications if isinstance(m.get("medicationCodeableConcept"), dict)]
        if not other:
            return None
        res["medicationCodeableConcept"] = copy.deepcopy(rng.choice(other)["medicationCodeableConcept"])
        how = "swap"
    return f"med-concept:{_rtype(res)}:{how}"


def m_transplant(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """A resource of another seed request put into this record (subject rewritten, dates moved)."""
    source = pool.medications if rng.random() < 0.75 else pool.others
    res = _transplant(rng, request, source)
    return None if res is None else f"transplant:{_rtype(res)}:{res.pop('_days'):+d}d"


def _transplant(rng: random.Random, request: dict[str, Any], source: list[dict[str, Any]]) -> dict | None:
    if not source:
        return None
    res = copy.deepcopy(rng.choice(source))
    patient = (request.get("context") or {}).get("patientId")
    for field in ("subject", "patient"):
        if field in res:
            res[field] = {"reference": f"Patient/{patient}"}
    res["id"] = f"tx{rng.randrange(10**6)}"
    days = rng.choice([0, 0, *SHIFTS])
    for _, parent, k, v in _date_nodes(res):
        parent[k] = _safe_shift(v, days)
    key = {
        "MedicationRequest": "medicationRequests",
        "MedicationStatement": "medicationStatements",
        "MedicationDispense": "medicationDispenses",
        "MedicationAdministration": "medicationAdministrations",
        "Condition": "conditions",
        "AllergyIntolerance": "allergies",
        "Procedure": "procedures",
    }.get(_rtype(res), "vitalSigns")
    bundle = dict(bundles(request)).get(key)
    if bundle is None:
        return None
    bundle.setdefault("entry", []).append({"resource": res})
    res["_days"] = days  # popped by the caller
    return res


#: The windows the rules read medication records with (grace 7/14 days, 30/42-day checks, the
#: 45-day ketamine course) and 0 (in effect today): an end is put on either side of each.
WINDOW_DAYS = (0, 1, 7, 14, 30, 42, 45, 60)
UCUM = "http://unitsofmeasure.org"


def _stamp(day: datetime, rng: random.Random) -> str:
    """The day in a random FHIR precision and zone (a late hour far west is the next day in UTC)."""
    how = rng.choice(["date", "date", "utc", "west", "east", "month"])
    if how == "date":
        return day.date().isoformat()
    if how == "month":
        return day.date().isoformat()[:7]
    if how == "utc":
        return day.strftime("%Y-%m-%dT%H:%M:%SZ")
    zone = "-10:00" if how == "west" else "+14:00"
    return day.strftime("%Y-%m-%dT") + ("23:30:00" if how == "west" else "00:30:00") + zone


def m_window_edge(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """A medication record (often another request's drug) whose use ends on either side of a
    window's edge, in any precision or zone: what a medication horizon must still read."""
    res = _transplant(rng, request, pool.medications) if rng.random() < 0.7 else None
    if res is not None:
        res.pop("_days")
    else:
        got = _pick_resource(
            rng, request, lambda r: _rtype(r).startswith("Medication") and r.get("status") != "draft"
        )
        if not got or _rtype(got[1]) == "Medication":
            return None
        res = got[1]
    rtype = _rtype(res)
    days = rng.choice(WINDOW_DAYS) + rng.choice([-1, 0, 1, 2, 3])
    now = _now(request)
    end = now - timedelta(days=days, hours=rng.choice([0, 5, 12]))
    start = end - timedelta(days=rng.choice([1, 30, 90, 400]))
    if rtype == "MedicationDispense":
        supply = rng.choice([1, 7, 30, 90])
        res["whenHandedOver"] = _stamp(end - timedelta(days=supply), rng)
        res["daysSupply"] = {"value": supply, "unit": "days", "system": UCUM, "code": "d"}
        res["status"] = rng.choice(["completed", "completed", "in-progress"])
    elif rtype == "MedicationAdministration":
        for key in ("effectiveDateTime", "effectivePeriod"):
            res.pop(key, None)
        if rng.random() < 0.5:
            res["effectiveDateTime"] = _stamp(end, rng)
        else:
            res["effectivePeriod"] = {"start": _stamp(start, rng), "end": _stamp(end, rng)}
        res["status"] = rng.choice(["completed", "in-progress"])
    elif rtype == "MedicationStatement":
        res.pop("effectiveDateTime", None)
        res["effectivePeriod"] = {"start": _stamp(start, rng), "end": _stamp(end, rng)}
        res["status"] = rng.choice(["active", "completed", "stopped"])
    else:
        res["authoredOn"] = _stamp(start, rng)
        res["status"] = rng.choice(["active", "completed", "stopped"])
        bounds = {"start": _stamp(start, rng), "end": _stamp(end, rng)}
        dosages = res.get("dosageInstruction")
        if isinstance(dosages, list) and dosages and isinstance(dosages[0], dict):
            timing = dosages[0].setdefault("timing", {})
            if isinstance(timing, dict):
                timing.setdefault("repeat", {})
                if isinstance(timing["repeat"], dict):
                    timing["repeat"]["boundsPeriod"] = bounds
        else:
            res.setdefault("dispenseRequest", {})["validityPeriod"] = bounds
    return f"window-edge:{rtype}:{res['status']}:{days}d"


MUTATORS: dict[str, Mutator] = {
    "date-shift": m_date_shift,
    "date-one": m_date_one,
    "date-period": m_date_period,
    "date-remove": m_date_remove,
    "record-shift": m_record_shift,
    "status": m_status,
    "stopped-recent": m_stopped_recent,
    "unit": m_unit,
    "med-reference": m_med_reference,
    "med-concept": m_med_concept,
    "transplant": m_transplant,
    "window-edge": m_window_edge,
    "windowed": m_windowed,
    "array-single": m_array_single,
    "remove": m_remove,
    "invalid": m_invalid,
    "extra": m_extra,
    "entries": m_entries,
    "prefetch-key": m_prefetch_key,
    "patient": m_patient,
    "dosage": m_dosage,
    "observation": m_observation,
}
#: How often each is drawn: the record's own variations more than whole-entry ones.
WEIGHTS = {
    "date-shift": 4,
    "date-one": 3,
    "date-period": 2,
    "date-remove": 1,
    "record-shift": 1,
    "status": 3,
    "stopped-recent": 3,
    "unit": 3,
    "med-reference": 2,
    "med-concept": 2,
    "transplant": 4,
    "window-edge": 4,
    "windowed": 3,
    "array-single": 2,
    "remove": 2,
    "invalid": 2,
    "extra": 1,
    "entries": 2,
    "prefetch-key": 1,
    "patient": 1,
    "dosage": 2,
    "observation": 2,
}


def mutate(
    rng: random.Random, request: dict[str, Any], pool: Pool, count: int, only: list[str] | None = None
) -> list[str]:
    """Applies up to ``count`` mutations (tries a few more when one does not apply); their labels."""
    names = only or list(MUTATORS)
    weights = [WEIGHTS.get(n, 1) for n in names]
    labels: list[str] = []
    for _ in range(count * 4):
        if len(labels) >= count:
            break
        name = rng.choices(names, weights)[0]
        try:
            label = MUTATORS[name](rng, request, pool)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            label = f"{name}:partial"  # an earlier mutation left a shape this one does not expect
        if label:
            labels.append(label)
    return labels
