"""Deceased patients and unidentified orders (issue 8 items 2 and 4), on EHR-shaped requests.

- patient-view: a patient the record calls deceased gets no cards at all;
- an order hook: the deceased record is itself the finding (a critical card), the other checks stay;
- an order whose drug cannot be identified but whose text looks like ketamine is never silently
  "not ketamine": a warning says its checks did not run.
"""

from __future__ import annotations

import copy
from typing import Any

from .conftest import load_example
from .record_support import fired, run_request


def cards(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["source"]["topic"]["code"], c["indicator"]) for c in run_request(request).response["cards"]]


def test_deceased_patient_gets_no_patient_view_cards():
    example = load_example("v15-patient-view-course")
    assert cards(example)
    request = copy.deepcopy(example)
    request["prefetch"]["patient"]["deceasedDateTime"] = "2026-05-02T03:10:00+02:00"
    assert cards(request) == []


def test_a_death_date_in_the_future_is_not_a_death():
    request = copy.deepcopy(load_example("v15-patient-view-course"))
    request["prefetch"]["patient"]["deceasedDateTime"] = "2099-01-01"
    assert cards(request) == cards(load_example("v15-patient-view-course"))


def test_order_for_a_deceased_patient_is_itself_the_finding_and_keeps_the_other_checks():
    example = load_example("v04-pregnancy")
    request = copy.deepcopy(example)
    request["prefetch"]["patient"]["deceasedBoolean"] = True
    got = cards(request)
    assert ("data-deceased-patient", "critical") in got
    assert set(cards(example)) <= set(got)  # the pregnancy stop is not lost to a (possibly wrong) flag


def test_deceased_false_is_alive():
    request = copy.deepcopy(load_example("v02-one-failed-trial"))
    request["prefetch"]["patient"]["deceasedBoolean"] = False
    assert "data-deceased-patient" not in fired(request)


def ketamine_order_named(request: dict[str, Any], **medication: Any) -> dict[str, Any]:
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    order.pop("medicationCodeableConcept")
    order.update(medication)
    return request


def test_uncoded_ketamin_order_is_said_to_be_unidentified():
    request = ketamine_order_named(
        copy.deepcopy(load_example("v02-one-failed-trial")),
        medicationCodeableConcept={
            "coding": [{"system": "urn:oid:2.16.578.1.12.4.1.1.7424", "code": "123456"}],
            "text": "Ketamin Pfizer 10 mg/ml inj.",
        },
    )
    assert "data-unidentified-order" in fired(request)


def test_unresolvable_medication_reference_with_a_ketamine_like_display_is_said():
    request = ketamine_order_named(
        copy.deepcopy(load_example("v02-one-failed-trial")),
        medicationReference={"reference": "Medication/lost", "display": "S-Ketamin 25 mg/ml"},
    )
    got = fired(request)
    assert "data-unidentified-order" in got


def test_identified_orders_are_not_flagged():
    assert "data-unidentified-order" not in fired(load_example("v02-one-failed-trial"))
