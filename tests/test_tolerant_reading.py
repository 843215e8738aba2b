"""Tolerant reading: an element no rule reads never costs a safety check; what was ignored is said.

The draft order the CDS Hooks Sandbox sends is the real-client shape here. Its `createFhirResource`
(src/reducers/medication-reducers.js, cds-hooks/sandbox master 3b7e255) writes, for an R4 server:
`category` as one CodeableConcept (not an array), `reasonCode` as the picked Condition's `code`
object (not an array), the dose as `doseAndRate[0].doseQuantity {value: N, system: UCUM, code:
"{pill}"}` (no mg), timing `{frequency: 1, period: 1, periodUnit: "d"}` for "daily",
`dispenseRequest.expectedSupplyDuration` 30 days, `intent: "order"`, `status: "draft"`,
`authoredOn` today. The fixtures below are our own, written to that shape.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from cds_service import api as api_module
from cds_service import pipeline
from cds_service.config import Settings
from cds_service.engine.loader import load_ruleset

from .conftest import RULES, load_example

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SPRAVATO = ("2201625", "esketamine Nasal Spray [Spravato]")
KETAMINE_INJECTION = ("238082", "Ketamine HCl 50 mg/mL injection")
REASON = {"text": "depression"}
IGNORED = "ketamine-cds.ignored-elements"


def sandbox_draft(patient_id: str, drug: tuple[str, str], reason: dict[str, Any] | None) -> dict[str, Any]:
    """A draft MedicationRequest exactly as the Sandbox builds it (R4, defaults: 1 {pill} daily, 30 d)."""
    code, name = drug
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": "request-123",
        "status": "draft",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": "2026-05-04",
        "dosageInstruction": [
            {
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [
                    {"doseQuantity": {"value": 1, "system": "http://unitsofmeasure.org", "code": "{pill}"}}
                ],
            }
        ],
        "dispenseRequest": {
            "expectedSupplyDuration": {
                "value": 30,
                "unit": "days",
                "system": "http://unitsofmeasure.org",
                "code": "d",
            }
        },
        "intent": "order",
        "category": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                    "code": "community",
                }
            ]
        },
        "medicationCodeableConcept": {
            "text": name,
            "coding": [{"display": name, "system": RXNORM, "code": code}],
        },
    }
    if reason is not None:
        resource["reasonCode"] = reason
    return resource


def clean_draft(patient_id: str, drug: tuple[str, str], reason: dict[str, Any] | None) -> dict[str, Any]:
    """The same order as valid R4: `category` and `reasonCode` are arrays."""
    resource = sandbox_draft(patient_id, drug, reason)
    resource["category"] = [resource["category"]]
    if reason is not None:
        resource["reasonCode"] = [reason]
    return resource


def with_draft(example: str, draft: dict[str, Any], hook: str) -> dict[str, Any]:
    request = load_example(example)
    request["hook"] = hook
    request["context"]["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": draft}]}
    if hook == "order-select":
        request["context"]["selections"] = ["MedicationRequest/request-123"]
    return request


def depression_code(request: dict[str, Any]) -> dict[str, Any]:
    """The `code` of the patient's first Condition: what the Sandbox's "Treating" picker copies."""
    return copy.deepcopy(request["prefetch"]["conditions"]["entry"][0]["resource"]["code"])


def run(request: dict[str, Any]) -> pipeline.Outcome:
    return pipeline.run(request, load_ruleset(RULES), Settings(rules_dir=RULES, allow_time_override=True))


def cards(outcome: pipeline.Outcome) -> list[tuple[str, str, str]]:
    return [(c["source"]["topic"]["code"], c["indicator"], c["summary"]) for c in outcome.response["cards"]]


SAFETY = [
    # (example, drug, the safety card that must survive the Sandbox's shape)
    ("v04-pregnancy", SPRAVATO, "ci-pregnancy"),
    ("v10-age-17", SPRAVATO, "ci-age-under-18"),
    ("v06-uncontrolled-bp", SPRAVATO, "ci-blood-pressure-severe"),
    ("v06-uncontrolled-bp", KETAMINE_INJECTION, "ci-blood-pressure-severe"),
]


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
@pytest.mark.parametrize(("example", "drug", "topic"), SAFETY)
def test_sandbox_draft_gives_the_same_cards_as_a_clean_r4_draft(example, drug, topic, hook):
    patient = load_example(example)["context"]["patientId"]
    reason = depression_code(load_example(example))
    clean = run(with_draft(example, clean_draft(patient, drug, reason), hook))
    sandbox = run(with_draft(example, sandbox_draft(patient, drug, reason), hook))
    assert cards(sandbox) == cards(clean)
    topics = {c[0]: c[1] for c in cards(sandbox)}
    assert topics.get(topic) == "critical", topics
    assert "data-unreadable-resources" not in topics
    assert not sandbox.evaluation.facts.record.problems


def test_sandbox_draft_without_a_reason_keeps_its_safety_card():
    patient = load_example("v04-pregnancy")["context"]["patientId"]
    out = run(with_draft("v04-pregnancy", sandbox_draft(patient, SPRAVATO, None), "order-sign"))
    assert ("ci-pregnancy", "critical") in [(c[0], c[1]) for c in cards(out)]


def test_sandbox_pill_dose_is_unknown_not_a_number():
    """ "1 {pill}" is not a dose in mg: the esketamine dose checks ask for it instead of reading 1 mg."""
    patient = load_example("v04-pregnancy")["context"]["patientId"]
    out = run(with_draft("v04-pregnancy", sandbox_draft(patient, SPRAVATO, None), "order-sign"))
    (order,) = out.evaluation.facts.orders
    assert order.dose_unit != "mg" and order.daily_dose is None
    dose_rule = next(o for o in out.evaluation.outcomes if o.rule.id == "dose-esketamine-max")
    assert dose_rule.status == "unknown"


def test_ignored_elements_are_reported_in_the_response_extension():
    request = with_draft(
        "v04-pregnancy", sandbox_draft("v04", SPRAVATO, {"text": "depression"}), "order-sign"
    )
    out = run(request)
    report = out.response["extension"][IGNORED]
    assert {(r["resourceType"], r["element"], r["count"]) for r in report} == {
        ("MedicationRequest", "category", 1),
        ("MedicationRequest", "reasonCode", 1),
    }
    assert all(r["reason"] == "expected an array" for r in report)
    text = json.dumps(report)
    assert "community" not in text and "request-123" not in text and "depression" not in text


def test_a_clean_request_has_no_extension():
    assert "extension" not in run(load_example("v04-pregnancy")).response


def test_ignored_elements_are_logged_without_values(client, monkeypatch):
    logged: list[dict[str, Any]] = []
    monkeypatch.setattr(api_module, "log_call", lambda **fields: logged.append(fields))
    request = with_draft(
        "v04-pregnancy", sandbox_draft("v04", SPRAVATO, {"text": "depression"}), "order-sign"
    )
    resp = client.post("/cds-services/order-sign", json=request)
    assert resp.status_code == 200
    assert resp.get_json()["extension"][IGNORED]
    (line,) = logged
    assert line["ignored_elements"] == {"MedicationRequest.category": 1, "MedicationRequest.reasonCode": 1}
    assert "community" not in json.dumps(line)


# -- element level: unread elements never cost a fact; read elements are validated -------------------
def _bp_request(**observation_changes: Any) -> dict[str, Any]:
    request = load_example("v06-uncontrolled-bp")
    for entry in request["prefetch"]["vitalSigns"]["entry"]:
        res = entry["resource"]
        if any(c.get("code") == "85354-9" for c in res["code"].get("coding", [])):
            res.update(observation_changes)
    return request


def _topic(out: pipeline.Outcome, topic: str) -> str | None:
    return next((c[1] for c in cards(out) if c[0] == topic), None)


def test_invalid_unread_element_of_an_observation_keeps_the_bp_critical():
    out = run(_bp_request(interpretation={"text": "high"}, performer={"reference": 7}))
    assert _topic(out, "ci-blood-pressure-severe") == "critical"
    assert not out.evaluation.facts.record.problems
    report = {(r["element"], r["reason"]) for r in out.response["extension"][IGNORED]}
    assert ("interpretation", "expected an array") in report
    assert ("performer", "expected an array") in report


def test_unknown_element_is_ignored_and_reported():
    out = run(_bp_request(valueDecimal=186))
    assert _topic(out, "ci-blood-pressure-severe") == "critical"
    report = out.response["extension"][IGNORED]
    assert [r["element"] for r in report] == ["valueDecimal"]


def test_invalid_read_element_makes_the_fact_unknown_and_is_reported():
    """An unreadable effective date: that BP is not read at all (never assumed), and the record says why."""
    out = run(_bp_request(effectiveDateTime="this morning"))
    assert _topic(out, "ci-blood-pressure-severe") is None
    problems = out.evaluation.facts.record.problems
    assert problems and {p.message.split(":")[0] for p in problems} == {"effectiveDateTime"}
    assert "this morning" not in problems[0].message


def test_invalid_dosage_leaves_the_interacting_drug_known():
    """An MAOI whose dosage is unreadable is still an MAOI taken today: the interaction card fires."""
    request = load_example("v08-phenelzine")
    for entry in request["prefetch"]["medicationRequests"]["entry"]:
        res = entry["resource"]
        if "phenelzine" in json.dumps(res).lower():
            res["dosageInstruction"][0]["timing"] = {"repeat": {"frequency": "twice"}}
    before = run(load_example("v08-phenelzine"))
    after = run(request)
    assert _topic(before, "ddi-maoi") is not None
    assert _topic(after, "ddi-maoi") == _topic(before, "ddi-maoi")
    assert any("dosageInstruction[0].timing" in p.message for p in after.evaluation.facts.record.problems)


def test_reads_reject_paths_r4b_does_not_define():
    from cds_service.reading.elements import Reads

    with pytest.raises(ValueError, match="no element"):
        Reads("Observation", "valueDecimal")
    with pytest.raises(ValueError, match="not a complex element"):
        Reads("MedicationRequest", "status.coding")


def test_first_error_names_the_element_never_the_value():
    from cds_service.reading.elements import Reads, first_error

    reads = Reads("MedicationRequest", "dosageInstruction.doseAndRate", "authoredOn")
    res = {
        "resourceType": "MedicationRequest",
        "authoredOn": "last tuesday",
        "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": "35 mg"}}]}],
    }
    error = first_error(res, reads)
    assert error is not None and error.startswith("dosageInstruction[0].doseAndRate[0].doseQuantity.value:")
    assert "35 mg" not in error
    res["dosageInstruction"] = {"doseAndRate": []}
    assert first_error(res, reads) == "dosageInstruction: expected an array"
    del res["dosageInstruction"]
    assert first_error(res, reads).startswith("authoredOn:")
    assert "tuesday" not in first_error(res, reads)


def test_ignored_elements_walk_into_what_facts_read():
    from cds_service.reading.elements import ignored_elements

    res = {
        "resourceType": "MedicationRequest",
        "dosageInstruction": [{"additionalInstruction": {"text": "with food"}, "text": "daily"}],
        "note": {"text": "x"},
    }
    found = ignored_elements(res, "MedicationRequest")
    assert found[("dosageInstruction.additionalInstruction", "expected an array")] == 1
    # `note` is read by the medication facts: validated when read, not counted as ignored here
    assert not any(path == "note" for path, _ in found)


def test_ignored_report_stays_small_and_never_repeats_free_text_keys():
    request = _bp_request(**{"John Smith 555-1234": 1, **{f"junk{i}": i for i in range(80)}})
    out = run(request)
    assert _topic(out, "ci-blood-pressure-severe") == "critical"
    report = out.response["extension"][IGNORED]
    assert len(report) == 51 and report[-1]["element"] == "(more)"
    assert "John" not in json.dumps(report) and "John" not in json.dumps(
        out.evaluation.facts.record.ignored_counts()
    )
