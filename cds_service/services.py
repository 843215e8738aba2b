"""The CDS services this server offers, as served by discovery.

Prefetch templates use only CDS Hooks 2.0.1 tokens (root-level ``context`` fields) and the
recommended FHIR query subset (type search, token equality, ``_sort``, ``_count``), plus
``_include=…:medication`` on the four medication searches: EHRs that record drugs as Medication
resources (``medicationReference``) then send them along. A server that ignores ``_include`` loses
nothing: Medications still missing are read by id (``reading/medications.py``). The templates ask for
everything the rules read and filter on nothing a rule needs (no category filter that a conformant
record may lack); anything the client does not prefetch is fetched from ``fhirServer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    "assessments": f"Observation?patient={PATIENT}&category=survey&_sort=-date&_count=200",
    "pregnancyStatus": f"Observation?patient={PATIENT}&code=http://loinc.org|82810-3&_sort=-date&_count=10",
    "procedures": f"Procedure?patient={PATIENT}",
    "allergies": f"AllergyIntolerance?patient={PATIENT}",
}

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

    def discovery(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hook": self.hook,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(PREFETCH),
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
