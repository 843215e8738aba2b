"""What the client's parts share: bundled folders, hook names, SMART scopes, :class:`ClientError`."""

from __future__ import annotations

from .. import bundled

EXAMPLES_DIR = bundled.examples_dir()
FHIR_SERVER_DIR = bundled.fhir_server_dir()
NODE_ENV = "KETAMINE_CDS_NODE"
HOOKS = ("patient-view", "order-select", "order-sign")
DEFAULT_USER = "Practitioner/example"
TIME_EXTENSION = "ketamine-cds.evaluation-time"
FHIR_JSON = "application/fhir+json"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
WEIGHT = "http://loinc.org|29463-7"
#: SMART scopes the service's prefetch templates need (sent in ``fhirAuthorization.scope``).
SCOPES = " ".join(
    f"patient/{t}.read"
    for t in (
        "Patient",
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "MedicationDispense",
        "MedicationAdministration",
        "Observation",
        "Procedure",
        "AllergyIntolerance",
        "Medication",
    )
)


class ClientError(Exception):
    """A failure to show to the user as it is (no traceback)."""
