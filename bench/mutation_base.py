"""What bench/mutations.py's mutators share: the request's bundles, resources and elements, FHIR
dates moved in their own precision, the pool of resources to transplant, the value lists drawn from.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from typing import Any

Json = Any


def words(text: str) -> list[str]:
    """A list of the words in ``text`` (keeps the lists of codes below on a line or two)."""
    return text.split()


Mutator = Callable[[random.Random, dict[str, Any], "Pool"], str | None]

STATUSES: dict[str, list[Any]] = {
    "MedicationRequest": [
        *words("active completed stopped on-hold cancelled entered-in-error draft unknown ACTIVE"),
        "",
        3,
    ],
    "MedicationStatement": words(
        "active completed stopped on-hold intended not-taken entered-in-error unknown Active"
    ),
    "MedicationDispense": words(
        "completed in-progress preparation on-hold cancelled stopped declined entered-in-error unknown"
    ),
    "MedicationAdministration": words(
        "completed in-progress not-done on-hold stopped entered-in-error unknown"
    ),
    "Observation": words(
        "final amended corrected preliminary registered cancelled entered-in-error unknown FINAL"
    ),
    "Procedure": ["completed", "in-progress", "not-done", "stopped", "entered-in-error", "unknown"],
}
CLINICAL = ["active", "recurrence", "relapse", "inactive", "remission", "resolved", "bogus"]
VERIFICATION = ["unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"]
#: Days to move a date by: both sides of the usual windows (1, 14, 30, 42 days; 1, 2, 5, 10 years).
SHIFTS = [
    int(d)
    for d in words(
        "1 -1 2 -2 7 -7 10 -10 13 -13 14 -14 15 -15 29 -30 -31 -41 -42 -43 -56 -60 -90 -120 -180"
        " -365 -366 -500 -730 -731 -1000 -1825 -3650 30 365"
    )
]
DATE_RE = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")
CHOICE_DATES = words("effectiveDateTime onsetDateTime occurrenceDateTime performedDateTime abatementDateTime")
PERIOD_KEYS = {k: k.replace("DateTime", "Period") for k in CHOICE_DATES}


class Pool:
    """Resources of every seed request, to transplant into another: at most two medication records
    per kind and drug (the trial history every case shares would crowd out the rarer drugs), and
    the other resources the rules read."""

    PER_DRUG = 2

    def __init__(self) -> None:
        self.medications: list[dict[str, Any]] = []
        self.others: list[dict[str, Any]] = []
        self._per_drug: dict[str, int] = {}

    def add(self, request: dict[str, Any]) -> None:
        for _, res in resources(request):
            rtype = res.get("resourceType") if isinstance(res, dict) else None
            if rtype in (
                "MedicationRequest",
                "MedicationStatement",
                "MedicationDispense",
                "MedicationAdministration",
            ):
                drug = res.get("medicationCodeableConcept") or res.get("medicationReference")
                key = f"{rtype} {json.dumps(drug, sort_keys=True)}"
                if res.get("status") != "draft" and self._per_drug.get(key, 0) < self.PER_DRUG:
                    self._per_drug[key] = self._per_drug.get(key, 0) + 1
                    self.medications.append(res)
            elif rtype in ("Condition", "Observation", "AllergyIntolerance", "Procedure"):
                self.others.append(res)


# -- walking ---------------------------------------------------------------------------------------


def bundles(request: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    prefetch = request.get("prefetch")
    if isinstance(prefetch, dict):
        for key, value in prefetch.items():
            if isinstance(value, dict) and value.get("resourceType") == "Bundle":
                yield key, value
    drafts = (request.get("context") or {}).get("draftOrders")
    if isinstance(drafts, dict):
        yield "draftOrders", drafts


def resources(request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for key, bundle in bundles(request):
        for entry in bundle.get("entry") or []:
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                out.append((key, entry["resource"]))
    patient = (request.get("prefetch") or {}).get("patient")
    if isinstance(patient, dict) and patient.get("resourceType") == "Patient":
        out.append(("patient", patient))
    return out


def nodes(value: Json, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any, Any, Json]]:
    """(path, parent, key, value) of every element under ``value``."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*path, k), value, k, v
            yield from nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*path, i), value, i, v
            yield from nodes(v, (*path, i))


def _pick_resource(
    rng: random.Random, request: dict[str, Any], want: Callable[[dict], bool]
) -> tuple[str, dict[str, Any]] | None:
    found = [(k, r) for k, r in resources(request) if want(r)]
    return rng.choice(found) if found else None


def _name(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path if not isinstance(p, int)) or "(root)"


def _rtype(res: dict[str, Any]) -> str:
    return str(res.get("resourceType"))


# -- dates -----------------------------------------------------------------------------------------


def shift_date(text: str, days: int) -> str:
    """A FHIR date/dateTime moved by ``days``, in its own precision (a year or month by whole units)."""
    if len(text) == 4:
        return f"{int(text) + round(days / 365):04d}"
    if len(text) == 7:
        y, m = int(text[:4]), int(text[5:7])
        months = y * 12 + m - 1 + round(days / 30.44)
        return f"{months // 12:04d}-{months % 12 + 1:02d}"
    if len(text) == 10:
        return (date.fromisoformat(text) + timedelta(days=days)).isoformat()
    when = datetime.fromisoformat(text.replace("Z", "+00:00")) + timedelta(days=days)
    out = when.isoformat()
    return out.replace("+00:00", "Z") if text.endswith("Z") else out


def _date_nodes(res: dict[str, Any]) -> list[tuple[tuple[Any, ...], Any, Any, str]]:
    return [
        (p, parent, k, v)
        for p, parent, k, v in nodes(res)
        if isinstance(v, str) and len(v) >= 4 and DATE_RE.match(v) and k not in ("id", "value", "code")
    ]


def _safe_shift(v: str, days: int) -> str:
    try:
        return shift_date(v, days)
    except ValueError:
        return v


def _now(request: dict[str, Any]) -> datetime:
    ext = request.get("extension") or {}
    text = ext.get("ketamine-cds.evaluation-time") if isinstance(ext, dict) else None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return datetime(2026, 12, 1)
