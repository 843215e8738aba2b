"""An element a fact reads is read as FHIR JSON types it, never coerced (session 6 leftover of issue 8).

The R4B models validate in pydantic's lax mode: ``deceasedBoolean: "no"`` (or ``"yes"``, ``0``) passed
as a boolean, ``"70"`` as a decimal, ``"1"`` and ``1.0`` as an integer. FHIR's JSON format has one JSON
type per primitive (https://hl7.org/fhir/R4/json.html#primitive): a wrong one makes the element
unreadable, and the data gap says which element, never its value.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fhir.resources.R4B import observation, patient, timing

from cds_service.reading.element_checks import fields_of, leaf_for, verdict

from .conftest import load_example
from .record_support import facts_of, run_request


def leaf(model: Any, key: str) -> Any:
    return leaf_for(key, fields_of(model)[key])


@pytest.mark.parametrize(
    ("model", "key", "value", "where"),
    [
        (patient.Patient, "deceasedBoolean", "no", ""),
        (patient.Patient, "deceasedBoolean", "yes", ""),
        (patient.Patient, "deceasedBoolean", "false", ""),
        (patient.Patient, "deceasedBoolean", 0, ""),
        (patient.Patient, "deceasedBoolean", 1, ""),
        (patient.Patient, "multipleBirthInteger", "2", ""),
        (patient.Patient, "multipleBirthInteger", 2.0, ""),
        (patient.Patient, "multipleBirthInteger", True, ""),
        (observation.Observation, "valueQuantity", {"value": "70", "unit": "kg"}, ".value"),
        (observation.Observation, "valueInteger", "3", ""),
        (timing.TimingRepeat, "frequency", "1", ""),
        (timing.TimingRepeat, "period", "1", ""),
    ],
)
def test_a_wrong_json_type_is_invalid_even_where_the_model_would_coerce_it(
    model: Any, key: str, value: Any, where: str
) -> None:
    found = verdict(leaf(model, key), value)
    assert found is not None, f"{key}={value!r} accepted"
    assert found[0] == where and "expected a JSON" in found[1], found
    assert repr(value) not in found[1] and str(value) not in found[1].split("JSON", 1)[1], found


@pytest.mark.parametrize(
    ("model", "key", "value"),
    [
        (patient.Patient, "deceasedBoolean", False),
        (patient.Patient, "multipleBirthInteger", 2),
        (observation.Observation, "valueQuantity", {"value": 70, "unit": "kg"}),
        (observation.Observation, "valueQuantity", {"value": 70.5, "unit": "kg"}),
        (timing.TimingRepeat, "period", 1),
        (timing.TimingRepeat, "period", 0.5),
        (patient.Patient, "birthDate", "1980-05-19"),
        # a primitive extension beside the value (the fast path leaves these to the model)
        (observation.Observation, "code", {"coding": [{"code": "x", "_code": {"extension": []}}]}),
        # keys no reader reads, in an element read as a whole: their JSON type costs nothing
        (
            observation.Observation,
            "code",
            {"coding": [{"system": "http://loinc.org", "code": "29463-7", "userSelected": "yes"}]},
        ),
        (
            observation.Observation,
            "code",
            {"coding": [{"code": "x", "extension": [{"url": "http://x.org/rank", "valueInteger": "1"}]}]},
        ),
        (timing.Timing, "repeat", {"count": "1", "frequency": 1, "period": 1, "periodUnit": "d"}),
    ],
)
def test_the_right_json_type_is_still_valid(model: Any, key: str, value: Any) -> None:
    assert verdict(leaf(model, key), value) is None


@pytest.mark.parametrize("written", ["no", "yes", "false", 0, 1])
def test_deceased_boolean_written_otherwise_is_unreadable_and_said(written: Any) -> None:
    request = copy.deepcopy(load_example("v02-one-failed-trial"))
    request["prefetch"]["patient"]["deceasedBoolean"] = written
    facts = facts_of(request)
    assert facts.deceased == (None, None), "neither alive nor deceased: unknown"
    problems = [p.message for p in facts.record.problems]
    assert any(m.startswith("deceasedBoolean: expected a JSON boolean") for m in problems), problems
    out = run_request(request)
    (gaps,) = [c for c in out.response["cards"] if c["source"]["topic"]["code"] == "data-gaps"]
    assert "deceased status" in gaps["summary"]
    assert "Patient.deceasedBoolean" in gaps["detail"]


def test_a_weight_written_as_a_string_is_unreadable_not_a_weight_in_an_unknown_unit() -> None:
    request = copy.deepcopy(load_example("v02-one-failed-trial"))
    for e in request["prefetch"]["vitalSigns"]["entry"]:
        res = e["resource"]
        if any(c.get("code") == "29463-7" for c in res["code"]["coding"]):
            res["valueQuantity"]["value"] = str(res["valueQuantity"]["value"])
    facts = facts_of(request)
    weight = facts.latest("weight")
    assert weight is None or weight.value is None, "never coerced to 70 kg"
    problems = [p.message for p in facts.record.problems]
    assert any(m.startswith("valueQuantity.value: expected a JSON number") for m in problems), problems
