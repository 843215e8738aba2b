"""What a medication record's dosage says: dose, doses per day, route, infusion time.

Read from the raw JSON of one ``Dosage`` (or ``MedicationAdministration.dosage``) after the record
validated it (:mod:`.medication_use` decides when). A drug's usual sig repeats across records and
patients, so a reading is kept by the dosage's content — without its timing bounds and events, which
are the patient's own dates and which no reading here uses, and without the words anyone wrote (a
sig's text, a route written out): only a route can be read from those, and it is read again from
each record's own words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from .raw import as_dict, as_float, as_list
from .terminology import concept_text
from .units import dose as dose_of
from .units import rate as rate_of
from .units import ratio_rate

ROUTES = {
    "iv": ("intravenous", "iv", "i.v."),
    "im": ("intramuscular", "im", "i.m."),
    "sc": ("subcutaneous", "sc", "s.c.", "subcut"),
    "nasal": ("nasal", "intranasal"),
    "oral": ("oral", "po", "by mouth", "sublingual"),
    "transdermal": ("transdermal", "topical"),
}
FORM_ROUTE = {"nasal": "nasal", "oral": "oral", "transdermal": "transdermal"}
_ROUTE_WORDS = {w: route for route, words in reversed(ROUTES.items()) for w in words}  # first route wins

_ROUTE_PATTERNS = [
    (route, re.compile("|".join(rf"(?<![a-z]){re.escape(w)}(?![a-z])" for w in words)))
    for route, words in ROUTES.items()
]


def route_of(concept: Any) -> str | None:
    if isinstance(concept, dict) and concept.get("text"):  # written out: the patient's words
        text = concept["text"]
        if text.__class__ is str and "coding" not in concept:  # the words alone (concept_text's)
            return _route_in(text)
        return _route_in(concept_text(concept))
    return _route_of_names(concept_text(concept))


@lru_cache(maxsize=4096)
def _route_of_names(names: str) -> str | None:
    """Memoised for codes' display names only: orders repeat a few routes."""
    return _route_in(names)


def _route_in(text: str) -> str | None:
    """The route a text names ("IV infusion" → iv); a route's own word ("oral") without a search."""
    text = text.lower()
    if not text:
        return None
    word = _ROUTE_WORDS.get(text.strip())
    if word is not None:
        return word
    return _route_by_pattern(text)


def _route_by_pattern(text: str) -> str | None:
    for route, pattern in _ROUTE_PATTERNS:
        if pattern.search(text):
            return route
    return None


def minutes(value: Any, unit: Any) -> float | None:
    value = as_float(value)
    if value is None:
        return None
    factor = {"s": 1 / 60, "min": 1, "h": 60, "d": 1440}.get(str(unit))
    return float(value) * factor if factor else None


def infusion_minutes(
    dose: float | None, dose_unit: str | None, rate: dict[str, Any], stated: float | None
) -> float | None:
    """How long an infusion runs: the stated duration, or dose ÷ rate (``doseAndRate.rateQuantity``
    or ``rateRatio``: 35 mg at 140 mg/h is 15 minutes) when none is stated or the rate runs it
    faster by more than a minute (a pump runs at its rate)."""
    derived = None
    if "rateQuantity" not in rate and "rateRatio" not in rate:
        return stated
    per_min, per_unit = rate_of(rate.get("rateQuantity"))
    if per_min is None:
        per_min, per_unit = ratio_rate(rate.get("rateRatio"))
    if dose is not None and per_min and per_min > 0 and per_unit == f"{dose_unit}/min":
        derived = dose / per_min
    if stated is None or (derived is not None and derived < stated - 1):
        return derived
    return stated


def per_day(repeat: dict[str, Any]) -> float | None:
    freq, period = as_float(repeat.get("frequency")), as_float(repeat.get("period"))
    return _per_day(freq, period, repeat.get("periodUnit"))


def _per_day(freq: float | None, period: float | None, unit: Any) -> float | None:
    if freq is None or period is None or period <= 0:
        return None
    days = {"h": 1 / 24, "d": 1, "wk": 7, "mo": 30, "a": 365}.get(str(unit))
    return freq / (period * days) if days else None


#: ``Timing.code`` (system, code) -> the (frequency, period, periodUnit) it abbreviates
TimingCodes = dict[tuple[str, str], tuple[float, float, str]]


def timing_codes(table: dict[str, Any]) -> TimingCodes:
    """The table of rules/terminology/timing.yaml, by (system, code)."""
    return {
        (system, str(code)): (float(r["frequency"]), float(r["period"]), str(r["periodUnit"]))
        for system in table.get("systems") or ()
        for code, r in (table.get("codes") or {}).items()
    }


def _coded(timing: dict[str, Any], codes: TimingCodes) -> tuple[float, float, str] | None:
    """The repeat a sig's ``Timing.code`` abbreviates, if the rule set knows the code (its system
    and code both): another system's code, a code alone or words alone are not read."""
    concept = timing.get("code")
    if not codes or concept.__class__ is not dict:
        return None
    for c in as_list(concept.get("coding")):
        if c.__class__ is dict:
            system, code = c.get("system"), c.get("code")
            if system.__class__ is str and code.__class__ is str:
                hit = codes.get((system, code))
                if hit is not None:
                    return hit
    return None


@dataclass(frozen=True)
class Dosing:
    """What one record's dosage says. Frozen: the records of one sig in a request share one."""

    dose: float | None = None
    dose_unit: str | None = None
    per_day: float | None = None
    route: str | None = None
    infusion: float | None = None


Amounts = tuple[Any, Any, Any, Any]  # dose, dose unit, doses per day, infusion minutes

# Amounts by exactly what they are read from (the value, unit, system and code of each dose and
# rate; the timing's frequency, period and duration): numbers, units and codes many patients'
# sigs share. Nothing else of a dosage is in a key, so never a date (bounds, events) nor a word
# (a sig's text, a dose type written out, an extension). Values only, so no request is kept alive.
# Bounded; a lookup and a store are single dict operations, safe with another thread clearing it.
# The route is not among them: it may be read from words.
_DOSINGS: dict[tuple[bool, tuple[Any, ...]], Amounts] = {}
_DOSINGS_LIMIT = 20_000


def _quantity(q: Any) -> tuple[Any, ...] | None:
    """What :mod:`.units` reads of a Quantity, each number with its type (``True == 1 == 1.0``
    share a hash, but are not read alike: a boolean is no number to the reading, ``300.0`` is said
    as written); a value of another shape is its own (no) key."""
    if q is None:
        return None
    if q.__class__ is dict:
        value = q.get("value")
        return (value.__class__, value, q.get("unit"), q.get("system"), q.get("code"))
    raise TypeError("not a Quantity")


def _ratio(r: Any) -> tuple[Any, ...] | None:
    if r is None:
        return None
    if r.__class__ is dict:
        return (_quantity(r.get("numerator")), _quantity(r.get("denominator")))
    raise TypeError("not a Ratio")


def _rate(entry: Any) -> tuple[Any, ...] | None:
    """The key of one ``doseAndRate`` entry: its dose and rate (an entry's ``type`` is words)."""
    if entry.__class__ is not dict:
        return None
    rate, ratio = entry.get("rateQuantity"), entry.get("rateRatio")
    return (
        _quantity(entry.get("doseQuantity")),
        None if rate is None else _quantity(rate),
        None if ratio is None else _ratio(ratio),
    )


def _dosage_key(element: Any, administered: bool = False, coded: Any = None) -> tuple[Any, ...] | None:
    """What a dosage's amounts are read from (``coded``: what its timing code was read as); None
    when a part has a shape no reading takes."""
    if not isinstance(element, dict):
        return None
    try:
        if administered:
            key: tuple[Any, ...] = (
                _quantity(element.get("dose")),
                _quantity(element.get("rateQuantity")),
                _ratio(element.get("rateRatio")),
            )
        else:
            entries = element.get("doseAndRate")
            if entries.__class__ is not list:
                rates: tuple[Any, ...] = ()
            elif len(entries) == 1:  # the commonest sig: one dose
                rates = (_rate(entries[0]),)
            else:
                rates = tuple([_rate(e) for e in entries])
            timing = element.get("timing")
            repeat = timing.get("repeat") if isinstance(timing, dict) else None
            if not isinstance(repeat, dict):
                key = (rates,) if coded is None else (rates, coded)
            else:
                f, p, d = repeat.get("frequency"), repeat.get("period"), repeat.get("duration")
                key = (
                    rates,
                    f.__class__,
                    f,
                    p.__class__,
                    p,
                    repeat.get("periodUnit"),
                    d.__class__,
                    d,
                    repeat.get("durationUnit"),
                    coded,
                )
        hash(key)  # a list or an object where a number belongs: read, not kept
    except TypeError:
        return None
    return key


def _route(dosage: dict[str, Any], sig: bool) -> str | None:
    """The route a dosage names: its route concept, else (a sig) the words of its text."""
    route = route_of(dosage.get("route"))
    if route is None and sig:
        text = dosage.get("text")
        if text:
            route = _route_in(text) if text.__class__ is str else route_of({"text": text})
    return route


def _administered_amounts(adm: dict[str, Any]) -> Amounts:
    dose, unit = dose_of(adm.get("dose"))
    return dose, unit, None, infusion_minutes(dose, unit, adm, None)


def _sig_amounts(dosage: dict[str, Any], coded: tuple[float, float, str] | None = None) -> Amounts:
    # Several entries are common (Epic: "admin-amount" in mL or tablets, "calculated" in mg,
    # "ordered", in any order): the dose is the first in mg or mg/kg, the rate the first rate.
    entries = [as_dict(e) for e in as_list(dosage.get("doseAndRate"))] or [{}]
    dose, unit = next(
        (d for e in entries if (d := dose_of(e.get("doseQuantity")))[0] is not None), (None, None)
    )
    rate = next((e for e in entries if "rateQuantity" in e or "rateRatio" in e), entries[0])
    repeat = as_dict(as_dict(dosage.get("timing")).get("repeat"))
    stated = minutes(repeat.get("duration"), repeat.get("durationUnit"))
    daily = per_day(repeat)
    if daily is None and coded is not None:  # no frequency in the repeat: the code's, if known
        daily = _per_day(*coded)
    return dose, unit, daily, infusion_minutes(dose, unit, rate, stated)


def _amounts(dosage: dict[str, Any], administered: bool, codes: TimingCodes | None = None) -> Amounts:
    """The dosage's amounts, from :data:`_DOSINGS` when another sig like it was read (the key
    holds what its timing code, if any, was read as: never the code alone, whose reading is the
    rule set's)."""
    coded = None
    if codes and not administered:
        timing = dosage.get("timing")
        if timing.__class__ is dict and "code" in timing:
            coded = _coded(timing, codes)
    key = _dosage_key(dosage, administered, coded)
    if key is not None:
        hit = _DOSINGS.get((administered, key))  # hashable: _dosage_key checked
        if hit is not None:
            return hit
    amounts = _administered_amounts(dosage) if administered else _sig_amounts(dosage, coded)
    if key is not None:
        if len(_DOSINGS) >= _DOSINGS_LIMIT:
            _DOSINGS.clear()
        _DOSINGS[(administered, key)] = amounts
    return amounts


def _read_dosage(element: Any, codes: TimingCodes | None = None) -> Dosing:
    dosage = as_dict(element)
    if not dosage:
        return Dosing()
    dose, unit, daily, infusion = _amounts(dosage, False, codes)
    return Dosing(dose, unit, daily, _route(dosage, True), infusion)


class Memo(dict[tuple[bool, bytes, str | None], Dosing]):
    """A request's dosage readings by (administered, the dosage's JSON, the drug's form), and the
    rule set's timing codes they are read with (:func:`timing_codes`)."""

    __slots__ = ("timing",)

    def __init__(self, timing: TimingCodes | None = None) -> None:
        super().__init__()
        self.timing: TimingCodes = timing or {}


def _form_route(form: str | None) -> str | None:
    """The route a drug's dose form implies when the dosage names none (a nasal spray: nasal)."""
    if form is None:
        return None
    return FORM_ROUTE.get(form) or ("injection" if form == "injection" else None)


_NO_DOSING = Dosing()


def first_dosage(res: dict[str, Any], rtype: str) -> Any:
    """The dosage a record's dose is read from: an administration's own, else the first of the
    record's dosages (None when it has none)."""
    if rtype == "MedicationAdministration":
        return res.get("dosage")
    elements = res.get("dosage" if rtype == "MedicationStatement" else "dosageInstruction")
    return elements[0] if isinstance(elements, list) and elements else None


def states_dose(element: dict[str, Any]) -> bool:
    """Whether a dosage records a dose in any shape, valid or not (a ``doseAndRate``, a sig's
    text): one that records none is "dose not recorded", whatever else in it (a route, a timing)
    cannot be read."""
    if element.get("doseAndRate"):
        return True
    text = element.get("text")
    return text.strip() != "" if isinstance(text, str) else text is not None


def dose_unread(element: Any, dosing: Dosing) -> str | None:
    """Why a dosage that states a dose gives no daily dose in mg (``dosing``: what was read of
    it): a dose in no unit of mass (a unit missing or unknown, a count such as tablets), a dose
    per kg, a range, or a sig written only as text; None when it states no dose at all, or when
    the dose was read. Words for a card: never a value, a unit as written or the sig's text."""
    if not isinstance(element, dict) or not element:
        return None
    entries = element.get("doseAndRate")
    if isinstance(entries, dict):
        entries = [entries]
    stated = [
        e for e in as_list(entries) if isinstance(e, dict) and ("doseQuantity" in e or "doseRange" in e)
    ]
    if stated:
        if dosing.dose is None:
            if any("doseQuantity" in e for e in stated):
                return "a dose in no unit of mass (a missing or unknown unit, or a count such as tablets)"
            return "a dose range"
        if dosing.dose_unit != "mg":
            return "a dose per kg of body weight"
        return None
    text = element.get("text")
    if text.strip() if isinstance(text, str) else text is not None:
        return "a dose written only as text"
    return None


def dosing_of(res: dict[str, Any], rtype: str, memo: Memo | None = None, form: str | None = None) -> Dosing:
    """What the record's (first) dosage says; without a route of its own, the route the drug's
    dose ``form`` implies. ``memo`` holds this request's readings by the dosage's whole JSON
    (words and dates included: it lives as long as the request, and a course's dispenses repeat
    one sig), and the records sharing one get the same (frozen) reading; across requests only the
    amounts are kept (:data:`_DOSINGS`)."""
    administered = rtype == "MedicationAdministration"
    element = first_dosage(res, rtype)
    if not isinstance(element, dict) or not element:
        return _NO_DOSING if form is None else Dosing(route=_form_route(form))
    key = None
    if memo is not None:
        try:
            key = (administered, orjson.dumps(element), form)
        except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
            key = None
        else:
            hit = memo.get(key)
            if hit is not None:
                return hit
    dose, unit, daily, infusion = _amounts(element, administered, getattr(memo, "timing", None))
    route = _route(element, not administered) or _form_route(form)
    d = Dosing(dose, unit, daily, route, infusion)
    if memo is not None and key is not None:
        memo[key] = d
    return d
