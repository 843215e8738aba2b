"""Mutations of a request's shape, for bench/mutations.py: arrays and single objects, missing,
invalid and unknown elements, whole entries and prefetch keys, the patient, dosages, observations.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from mutation_base import Pool, _name, _pick_resource, _rtype, bundles, nodes, resources, words

# -- shapes ----------------------------------------------------------------------------------------


def m_array_single(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """An array of one written as the object itself, or an object wrapped in an array."""
    found = [
        (r, p, parent, k, v)
        for _, r in resources(request)
        for p, parent, k, v in nodes(r)
        if isinstance(k, str)
        and k not in ("entry", "contained")
        and (
            (isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict))
            or (isinstance(v, dict) and rng.random() < 0.15)
        )
    ]
    if not found:
        return None
    res, path, parent, k, v = rng.choice(found)
    parent[k] = v[0] if isinstance(v, list) else [v]
    return f"array-single:{_rtype(res)}.{_name(path)}:{'unwrapped' if isinstance(v, list) else 'wrapped'}"


def m_remove(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    found = [
        (r, p, parent, k)
        for _, r in resources(request)
        for p, parent, k, _ in nodes(r)
        if not (len(p) == 1 and k in ("resourceType",))
    ]
    if not found:
        return None
    res, path, parent, k = rng.choice(found)
    del parent[k]
    return f"remove:{_rtype(res)}.{_name(path)}"


def m_invalid(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    found = [
        (r, p, parent, k, v)
        for _, r in resources(request)
        for p, parent, k, v in nodes(r)
        if not isinstance(v, dict | list) and k not in ("resourceType",)
    ]
    if not found:
        return None
    res, path, parent, k, v = rng.choice(found)
    if isinstance(v, bool):
        new: Any = rng.choice(["true", 1, None])
    elif isinstance(v, int | float):
        new = rng.choice([str(v), None, [v], {"value": v}, True])
    else:
        new = rng.choice([42, None, [v], {"text": v}, "", " " + str(v) + " "])
    parent[k] = new
    return f"invalid:{_rtype(res)}.{_name(path)}:{type(new).__name__}"


def m_extra(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """Unknown keys (vendor fields, extensions, _primitive elements, meta/text) at some depth."""
    found = [(r, p, v) for _, r in resources(request) for p, _, _, v in nodes(r) if isinstance(v, dict)]
    found += [(r, (), r) for _, r in resources(request)]
    if not found:
        return None
    res, path, obj = rng.choice(found)
    how = rng.choice(["vendor", "extension", "underscore", "meta", "modifier", "null"])
    if how == "vendor":
        obj["vendorSpecificField"] = {"a": [1, 2, {"b": "c"}]}
    elif how == "extension":
        obj.setdefault("extension", [])
        if isinstance(obj["extension"], list):
            obj["extension"].append({"url": "http://example.org/ext", "valueString": "x"})
    elif how == "underscore":
        obj["_status"] = {"extension": [{"url": "http://example.org/ext", "valueCode": "y"}]}
    elif how == "meta":
        obj["meta"] = {"lastUpdated": "2026-01-01T00:00:00Z", "source": "#ehr"}
        obj["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}
    elif how == "modifier":
        obj["modifierExtension"] = [{"url": "http://example.org/mod", "valueBoolean": True}]
    else:
        obj["unknownNull"] = None
    return f"extra-{how}:{_rtype(res)}.{_name(path)}"


# -- whole entries ---------------------------------------------------------------------------------


def _entries(request: dict[str, Any]) -> list[tuple[str, list[Any], int]]:
    return [
        (k, b["entry"], i)
        for k, b in bundles(request)
        if k != "draftOrders"
        for i in range(len(b.get("entry") or []))
    ]


def m_entries(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """Entries dropped, duplicated (same or a new id), reordered, or moved to another key."""
    found = _entries(request)
    if not found:
        return None
    key, entries, i = rng.choice(found)
    how = rng.choice(["drop", "duplicate", "duplicate-new-id", "shuffle", "reverse", "move", "outcome"])
    if how == "drop":
        entries.pop(i)
    elif how.startswith("duplicate"):
        twin = copy.deepcopy(entries[i])
        if how == "duplicate-new-id" and isinstance(twin.get("resource"), dict):
            twin["resource"]["id"] = f"dup{rng.randrange(10**6)}"
        entries.insert(rng.randrange(len(entries) + 1), twin)
    elif how == "shuffle":
        rng.shuffle(entries)
    elif how == "reverse":
        entries.reverse()
    elif how == "move":
        others = [k for k, _ in bundles(request) if k not in (key, "draftOrders")]
        if not others:
            return None
        target = dict(bundles(request))[rng.choice(others)]
        target.setdefault("entry", []).append(entries.pop(i))
    else:
        entries.insert(
            i,
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "warning", "code": "incomplete"}],
                },
                "search": {"mode": "outcome"},
            },
        )
    return f"entries-{how}:{key}"


def m_prefetch_key(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """A prefetch key null, absent, or an empty Bundle (the EHR could not or did not fill it)."""
    prefetch = request.get("prefetch")
    if not isinstance(prefetch, dict) or not prefetch:
        return None
    key = rng.choice(sorted(prefetch))
    how = rng.choice(["null", "absent", "empty"])
    if how == "null":
        prefetch[key] = None
    elif how == "absent":
        del prefetch[key]
    elif key != "patient":
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    else:
        return None
    return f"prefetch-{how}:{key}"


def m_patient(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    patient = (request.get("prefetch") or {}).get("patient")
    if not isinstance(patient, dict):
        return None
    how = rng.choice(
        words("deceased deceased-date deceased-false birth-year birth-month no-birth gender no-gender")
    )
    if how == "deceased":
        patient["deceasedBoolean"] = True
    elif how == "deceased-date":
        patient["deceasedDateTime"] = "2026-01-01"
    elif how == "deceased-false":
        patient["deceasedBoolean"] = False
    elif how == "birth-year" and isinstance(patient.get("birthDate"), str):
        patient["birthDate"] = patient["birthDate"][:4]
    elif how == "birth-month" and isinstance(patient.get("birthDate"), str):
        patient["birthDate"] = patient["birthDate"][:7]
    elif how == "no-birth":
        patient.pop("birthDate", None)
    elif how == "gender":
        patient["gender"] = rng.choice(["male", "female", "other", "unknown", "F"])
    else:
        patient.pop("gender", None)
    return f"patient:{how}"


def m_dosage(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """Dosage variations: frequency/period, text only, rate, no timing, several dosages."""
    found = [
        (r, d)
        for _, r in resources(request)
        for d in (r.get("dosageInstruction") or ([r["dosage"]] if isinstance(r.get("dosage"), dict) else []))
        if isinstance(d, dict)
    ]
    if not found:
        return None
    res, dosage = rng.choice(found)
    how = rng.choice(
        words("frequency period-unit text-only no-timing timing-code rate twice range as-needed")
    )
    repeat = (dosage.get("timing") or {}).get("repeat") if isinstance(dosage.get("timing"), dict) else None
    if how == "frequency" and isinstance(repeat, dict):
        repeat["frequency"] = rng.choice([1, 2, 3, 4])
    elif how == "period-unit" and isinstance(repeat, dict):
        repeat["periodUnit"] = rng.choice(["h", "d", "wk", "mo"])
        repeat.setdefault("period", 1)
    elif how == "text-only":
        for k in list(dosage):
            if k not in ("text", "sequence"):
                del dosage[k]
        dosage.setdefault("text", "as directed")
    elif how == "no-timing":
        dosage.pop("timing", None)
    elif how == "timing-code":
        dosage["timing"] = {
            "code": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation",
                        "code": rng.choice(["BID", "QD", "TID", "QOD"]),
                    }
                ]
            }
        }
    elif how == "rate":
        for dr in dosage.get("doseAndRate") or []:
            if isinstance(dr, dict):
                dr["rateQuantity"] = {
                    "value": rng.choice([35, 140, 60]),
                    "unit": "mg/h",
                    "system": "http://unitsofmeasure.org",
                    "code": "mg/h",
                }
    elif how == "twice" and res.get("dosageInstruction"):
        res["dosageInstruction"].append(copy.deepcopy(dosage))
    elif how == "range":
        for dr in dosage.get("doseAndRate") or []:
            if isinstance(dr, dict) and isinstance(dr.get("doseQuantity"), dict):
                q = dr.pop("doseQuantity")
                dr["doseRange"] = {"low": dict(q), "high": {**q, "value": q.get("value", 0) * 2}}
    elif how == "as-needed":
        dosage["asNeededBoolean"] = True
    else:
        return None
    return f"dosage-{how}:{_rtype(res)}"


def m_observation(rng: random.Random, request: dict[str, Any], pool: Pool) -> str | None:
    """Observation shapes: no category, value as string, component without value, dataAbsentReason."""
    got = _pick_resource(rng, request, lambda r: _rtype(r) == "Observation")
    if not got:
        return None
    _, res = got
    how = rng.choice(
        words(
            "no-category preliminary value-string absent-reason no-value component-drop"
            " interpretation local-code"
        )
    )
    if how == "no-category":
        res.pop("category", None)
    elif how == "preliminary":
        res["status"] = "preliminary"
    elif how == "value-string":
        q = res.get("valueQuantity")
        if isinstance(q, dict):
            res.pop("valueQuantity")
            res["valueString"] = f"{q.get('value')} {q.get('unit', '')}".strip()
        else:
            return None
    elif how == "absent-reason":
        for k in [k for k in res if k.startswith("value")]:
            del res[k]
        res["dataAbsentReason"] = {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}
            ]
        }
    elif how == "no-value":
        for k in [k for k in res if k.startswith("value")]:
            del res[k]
    elif how == "component-drop" and isinstance(res.get("component"), list) and res["component"]:
        res["component"].pop(rng.randrange(len(res["component"])))
    elif how == "interpretation":
        res["interpretation"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "H",
                    }
                ]
            }
        ]
    elif how == "local-code":
        code = res.get("code")
        if isinstance(code, dict):
            code.setdefault("coding", []).insert(0, {"system": "urn:oid:1.2.3.4.5", "code": "LOCAL1"})
    else:
        return None
    return f"observation-{how}"
