"""The patient's own dates inside content patients share: a dosage's period of use.

A dosage is a drug's usual sig, the same for many patients, except for its timing's dates
(``timing.event``, ``timing.repeat.bounds[x]``). Such content is kept across calls by its JSON
only with those dates as placeholders, and only when each is certainly valid (:mod:`.datatypes`):
then what the walk finds in the dosage is the same whichever valid dates it holds.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from . import datatypes

APART = "(read apart)"  # in a key, where the patient's own dates (or a dosage holding them) were
_TIMING = get_fhir_model_class("Timing").model_fields
_REPEAT = get_fhir_model_class("TimingRepeat").model_fields
#: the fast checks of a timing's dates (datatypes.py: True only when certainly valid)
EVENTS = datatypes.compiled(_TIMING["event"].annotation)
BOUNDS = {
    k: datatypes.compiled(_REPEAT[k].annotation) for k in ("boundsDuration", "boundsRange", "boundsPeriod")
}


def dated_timing(timing: Any) -> bool:
    """A Timing (or anything in its place) that holds the patient's own dates, or may."""
    if type(timing) is not dict:
        return timing is not None  # not a Timing at all: never kept (the model will say why)
    if "event" in timing:
        return True
    repeat = timing.get("repeat")
    return type(repeat) is dict and (
        "boundsPeriod" in repeat or "boundsDuration" in repeat or "boundsRange" in repeat
    )


def undated_dosage(value: Any) -> Any | None:
    """A dosage (or several) with its dates (``timing.event``, ``timing.repeat.bounds[x]``) as
    placeholders, for a key: when every such date is certainly valid (:mod:`.datatypes`), what the
    walk finds in the dosage is the same whichever valid dates it holds. None when one is not
    (the dosage is then walked apart, every time)."""
    out = []
    for item in value if type(value) is list else (value,):
        timing = item.get("timing") if type(item) is dict else None
        if timing is not None:
            if type(timing) is not dict:
                return None
            if "event" in timing:
                if not EVENTS(timing["event"]):
                    return None
                timing = {**timing, "event": APART}
            repeat = timing.get("repeat")
            if type(repeat) is dict:
                for k, ok in BOUNDS.items():
                    if k in repeat:
                        if not ok(repeat[k]):
                            return None
                        repeat = {**repeat, k: APART}
                timing = {**timing, "repeat": repeat}
            item = {**item, "timing": timing}
        out.append(item)
    return out if type(value) is list else out[0]


def dated_dosage(value: Any) -> bool:
    """A dosage whose timing holds the patient's own dates (``event``, ``repeat.bounds[x]``)."""
    for item in value if type(value) is list else (value,):
        if type(item) is dict and dated_timing(item.get("timing")):
            return True
    return False
