"""Compact codes, quantities and dosage as FHIR datatypes (``rx:312941``, ``"70 kg"``, ``"150 mg"`` at
``"1/d"``)."""

from __future__ import annotations

import re
from typing import Any

from .errors import CaseError
from .vocabulary import (
    DISPLAYS,
    ESKETAMINE_PRODUCTS,
    NAMED_FREQUENCIES,
    PERIOD_TEXT,
    ROUTES,
    SYSTEMS,
    TEXTS,
    TIMES_TEXT,
    UCUM,
    UNIT_TEXT,
)


# -- codes, quantities, dosage ----------------------------------------------------------------------
def _split_code(token: str, where: str) -> tuple[str, str]:
    prefix, sep, code = str(token).partition(":")
    if not sep or prefix not in SYSTEMS or not code:
        raise CaseError(f"{where}: code {token!r} must be <prefix>:<code>, prefix one of {sorted(SYSTEMS)}")
    return prefix, code.strip()


def coding(token: str, where: str = "code") -> dict[str, str]:
    """``rx:312941`` → a Coding, with a display only when :data:`DISPLAYS` has one."""
    prefix, code = _split_code(token, where)
    out = {"system": SYSTEMS[prefix], "code": code}
    display = DISPLAYS.get((prefix, code))
    if display:
        out["display"] = display
    return out


def concept(codes: Any, text: str | None = None, where: str = "code") -> dict[str, Any]:
    """One or more shorthand codes → a CodeableConcept; ``text`` defaults to the first display."""
    tokens = codes if isinstance(codes, list) else [codes]
    if not tokens or any(not isinstance(t, str) for t in tokens):
        raise CaseError(f"{where}: expected a code or a list of codes, got {codes!r}")
    codings = [coding(t, where) for t in tokens]
    out: dict[str, Any] = {"coding": codings}
    if text is None:
        first = _split_code(tokens[0], where)
        text = DISPLAYS.get(first) or TEXTS.get(first)
    if text:
        out["text"] = str(text)
    return out


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(float(value), 4)


def quantity(value: Any, default_unit: str | None = None, where: str = "value") -> dict[str, Any]:
    """``"70 kg"`` / ``70`` (with a default unit) → a UCUM Quantity."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number, unit = float(value), default_unit
    else:
        m = re.match(r"^\s*(-?\d+(?:\.\d+)?)\s*(\S+)?\s*$", str(value))
        if not m:
            raise CaseError(f"{where}: cannot read quantity {value!r}")
        number, unit = float(m.group(1)), m.group(2) or default_unit
    if not unit:
        raise CaseError(f"{where}: {value!r} needs a unit")
    code = {"mcg": "ug", "mmHg": "mm[Hg]", "bpm": "/min"}.get(unit, unit)
    return {"value": _number(number), "unit": UNIT_TEXT.get(code, code), "system": UCUM, "code": code}


def _frequency(freq: Any, where: str) -> tuple[dict[str, Any], str]:
    """``"2/d"``, ``"1/wk"``, ``"once"``, ``"bid"`` → (timing.repeat, words)."""
    if freq is None:
        return {}, ""
    text = NAMED_FREQUENCIES.get(str(freq).strip().lower(), str(freq).strip())
    if text == "once":
        return {"count": 1}, "once"
    m = re.match(r"^(\d+)/(d|wk|h)$", text)
    if not m:
        raise CaseError(f"{where}: frequency {freq!r} must be N/d, N/wk, N/h, once, daily, bid, tid or qid")
    n, unit = int(m.group(1)), m.group(2)
    words = f"{TIMES_TEXT.get(n, f'{n} times')} {PERIOD_TEXT[unit]}"
    return {"frequency": n, "period": 1, "periodUnit": unit}, words


def _route(entry: dict[str, Any], medication: dict[str, Any], where: str) -> str | None:
    route = entry.get("route")
    if route is not None:
        if route not in ROUTES:
            raise CaseError(f"{where}: route {route!r} must be one of {sorted(ROUTES)}")
        return ROUTES[route]
    codes = {c["code"] for c in medication.get("coding", []) if c["system"] == SYSTEMS["rx"]}
    if codes & ESKETAMINE_PRODUCTS:
        return ROUTES["nasal"]
    label = " ".join(
        [medication.get("text", "")] + [c.get("display", "") for c in medication.get("coding", [])]
    )
    if re.search(r"\boral\b", label, re.IGNORECASE):
        return ROUTES["oral"]
    return None


def dosage(entry: dict[str, Any], medication: dict[str, Any], where: str) -> dict[str, Any] | None:
    """A Dosage from ``dose``, ``frequency``, ``route`` and ``infusion_minutes``."""
    repeat, words = _frequency(entry.get("frequency"), where)
    route = _route(entry, medication, where)
    minutes = entry.get("infusion_minutes")
    if minutes is not None:
        if not isinstance(minutes, int | float) or minutes <= 0:
            raise CaseError(f"{where}: infusion_minutes must be a positive number")
        repeat = {**repeat, "duration": _number(minutes), "durationUnit": "min"}
    out: dict[str, Any] = {}
    parts = []
    if entry.get("dose") is not None:
        dose_q = quantity(entry["dose"], "mg", f"{where}.dose")
        rate: dict[str, Any] = {"doseQuantity": dose_q}
        if minutes and dose_q["code"] == "mg":
            rate["rateQuantity"] = {
                "value": _number(round(dose_q["value"] / minutes, 3)),
                "unit": "mg/min",
                "system": UCUM,
                "code": "mg/min",
            }
        out["doseAndRate"] = [rate]
        parts.append(f"{dose_q['value']} {dose_q['unit']}")
    if route:
        parts.append(route)
    if minutes:
        parts.append(f"over {_number(minutes)} min")
    if words:
        parts.append(words)
    text = entry.get("dosage_text") or " ".join(parts)
    if text:
        out = {"text": text, **out}
    if repeat:
        out["timing"] = {"repeat": repeat}
    if route:
        out["route"] = {"text": route}
    return out or None


def _dispense_quantity(
    medication: dict[str, Any], dose: dict[str, Any] | None, per_day: float, days: int
) -> dict[str, Any] | None:
    """Tablets/capsules for a supply, when the product display gives one strength in MG."""
    display = next((c.get("display", "") for c in medication.get("coding", []) if c.get("display")), "")
    m = re.search(
        r"(\d+(?:\.\d+)?) MG (?:Extended Release |Delayed Release |Disintegrating )?Oral (Tablet|Capsule)$",
        display,
    )
    if not m or "/" in display or not dose or dose.get("code") != "mg":
        return None
    units_per_dose = dose["value"] / float(m.group(1))
    total = units_per_dose * per_day * days
    if not float(total).is_integer():
        return None
    return {"value": int(total), "unit": m.group(2).lower()}


def _duration_days(value: Any, where: str) -> int:
    m = re.match(r"^(\d+)d$", str(value).strip())
    if not m or int(m.group(1)) <= 0:
        raise CaseError(f"{where}: expected a number of days like 30d, got {value!r}")
    return int(m.group(1))
