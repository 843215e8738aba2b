"""Allergies (issue 8 item 5): AllergyIntolerance is prefetched, fetched and read as facts.

Records are written as EHRs send them (coded RxNorm ingredient, brand name only, reaction substance,
no clinical status, unconfirmed), not only as our compact builder writes them.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cds_service.compact import build_request, searchset
from cds_service.services import PREFETCH, PREFETCH_TYPES

from .record_support import facts_of, run_predicate

TERM = "http://terminology.hl7.org/CodeSystem"
CASE = {
    "id": "allergy",
    "now": "2026-05-04T09:00:00Z",
    "hook": "order-sign",
    "patient": {"id": "al1", "sex": "female", "age": 40},
    "conditions": [{"code": ["icd:F33.2"], "onset": "2024-11"}],
    "orders": [
        {"code": "rx:238082", "text": "Ketamine HCl 50 mg/mL injection", "dose": "35 mg", "route": "iv"}
    ],
}


def ehr_allergy(**changes: Any) -> dict[str, Any]:
    """An AllergyIntolerance shaped the way a large EHR's FHIR API returns one."""
    res: dict[str, Any] = {
        "resourceType": "AllergyIntolerance",
        "id": "eAbc123",
        "clinicalStatus": {
            "coding": [
                {
                    "system": f"{TERM}/allergyintolerance-clinical",
                    "version": "4.0.0",
                    "code": "active",
                    "display": "Active",
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": f"{TERM}/allergyintolerance-verification",
                    "version": "4.0.0",
                    "code": "confirmed",
                    "display": "Confirmed",
                }
            ]
        },
        "type": "allergy",
        "category": ["medication"],
        "criticality": "high",
        "code": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "6130",
                    "display": "ketamine",
                }
            ],
            "text": "KETAMINE",
        },
        "patient": {"reference": "Patient/al1", "display": "Case AL1"},
        "recordedDate": "2023-02-14T10:20:00Z",
        "reaction": [{"manifestation": [{"text": "Hallucinations"}], "severity": "severe"}],
    }
    res.update(changes)
    return {k: v for k, v in res.items() if v is not None}


def request_with(*allergies: dict[str, Any]) -> dict[str, Any]:
    req = build_request(copy.deepcopy(CASE))
    req["prefetch"]["allergies"] = searchset(
        list(allergies), "https://ehr.example/fhir", "AllergyIntolerance?patient=al1"
    )
    return req


def allergy(request: dict[str, Any], **args: Any):
    return run_predicate({"allergy": {"valueset": "ketamine-any", **args}}, facts_of(request))


def test_allergies_are_a_prefetch_key():
    assert PREFETCH["allergies"] == "AllergyIntolerance?patient={{context.patientId}}"
    assert PREFETCH_TYPES["allergies"] == "AllergyIntolerance"


def test_coded_ketamine_allergy_is_a_fact_with_its_details():
    r = allergy(request_with(ehr_allergy()))
    assert r.value is True
    (a,) = r.bind["allergies"]
    assert a["ingredients"] == "ketamine"
    assert a["criticality"] == "high"
    assert a["verification"] == "confirmed"
    assert a["clinical_status"] == "active"
    assert a["reactions"] == ["Hallucinations"] and a["severity"] == "severe"
    assert r.evidence == ["AllergyIntolerance/eAbc123"]


@pytest.mark.parametrize(
    "code",
    [
        {"text": "Ketalar"},  # brand name only, no coding
        {
            "coding": [
                {
                    "system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.707679",
                    "code": "8841",
                    "display": "Esketamine",
                }
            ]
        },  # local EHR code
        {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2201625"}]
        },  # Spravato SBDF
    ],
)
def test_substance_by_brand_text_or_product_code(code):
    assert allergy(request_with(ehr_allergy(code=code))).value is True


def test_reaction_substance_counts_when_the_code_is_a_class():
    rec = ehr_allergy(code={"text": "Anesthetics"})
    rec["reaction"] = [{"substance": {"text": "ketamine"}, "manifestation": [{"text": "Laryngospasm"}]}]
    assert allergy(request_with(rec)).value is True


@pytest.mark.parametrize("status", ["refuted", "entered-in-error"])
def test_refuted_or_entered_in_error_never_counts(status):
    rec = ehr_allergy(
        verificationStatus={"coding": [{"system": f"{TERM}/allergyintolerance-verification", "code": status}]}
    )
    if status == "entered-in-error":
        rec.pop("clinicalStatus")
    assert allergy(request_with(rec)).value is False


def test_inactive_only_when_asked():
    rec = ehr_allergy(
        clinicalStatus={"coding": [{"system": f"{TERM}/allergyintolerance-clinical", "code": "resolved"}]}
    )
    assert allergy(request_with(rec)).value is False
    assert allergy(request_with(rec), include_inactive=True).value is True


def test_no_clinical_status_counts_as_active_and_says_so():
    r = allergy(request_with(ehr_allergy(clinicalStatus=None)))
    assert r.value is True and r.bind["allergies"][0]["clinical_status"] == "not recorded"


def test_unconfirmed_counts_and_is_labelled_unless_confirmed_only():
    rec = ehr_allergy(
        verificationStatus={
            "coding": [{"system": f"{TERM}/allergyintolerance-verification", "code": "unconfirmed"}]
        }
    )
    r = allergy(request_with(rec))
    assert r.value is True and r.bind["allergies"][0]["unconfirmed"] is True
    assert allergy(request_with(rec), confirmed_only=True).value is False


def test_criticality_filter():
    low = ehr_allergy(criticality="low")
    assert allergy(request_with(low), criticality=["high"]).value is False
    assert allergy(request_with(low), criticality=["low", "high"]).value is True


def test_other_allergies_do_not_count():
    pcn = ehr_allergy(id="pcn", code={"text": "Penicillins"}, criticality="low")
    assert allergy(request_with(pcn)).value is False


def test_unreadable_relevant_allergy_is_unknown_not_absent():
    broken = ehr_allergy(recordedDate="yesterday")  # invalid dateTime in the resource
    r = allergy(request_with(broken))
    assert r.value is None
    assert r.missing and "(an AllergyIntolerance with recordedDate not readable)" in r.missing[0].label
    assert "eAbc123" not in r.missing[0].label  # kind and element, never the id


def test_unreadable_unrelated_allergy_does_not_block():
    broken = ehr_allergy(id="pcn", code={"text": "Penicillins"}, recordedDate="yesterday")
    assert allergy(request_with(broken)).value is False


def test_allergies_fetched_from_the_fhir_server_when_not_prefetched(fhir_server):
    req = build_request(dict(CASE, patient={"id": "al-fetch", "sex": "female", "age": 40}))
    rec = ehr_allergy(id="al-fetch-1", patient={"reference": "Patient/al-fetch"})
    fhir_server.put_resources([{"resourceType": "Patient", "id": "al-fetch", "gender": "female"}, rec])
    del req["prefetch"]["allergies"]
    req["fhirServer"] = fhir_server.base_url
    r = allergy(req)
    assert r.value is True and r.evidence == ["AllergyIntolerance/al-fetch-1"]


def test_substance_and_reactions_are_quoted_as_the_record_names_them_once():
    """A coded substance with a text (as EHRs send one): the card quotes the text, not the text
    and every display joined ("KETAMINE ketamine"); without a text, each display once."""
    rec = ehr_allergy()
    rec["reaction"] = [
        {
            "manifestation": [
                {
                    "coding": [
                        {"system": "http://snomed.info/sct", "code": "39579001", "display": "Anaphylaxis"}
                    ],
                    "text": "Anaphylaxis",
                },
                {"coding": [{"system": "urn:oid:1.2.3", "code": "R1", "display": "Hives"}]},
            ]
        }
    ]
    (a,) = allergy(request_with(rec)).bind["allergies"]
    assert a["substance"] == "KETAMINE"
    assert a["reactions"] == ["Anaphylaxis", "Hives"]
    rec["code"] = {
        "coding": [
            {**rec["code"]["coding"][0]},
            {"system": "urn:oid:1.2.3", "code": "K", "display": "Ketalar"},
        ]
    }
    (a,) = allergy(request_with(rec)).bind["allergies"]
    assert a["substance"] == "ketamine / Ketalar"
