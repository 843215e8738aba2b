"""A request's medication records are read once per distinct drug concept and sig (issue 8, speed):
a course's request and its monthly dispenses repeat one concept and one dosage. The memo lives as
long as the request; validation of each record is never shared."""

from __future__ import annotations

import copy
from typing import Any

from cds_service.reading.terminology import Terminology

from .record_support import facts_of
from .test_timeline import RXNORM, add, ketamine_request

PHENELZINE = {"coding": [{"system": RXNORM, "code": "8123", "display": "phenelzine"}], "text": "Nardil"}


def _dispense(n: int, concept: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationDispense",
        "id": f"disp-{n}",
        "status": "completed",
        "medicationCodeableConcept": copy.deepcopy(concept),
        "whenHandedOver": f"2025-{n % 12 + 1:02d}-03",
        "daysSupply": {"value": 30, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"},
        "dosageInstruction": [
            {
                "text": "15 mg by mouth three times daily",
                "doseAndRate": [{"doseQuantity": {"value": 15, "unit": "mg", "code": "mg"}}],
                "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
            }
        ],
        **fields,
    }


def _course(*extra: dict[str, Any]) -> dict[str, Any]:
    request = ketamine_request()
    for n in range(6):
        add(request, "medicationDispenses", _dispense(n, PHENELZINE))
    for res in extra:
        add(request, "medicationDispenses", res)
    return request


def test_one_concept_is_matched_once_per_request(monkeypatch: Any) -> None:
    calls: list[Any] = []
    real = Terminology.match_drug

    def spy(self: Terminology, concept: Any) -> Any:
        calls.append(concept)
        return real(self, concept)

    monkeypatch.setattr(Terminology, "match_drug", spy)
    facts = facts_of(_course())
    uses = [u for u in facts.medication_uses if u.ref.startswith("MedicationDispense/disp-")]
    assert len(uses) == 6 and all(u.drug.ingredients == {"phenelzine"} for u in uses)
    assert sum(1 for c in calls if c == PHENELZINE) == 1
    assert [u.daily_dose for u in uses] == [45.0] * 6


def test_concepts_differing_in_their_words_keep_their_own() -> None:
    """The request's memo is keyed by the whole concept: a name written otherwise is its own."""
    other = dict(PHENELZINE, text="Nardil 15 mg (patient's own supply)")
    facts = facts_of(_course(_dispense(9, other)))
    texts = {u.ref: u.drug.text for u in facts.medication_uses if u.kind == "MedicationDispense"}
    assert texts["MedicationDispense/disp-9"].startswith("Nardil 15 mg (patient's own supply)")
    assert texts["MedicationDispense/disp-1"] == "Nardil phenelzine"


def test_each_record_after_another_is_identified_by_its_own_concept() -> None:
    """Records following one another with an equal concept share the drug; one whose concept
    differs from the one before in a code, a system, its text or a display is matched on its own,
    and one whose code is a number or a boolean (equal in Python to 1) names no drug by it."""
    phenelzine = PHENELZINE["coding"][0]
    variants = [
        PHENELZINE,
        dict(PHENELZINE, coding=[dict(phenelzine, code="8124")]),  # another code
        PHENELZINE,
        dict(PHENELZINE, coding=[dict(phenelzine, system="http://example.org/local")]),
        dict(PHENELZINE, text="phenelzine (Nardil) 15 mg"),
        dict(PHENELZINE, coding=[dict(phenelzine, display="tranylcypromine")]),
        {"coding": [{"system": RXNORM, "code": 1}], "text": "Nardil"},
        {"coding": [{"system": RXNORM, "code": True}], "text": "Nardil"},
        PHENELZINE,
    ]
    request = ketamine_request()
    for n, concept in enumerate(variants):
        add(request, "medicationDispenses", _dispense(n, concept))
    facts = facts_of(request)
    by_ref = {u.ref: u.drug for u in facts.medication_uses}
    by_ref.update({r: d for r, d in facts.malformed_meds})
    for n, concept in enumerate(variants):
        expected = facts.t.match_drug(copy.deepcopy(concept))
        got = by_ref.get(f"MedicationDispense/disp-{n}")
        if not expected.ingredients:
            assert got is None, n  # no drug: not a use
            continue
        assert got is not None, n
        assert (got.ingredients, got.products, got.text) == (
            expected.ingredients,
            expected.products,
            expected.text,
        ), n


def test_each_record_of_a_memoised_concept_is_still_validated() -> None:
    """A dispense sharing the course's concept but with an invalid element it is read for is
    unreadable (the MAOI check asks for it), whatever its siblings said."""
    bad = _dispense(7, PHENELZINE, whenHandedOver="the third of May")
    facts = facts_of(_course(bad))
    assert "MedicationDispense/disp-7" in facts.unreadable_medications_in("maoi")
    assert "MedicationDispense/disp-7" not in {u.ref for u in facts.medication_uses}


def test_a_memoised_sig_keeps_each_records_own_route() -> None:
    route_iv = _dispense(8, PHENELZINE)
    route_iv["dosageInstruction"][0]["text"] = "15 mg IV three times daily"
    facts = facts_of(_course(route_iv))
    routes = {u.ref: u.route for u in facts.medication_uses if u.kind == "MedicationDispense"}
    assert routes["MedicationDispense/disp-8"] == "iv" and routes["MedicationDispense/disp-2"] == "oral"


def test_active_uses_agrees_with_in_effect_for_every_record_not_ended() -> None:
    """``active_uses`` decides most records inline; its answer is :func:`in_effect`'s."""
    from datetime import date, timedelta

    from cds_service.reading.medication_use import MedicationFacts, MedUse
    from cds_service.reading.terminology import DrugMatch
    from cds_service.reading.timeline import in_effect

    today = date(2026, 5, 4)
    days = [None, *(today + timedelta(days=d) for d in (-40, -8, -7, -6, -1, 0, 1, 30))]
    drug = DrugMatch(frozenset({"phenelzine"}), matched_by="code")
    uses = [
        MedUse(f"r{i}", kind, drug, status, start, end)
        for i, (kind, status, start, end) in enumerate(
            (kind, status, start, end)
            for kind in ("MedicationRequest", "MedicationStatement", "MedicationDispense")
            for status in ("active", "completed", "on-hold", "cancelled", "not-taken", "unknown", "")
            for start in days
            for end in days
        )
        if not (status == "completed" and kind != "MedicationDispense")  # ended: in_effect itself
    ]

    class Facts(MedicationFacts):
        def __init__(self) -> None:
            self.today = today

        def uses_in(self, valueset: str) -> list[MedUse]:
            return uses

    for grace in (0, 1, 7, 10**9):
        expected = [u.ref for u in uses if in_effect(u, [], today, grace)]
        assert [u.ref for u in Facts().active_uses("maoi", grace_days=grace)] == expected, grace


def test_uses_in_is_drug_in_over_the_records_for_every_value_set() -> None:
    """The per-request index of records by value set answers as asking each record would."""
    lithium = {"coding": [{"system": RXNORM, "code": "6448", "display": "lithium"}]}
    facts = facts_of(_course(_dispense(11, lithium), _dispense(12, {"text": "sertraline 50 mg"})))
    assert len({u.drug.ingredients for u in facts.medication_uses}) >= 3
    for vs in facts.t.valuesets:
        expected = [u.ref for u in facts.medication_uses if facts.t.drug_in(u.drug, vs)]
        assert [u.ref for u in facts.uses_in(vs)] == expected, vs
