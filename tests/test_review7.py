"""Behaviour differences found by session 7's review (differential runs of /tmp/base7 against main).

Each test names what a speed or safety change altered that the golden cards and the suite missed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .test_trial_doses import Dosage, _fired, _nothing_recorded, _request


def _route_as_number(d: Dosage) -> None:
    _nothing_recorded(d)
    d["route"] = {"text": 5}


def _timing_frequency_as_word(d: Dosage) -> None:
    _nothing_recorded(d)
    d["timing"] = {"repeat": {"frequency": "once", "period": 1, "periodUnit": "d"}}


NO_DOSE_BUT_AN_UNREADABLE_ELEMENT: dict[str, Callable[[Dosage], Any]] = {
    "route text a number": _route_as_number,
    "timing frequency a word": _timing_frequency_as_word,
}


@pytest.mark.parametrize("shape", sorted(NO_DOSE_BUT_AN_UNREADABLE_ELEMENT))
def test_a_dosage_stating_no_dose_is_not_an_unreadable_dose_whatever_else_is_invalid(shape: str) -> None:
    """b6b279d: a trial whose dosage states no dose (no doseAndRate, no text) is presumed adequate
    ('dose not recorded'); an invalid route or timing in that dosage made the trial 'dose recorded
    but could not be read' and TRD unknown (data gap 'a readable daily dose of an antidepressant
    trial'), although no dose was recorded (MedUse.daily_dose_unread's own contract: None when the
    record states no dose)."""
    fired, cards = _fired(_request(NO_DOSE_BUT_AN_UNREADABLE_ELEMENT[shape]))
    assert "trd-met" in fired, f"{shape}: {[c['summary'] for c in cards]}"
    assert not any("daily dose of an antidepressant trial" in c["summary"] for c in cards)
