"""A safety card must survive the shapes real EHRs and FHIR servers send (issue 8, tried from outside).

Each case takes a worked vignette whose safety card is known, rewrites one part of its record the way
an EHR or a FHIR server writes it, and checks that the card is still there (or, for records that must
not count, that it is not). The fixtures are our own, written to shapes documented by:

* HL7 FHIR R4 itself: the OID forms of code systems (``urn:oid:2.16.840.1.113883.6.88`` RxNorm,
  ``…6.1`` LOINC, ``…6.96`` SNOMED CT, ``…6.90`` ICD-10-CM: hl7.org/fhir/r4/namingsystem-terminologies.html),
  partial dates (``birthDate: "2008"``), ``dataAbsentReason``, ``modifierExtension``, bundle entries
  with ``search.mode: include``/``outcome``, ``urn:uuid:`` references inside a Bundle;
* US Core / CQF examples: blood pressure as two Observations (8480-6, 8462-4) or as a 55284-4 panel;
  a pregnancy status (82810-3) answered in SNOMED CT (77386006, cqframework CPG examples);
* EHR habits: ``medicationReference`` with only a ``display`` or to an included Medication with a local
  code; ``dosageInstruction.timing.code`` without ``repeat``; ``doseAndRate.doseRange``; statuses
  ``amended``, ``entered-in-error``, ``not-taken``, ``intended``, intent ``plan``; ``userSelected``;
  OperationOutcome entries in search bundles (warnings, and errors that mean results are missing).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import load_example
from .record_support import run_request

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
OID = {
    "rxnorm": "urn:oid:2.16.840.1.113883.6.88",
    "loinc": "urn:oid:2.16.840.1.113883.6.1",
    "snomed": "urn:oid:2.16.840.1.113883.6.96",
    "icd10cm": "urn:oid:2.16.840.1.113883.6.90",
}
OID_OF = {
    RXNORM: OID["rxnorm"],
    LOINC: OID["loinc"],
    SNOMED: OID["snomed"],
    "http://hl7.org/fhir/sid/icd-10-cm": OID["icd10cm"],
}
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"


# -- helpers on a vignette request ------------------------------------------------------------------
def entries(req: dict[str, Any], key: str) -> list[dict[str, Any]]:
    bundle = req["prefetch"].get(key)
    if not isinstance(bundle, dict):
        bundle = req["prefetch"][key] = {"resourceType": "Bundle", "type": "searchset"}
    return bundle.setdefault("entry", [])


def resources(req: dict[str, Any], key: str, where: Callable[[dict[str, Any]], bool] = lambda r: True):
    return [e["resource"] for e in entries(req, key) if "resource" in e and where(e["resource"])]


def codes(element: dict[str, Any]) -> list[str]:
    concept = element.get("code") or element.get("medicationCodeableConcept") or {}
    return [c.get("code") for c in concept.get("coding", [])]


def drop(req: dict[str, Any], key: str, where: Callable[[dict[str, Any]], bool]) -> None:
    entries(req, key)[:] = [e for e in entries(req, key) if not ("resource" in e and where(e["resource"]))]


def to_oid(concept: dict[str, Any], *, keep_text: bool = True) -> None:
    for c in concept.get("coding", []):
        c["system"] = OID_OF.get(c.get("system"), c.get("system"))
        if not keep_text:
            c.pop("display", None)
    if not keep_text:
        concept.pop("text", None)


def draft(req: dict[str, Any]) -> dict[str, Any]:
    return req["context"]["draftOrders"]["entry"][0]["resource"]


def topics(out: Any) -> dict[str, str]:
    return {c["source"]["topic"]["code"]: c["indicator"] for c in out.response["cards"]}


CASES: list[tuple[str, str, str, bool | str, Callable[[dict[str, Any]], None]]] = []


def case(example: str, topic: str, *, present: bool | str = True):
    """``present``: True (the vignette's own card, same indicator), an indicator (a card the rewrite
    adds to the vignette, e.g. an allergy), or False (the rewritten record must not count)."""

    def register(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        CASES.append((fn.__name__, example, topic, present, fn))
        return fn

    return register


# -- pregnancy (V4: esketamine ordered for a pregnant patient) ----------------------------------------
V4 = "v04-pregnancy"


def only_the_status_observation(req: dict[str, Any]) -> None:
    """V4 records the pregnancy twice (Condition and status); keep only the Observation."""
    from cds_service.engine.loader import load_ruleset
    from cds_service.reading.terminology import codings

    from .conftest import RULES

    vs = load_ruleset(RULES).terminology.valuesets["pregnancy"].codes
    drop(req, "conditions", lambda r: any(c in vs for c in codings(r.get("code"))))


def status_observations(req: dict[str, Any]) -> list[dict[str, Any]]:
    return resources(req, "pregnancyStatus")


@case(V4, "ci-pregnancy")
def pregnancy_status_answered_in_snomed(req):
    """82810-3 answered 77386006 "Patient currently pregnant (finding)" (cqframework CPG examples)."""
    only_the_status_observation(req)
    for o in status_observations(req):
        text = "Patient currently pregnant (finding)"
        o["valueCodeableConcept"] = {
            "coding": [{"system": SNOMED, "code": "77386006", "display": text}],
            "text": text,
        }


@case(V4, "ci-pregnancy")
def pregnancy_status_answered_in_text_only(req):
    only_the_status_observation(req)
    for o in status_observations(req):
        o["valueCodeableConcept"] = {"text": "Pregnant"}


@case(V4, "ci-pregnancy")
def pregnancy_status_as_value_string(req):
    only_the_status_observation(req)
    for o in status_observations(req):
        del o["valueCodeableConcept"]
        o["valueString"] = "pregnant"


@case(V4, "ci-pregnancy")
def pregnancy_status_answered_with_a_local_code_displayed(req):
    only_the_status_observation(req)
    for o in status_observations(req):
        o["valueCodeableConcept"] = {
            "coding": [
                {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.1", "code": "1", "display": "PREGNANT"}
            ]
        }


@case(V4, "ci-pregnancy", present=False)
def pregnancy_status_not_pregnant_in_text(req):
    only_the_status_observation(req)
    for o in status_observations(req):
        o["valueCodeableConcept"] = {"text": "Not pregnant"}


@case(V4, "ci-pregnancy")
def pregnancy_status_in_loinc_oid_form(req):
    only_the_status_observation(req)
    for o in status_observations(req):
        to_oid(o["code"])
        to_oid(o["valueCodeableConcept"])


@case(V4, "ci-pregnancy")
def pregnancy_condition_in_oid_form(req):
    entries(req, "pregnancyStatus").clear()
    for c in resources(req, "conditions"):
        to_oid(c["code"], keep_text=False)


@case(V4, "ci-pregnancy")
def pregnancy_status_amended_with_profile_and_extensions(req):
    only_the_status_observation(req)
    for o in status_observations(req):
        o["status"] = "amended"
        o["meta"] = {
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-pregnancystatus"]
        }
        o["extension"] = [
            {"url": "http://example.org/fhir/StructureDefinition/source", "valueString": "intake"}
        ]
        o["valueCodeableConcept"]["coding"][0]["userSelected"] = True


@case(V4, "ci-pregnancy", present=False)
def pregnancy_status_entered_in_error_does_not_count(req):
    only_the_status_observation(req)
    req["prefetch"]["patient"]["gender"] = "male"  # no request for a status either
    for o in status_observations(req):
        o["status"] = "entered-in-error"


@case(V4, "ci-pregnancy", present=False)
def pregnancy_condition_entered_in_error_does_not_count(req):
    entries(req, "pregnancyStatus").clear()
    req["prefetch"]["patient"]["gender"] = "male"
    for c in resources(req, "conditions"):
        c["verificationStatus"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "entered-in-error",
                }
            ]
        }


@case(V4, "ci-pregnancy", present=False)
def pregnancy_condition_refuted_does_not_count(req):
    entries(req, "pregnancyStatus").clear()
    req["prefetch"]["patient"]["gender"] = "male"
    for c in resources(req, "conditions"):
        c["verificationStatus"] = {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "refuted"}
            ]
        }


# -- blood pressure (V6: 168/102 at 08:35 and 172/104 at 08:30 today) -----------------------------------
V6 = "v06-uncontrolled-bp"


def bp_panels(req: dict[str, Any]) -> list[dict[str, Any]]:
    return resources(req, "vitalSigns", lambda r: "85354-9" in codes(r))


@case(V6, "ci-blood-pressure-severe")
def bp_as_two_observations(req):
    for panel in bp_panels(req):
        drop(req, "vitalSigns", lambda r, p=panel: r is p)
        for i, comp in enumerate(panel["component"]):
            single = {k: v for k, v in panel.items() if k not in ("component", "code", "id")}
            single.update(id=f"{panel['id']}-{i}", code=comp["code"], valueQuantity=comp["valueQuantity"])
            entries(req, "vitalSigns").append({"resource": single, "search": {"mode": "match"}})


@case(V6, "ci-blood-pressure-severe")
def bp_panel_55284_4_with_unit_text_only(req):
    for panel in bp_panels(req):
        panel["code"] = {"coding": [{"system": LOINC, "code": "55284-4"}], "text": "Blood pressure"}
        for comp in panel["component"]:
            comp["valueQuantity"] = {"value": comp["valueQuantity"]["value"], "unit": "mm Hg"}


@case(V6, "ci-blood-pressure-severe")
def bp_systolic_data_absent(req):
    for panel in bp_panels(req):
        for comp in panel["component"]:
            if "8480-6" in codes(comp):
                del comp["valueQuantity"]
                comp["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "not-performed"}]}


@case(V6, "ci-blood-pressure-severe")
def bp_latest_diastolic_data_absent_hides_no_earlier_reading(req):
    """08:35: diastolic not obtained (dataAbsentReason); 08:30: 172/104. The 104 still counts."""
    for panel in bp_panels(req):
        if panel["effectiveDateTime"].endswith("08:35:00Z"):
            for comp in panel["component"]:
                if "8462-4" in codes(comp):
                    del comp["valueQuantity"]
                    comp["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "error"}]}


@case(V6, "ci-blood-pressure-severe")
def bp_components_in_loinc_oid_form(req):
    for panel in bp_panels(req):
        for comp in panel["component"]:
            to_oid(comp["code"], keep_text=False)


@case(V6, "ci-blood-pressure-severe")
def bp_bundle_with_outcome_entries_and_entries_without_resource(req):
    entries(req, "vitalSigns").append(
        {
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "warning",
                        "code": "processing",
                        "details": {"text": "Some data is restricted"},
                    }
                ],
            },
            "search": {"mode": "outcome"},
        }
    )
    entries(req, "vitalSigns").append({"fullUrl": "https://ehr.example.org/fhir/Observation/withheld"})


# -- MAOI (V8: phenelzine taken today) ------------------------------------------------------------------
V8 = "v08-phenelzine"
PHENELZINE = "312347"


def phenelzine_request_only(req: dict[str, Any]) -> list[dict[str, Any]]:
    """V8's phenelzine as one MedicationRequest (its dispenses dropped), to rewrite."""
    drop(req, "medicationDispenses", lambda r: PHENELZINE in codes(r))
    return resources(req, "medicationRequests", lambda r: PHENELZINE in codes(r))


@case(V8, "ddi-maoi")
def maoi_rxnorm_oid_code_only(req):
    for r in phenelzine_request_only(req):
        to_oid(r["medicationCodeableConcept"], keep_text=False)


@case(V8, "ddi-maoi")
def maoi_reference_with_display_only(req):
    for r in phenelzine_request_only(req):
        del r["medicationCodeableConcept"]
        r["medicationReference"] = {"display": "phenelzine (NARDIL) 15 MG tablet"}


@case(V8, "ddi-maoi")
def maoi_included_medication_with_a_local_code_and_rxnorm(req):
    for r in phenelzine_request_only(req):
        concept = r.pop("medicationCodeableConcept")
        r["medicationReference"] = {"reference": "Medication/eMed1", "display": "phenelzine 15 MG tablet"}
        med = {
            "resourceType": "Medication",
            "id": "eMed1",
            "code": {
                "coding": [
                    {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.698288", "code": "12345"},
                    *concept["coding"],
                ],
                "text": "phenelzine 15 MG tablet",
            },
        }
        entries(req, "medicationRequests").append({"resource": med, "search": {"mode": "include"}})


@case(V8, "ddi-maoi")
def maoi_timing_code_only_and_dose_range(req):
    for r in phenelzine_request_only(req):
        d = r["dosageInstruction"][0]
        d["timing"] = {"code": {"coding": [{"system": GTS, "code": "TID"}], "text": "3 times daily"}}
        d["doseAndRate"] = [
            {"doseRange": {"low": {"value": 15, "unit": "mg"}, "high": {"value": 30, "unit": "mg"}}}
        ]


@case(V8, "ddi-maoi")
def maoi_statement_intended(req):
    for r in phenelzine_request_only(req):
        drop(req, "medicationRequests", lambda x, r=r: x is r)
        entries(req, "medicationStatements").append(
            {
                "resource": {
                    "resourceType": "MedicationStatement",
                    "id": "ms1",
                    "status": "intended",
                    "medicationCodeableConcept": r["medicationCodeableConcept"],
                    "subject": r["subject"],
                    "effectivePeriod": {"start": "2026-04-01"},
                }
            }
        )


@case(V8, "ddi-maoi", present=False)
def maoi_statement_not_taken_does_not_count(req):
    maoi_statement_intended(req)
    for s in resources(req, "medicationStatements"):
        s["status"] = "not-taken"


@case(V8, "ddi-maoi", present=False)
def maoi_entered_in_error_does_not_count(req):
    for r in phenelzine_request_only(req):
        r["status"] = "entered-in-error"


@case(V8, "ddi-maoi", present=False)
def maoi_do_not_perform_does_not_count(req):
    """``doNotPerform: true`` (a modifier element): an order NOT to give phenelzine is not phenelzine."""
    for r in phenelzine_request_only(req):
        r["doNotPerform"] = True


@case(V8, "ddi-maoi")
def maoi_intent_plan(req):
    for r in phenelzine_request_only(req):
        r["intent"] = "plan"


# -- benzodiazepine (V7: daily lorazepam) ----------------------------------------------------------------
V7 = "v07-daily-lorazepam"
LORAZEPAM = "197901"


@case(V7, "ddi-benzodiazepine-efficacy")
def benzo_timing_code_bid_without_repeat(req):
    for r in resources(req, "medicationRequests", lambda r: LORAZEPAM in codes(r)):
        r["dosageInstruction"][0]["timing"] = {
            "code": {"coding": [{"system": GTS, "code": "BID"}], "text": "BID"}
        }


@case(V7, "ddi-benzodiazepine-efficacy")
def benzo_rxnorm_oid_code_only(req):
    for key in ("medicationRequests", "medicationDispenses"):
        for r in resources(req, key, lambda r: LORAZEPAM in codes(r)):
            to_oid(r["medicationCodeableConcept"], keep_text=False)


# -- age (V10: 17 years old, born 2009-01-04) ---------------------------------------------------------------
V10 = "v10-age-17"


@case(V10, "ci-age-under-18")
def age_birth_year_only(req):
    """Born "2009": 16 or 17 on 2026-05-04, a minor either way (read as 1 January it was 17)."""
    req["prefetch"]["patient"]["birthDate"] = "2009"


@case(V10, "ci-age-under-18")
def age_birth_month_only(req):
    req["prefetch"]["patient"]["birthDate"] = "2008-09"


@case(V10, "ci-age-under-18")
def age_birth_date_with_birth_time_extension(req):
    req["prefetch"]["patient"]["_birthDate"] = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                "valueDateTime": "2009-01-04T08:00:00Z",
            }
        ]
    }


@case(V10, "ci-age-under-18")
def age_us_core_patient_with_profile_extensions_and_narrative(req):
    p = req["prefetch"]["patient"]
    p["meta"] = {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]}
    p["extension"] = [
        {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "F"}
    ]
    p["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Case V10</div>'}


# -- deceased ------------------------------------------------------------------------------------------------
@case(V4, "data-deceased-patient", present="critical")
def deceased_partial_date_time(req):
    req["prefetch"]["patient"]["deceasedDateTime"] = "2026-04"


@case(V4, "data-deceased-patient", present="critical")
def deceased_patient_key_as_a_searchset(req):
    p = req["prefetch"]["patient"]
    p["deceasedBoolean"] = True
    req["prefetch"]["patient"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [{"resource": p, "search": {"mode": "match"}}],
    }


# -- hypersensitivity (an AllergyIntolerance added to V4) -------------------------------------------------
def allergy(req: dict[str, Any], **elements: Any) -> None:
    a = {
        "resourceType": "AllergyIntolerance",
        "id": "al1",
        "patient": {"reference": "Patient/v04"},
        **elements,
    }
    req["prefetch"]["allergies"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": a}]}


@case(V4, "ci-hypersensitivity", present="critical")
def allergy_text_only(req):
    allergy(req, code={"text": "KETAMINE HCL"})


@case(V4, "ci-hypersensitivity", present="critical")
def allergy_rxnorm_oid_code_only(req):
    allergy(req, code={"coding": [{"system": OID["rxnorm"], "code": "6130"}]})


@case(V4, "ci-hypersensitivity", present="critical")
def allergy_local_code_with_display(req):
    allergy(
        req,
        code={
            "coding": [
                {
                    "system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.767525",
                    "code": "3456",
                    "display": "KETAMINE",
                }
            ],
            "text": "Ketamine",
        },
        category=["medication"],
        criticality="high",
    )


@case(V4, "ci-hypersensitivity", present="critical")
def allergy_named_in_a_reaction_only(req):
    allergy(
        req,
        code={"coding": [{"system": DATA_ABSENT, "code": "unknown"}]},
        reaction=[
            {
                "substance": {"coding": [{"system": RXNORM, "code": "6130", "display": "ketamine"}]},
                "manifestation": [{"text": "rash"}],
            }
        ],
    )


@case(V4, "ci-hypersensitivity", present=False)
def allergy_refuted_does_not_count(req):
    allergy(
        req,
        code={"coding": [{"system": RXNORM, "code": "6130"}]},
        verificationStatus={
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "code": "refuted",
                }
            ]
        },
    )


# -- the draft order -------------------------------------------------------------------------------------
@case(V4, "ci-pregnancy")
def draft_references_a_medication_entry_by_urn_uuid(req):
    """draftOrders holds the Medication too, referenced by its entry's fullUrl (Bundle-internal)."""
    d = draft(req)
    concept = d.pop("medicationCodeableConcept")
    uuid = "urn:uuid:5b1a0a5e-0000-4000-8000-000000000001"
    d["medicationReference"] = {"reference": uuid}
    req["context"]["draftOrders"]["entry"].append(
        {"fullUrl": uuid, "resource": {"resourceType": "Medication", "code": concept}}
    )


@case(V4, "ci-pregnancy")
def draft_references_a_medication_entry_by_id(req):
    d = draft(req)
    concept = d.pop("medicationCodeableConcept")
    d["medicationReference"] = {"reference": "Medication/draft-med"}
    req["context"]["draftOrders"]["entry"].append(
        {"resource": {"resourceType": "Medication", "id": "draft-med", "code": concept}}
    )


@case(V4, "ci-pregnancy")
def draft_rxnorm_oid_code_only(req):
    to_oid(draft(req)["medicationCodeableConcept"], keep_text=False)


@case(V4, "ci-pregnancy")
def draft_timing_code_and_dose_range(req):
    d = draft(req)["dosageInstruction"][0]
    d["timing"] = {"code": {"text": "ONCE"}}
    d["doseAndRate"] = [
        {
            "doseRange": {
                "low": {"value": 56, "unit": "mg", "code": "mg"},
                "high": {"value": 84, "unit": "mg", "code": "mg"},
            }
        }
    ]


# Elements no fact reads, inside one read as a whole, written with another JSON type than FHIR's (a
# boolean or a number as text, which the R4B model's lax mode takes): the drug is still its code.
@case(V8, "ddi-maoi")
def draft_coding_user_selected_written_as_text(req):
    draft(req)["medicationCodeableConcept"]["coding"][0]["userSelected"] = "true"


@case(V8, "ddi-maoi")
def draft_coding_extension_with_a_number_written_as_text(req):
    draft(req)["medicationCodeableConcept"]["coding"][0]["extension"] = [
        {"url": "http://example.org/fhir/StructureDefinition/rank", "valueInteger": "1"}
    ]


@case(V8, "ddi-maoi")
def maoi_coding_user_selected_written_as_text(req):
    for r in phenelzine_request_only(req):
        r["medicationCodeableConcept"]["coding"][0]["userSelected"] = "true"


@case(V8, "dose-esketamine")
def draft_timing_count_written_as_text(req):
    draft(req)["dosageInstruction"][0]["timing"]["repeat"]["count"] = "1"


# Epic writes several doseAndRate entries, typed by http://epic.com/CodeSystem/dose-rate-type
# ("admin-amount" in mL or tablets, "calculated" in mg, "ordered"), in either order.
V2 = "v02-one-failed-trial"  # ketamine 40 mg IV over 40 min
EPIC_DOSE_TYPE = "http://epic.com/CodeSystem/dose-rate-type"


def epic_dose(kind: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "type": {"coding": [{"system": EPIC_DOSE_TYPE, "code": kind, "display": kind}], "text": kind},
        "doseQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def ketamine_iv(req: dict[str, Any], mg: float, *, rate_mg_per_h: float | None = None) -> None:
    dosage = draft(req)["dosageInstruction"][0]
    dosage["doseAndRate"] = [epic_dose("admin-amount", mg / 50, "mL"), epic_dose("calculated", mg, "mg")]
    if rate_mg_per_h is not None:
        dosage["doseAndRate"].append(
            {
                "rateQuantity": {
                    "value": rate_mg_per_h,
                    "unit": "mg/hr",
                    "system": "http://unitsofmeasure.org",
                    "code": "mg/h",
                }
            }
        )


@case(V2, "dose-ketamine-parenteral")
def draft_epic_dose_entries_admin_amount_first(req):
    ketamine_iv(req, 40)


@case(V2, "dose-ketamine-high", present="warning")
def draft_epic_dose_entries_high_dose_in_the_second_entry(req):
    ketamine_iv(req, 2.0 * patient_weight(req))


@case(V2, "dose-ketamine-infusion-time", present="warning")
def draft_epic_rate_in_its_own_entry(req):
    """40 mg at 160 mg/h is a 15-minute infusion, whatever the stated 40 minutes."""
    ketamine_iv(req, 40, rate_mg_per_h=160)


def patient_weight(req: dict[str, Any]) -> float:
    (w,) = [
        o["valueQuantity"]["value"] for o in resources(req, "vitalSigns", lambda r: "29463-7" in codes(r))
    ][:1]
    return float(w)


def order_select(req: dict[str, Any], selections: list[str]) -> None:
    req["hook"] = "order-select"
    req["context"]["selections"] = selections


@case(V4, "ci-pregnancy")
def selection_by_the_drafts_full_url(req):
    uuid = "urn:uuid:11111111-2222-4333-8444-555555555555"
    req["context"]["draftOrders"]["entry"][0]["fullUrl"] = uuid
    del draft(req)["id"]
    order_select(req, [uuid])


@case(V4, "ci-pregnancy")
def selection_as_an_absolute_url(req):
    order_select(req, ["https://ehr.example.org/fhir/MedicationRequest/v04-order-1"])


@case(V4, "ci-pregnancy")
def selection_that_names_no_draft(req):
    """A draft without id, selected by an id it does not carry: every draft is checked, not none."""
    del draft(req)["id"]
    order_select(req, ["MedicationRequest/request-1"])


@case(V4, "ci-pregnancy")
def draft_with_an_unreadable_authored_on(req):
    """A draft is read for its drug: an invalid date on it (which no safety check reads) costs nothing."""
    draft(req)["authoredOn"] = "today 09:00"


@case(V4, "ci-pregnancy")
def draft_with_a_modifier_extension(req):
    """The order being decided is checked as written; the extension is reported (test below)."""
    draft(req)["modifierExtension"] = [
        {"url": "http://example.org/fhir/StructureDefinition/x", "valueCode": "x"}
    ]


@pytest.mark.parametrize(
    ("example", "topic", "present", "rewrite"),
    [pytest.param(ex, topic, present, fn, id=name) for name, ex, topic, present, fn in CASES],
)
def test_safety_card_survives_the_ehr_shape(example, topic, present, rewrite):
    request = load_example(example)
    if present is True:
        baseline = topics(run_request(load_example(example)))
        assert topic in baseline, f"the vignette itself lacks {topic}: {baseline}"
        present = baseline[topic]
    rewrite(request)
    found = topics(run_request(request))
    if present:
        assert found.get(topic) == present, (topic, found)
    else:
        assert topic not in found, found


# -- what is not read as if normal, and what is said ---------------------------------------------------
MODIFIER = [{"url": "http://example.org/fhir/StructureDefinition/not-what-it-seems", "valueBoolean": True}]


def _problems(out: Any) -> list[str]:
    return [f"{p.resource}: {p.message}" for p in out.evaluation.facts.record.problems]


def test_a_modifier_extension_on_a_record_entry_is_not_read_as_if_normal():
    """FHIR: an element with a modifierExtension the reader does not know must not be read as usual.
    The MAOI record is not silently counted: its check asks for a readable record, and says which."""
    request = load_example(V8)
    for r in phenelzine_request_only(request):
        r["modifierExtension"] = MODIFIER
    out = run_request(request)
    found = topics(out)
    assert "ddi-maoi" not in found
    assert found.get("data-unreadable-resources") and found.get("data-gaps") == "warning"
    gaps = next(c for c in out.response["cards"] if c["source"]["topic"]["code"] == "data-gaps")
    assert (
        "MAOI" in gaps["summary"]
        and "a MedicationRequest with modifierExtension not readable" in gaps["summary"]
    )
    assert "v08-med-3" not in gaps["summary"] + gaps["detail"]  # kind and why, never the id
    assert any("v08-med-3: modifierExtension" in p for p in _problems(out))
    assert "not-what-it-seems" not in json.dumps(out.response)


def test_a_modifier_extension_on_a_read_element_makes_that_reading_unknown():
    request = load_example(V6)
    for panel in bp_panels(request):
        panel["component"][1]["modifierExtension"] = MODIFIER
    out = run_request(request)
    assert "ci-blood-pressure-severe" not in topics(out)
    assert any("component[1].modifierExtension" in p for p in _problems(out))


def test_a_draft_order_with_a_modifier_extension_is_checked_and_the_extension_reported():
    request = load_example(V4)
    draft(request)["modifierExtension"] = MODIFIER
    out = run_request(request)
    assert topics(out)["ci-pregnancy"] == "critical"
    report = out.response["extension"]["ketamine-cds.ignored-elements"]
    assert {
        "resourceType": "MedicationRequest",
        "element": "modifierExtension",
        "reason": "not understood",
        "count": 1,
    } in report
    # its dosage is not read as if normal either: the dose checks ask for it
    (order,) = out.evaluation.facts.orders
    assert order.dose is None


def test_an_error_outcome_in_a_search_bundle_is_said_not_swallowed():
    """A server that cut a search short (OperationOutcome, severity error, ``search.mode: outcome``):
    the record may lack entries, and the data-quality card says so. Warnings stay silent."""
    request = load_example(V8)
    drop(request, "medicationRequests", lambda r: PHENELZINE in codes(r))
    drop(request, "medicationDispenses", lambda r: PHENELZINE in codes(r))
    entries(request, "medicationRequests").append(
        {
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "too-costly", "diagnostics": "search truncated"}],
            },
            "search": {"mode": "outcome"},
        }
    )
    out = run_request(request)
    assert topics(out).get("data-unreadable-resources")
    assert any("OperationOutcome: the FHIR server reported an error" in p for p in _problems(out))
    # "no MAOI" rests on orders the server did not return: unknown, and said (engine/unread.py)
    maoi = next(o for o in out.evaluation.outcomes if o.rule.id == "ddi-maoi")
    assert maoi.status == "unknown"
    gaps = next(c for c in out.response["cards"] if c["source"]["topic"]["code"] == "data-gaps")
    assert "medication orders" in gaps["summary"]
    warning_only = load_example(V6)
    bp_bundle_with_outcome_entries_and_entries_without_resource(warning_only)
    assert not run_request(warning_only).evaluation.facts.record.problems


def test_explain_lists_the_ignored_elements(tmp_path):
    """`ketamine-cds explain` shows what the response extension reports: type, path, reason, count."""
    from click.testing import CliRunner

    from cds_service.cli import main

    request = load_example(V4)
    d = draft(request)
    d["category"] = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                "code": "community",
            }
        ]
    }
    d["modifierExtension"] = MODIFIER
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    result = CliRunner().invoke(main, ["explain", str(path)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Ignored elements" in text
    assert "MedicationRequest.category: expected an array (×1)" in text
    assert "MedicationRequest.modifierExtension: not understood (×1)" in text
    assert "community" not in text and "not-what-it-seems" not in text
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(load_example(V4)))
    assert "Ignored elements" not in CliRunner().invoke(main, ["explain", str(clean)]).output


def test_a_birth_year_that_straddles_18_is_asked_for_not_read_as_1_january():
    """Born "2008": 17 or 18 on 2026-05-04. On main it read as 2008-01-01, 18, and the under-18
    card silently went away; now the age check is unknown and the full birth date is asked for."""
    request = load_example(V10)
    request["prefetch"]["patient"]["birthDate"] = "2008"
    out = run_request(request)
    assert "ci-age-under-18" not in topics(out)
    age_rule = next(o for o in out.evaluation.outcomes if o.rule.id == "ci-age-under-18")
    assert age_rule.status == "unknown"
    gaps = next(c for c in out.response["cards"] if c["source"]["topic"]["code"] == "data-gaps")
    assert "date of birth" in gaps["summary"]


@pytest.mark.parametrize(
    ("birth", "now", "expected"),
    [
        ("2008", "2026-05-04", (17, 18)),
        ("2008-09", "2026-05-04", (17, 17)),
        ("2008-05", "2026-05-04", (17, 18)),
        ("2008-12", "2026-12-31", (18, 18)),
        ("1980-05-04", "2026-05-04", (46, 46)),
        (None, "2026-05-04", (None, None)),
    ],
)
def test_age_range_of_partial_birth_dates(birth, now, expected):
    from .record_support import facts_of

    request = load_example(V10)
    request["prefetch"]["patient"]["birthDate"] = birth
    request["extension"]["ketamine-cds.evaluation-time"] = f"{now}T09:00:00Z"
    facts = facts_of(request)
    assert facts.age_range == expected
    assert facts.age == (expected[0] if expected[0] == expected[1] else None)


def test_an_adult_with_a_birth_year_only_is_not_asked_for_it():
    request = load_example("v01-clear-trd-eligible")
    request["prefetch"]["patient"]["birthDate"] = request["prefetch"]["patient"]["birthDate"][:4]
    out = run_request(request)
    assert all(o.status != "unknown" for o in out.evaluation.outcomes if o.rule.id == "ci-age-under-18")
    assert "date of birth" not in json.dumps(out.response["cards"])


def test_ucum_in_its_oid_form_is_ucum():
    from cds_service.reading.units import quantity_in

    q = {"value": 154, "unit": "pound (US)", "system": "urn:oid:2.16.840.1.113883.6.8", "code": "[lb_av]"}
    assert round(quantity_in(q, "kg"), 1) == 69.9
    assert quantity_in({**q, "system": "http://example.org/units"}, "kg") is None  # a local code: unknown


def test_an_unselected_ketamine_draft_is_not_the_order_when_the_selection_matches():
    """The fallback is only for selections that name nothing: a matching selection still narrows."""
    request = load_example(V4)
    other = json.loads(json.dumps(draft(request)))
    other.update(
        id="other-1",
        medicationCodeableConcept={
            "coding": [{"system": RXNORM, "code": "312941"}],
            "text": "sertraline 50 MG Oral Tablet",
        },
    )
    request["context"]["draftOrders"]["entry"].append({"resource": other})
    order_select(request, ["MedicationRequest/other-1"])
    out = run_request(request)
    assert [o.ref for o in out.evaluation.facts.orders] == ["MedicationRequest/other-1"]


# -- the same shapes through a real FHIR server: the service fetches them (no prefetch) -------------------
def _renamed(request: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The request with every resource id and literal reference prefixed, so its patient lives next
    to the example patients on the shared server without overwriting them."""
    patient = request["context"]["patientId"]
    text = json.dumps(request)
    text = re.sub(rf'(?<=["/]){re.escape(patient)}(?=["-])', prefix + patient, text)
    text = re.sub(r'(?<=["/])eMed1(?=")', prefix + "eMed1", text)
    return json.loads(text)


FETCHED = [
    (V8, "ddi-maoi", maoi_included_medication_with_a_local_code_and_rxnorm),
    (V8, "ddi-maoi", maoi_reference_with_display_only),
    (V6, "ci-blood-pressure-severe", bp_as_two_observations),
    (V6, "ci-blood-pressure-severe", bp_latest_diastolic_data_absent_hides_no_earlier_reading),
    (V10, "ci-age-under-18", age_birth_year_only),
    (V4, "ci-pregnancy", pregnancy_status_answered_with_a_local_code_displayed),
    (V4, "ci-pregnancy", pregnancy_status_answered_in_snomed),
]


@pytest.mark.parametrize(
    ("example", "topic", "rewrite"), [pytest.param(*c, id=c[2].__name__) for c in FETCHED]
)
def test_safety_card_survives_the_ehr_shape_when_fetched_from_a_fhir_server(
    example, topic, rewrite, fhir_server
):
    from cds_service import pipeline
    from cds_service.config import Settings
    from cds_service.engine.loader import load_ruleset
    from cds_service.reading.fhir_client import bundle_resources

    from .conftest import RULES

    expected = topics(run_request(load_example(example)))[topic]
    request = load_example(example)
    rewrite(request)
    request = _renamed(request, f"ehr-{rewrite.__name__[:20]}-")
    resources = [
        r
        for value in request.pop("prefetch").values()
        if isinstance(value, dict)
        for r in bundle_resources(value)
        if r.get("resourceType") not in (None, "OperationOutcome")
    ]
    fhir_server.put_resources(resources)
    request["fhirServer"] = fhir_server.base_url
    settings = Settings(
        rules_dir=RULES, allow_time_override=True, fhir_allow_http=True, fhir_allow_loopback=True
    )
    out = pipeline.run(request, load_ruleset(RULES), settings)
    assert set(out.prefetch.origin.values()) == {"fetched"}
    assert topics(out).get(topic) == expected, topics(out)


def with_pregnancy_status_answer(answer: dict) -> tuple:
    """V4's request with its pregnancy status answered ``answer``: the outcome and the pregnancy rule's."""
    request = load_example(V4)
    only_the_status_observation(request)
    for o in status_observations(request):
        o["valueCodeableConcept"] = answer
    out = run_request(request)
    return out, next(o for o in out.evaluation.outcomes if o.rule.id == "ci-pregnancy")


UNKNOWN_ANSWERS = [
    {"coding": [{"system": LOINC, "code": "LA4489-6", "display": "Unknown"}], "text": "Unknown"},
    {"coding": [{"system": SNOMED, "code": "261665006", "display": "Unknown (qualifier value)"}]},
    {"text": "unknown"},
]


UNINTERPRETABLE_ANSWERS = [
    {"text": "Yes"},
    {"text": "12 weeks"},
    {"coding": [{"system": "http://hospital.example.org/CodeSystem/answers", "code": "Y"}]},
]


@pytest.mark.parametrize(
    "answer",
    UNKNOWN_ANSWERS + UNINTERPRETABLE_ANSWERS,
    ids=["LA4489-6", "snomed-261665006", "text", "yes", "12-weeks", "local-code-only"],
)
def test_a_pregnancy_status_answered_unknown_does_not_clear_the_check(answer):
    """Pregnancy-status value sets answer 82810-3 with LA4489-6 "Unknown" (SNOMED CT 261665006); other
    statuses are none of the listed answers and say neither positive nor negative ("Yes", "12 weeks").
    On main each counted as "a status is recorded": no pregnancy card and no request for one."""
    out, rule = with_pregnancy_status_answer(answer)
    assert rule.status == "unknown"
    gaps = next(c for c in out.response["cards"] if c["source"]["topic"]["code"] == "data-gaps")
    assert "pregnancy status" in gaps["summary"]


NOT_PREGNANT_ANSWERS = [
    {"coding": [{"system": LOINC, "code": "LA26683-5"}]},
    {"coding": [{"system": SNOMED, "code": "60001007"}]},
    {"text": "Not pregnant"},
]


@pytest.mark.parametrize("answer", NOT_PREGNANT_ANSWERS, ids=["LA26683-5", "snomed-60001007", "text"])
def test_a_pregnancy_status_answered_not_pregnant_meets_the_request(answer):
    _, rule = with_pregnancy_status_answer(answer)
    assert rule.status == "not-fired"


def test_an_unknown_pregnancy_status_does_not_hide_an_earlier_positive_one():
    request = load_example(V4)
    only_the_status_observation(request)
    (positive,) = status_observations(request)
    unknown = json.loads(json.dumps(positive))
    unknown.update(
        id="v04-obs-later", effectiveDateTime="2026-05-04T08:00:00Z", valueCodeableConcept=UNKNOWN_ANSWERS[0]
    )
    entries(request, "pregnancyStatus").append({"resource": unknown})
    assert topics(run_request(request))["ci-pregnancy"] == "critical"


def test_a_selection_of_another_kind_of_order_does_not_select_the_ketamine_draft():
    """A selected ServiceRequest (a lab order) names an entry of draftOrders: no fallback to the
    unselected ketamine draft."""
    request = load_example(V4)
    lab = {
        "resourceType": "ServiceRequest",
        "id": "lab-1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/v04"},
        "code": {"text": "hCG"},
    }
    request["context"]["draftOrders"]["entry"].append({"resource": lab})
    order_select(request, ["ServiceRequest/lab-1"])
    out = run_request(request)
    assert out.evaluation.facts.orders == []
    assert "ci-pregnancy" not in topics(out)
