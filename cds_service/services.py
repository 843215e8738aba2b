"""The CDS services this server offers, as served by discovery.

Prefetch templates use only CDS Hooks 2.0.1 tokens (root-level ``context`` fields) and the
recommended FHIR query subset (type search, token equality, ``_sort``, ``_count``), plus
``_include=…:medication`` on the four medication searches: EHRs that record drugs as Medication
resources (``medicationReference``) then send them along. A server that ignores ``_include`` loses
nothing: Medications still missing are read by id (``reading/medications.py``). The templates ask for
everything the rules read and filter on nothing a rule needs (no category filter that a conformant
record may lack); anything the client does not prefetch is fetched from ``fhirServer``.

A ``system|code`` token names its code system exactly, and some servers store a system under its
OID (``urn:oid:2.16.840.1.113883.6.1`` for LOINC, as CDA converters write it; the reading layer
accepts both, ``reading/terminology.py`` ``SYSTEM_ALIASES``). So a LOINC code (``44261-6``: digits, a
hyphen, a check digit) is asked for without a system, which matches it under any spelling; another
system's code of that shape would be fetched too, and not read (the reading layer identifies codes
by system): bytes, never a wrong reading. Codes of other systems keep their system (a local
``3045`` or a SNOMED number would match other systems' codes often) and are asked for in each
spelling of it. One comma-separated token list (FHIR search: any of them), which a conformant EHR
fills as is. (Bare codes are also what a search engine without a token index evaluates fastest:
Medplum's took ~6 ms per ``system|code`` token per search over a 5,000-resource record.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .reading.terminology import SYSTEM_ALIASES

PATIENT = "{{context.patientId}}"

PREFETCH: dict[str, str] = {
    "patient": f"Patient/{PATIENT}",
    "conditions": f"Condition?patient={PATIENT}",
    "medicationRequests": f"MedicationRequest?patient={PATIENT}&_include=MedicationRequest:medication",
    "medicationStatements": f"MedicationStatement?patient={PATIENT}&_include=MedicationStatement:medication",
    "medicationDispenses": f"MedicationDispense?patient={PATIENT}&_include=MedicationDispense:medication",
    "medicationAdministrations": (
        f"MedicationAdministration?patient={PATIENT}&_include=MedicationAdministration:medication"
    ),
    "vitalSigns": f"Observation?patient={PATIENT}&category=vital-signs&_sort=-date&_count=200",
    # Scores and screens by code, not by category: a PHQ-9 without `category: survey` is still a PHQ-9.
    # The codes are those of rules/terminology/observations.yaml (see prefetch_for: a site's own codes
    # from site.yaml are added to the templates that discovery serves).
    "assessments": f"Observation?patient={PATIENT}&code={{codes}}&_sort=-date&_count=200",
    "pregnancyStatus": f"Observation?patient={PATIENT}&code={{pregnancy}}&_sort=-date&_count=10",
    "procedures": f"Procedure?patient={PATIENT}",
    "allergies": f"AllergyIntolerance?patient={PATIENT}",
}

# Observation kinds retrieved by their own keys (vital signs by category, which the FHIR vital-signs
# profile makes mandatory; pregnancy status by code); every other kind goes into `assessments`.
SEPARATELY_RETRIEVED_KINDS = frozenset(
    {
        "weight",
        "height",
        "systolic_bp",
        "diastolic_bp",
        "heart_rate",
        "respiratory_rate",
        "spo2",
        "pregnancy_status",
    }
)
# The codes of the bundled rule set's other kinds, so PREFETCH is complete without loading rules;
# tests/test_retrieval.py checks it equals what prefetch_for derives from the bundled rules.
BUNDLED_ASSESSMENT_CODES = (
    "http://ketamine-cds.local/CodeSystem/assessment|madrs-total",
    "http://loinc.org|2106-3",
    "http://loinc.org|2110-5",
    "http://loinc.org|2112-1",
    "http://loinc.org|2118-8",
    "http://loinc.org|44260-8",
    "http://loinc.org|44261-6",
    "http://loinc.org|70274-6",
    "http://loinc.org|80384-1",
    "http://loinc.org|80385-8",
    "http://loinc.org|89204-2",
    "http://loinc.org|93245-9",
    "http://loinc.org|93246-7",
    "http://loinc.org|93247-5",
    "http://loinc.org|93248-3",
    "http://loinc.org|93249-1",
    "http://loinc.org|93278-0",
)
BUNDLED_PREGNANCY_CODES = ("http://loinc.org|82810-3",)

#: The other spellings of a code system (``urn:oid:…``) by its canonical URL.
SYSTEM_SPELLINGS: dict[str, tuple[str, ...]] = {}
for _alias, _system in SYSTEM_ALIASES.items():
    if _alias.startswith("urn:oid:"):
        SYSTEM_SPELLINGS[_system] = (*SYSTEM_SPELLINGS.get(_system, ()), _alias)


LOINC = "http://loinc.org"
LOINC_CODE = re.compile(r"\d{1,7}-\d")


def code_tokens(codes: Iterable[str]) -> str:
    """The token list of ``system|code`` codes: a LOINC code bare, others in each spelling of
    their system (see the module's docstring)."""
    out: list[str] = []
    for token in codes:
        system, _, code = token.partition("|")
        if system == LOINC and LOINC_CODE.fullmatch(code):
            out.append(code)
            continue
        out.append(token)
        out.extend(f"{other}|{code}" for other in SYSTEM_SPELLINGS.get(system, ()))
    return ",".join(dict.fromkeys(out))


def kind_codes(observation_kinds: dict[str, dict[str, Any]], kinds: Iterable[str]) -> tuple[str, ...]:
    """``system|code`` of the given observation kinds, sorted."""
    return tuple(
        sorted(
            {
                f"{c['system']}|{c['code']}"
                for kind in kinds
                for c in (observation_kinds.get(kind) or {}).get("codes") or []
            }
        )
    )


def assessment_kinds(observation_kinds: dict[str, dict[str, Any]]) -> list[str]:
    """The observation kinds retrieved by ``assessments``: every kind without a key of its own."""
    return [kind for kind in observation_kinds if kind not in SEPARATELY_RETRIEVED_KINDS]


def assessment_codes(observation_kinds: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """``system|code`` of every observation kind not retrieved by another key, sorted."""
    return kind_codes(observation_kinds, assessment_kinds(observation_kinds))


@lru_cache(maxsize=16)
def _templates(assessments: tuple[str, ...], pregnancy: tuple[str, ...]) -> dict[str, str]:
    out = dict(PREFETCH)
    search = f"Observation?patient={PATIENT}&code="
    out["assessments"] = f"{search}{code_tokens(assessments)}&_sort=-date&_count=200"
    out["pregnancyStatus"] = f"{search}{code_tokens(pregnancy)}&_sort=-date&_count=10"
    return out


PREFETCH.update(_templates(BUNDLED_ASSESSMENT_CODES, BUNDLED_PREGNANCY_CODES))


def prefetch_for(observation_kinds: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The prefetch templates for a rule set: PREFETCH with the rule set's (and site's) codes."""
    codes = assessment_codes(observation_kinds)
    pregnancy = kind_codes(observation_kinds, ["pregnancy_status"])
    if codes == BUNDLED_ASSESSMENT_CODES and pregnancy == BUNDLED_PREGNANCY_CODES:
        return dict(PREFETCH)
    return dict(_templates(codes, pregnancy))


# The resource types a prefetch key may hold; anything else in it is skipped and reported.
PREFETCH_TYPES: dict[str, str] = {
    "patient": "Patient",
    "conditions": "Condition",
    "medicationRequests": "MedicationRequest",
    "medicationStatements": "MedicationStatement",
    "medicationDispenses": "MedicationDispense",
    "medicationAdministrations": "MedicationAdministration",
    "vitalSigns": "Observation",
    "assessments": "Observation",
    "pregnancyStatus": "Observation",
    "procedures": "Procedure",
    "allergies": "AllergyIntolerance",
}

# Context fields each hook requires (CDS Hooks Library, hookVersion 1.0).
REQUIRED_CONTEXT: dict[str, tuple[str, ...]] = {
    "patient-view": ("userId", "patientId"),
    "order-select": ("userId", "patientId", "selections", "draftOrders"),
    "order-sign": ("userId", "patientId", "draftOrders"),
}


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str

    def discovery(self, templates: dict[str, str] | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "hook": self.hook,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(templates or PREFETCH),
        }


SERVICES: dict[str, Service] = {
    s.id: s
    for s in (
        Service(
            "patient-view",
            "patient-view",
            "Ketamine/esketamine for depression: course and eligibility overview",
            "For patients with depression or a ketamine/esketamine course: TRD status from the "
            "medication history, where each guideline places ketamine, course progress and "
            "response, and data missing for a safe decision.",
        ),
        Service(
            "order-select",
            "order-select",
            "Ketamine/esketamine order check (select)",
            "When ketamine or esketamine is selected, or a drug that interacts with an active "
            "ketamine course: TRD status, guideline positions, contraindications, interactions, "
            "dose and missing data.",
        ),
        Service(
            "order-sign",
            "order-sign",
            "Ketamine/esketamine order check (sign)",
            "Before a ketamine or esketamine order is signed, or an interacting drug during a "
            "ketamine course: TRD status, guideline positions, contraindications, interactions, "
            "dose and missing data.",
        ),
    )
}
