"""The CDS Hooks request of a compact case: every prefetch key filled as a searchset Bundle, the
context, the evaluation-time extension; and loading case files."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml

from ..services import PREFETCH
from .dates import format_datetime
from .errors import CaseError
from .resources import _Builder, build_draft_orders, build_resources, order_context
from .vocabulary import DEFAULT_BASE, DEFAULT_USER, EXTENSION_TIME, HOOK_NAMESPACE, HOOKS, SYSTEMS


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
