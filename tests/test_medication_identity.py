"""Medication identity (issue 8 item 2): the drug of a record or order, however the EHR names it.

Each test takes a worked example and rewrites its medications the way EHRs send them: a
``medicationReference`` to a contained ``#med1``, to a Medication that ``_include`` put in the
prefetch bundle, or to one that is only on the FHIR server. The cards must be those of the example.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import requests

from cds_service import pipeline
from cds_service.config import Settings
from cds_service.engine.loader import load_ruleset
from cds_service.services import PREFETCH

from .conftest import RULES, load_example

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def run(request: dict[str, Any]):
    return pipeline.run(
        request,
        load_ruleset(RULES),
        Settings(rules_dir=RULES, allow_time_override=True, fhir_allow_http=True, fhir_allow_loopback=True),
    )


def signature(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["source"]["topic"]["code"], c["indicator"]) for c in run(request).response["cards"]]


def fired(request: dict[str, Any]) -> set[str]:
    return {o.rule.id for o in run(request).evaluation.fired}


def medication(mid: str, concept: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Medication", "id": mid, "code": concept, **extra}


def to_contained(res: dict[str, Any]) -> None:
    """Inline concept → contained Medication #med1 (reference without display, as some EHRs send)."""
    concept = res.pop("medicationCodeableConcept")
    res["contained"] = [medication("med1", concept)]
    res["medicationReference"] = {"reference": "#med1"}


def to_reference(res: dict[str, Any], mid: str) -> dict[str, Any]:
    """Inline concept → ``Medication/{mid}``; returns the Medication resource."""
    concept = res.pop("medicationCodeableConcept")
    res["medicationReference"] = {"reference": f"Medication/{mid}"}
    return medication(mid, concept)


def entries(request: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return request["prefetch"][key].get("entry", [])


def records_naming(request: dict[str, Any], words: str) -> list[tuple[str, dict[str, Any]]]:
    """(prefetch key, entry) of the medication records whose inline drug mentions ``words``."""
    out = []
    for key in ("medicationRequests", "medicationDispenses", "medicationStatements"):
        for e in entries(request, key):
            text = str(e["resource"].get("medicationCodeableConcept", {}))
            if words in text:
                out.append((key, e))
    return out


def phenelzine_records(request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return records_naming(request, "312347")


def test_ketamine_draft_with_contained_medication_gives_the_example_cards():
    example = load_example("v05-psychosis-history")
    request = copy.deepcopy(example)
    to_contained(request["context"]["draftOrders"]["entry"][0]["resource"])
    assert signature(request) == signature(example) != []


def test_esketamine_draft_with_contained_medication_keeps_the_pregnancy_stop():
    example = load_example("v04-pregnancy")
    request = copy.deepcopy(example)
    to_contained(request["context"]["draftOrders"]["entry"][0]["resource"])
    assert ("ci-pregnancy", "critical") in signature(request)
    assert signature(request) == signature(example)


def test_phenelzine_via_included_medication_gives_the_maoi_card():
    example = load_example("v08-phenelzine")
    assert "ddi-maoi" in fired(example)
    request = copy.deepcopy(example)
    records = phenelzine_records(request)
    assert records
    for i, (key, entry) in enumerate(records):
        med = to_reference(entry["resource"], f"phen-{i}")
        # what `_include=MedicationRequest:medication` adds to the search bundle
        request["prefetch"][key]["entry"].append({"resource": med, "search": {"mode": "include"}})
    assert "ddi-maoi" in fired(request)
    assert signature(request) == signature(example)
    assert not run(request).evaluation.facts.record.problems


def test_phenelzine_via_medication_only_on_the_fhir_server_is_fetched(fhir_server):
    example = load_example("v08-phenelzine")
    request = copy.deepcopy(example)
    meds = [
        to_reference(e["resource"], f"v08-phen-{i}") for i, (_k, e) in enumerate(phenelzine_records(request))
    ]
    fhir_server.put_resources(meds)
    request["fhirServer"] = fhir_server.base_url
    assert "ddi-maoi" in fired(request)
    assert signature(request) == signature(example)


def test_unreachable_medication_is_reported_not_fatal():
    example = load_example("v08-phenelzine")
    request = copy.deepcopy(example)
    for i, (_k, e) in enumerate(phenelzine_records(request)):
        to_reference(e["resource"], f"gone-{i}")
    request["fhirServer"] = "http://127.0.0.1:9/fhir"  # nothing listens on the discard port
    outcome = run(request)
    assert "ddi-maoi" not in {o.rule.id for o in outcome.evaluation.fired}
    assert any(p.where == "Medication" for p in outcome.evaluation.facts.record.problems)


def test_a_current_medication_nobody_could_identify_makes_interaction_checks_unknown():
    """Phenelzine as Medication/{id} with no FHIR server to read it: the MAOI check cannot say "no"."""
    example = load_example("v08-phenelzine")
    request = copy.deepcopy(example)
    for i, (_k, e) in enumerate(phenelzine_records(request)):
        to_reference(e["resource"], f"unsent-{i}")
    outcome = run(request)
    maoi = next(o for o in outcome.evaluation.outcomes if o.rule.id == "ddi-maoi")
    assert maoi.status == "unknown"
    gaps = [c for c in outcome.response["cards"] if c["source"]["topic"]["code"] == "data-gaps"]
    assert gaps and "Medication could not be read" in gaps[0]["detail"]
    assert gaps[0]["indicator"] == "warning"


def test_medication_with_local_code_is_identified_by_its_ingredient():
    example = load_example("v05-psychosis-history")
    request = copy.deepcopy(example)
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    order.pop("medicationCodeableConcept")
    order["contained"] = [
        medication(
            "cmp1",
            {"coding": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.698288", "code": "40910"}]},
            form={"text": "Injectable solution"},
            ingredient=[
                {"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": "6130"}]}, "isActive": True}
            ],
        )
    ]
    order["medicationReference"] = {"reference": "#cmp1"}
    assert signature(request) == signature(example)


def test_reference_display_is_used_when_the_medication_is_not_available():
    example = load_example("v05-psychosis-history")
    request = copy.deepcopy(example)
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    order.pop("medicationCodeableConcept")
    order["medicationReference"] = {
        "reference": "Medication/not-sent",
        "display": "ketamine 50 MG/ML Injectable Solution",
    }
    outcome = run(request)
    assert outcome.evaluation.facts.orders[0].drug.ingredients == {"ketamine"}
    assert set(signature(example)) <= set(signature(request))  # plus "recognised by its name"
    assert "data-text-matched-order" in fired(request)


def test_prefetch_templates_include_the_referenced_medications():
    for key in (
        "medicationRequests",
        "medicationStatements",
        "medicationDispenses",
        "medicationAdministrations",
    ):
        rtype = PREFETCH[key].split("?")[0]
        assert f"_include={rtype}:medication" in PREFETCH[key]


def test_the_fhir_server_honours_the_include(fhir_server):
    fhir_server.put_resources(
        [
            {"resourceType": "Patient", "id": "inc1"},
            medication("inc1-med", {"coding": [{"system": RXNORM, "code": "312347"}]}),
            {
                "resourceType": "MedicationRequest",
                "id": "inc1-mr",
                "status": "active",
                "intent": "order",
                "subject": {"reference": "Patient/inc1"},
                "medicationReference": {"reference": "Medication/inc1-med"},
            },
        ]
    )
    query = PREFETCH["medicationRequests"].replace("{{context.patientId}}", "inc1")
    bundle = requests.get(f"{fhir_server.base_url}/{query}", timeout=10).json()
    kinds = {(e["resource"]["resourceType"], e.get("search", {}).get("mode")) for e in bundle["entry"]}
    assert kinds == {("MedicationRequest", "match"), ("Medication", "include")}


def test_ketamine_ordered_by_ndc_gives_the_example_cards():
    """An EHR that codes the order by package NDC (11-digit and hyphenated forms of Ketalar)."""
    example = load_example("v05-psychosis-history")
    for ndc in ("42023011310", "42023-113-10", "0409-2051-05"):
        request = copy.deepcopy(example)
        order = request["context"]["draftOrders"]["entry"][0]["resource"]
        order["medicationCodeableConcept"] = {
            "coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": ndc}]
        }
        assert signature(request) == signature(example), ndc


def test_an_unknown_ndc_is_not_ketamine():
    from cds_service.reading.terminology import ndc_products

    assert ndc_products("42023-0113-10") == [("42023", "0113")]
    terminology = load_ruleset(RULES).terminology
    drug = terminology.match_drug(
        {"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "0002-1433-80"}]}
    )
    assert not drug.ingredients


def text_of(request: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The cards as a prescriber reads them."""
    return [(c["indicator"], c["summary"], c.get("detail", "")) for c in run(request).response["cards"]]


def lorazepam_records(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for _key, e in records_naming(request, "lorazepam")]


def test_a_drug_named_through_a_contained_medication_is_named_once_as_inline():
    """The concept's text and its display are the same words (as most EHRs write them): the card
    names the drug once, whether the concept is inline or in a contained Medication. Before, a
    referenced Medication was named by the matcher's text, both joined: "lorazepam 1 MG Oral
    Tablet lorazepam 1 MG Oral Tablet ≈ 15 mg diazepam-equivalent/day"."""
    example = load_example("v07-daily-lorazepam")
    request = copy.deepcopy(example)
    records = lorazepam_records(request)
    assert records
    for res in records:
        to_contained(res)
    assert text_of(request) == text_of(example)
    assert any("lorazepam 1 MG Oral Tablet ≈" in s for _i, s, _d in text_of(request))


def test_a_drug_named_through_an_included_medication_is_named_once_as_inline():
    example = load_example("v07-daily-lorazepam")
    request = copy.deepcopy(example)
    for i, (key, entry) in enumerate(records_naming(request, "lorazepam")):
        med = to_reference(entry["resource"], f"lzp-{i}")
        request["prefetch"][key]["entry"].append({"resource": med, "search": {"mode": "include"}})
    assert text_of(request) == text_of(example)


def test_a_drug_known_only_by_the_references_display_is_named_by_it():
    """No Medication to read: the reference's display names it (once), as it identified it."""
    example = load_example("v07-daily-lorazepam")
    request = copy.deepcopy(example)
    for res in lorazepam_records(request):
        res.pop("medicationCodeableConcept")
        res["medicationReference"] = {"reference": "Medication/not-sent", "display": "Ativan 1 mg tablet"}
    summaries = [s for _i, s, _d in text_of(request)]
    assert any(s.startswith("Ativan 1 mg tablet ≈") for s in summaries), summaries


def test_an_unidentified_order_is_named_once():
    """An order the service could not identify, whose name looks like ketamine: the warning quotes
    its name once. Before, the matcher's text (the concept's text and display joined) was quoted,
    cut at 40 and 60 characters: 'Order "ketamin nasal spray (compounded) ketamin" may be …'."""
    request = copy.deepcopy(load_example("v05-psychosis-history"))
    name = "ketamin nasal spray (compounded)"
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    order["medicationCodeableConcept"] = {
        "coding": [{"system": "urn:oid:1.2.3.4", "code": "L1", "display": name}],
        "text": name,
    }
    [card] = [c for c in run(request).response["cards"] if "was not identified" in c["summary"]]
    assert card["summary"].startswith(f'Order "{name}" may be ketamine')
    assert f'- "{name}": no code' in card["detail"]


def test_an_unresolved_reference_with_a_status_that_is_no_code_is_no_500():
    """A MedicationRequest whose medicationReference nothing resolves and whose ``status`` is an
    object (invalid FHIR): before, asking which records could be some drug crashed the call
    (``unhashable type: 'dict'``, a 500). Found by a sweep over mutated records."""
    example = load_example("v08-phenelzine")
    request = copy.deepcopy(example)
    for i, (_k, e) in enumerate(phenelzine_records(request)):
        to_reference(e["resource"], f"unsent-{i}")
        e["resource"]["status"] = {"coding": [{"code": "active"}]}
    outcome = run(request)
    assert outcome.response["cards"]
    maoi = next(o for o in outcome.evaluation.outcomes if o.rule.id == "ddi-maoi")
    assert maoi.status != "false"  # the drug was not identified: never "no MAOI"


def test_a_fetched_medication_whose_id_is_no_string_is_not_read_and_no_500():
    """The FHIR server answers the Medication search with an entry whose ``id`` is an object: it
    names none of the references asked for (before: ``unhashable type``, a 500)."""
    from tests.support.fault_fhir import FaultFhirServer

    example = load_example("v08-phenelzine")
    request = copy.deepcopy(example)
    for i, (_k, e) in enumerate(phenelzine_records(request)):
        to_reference(e["resource"], f"srv-{i}")
    bad = medication({"x": 1}, {"text": "phenelzine"})  # type: ignore[arg-type]
    with FaultFhirServer() as srv:
        srv.ok("/Medication", {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": bad}]})
        request["fhirServer"] = srv.base_url
        outcome = run(request)
    assert outcome.response["cards"]
    maoi = next(o for o in outcome.evaluation.outcomes if o.rule.id == "ddi-maoi")
    assert maoi.status == "unknown"


def test_a_drug_identified_by_the_references_display_is_named_by_it_not_the_local_code():
    """A contained Medication with only a local code ("Art. 4471", which names no drug) and a
    reference display that does: the drug was identified by the display, so the card names it so
    (found by review: the card said "Art. 4471 ≈ 15 mg diazepam-equivalent/day")."""
    request = copy.deepcopy(load_example("v07-daily-lorazepam"))
    for res in lorazepam_records(request):
        res.pop("medicationCodeableConcept")
        res["contained"] = [
            medication("m", {"coding": [{"system": "urn:oid:1.2.3", "code": "4471", "display": "Art. 4471"}]})
        ]
        res["medicationReference"] = {"reference": "#m", "display": "Ativan 1 mg tablet"}
    summaries = [s for _i, s, _d in text_of(request)]
    assert any(s.startswith("Ativan 1 mg tablet ≈") for s in summaries), summaries


@pytest.mark.parametrize(
    "concept",
    [
        {
            "coding": [
                {"system": "urn:oid:1.2.3.4", "code": "L1", "display": "ANAE-01"},
                {"system": "urn:oid:1.2.3.5", "code": "L2", "display": "Ketamin 50mg/ml"},
            ]
        },
        {
            "text": "Narkose i.v.",
            "coding": [{"system": "urn:oid:1.2.3.5", "code": "L2", "display": "Ketamin 50mg/ml"}],
        },
    ],
)
def test_an_unidentified_order_is_quoted_with_the_name_that_looks_like_ketamine(concept):
    """The warning says the name looks like ketamine: it quotes every name the order has, once
    each, so the one that looks like it is there (found by review: 'Order "ANAE-01" may be …')."""
    request = copy.deepcopy(load_example("v05-psychosis-history"))
    request["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"] = concept
    [card] = [c for c in run(request).response["cards"] if "was not identified" in c["summary"]]
    assert "Ketamin 50mg/ml" in card["detail"]
