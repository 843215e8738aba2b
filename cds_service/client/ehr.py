"""What an EHR sends: the prefetch filled from the FHIR server, draft orders from presets, the
CDS Hooks 2.0.1 request."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..compact import order_context
from ..reading.prefetch import fill_template
from .common import DEFAULT_USER, HOOKS, SCOPES, TIME_EXTENSION, WEIGHT, ClientError
from .fhir import Fhir


# -- prefetch, as an EHR fills it -------------------------------------------------------------------
@dataclass
class Prefetch:
    """Filled prefetch keys, and the keys left out with the reason."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    omitted: dict[str, str] = field(default_factory=dict)


def fill_prefetch(fhir: Fhir, templates: Mapping[str, str], context: Mapping[str, Any]) -> Prefetch:
    """Run each template against the FHIR server. A template with a token the context cannot fill,
    or a query that fails (or answers an OperationOutcome), is omitted, as the CDS Hooks Sandbox
    does; an empty search result is sent as the (empty) searchset Bundle the server returned."""
    out = Prefetch()
    queries: dict[str, str] = {}
    for key, template in templates.items():
        query = fill_template(template, dict(context))
        if query is None:
            out.omitted[key] = "a token could not be filled from the context"
        else:
            queries[key] = query

    def run(query: str) -> dict[str, Any] | str:
        try:
            value = fhir.get(query)
        except ClientError as exc:
            return str(exc)
        if value.get("resourceType") == "OperationOutcome":
            return "the FHIR server answered an OperationOutcome"
        return value

    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="prefetch") as pool:
        results = dict(zip(queries, pool.map(run, queries.values()), strict=True))
    for key in templates:
        value = results.get(key)
        if isinstance(value, dict):
            out.values[key] = value
        elif isinstance(value, str):
            out.omitted[key] = value
    return out


# -- draft orders and presets -----------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A named draft order (see ``cds_service/presets.yaml``)."""

    name: str
    label: str
    code: str
    description: str = ""
    text: str | None = None
    dose: str | None = None
    dose_mg_per_kg: float | None = None
    route: str | None = None
    infusion_minutes: float | None = None
    frequency: str | None = None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_presets(path: Path | None = None) -> dict[str, Preset]:
    """The presets by name (from ``path`` or the package's ``presets.yaml``)."""
    try:
        text = (
            path.read_text(encoding="utf-8")
            if path
            else resources.files("cds_service").joinpath("presets.yaml").read_text(encoding="utf-8")
        )
    except OSError as exc:
        raise ClientError(f"cannot read the presets ({exc}); is presets.yaml in the package data?") from exc
    data = yaml.safe_load(text) or {}
    out: dict[str, Preset] = {}
    for entry in data.get("presets") or []:
        preset = Preset(**{**entry, "code": str(entry["code"])})
        out[preset.name] = preset
    return out


def find_preset(name: str, presets: Mapping[str, Preset] | None = None) -> Preset:
    """A preset by name or label, ignoring case, spaces and punctuation."""
    presets = presets if presets is not None else load_presets()
    for p in presets.values():
        if _norm(name) in (_norm(p.name), _norm(p.label)):
            return p
    names = ", ".join(f"{p.name} ({p.label})" for p in presets.values())
    raise ClientError(f"no preset {name!r}; presets: {names}")


def latest_weight(fhir: Fhir, patient_id: str, at: datetime | None = None) -> tuple[float, str] | None:
    """The newest body weight (LOINC 29463-7) in kg, not after ``at``, with its date; None if none."""
    query = f"Observation?patient={patient_id}&code={WEIGHT}&_sort=-date&_count=1"
    if at is not None:
        query += f"&date=le{format_time(at)}"
    for entry in fhir.get(query).get("entry") or []:
        obs = entry.get("resource") or {}
        q = obs.get("valueQuantity") or {}
        value, unit = q.get("value"), str(q.get("code") or q.get("unit") or "").strip()
        if not isinstance(value, int | float):
            continue
        factor = {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237, "lbs": 0.45359237}.get(unit)
        if factor is None:
            continue
        when = obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start") or "?"
        return float(value) * factor, str(when)
    return None


def preset_dose(preset: Preset, weight: tuple[float, str] | None) -> tuple[str | None, str | None]:
    """(dose, how it was computed) for a preset; (None, None) when it needs a weight that is missing."""
    if preset.dose_mg_per_kg is None:
        return preset.dose, None
    if weight is None:
        return None, None
    kg, when = weight
    mg = round(preset.dose_mg_per_kg * kg * 2) / 2  # to 0.5 mg, as a pump or syringe is set
    dose = f"{mg:g} mg"
    return dose, f"{dose} = {preset.dose_mg_per_kg:g} mg/kg × {kg:g} kg (weight of {when})"


def draft_order(
    patient_id: str,
    code: str,
    *,
    text: str | None = None,
    dose: str | None = None,
    route: str | None = None,
    infusion_minutes: float | None = None,
    frequency: str | None = "once",
    authored_on: datetime | None = None,
    user_id: str = DEFAULT_USER,
    order_id: str | None = None,
) -> dict[str, Any]:
    """A draft MedicationRequest for an RxNorm product code, shaped like the examples' orders."""
    from ..compact import CaseError, concept, dosage

    if not re.match(r"^\d{1,10}$", code):
        raise ClientError(f"--order must be an RxNorm code (digits), got {code!r}")
    entry: dict[str, Any] = {"dose": dose, "route": route, "frequency": frequency}
    if infusion_minutes is not None:
        entry["infusion_minutes"] = infusion_minutes
    try:
        med = concept(f"rx:{code}", text, "order")
        instruction = dosage({k: v for k, v in entry.items() if v is not None}, med, "order")
    except CaseError as exc:
        raise ClientError(str(exc).removeprefix("order: ")) from exc
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": order_id or f"draft-{uuid.uuid4().hex[:12]}",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": med,
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": format_time(authored_on or datetime.now(UTC)),
        "requester": {"reference": user_id},
    }
    if instruction:
        order["dosageInstruction"] = [{"sequence": 1, **instruction}]
    return order


# -- the request ------------------------------------------------------------------------------------
def parse_time(value: str) -> datetime:
    """An ISO 8601 date-time (``2026-05-04T09:00:00Z``); no zone means UTC."""
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ClientError(f"not an ISO date-time: {value!r} (e.g. 2026-05-04T09:00:00Z)") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fhir_authorization(token: str, patient_id: str) -> dict[str, Any]:
    """``fhirAuthorization`` for a bearer token (all five REQUIRED fields, and ``patient``)."""
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": SCOPES,
        "subject": "ketamine-cds",
        "patient": patient_id,
    }


def build_request(
    hook: str,
    patient_id: str,
    *,
    orders: list[dict[str, Any]] | None = None,
    user_id: str = DEFAULT_USER,
    fhir_server: str | None = None,
    token: str | None = None,
    prefetch: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """A CDS Hooks 2.0.1 request: a fresh hookInstance, the hook's context, prefetch when given."""
    if hook not in HOOKS:
        raise ClientError(f"hook must be one of {', '.join(HOOKS)}, got {hook!r}")
    context: dict[str, Any] = {"userId": user_id, "patientId": patient_id}
    if hook != "patient-view":
        if not orders:
            raise ClientError(f"{hook} needs a draft order: pass --order CODE or --preset NAME")
        context.update(order_context(hook, orders))
    request: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4())}
    if fhir_server:
        request["fhirServer"] = fhir_server
        if token:
            request["fhirAuthorization"] = fhir_authorization(token, patient_id)
    request["context"] = context
    if prefetch:
        request["prefetch"] = dict(prefetch)
    if at is not None:
        request["extension"] = {TIME_EXTENSION: format_time(at)}
    return request
