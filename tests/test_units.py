"""Units: a value is converted to the unit the rule thinks in, or it is unknown, never assumed.

Findings reproduced here (each failed before `reading/units.py`): a weight in pounds read as kg
(2.1 mg/kg shown as "0.95 mg/kg, in the studied range"), a blood pressure in kPa read as mmHg
(186/104 shown as normal), `doseAndRate.rateQuantity` ignored (35 mg at 140 mg/h is a 15-minute
infusion), and the Sandbox's dose "1 {pill}" read as a number.
"""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.compact import build_request

from .test_safety import ORDER, base_case, outcome_of, run

UCUM = "http://unitsofmeasure.org"
IV_KETAMINE = {k: v for k, v in ORDER.items() if k != "infusion_minutes"}


def _observations(request: dict[str, Any], code: str) -> list[dict[str, Any]]:
    found = []
    for bundle in request["prefetch"].values():
        for entry in (bundle or {}).get("entry", []) if isinstance(bundle, dict) else []:
            res = entry["resource"]
            if res.get("resourceType") == "Observation" and any(
                c.get("code") == code for c in res["code"].get("coding", [])
            ):
                found.append(res)
    assert found, code
    return found


def _order(request: dict[str, Any]) -> dict[str, Any]:
    return request["context"]["draftOrders"]["entry"][0]["resource"]


def with_weight(quantity: dict[str, Any], dose: str = "152 mg") -> dict[str, Any]:
    request = build_request(base_case(orders=[{**ORDER, "dose": dose}]))
    for res in _observations(request, "29463-7"):
        res["valueQuantity"] = quantity
    return request


def with_bp(systolic: dict[str, Any], diastolic: dict[str, Any]) -> dict[str, Any]:
    request = build_request(base_case())
    (panel,) = _observations(request, "85354-9")
    for comp in panel["component"]:
        code = comp["code"]["coding"][0]["code"]
        comp["valueQuantity"] = systolic if code == "8480-6" else diastolic
    return request


def kpa(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "kPa", "system": UCUM, "code": "kPa"}


# -- body weight ------------------------------------------------------------------------------------
def test_weight_in_pounds_is_converted_before_the_mg_per_kg_check():
    """152 mg for 160 lb (72.6 kg) is 2.09 mg/kg: above 1.0, not "0.95 mg/kg in the studied range"."""
    result = run(with_weight({"value": 160, "unit": "lb", "system": UCUM, "code": "[lb_av]"}))
    high = outcome_of(result, "dose-ketamine-high")
    assert high.status == "fired", (high.status, high.reason)
    assert high.result.bind["dose_mg_per_kg"] == pytest.approx(2.09, abs=0.01)
    assert high.result.bind["weight"]["value"] == pytest.approx(72.6, abs=0.05)
    assert outcome_of(result, "dose-ketamine-parenteral").status != "fired"


@pytest.mark.parametrize(
    "quantity",
    [
        {"value": 72574, "unit": "g", "system": UCUM, "code": "g"},
        {"value": 2560, "unit": "oz", "system": UCUM, "code": "[oz_av]"},
        {"value": 160, "unit": "lbs"},  # no UCUM code: an unambiguous spelling of [lb_av]
    ],
)
def test_weight_in_other_units(quantity):
    high = outcome_of(run(with_weight(quantity)), "dose-ketamine-high")
    assert high.status == "fired"
    assert high.result.bind["dose_mg_per_kg"] == pytest.approx(2.09, abs=0.01)


@pytest.mark.parametrize(
    "quantity",
    [
        {"value": 160},  # no unit at all
        {"value": 160, "unit": "stone-ish"},  # a unit nobody can read
        {"value": 160, "system": "http://example.org/local-units", "code": "LB"},  # not UCUM
        {"value": 160, "system": UCUM, "code": "mm[Hg]"},  # not a mass
    ],
)
def test_weight_in_an_unknown_unit_is_unknown(quantity):
    result = run(with_weight(quantity, dose="35 mg"))
    for rule in ("dose-ketamine-high", "dose-ketamine-parenteral"):
        assert outcome_of(result, rule).status == "unknown", rule


# -- blood pressure ---------------------------------------------------------------------------------
def test_blood_pressure_in_kpa_is_converted():
    """24.8/13.9 kPa = 186/104 mmHg: at or above 180/100, the critical card."""
    result = run(with_bp(kpa(24.8), kpa(13.9)))
    severe = outcome_of(result, "ci-blood-pressure-severe")
    assert severe.status == "fired", (severe.status, severe.reason)
    assert severe.result.bind["systolic_bp"]["value"] == pytest.approx(186, abs=0.5)
    assert severe.result.bind["systolic_bp"]["unit"] == "mm[Hg]"


def test_normal_blood_pressure_in_kpa_stays_normal():
    result = run(with_bp(kpa(16.0), kpa(10.4)))  # 120/78 mmHg
    assert outcome_of(result, "ci-blood-pressure").status == "not-fired"
    assert outcome_of(result, "ci-blood-pressure-severe").status == "not-fired"


def test_blood_pressure_without_a_unit_is_unknown():
    result = run(with_bp({"value": 186}, {"value": 104}))
    assert outcome_of(result, "ci-blood-pressure-severe").status == "unknown"
    assert outcome_of(result, "ci-blood-pressure").status == "unknown"


# -- doses and rates --------------------------------------------------------------------------------
def test_rate_quantity_gives_the_infusion_time():
    """35 mg at 140 mg/h is a 15-minute infusion: faster than the studied 40 minutes."""
    request = build_request(base_case(orders=[IV_KETAMINE]))
    order = _order(request)
    order["dosageInstruction"][0]["doseAndRate"][0]["rateQuantity"] = {
        "value": 140,
        "unit": "mg/h",
        "system": UCUM,
        "code": "mg/h",
    }
    result = run(request)
    fast = outcome_of(result, "dose-ketamine-infusion-time")
    assert fast.status == "fired", (fast.status, fast.reason)
    assert fast.result.bind["infusion_minutes"] == 15


def test_rate_ratio_gives_the_infusion_time():
    request = build_request(base_case(orders=[IV_KETAMINE]))
    order = _order(request)
    order["dosageInstruction"][0]["doseAndRate"][0]["rateRatio"] = {
        "numerator": {"value": 35, "system": UCUM, "code": "mg"},
        "denominator": {"value": 40, "system": UCUM, "code": "min"},
    }
    result = run(request)
    assert outcome_of(result, "dose-ketamine-infusion-time").status == "not-fired"
    assert result.evaluation.facts.orders[0].infusion_minutes == pytest.approx(40)


def test_a_rate_faster_than_the_stated_duration_counts():
    """Duration 40 min but a pump rate of 140 mg/h for 35 mg: the order runs over 15 minutes."""
    request = build_request(base_case(orders=[ORDER]))
    order = _order(request)
    order["dosageInstruction"][0]["doseAndRate"][0]["rateQuantity"] = {
        "value": 140,
        "system": UCUM,
        "code": "mg/h",
    }
    assert outcome_of(run(request), "dose-ketamine-infusion-time").status == "fired"


@pytest.mark.parametrize(
    ("quantity", "mg"),
    [
        ({"value": 0.035, "system": UCUM, "code": "g"}, 35),
        ({"value": 35000, "system": UCUM, "code": "ug"}, 35),
        ({"value": 35000, "unit": "mcg"}, 35),
        ({"value": 35, "system": UCUM, "code": "mg{total}"}, 35),  # an annotation changes nothing
    ],
)
def test_dose_in_other_mass_units(quantity, mg):
    request = build_request(base_case())
    _order(request)["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] = quantity
    (order,) = run(request).evaluation.facts.orders
    assert (order.dose, order.dose_unit) == (pytest.approx(mg), "mg")


def test_pill_dose_is_unknown_not_a_number():
    request = build_request(base_case())
    _order(request)["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] = {
        "value": 1,
        "system": UCUM,
        "code": "{pill}",
    }
    result = run(request)
    (order,) = result.evaluation.facts.orders
    assert order.dose is None and order.dose_unit is None
    assert outcome_of(result, "dose-ketamine-parenteral").status == "unknown"


# -- the conversion table ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "src", "dst", "expected"),
    [
        (1, "[lb_av]", "kg", 0.45359237),
        (16, "[oz_av]", "[lb_av]", 1.0),
        (1, "kPa", "mm[Hg]", 7.50061683),
        (60, "mg/h", "mg/min", 1.0),
        (0.5, "mg/kg", "mg/kg", 0.5),
        (500, "ug/kg", "mg/kg", 0.5),
        (30, "mg/kg/h", "mg/kg/min", 0.5),
        (72, "{beats}/min", "/min", 72),
    ],
)
def test_convert(value, src, dst, expected):
    from cds_service.reading.units import convert

    assert convert(value, src, dst) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("{pill}", "mg"),
        ("1", "mg/kg"),
        ("%", "mg/kg"),
        ("kg", "mm[Hg]"),
        ("mg", "mg/kg"),
        ("", "mg"),
        ("MG", "mg"),
    ],
)
def test_convert_refuses_what_it_cannot_know(src, dst):
    from cds_service.reading.units import convert

    assert convert(1, src, dst) is None
