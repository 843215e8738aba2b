"""The observation index read once per request (issue 8, speed): what it must keep while it gets cheaper.

Readings of a kind come from an Observation's own code, from a panel's components, and from a
panel's value written out as text; two readings at the same time are taken in record order.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from cds_service.engine.loader import load_ruleset
from cds_service.reading.observations import ObservationKinds

from .conftest import RULES
from .record_support import facts_of
from .test_timeline import LOINC, TODAY, add, bp_as_text, bp_panel, ketamine_request, without_bp


def systolic(value: float, when: dict[str, str], oid: str, status: str = "final") -> dict[str, Any]:
    """A systolic BP as its own Observation (US Core's other shape of a BP)."""
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
        "subject": {"reference": "Patient/v02"},
        **when,
        "valueQuantity": {
            "value": value,
            "unit": "mmHg",
            "system": "http://unitsofmeasure.org",
            "code": "mm[Hg]",
        },
    }


def test_readings_at_the_same_time_are_taken_in_record_order_whatever_their_shape():
    """A panel's component and an Observation of its own, both at 08:40: the first sent decides
    (so an index that files components after the others would change which one a card cites)."""
    request = without_bp(ketamine_request())
    add(request, "vitalSigns", bp_panel(190, 100, "final", TODAY, oid="bp-first"))
    add(request, "vitalSigns", systolic(150, TODAY, "sys-second"))
    latest = facts_of(request).latest("systolic_bp")
    assert latest is not None and (latest.ref, latest.value) == ("Observation/bp-first", 190)

    request = without_bp(ketamine_request())
    add(request, "vitalSigns", systolic(150, TODAY, "sys-first"))
    add(request, "vitalSigns", bp_panel(190, 100, "final", TODAY, oid="bp-second"))
    latest = facts_of(request).latest("systolic_bp")
    assert latest is not None and (latest.ref, latest.value) == ("Observation/sys-first", 150)


def test_every_shape_of_a_reading_is_found_and_dated():
    """Own code, component and text readings of one kind, each dated its own way (a time in
    another zone, a partial date, only ``issued``), oldest first; a time without a zone is not
    valid FHIR: that reading is unreadable and said, never guessed."""
    request = without_bp(ketamine_request())
    add(request, "vitalSigns", systolic(140, {"effectiveDateTime": "2026-05-04T09:00:00+02:00"}, "zoned"))
    add(request, "vitalSigns", systolic(200, {"effectiveDateTime": "2026-05-04T08:50:00"}, "naive"))
    add(request, "vitalSigns", systolic(130, {"effectiveDateTime": "2026-05"}, "partial"))
    add(request, "vitalSigns", systolic(120, {"issued": "2026-05-03T10:00:00Z"}, "issued"))
    add(request, "vitalSigns", bp_panel(160, 90, "final", {"effectiveDateTime": "2026-05-04T08:00:00Z"}))
    add(request, "vitalSigns", bp_as_text("176/104 mmHg"))  # TODAY (08:40)
    facts = facts_of(request)
    series = facts.series("systolic_bp")
    got = [(o.ref, o.value, o.when.astimezone(UTC).isoformat()) for o in series]
    assert got == [
        ("Observation/partial", 130, "2026-05-01T00:00:00+00:00"),
        ("Observation/issued", 120, "2026-05-03T10:00:00+00:00"),
        ("Observation/zoned", 140, "2026-05-04T07:00:00+00:00"),
        ("Observation/bp-p", 160, "2026-05-04T08:00:00+00:00"),
        ("Observation/bp-text", 176, "2026-05-04T08:40:00+00:00"),
    ]
    assert [p.resource for p in facts.record.problems] == ["Observation/naive"]


def test_a_panel_whose_components_are_of_no_kind_is_read_from_its_text():
    """A component of no kind does not stop the panel's written-out value from being read."""
    request = without_bp(ketamine_request())
    panel = bp_as_text("182/96 mmHg")
    panel["component"] = [
        {"code": {"coding": [{"system": LOINC, "code": "8478-0"}]}, "valueQuantity": {"value": 1}}
    ]
    add(request, "vitalSigns", panel)
    latest = facts_of(request).latest("diastolic_bp")
    assert latest is not None and latest.value == 96 and latest.from_text


def _fresh_kinds() -> ObservationKinds:
    """An index of its own: what another test's records taught the shared one cannot help."""
    return ObservationKinds(load_ruleset(RULES).observation_kinds)


LOCAL = {"coding": [{"system": "urn:oid:2.16.578.1.12.4.1", "code": "8480-6"}]}  # a site's code, no kind
SYSTOLIC = {"coding": [{"system": LOINC, "code": "8480-6"}]}


def test_a_code_remembered_with_one_system_is_no_answer_for_another():
    """The kinds are remembered by code (across calls): the same code string in another system is
    another concept, whichever of the two a record sent first."""
    kinds = _fresh_kinds()
    assert kinds.first_kind(LOCAL) is None
    assert kinds.first_kind(SYSTOLIC) == "systolic_bp"
    assert kinds.first_kind(LOCAL) is None
    kinds = _fresh_kinds()
    assert kinds.first_kind(SYSTOLIC) == "systolic_bp"
    assert kinds.first_kind(LOCAL) is None
    assert kinds.first_kind(SYSTOLIC) == "systolic_bp"


def test_the_first_kind_is_the_careful_readings_first_cold_and_remembered():
    """Every shape, asked twice (the second answer comes from what the first remembered), names
    the kind the careful reading of all codings names first."""
    concepts: list[Any] = [
        SYSTOLIC,
        LOCAL,
        {"coding": [{"system": LOINC, "code": " 8480-6 "}]},  # compared stripped
        {"coding": [*LOCAL["coding"], *SYSTOLIC["coding"]]},  # the kind is the second coding's
        {"coding": [{"system": LOINC, "code": "8462-4"}, *SYSTOLIC["coding"]]},  # diastolic first
        {"coding": [{"code": "8480-6"}]},  # no system: no kind
        {"coding": [{"system": None, "code": "8480-6"}]},
        {"coding": [{"system": LOINC, "code": True}]},
        {"coding": [{"system": LOINC, "code": 1}]},
        {"coding": [{"system": LOINC, "code": ["8480-6"]}]},  # unhashable
        {"coding": {"system": LOINC, "code": "8480-6"}},  # one coding not in a list: read as one
        {"coding": ["8480-6", *SYSTOLIC["coding"]]},
        {"coding": []},
        {"coding": "8480-6"},
        {"text": "systolic"},
        ["8480-6"],
        None,
    ]
    kinds = _fresh_kinds()
    for concept in concepts:
        careful = kinds._of_concept(concept)
        expected = careful[0] if careful else None
        assert kinds.first_kind(concept) == expected, concept
        assert kinds.first_kind(concept) == expected, concept
    assert kinds.first_kind(SYSTOLIC) == "systolic_bp"
    assert kinds.first_kind(LOCAL) is None


def test_a_panels_components_of_every_shape_are_filed_under_the_careful_readings_first_kind():
    """The panel loop probes each component's codes inline (as the loop over Observations does):
    every shape of component, cold and remembered, is filed under the kind the careful reading of
    its codings names first, in order, or under none."""
    components: list[Any] = [
        {"code": SYSTOLIC},
        {"code": LOCAL},
        {"code": {"coding": [*LOCAL["coding"], *SYSTOLIC["coding"]]}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}, *SYSTOLIC["coding"]]}},
        {"code": {"coding": [{"system": LOINC, "code": ["8480-6"]}]}},
        {"code": {"coding": {"system": LOINC, "code": "8480-6"}}},
        {"code": {"coding": ["8480-6", *SYSTOLIC["coding"]]}},
        {"code": {"coding": [{"code": "8480-6"}]}},
        {"code": None},
        {"valueQuantity": {"value": 1}},
        "8480-6",
        ["8480-6"],
        None,
    ]
    for _ in range(2):  # cold, then with the codes remembered
        request = without_bp(ketamine_request())
        panel = bp_panel(120, 80, "final", TODAY, oid="odd")
        panel["component"] = components
        add(request, "vitalSigns", panel)
        facts = facts_of(request)
        kinds = facts._kinds
        filed = [
            (kind, id(entry[1]))
            for kind, entries in facts._observations_by_kind.items()
            for entry in entries
            if type(entry) is tuple and entry[0] is panel
        ]
        expected = []
        for comp in components:
            careful = kinds._of_concept(comp.get("code")) if isinstance(comp, dict) else []
            if careful:
                expected.append((careful[0], id(comp)))
        assert sorted(filed, key=str) == sorted(expected, key=str)
