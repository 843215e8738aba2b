"""Drug identity at RxNorm levels other than SCD/SBD, and by NDC (issue 8 item 2).

An order or a medication record coded only with an ingredient-level code (IN, MIN), a drug or
pack code the shared expansions lack, or an NDC gives the cards of the same drug coded the way the
worked examples code it. Every code here is verified (tools/external_codes.yaml names the source)
and is sent without a display or text, so the name fallback cannot stand in for the code.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cds_service.engine.loader import load_ruleset

from .conftest import RULES, load_example
from .test_medication_identity import fired, phenelzine_records, run, signature

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"


def coded(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


@pytest.mark.parametrize("ndc", ["50458-028-02", "50458002803", "50458-0028-00"])
def test_esketamine_ordered_by_spravato_ndc_gives_the_rxnorm_coded_cards(ndc):
    """Spravato 56 mg kit, 84 mg kit (11-digit 5-4-2) and the single device, coded by NDC only."""
    example = load_example("v04-pregnancy")
    request = copy.deepcopy(example)
    request["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"] = coded(NDC, ndc)
    assert ("ci-pregnancy", "critical") in signature(request)
    assert signature(request) == signature(example)
    order = run(request).evaluation.facts.orders[0]
    assert order.drug.ingredients == {"esketamine"} and order.drug.matched_by == "code"


@pytest.mark.parametrize("ndc", ["67457-108-10", "67457000110", "68083-504"])
def test_ketamine_ordered_by_a_generic_injection_ndc_gives_the_rxnorm_coded_cards(ndc):
    """Mylan (DailyMed) and Gland (FDA SPL) ketamine injection products, by package NDC only."""
    example = load_example("v05-psychosis-history")
    request = copy.deepcopy(example)
    request["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"] = coded(NDC, ndc)
    assert signature(request) == signature(example) != []


def phenelzine_replaced_by(concept: dict[str, Any]) -> dict[str, Any]:
    """v08 (esketamine order, current phenelzine) with every phenelzine record coded as `concept`."""
    request = copy.deepcopy(load_example("v08-phenelzine"))
    records = phenelzine_records(request)
    assert records
    for _key, entry in records:
        entry["resource"]["medicationCodeableConcept"] = copy.deepcopy(concept)
    return request


def summary_of(request: dict[str, Any], rule_id: str) -> str:
    cards = run(request).response["cards"]
    return next(c["summary"] for c in cards if c["source"]["topic"]["code"] == rule_id)


def test_gabapentin_recorded_by_its_rxnorm_ingredient_code_fires_the_cns_depressant_card():
    request = phenelzine_replaced_by(coded(RXNORM, "25480"))  # gabapentin IN (US Core 3.1.1)
    rules = fired(request)
    assert "ddi-cns-depressants" in rules and "ddi-maoi" not in rules
    assert "gabapentin" in summary_of(request, "ddi-cns-depressants")


def test_opioid_recorded_by_a_branded_drug_code_outside_the_shared_sets_fires_the_cns_card():
    """Duragesic 25 mcg/h (SBD 261184): in the CDC OMTK drug table, not in the shared expansions."""
    request = phenelzine_replaced_by(coded(RXNORM, "261184"))
    assert "ddi-cns-depressants" in fired(request)
    assert "fentanyl" in summary_of(request, "ddi-cns-depressants")


def test_mixed_amphetamine_salts_recorded_by_their_min_code_fire_the_psychostimulant_card():
    request = phenelzine_replaced_by(coded(RXNORM, "822929"))  # amphetamine salts MIN (US Core 3.1.1)
    assert "ddi-psychostimulant" in fired(request)
    summary = summary_of(request, "ddi-psychostimulant")
    assert "amphetamine" in summary and "dextroamphetamine" in summary


def test_ingredient_level_codes_map_to_their_ingredients_without_a_dose_form():
    terminology = load_ruleset(RULES).terminology
    drug = terminology.match_drug(coded(RXNORM, "214182"))  # Acetaminophen / Hydrocodone MIN
    assert drug.ingredients == {"hydrocodone"} and drug.matched_by == "code" and drug.form is None
    assert terminology.match_drug(coded(RXNORM, "21241")).ingredients == {"clobazam"}  # CPIC IN


def test_a_code_seen_only_on_a_secondary_site_is_not_loaded():
    """Phenelzine sulfate's PIN candidate is listed as unverified: it must not identify a drug."""
    terminology = load_ruleset(RULES).terminology
    assert not terminology.match_drug(coded(RXNORM, "8124")).ingredients
