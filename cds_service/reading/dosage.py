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

from .raw import as_dict, as_float, as_list, without_words
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

_ROUTE_PATTERNS = [
    (route, re.compile("|".join(rf"(?<![a-z]){re.escape(w)}(?![a-z])" for w in words)))
    for route, words in ROUTES.items()
]


def route_of(concept: Any) -> str | None:
    if isinstance(concept, dict) and concept.get("text"):  # written out: the patient's words
        return _route_in(concept_text(concept))
    return _route_of_names(concept_text(concept))


@lru_cache(maxsize=4096)
def _route_of_names(names: str) -> str | None:
    """Memoised for codes' display names only: orders repeat a few routes."""
    return _route_in(names)


def _route_in(text: str) -> str | None:
    """The route a text names ("IV infusion" → iv)."""
    text = text.lower()
    if not text:
        return None
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
    freq, period, unit = (
        as_float(repeat.get("frequency")),
        as_float(repeat.get("period")),
        repeat.get("periodUnit"),
    )
    if freq is None or period is None or period <= 0:
        return None
    days = {"h": 1 / 24, "d": 1, "wk": 7, "mo": 30, "a": 365}.get(str(unit))
    return freq / (period * days) if days else None


@dataclass
class Dosing:
    dose: float | None = None
    dose_unit: str | None = None
    per_day: float | None = None
    route: str | None = None
    infusion: float | None = None


# Readings by (administration?, the dosage's JSON without timing bounds or events and with every
# written string a placeholder): values only, so no request is kept alive, and no patient's dates
# or words. A route read from words is never kept: it is read again from each record's own text.
# Bounded; a lookup and a store are single dict operations, safe with another thread clearing it.
_DOSINGS: dict[tuple[bool, bytes], tuple[Any, ...]] = {}
_DOSINGS_LIMIT = 20_000

_BOUNDS = frozenset({"boundsDuration", "boundsRange", "boundsPeriod"})  # Timing.repeat.bounds[x]
_TEXT = b'"text":'  # where a route may be written out (Dosage.text, route.text)


def _content(element: Any, whole: bytes | None = None) -> bytes | None:
    """The dosage's JSON with what no reading uses and only a patient's dates can tell apart left
    out (``timing.event``, ``timing.repeat.bounds[x]``): a course's request and dispenses, and one
    sig on many patients' records, give one content. ``whole``: the element's JSON, when known.
    None when it is not JSON."""
    if not isinstance(element, dict):
        return None
    timing = element.get("timing")
    if isinstance(timing, dict):
        repeat = timing.get("repeat")
        if "event" in timing or (isinstance(repeat, dict) and not _BOUNDS.isdisjoint(repeat)):
            timing = {k: v for k, v in timing.items() if k != "event"}
            if isinstance(repeat, dict):
                timing["repeat"] = {k: v for k, v in repeat.items() if k not in _BOUNDS}
            element, whole = {**element, "timing": timing}, None
    if whole is not None:
        return whole
    try:
        return orjson.dumps(element)
    except (TypeError, ValueError, orjson.JSONEncodeError):
        return None


def _dosage_key(element: Any) -> bytes | None:
    """The cross-call key of a dosage: :func:`_content` with every written string a placeholder
    (:func:`~.raw.without_words`); None when dates remain elsewhere in it or it holds free text
    that cannot be vouched for (notes, extensions, a text that is not a plain string)."""
    content = _content(element)
    return _key_of(content) if content is not None else None


def _key_of(content: bytes) -> bytes | None:
    if b'"bounds' in content:
        return None
    return without_words(content)


def _read_administered(adm: dict[str, Any]) -> Dosing:
    dose, unit = dose_of(adm.get("dose"))
    return Dosing(dose, unit, route=_route(adm, False), infusion=infusion_minutes(dose, unit, adm, None))


def _route(dosage: dict[str, Any], sig: bool) -> str | None:
    """The route a dosage names: its route concept, else (a sig) the words of its text."""
    route = route_of(dosage.get("route"))
    if route is None and sig:
        text = dosage.get("text")
        if text:
            route = route_of({"text": text})
    return route


def _read_dosage(element: Any) -> Dosing:
    dosage = as_dict(element)
    if not dosage:
        return Dosing()
    # Several entries are common (Epic: "admin-amount" in mL or tablets, "calculated" in mg,
    # "ordered", in any order): the dose is the first in mg or mg/kg, the rate the first rate.
    entries = [as_dict(e) for e in as_list(dosage.get("doseAndRate"))] or [{}]
    dose, unit = next(
        (d for e in entries if (d := dose_of(e.get("doseQuantity")))[0] is not None), (None, None)
    )
    rate = next((e for e in entries if "rateQuantity" in e or "rateRatio" in e), entries[0])
    repeat = as_dict(as_dict(dosage.get("timing")).get("repeat"))
    return Dosing(
        dose,
        unit,
        per_day(repeat),
        _route(dosage, True),
        infusion_minutes(dose, unit, rate, minutes(repeat.get("duration"), repeat.get("durationUnit"))),
    )


Memo = dict[tuple[bool, bytes], tuple[Any, ...]]


def dosing_of(res: dict[str, Any], rtype: str, memo: Memo | None = None) -> Dosing:
    """What the record's (first) dosage says, read once per distinct dosage content: ``memo``
    holds this request's readings by the dosage's whole JSON (words and dates included: it lives
    as long as the request; a course's dispenses repeat one), :data:`_DOSINGS` every request's by
    :func:`_key_of` (no words, no dates)."""
    administered = rtype == "MedicationAdministration"
    if administered:
        element: Any = res.get("dosage")
    else:
        key = "dosage" if rtype == "MedicationStatement" else "dosageInstruction"
        element = (as_list(res.get(key)) or [{}])[0]
    whole = None
    if memo is not None and isinstance(element, dict):
        try:
            whole = orjson.dumps(element)
        except (TypeError, ValueError, orjson.JSONEncodeError):
            whole = None
        if whole is not None:
            hit = memo.get((administered, whole))
            if hit is not None:
                return Dosing(*hit)
    content = _content(element, whole)
    if content is None:
        return _read_administered(as_dict(element)) if administered else _read_dosage(element)
    d = _kept(element, content, administered)
    if memo is not None and whole is not None:
        memo[(administered, whole)] = (d.dose, d.dose_unit, d.per_day, d.route, d.infusion)
    return d


def _kept(element: Any, content: bytes, administered: bool) -> Dosing:
    """The reading, from :data:`_DOSINGS` when another record of the sig was read; a route that
    may come from the words (a ``text`` anywhere in the dosage) is read from this one's own."""
    key = _key_of(content)
    worded = _TEXT in content
    if key is not None:
        hit = _DOSINGS.get((administered, key))
        if hit is not None:
            d = Dosing(*hit)
            if worded:
                d.route = _route(as_dict(element), not administered)
            return d
    d = _read_administered(as_dict(element)) if administered else _read_dosage(element)
    if key is not None:
        if len(_DOSINGS) >= _DOSINGS_LIMIT:
            _DOSINGS.clear()
        route = None if worded else d.route
        _DOSINGS[(administered, key)] = (d.dose, d.dose_unit, d.per_day, route, d.infusion)
    return d
