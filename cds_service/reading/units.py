"""UCUM units for the quantities the rules compare: body weight, height, blood pressure, doses, rates.

A value is converted to the unit a rule thinks in (kg, mm[Hg], mg, mg/min …) or it is unknown:
an unknown, unparseable or missing unit is never assumed to be the expected one (a weight of 154
with no unit is not 154 kg). The unit is read from the Quantity's UCUM ``code`` (``system`` UCUM or
absent); without a UCUM code, the human-readable ``unit`` is accepted when it is a UCUM code or an
unambiguous spelling of one ("lbs", "mmHg", "mcg", "mg/hr").

Only the small part of UCUM the rules need is implemented: products of the atoms below with
metric prefixes where they are listed, division (``mg/kg/h`` = (mg/kg)/h), ``.`` products and
annotations (``{beats}/min`` = ``/min``; an annotation alone, such as ``{pill}``, is a count of
something, never a mass).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from .raw import as_dict, as_float

UCUM = "http://unitsofmeasure.org"
UCUM_SYSTEMS = (None, UCUM, "urn:oid:2.16.840.1.113883.6.8")  # and its OID form (FHIR R4 naming systems)

# atom -> (factor to the base unit, dimension); bases: g (mass), s (time), m (length), Pa (pressure)
_ATOMS: dict[str, tuple[float, str]] = {
    "kg": (1000.0, "M"),
    "g": (1.0, "M"),
    "mg": (1e-3, "M"),
    "ug": (1e-6, "M"),
    "ng": (1e-9, "M"),
    "[lb_av]": (453.59237, "M"),
    "[oz_av]": (28.349523125, "M"),
    "s": (1.0, "T"),
    "min": (60.0, "T"),
    "h": (3600.0, "T"),
    "d": (86400.0, "T"),
    "wk": (604800.0, "T"),
    "m": (1.0, "L"),
    "cm": (0.01, "L"),
    "mm": (0.001, "L"),
    "[in_i]": (0.0254, "L"),
    "[ft_i]": (0.3048, "L"),
    "Pa": (1.0, "P"),
    "kPa": (1000.0, "P"),
    "mm[Hg]": (133.322387415, "P"),
    "cm[H2O]": (98.0665, "P"),
    "%": (0.01, ""),
    "1": (1.0, ""),
}

# Unambiguous spellings seen in the `unit` text of EHR Quantities, lower-cased -> UCUM code.
_SPELLINGS = {
    "kilogram": "kg",
    "kilograms": "kg",
    "kgs": "kg",
    "gram": "g",
    "grams": "g",
    "gm": "g",
    "milligram": "mg",
    "milligrams": "mg",
    "mcg": "ug",
    "µg": "ug",
    "μg": "ug",
    "microgram": "ug",
    "micrograms": "ug",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "pound": "[lb_av]",
    "pounds": "[lb_av]",
    "oz": "[oz_av]",
    "ounce": "[oz_av]",
    "ounces": "[oz_av]",
    "mmhg": "mm[Hg]",
    "mm hg": "mm[Hg]",
    "kpa": "kPa",
    "in": "[in_i]",
    "inch": "[in_i]",
    "inches": "[in_i]",
    "mg/hr": "mg/h",
    "mg/hour": "mg/h",
    "mg/kg/hr": "mg/kg/h",
    "mcg/min": "ug/min",
    "mcg/kg/min": "ug/kg/min",
    "mg/kg/dose": "mg/kg",
    "bpm": "/min",
    "beats/min": "/min",
    "breaths/min": "/min",
    "/minute": "/min",
    "minutes": "min",
    "minute": "min",
    "hours": "h",
    "hour": "h",
    "hr": "h",
}

_ANNOTATION = re.compile(r"\{[^{}]*\}")
# (factor to base units, dimensions): numerator and denominator dimensions are kept apart, so that
# mg/kg (a dose per body weight) is not mistaken for a pure number such as % or 1.
Unit = tuple[float, tuple[tuple[str, int], ...]]


@lru_cache(maxsize=4096)
def parse(code: str) -> Unit | None:
    """A UCUM unit as (factor to base units, dimensions), or None if this module cannot read it.
    An annotation alone (``{pill}``, ``{tbl}``) is None: a count of things has no known mass."""
    text = code.strip()
    if not text or _ANNOTATION.fullmatch(text):
        return None
    text = _ANNOTATION.sub("", text)
    factor = 1.0
    dims: dict[str, int] = {}
    for i, term in enumerate(text.split("/")):
        per = i > 0
        for atom in term.split(".") if term else ["1"]:
            known = _ATOMS.get(atom)
            if known is None:
                return None
            f, dim = known
            factor = factor / f if per else factor * f
            if dim:
                key = f"/{dim}" if per else dim
                dims[key] = dims.get(key, 0) + 1
    return factor, tuple(sorted(dims.items()))


def unit_code(quantity: Any) -> str | None:
    """The UCUM code a Quantity is in: its ``code`` when the system is UCUM (or not stated), else
    its ``unit`` text when that is a UCUM code or a known spelling of one; None when unknown."""
    q = as_dict(quantity)
    code, system, unit = q.get("code"), q.get("system"), q.get("unit")
    for text in (code if system in UCUM_SYSTEMS else None, unit):
        if isinstance(text, str) and text.strip():
            return _SPELLINGS.get(text.strip().lower(), text.strip())
    return None


@lru_cache(maxsize=4096)
def factor(from_code: str, to_code: str) -> float | None:
    """What a value in ``from_code`` is multiplied by to be in ``to_code``; None if either is unknown
    or they measure different things (kg vs mm[Hg])."""
    src, dst = parse(from_code), parse(to_code)
    if src is None or dst is None or src[1] != dst[1]:
        return None
    return src[0] / dst[0]


def convert(value: float, from_code: str, to_code: str) -> float | None:
    """``value`` in ``from_code`` expressed in ``to_code`` (see :func:`factor`)."""
    f = factor(from_code, to_code)
    return None if f is None else value * f


def quantity_in(quantity: Any, to_code: str) -> float | None:
    """A Quantity's value in ``to_code`` (``{"value": 154, "code": "[lb_av]"}`` → 69.85 for kg),
    None when its value or unit is missing or unknown, or measures something else."""
    value = as_float(as_dict(quantity).get("value"))
    code = unit_code(quantity)
    if value is None or code is None:
        return None
    f = factor(code, to_code)
    return None if f is None else value * f


def _first_of(quantity: Any, targets: tuple[str, ...]) -> tuple[float | None, str | None]:
    value = as_float(as_dict(quantity).get("value"))
    code = unit_code(quantity) if value is not None else None
    if code is not None:
        for unit in targets:
            f = factor(code, unit)
            if f is not None:
                return value * f, unit
    return None, None


def dose(quantity: Any) -> tuple[float | None, str | None]:
    """A dose as (value, "mg") or (value, "mg/kg"); (None, None) when it is neither (``1 {pill}``)."""
    return _first_of(quantity, ("mg", "mg/kg"))


def rate(quantity: Any) -> tuple[float | None, str | None]:
    """An infusion rate as (value, "mg/min") or (value, "mg/kg/min"); (None, None) otherwise."""
    return _first_of(quantity, ("mg/min", "mg/kg/min"))


def ratio_rate(ratio: Any) -> tuple[float | None, str | None]:
    """A rate written as a Ratio (35 mg per 15 min) as (value, "mg/min") or (value, "mg/kg/min")."""
    r = as_dict(ratio)
    num, den = as_dict(r.get("numerator")), as_dict(r.get("denominator"))
    amount, per = dose(num), quantity_in(den, "min")
    if amount[0] is None or per is None or per <= 0:
        return None, None
    return amount[0] / per, f"{amount[1]}/min"
