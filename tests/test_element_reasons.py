"""A reason shown to a clinician names the FHIR element, never the model library's internals.

The R4B models are pydantic models: an element sent as an array where FHIR has one value (a
``daysSupply`` Quantity inside ``[...]``, a coding inside a second array) fails with the location
``daysSupply.root`` and the message "Value is expected from the instance of Quantity, but got type
<class 'list'>". ``root`` is pydantic's name for the value of a root model and ``<class 'list'>`` is
Python's: neither is FHIR, and both reached the data-gap row and the "not read" list of the cards.
The requests are the worked vignette v01 with one record sent in such a shape.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from .conftest import load_example
from .record_support import run_request

#: pydantic's and Python's words, which FHIR never uses
LEAKS = (r"\.root\b", r"<class", r"instance of", r"valid dictionary", r"Value error")


def _dispense(req: dict[str, Any]) -> dict[str, Any]:
    return req["prefetch"]["medicationDispenses"]["entry"][0]["resource"]


def _texts(req: dict[str, Any]) -> str:
    return json.dumps(run_request(req).response["cards"], ensure_ascii=False)


SHAPES = {
    "daysSupply as an array": (
        lambda r: _dispense(r).__setitem__("daysSupply", [_dispense(r)["daysSupply"]]),
        "daysSupply",
    ),
    "daysSupply as a string": (lambda r: _dispense(r).__setitem__("daysSupply", "30"), "daysSupply"),
    "a coding inside a second array": (
        lambda r: _dispense(r)["medicationCodeableConcept"].__setitem__(
            "coding", [_dispense(r)["medicationCodeableConcept"]["coding"]]
        ),
        "medicationCodeableConcept.coding[0]",
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_reason_names_the_fhir_element_only(shape: str) -> None:
    change, element = SHAPES[shape]
    req = copy.deepcopy(load_example("v01-clear-trd-eligible"))
    change(req)
    text = _texts(req)
    assert f"{element}: expected" in text, f"{shape}: the element is not named"
    for leak in LEAKS:
        assert not re.search(leak, text), f"{shape}: a card shows {leak!r}"


def test_an_array_for_one_value_says_so() -> None:
    req = copy.deepcopy(load_example("v01-clear-trd-eligible"))
    _dispense(req)["daysSupply"] = [_dispense(req)["daysSupply"]]
    assert "daysSupply: expected a single value, got an array" in _texts(req)
