"""One need, one row; a suggestion's label a short action (session 7's review, findings 2 and 3).

Pregnancy status is asked for by two kinds (a pregnancy-status observation and an hCG test), both
labelled "pregnancy status". When the latest status could not be read, the first asked for "a
readable pregnancy status — the latest could not be read" and the second for "pregnancy status":
two rows and two identical orders for one need. And a suggestion was labelled with the row's words,
"Order: a readable body weight (last 30 days) — the latest could not be read": a CDS Hooks
suggestion label is a brief, human-readable action (the text of a button), the same action whether
the data is missing or unreadable; the row says why.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .conftest import load_example
from .record_support import run_request, weight

EXAMPLES = ["v01-clear-trd-eligible", "v02-one-failed-trial", "v07-daily-lorazepam", "v13-missing-data"]


def _gap_card(request: dict[str, Any]) -> dict[str, Any] | None:
    cards = run_request(request).response["cards"]
    found = [c for c in cards if c["source"]["topic"]["code"] == "data-gaps"]
    return found[0] if found else None


def _rows(card: dict[str, Any]) -> list[str]:
    rows = [line for line in card["detail"].splitlines() if line.startswith("| ")][1:]
    return [row.split(" | ")[0].removeprefix("| ") for row in rows]


def _pregnancy_status(request: dict[str, Any]) -> dict[str, Any]:
    (found,) = [e["resource"] for e in request["prefetch"]["pregnancyStatus"]["entry"]]
    return found


def _orders(card: dict[str, Any]) -> list[str]:
    return [
        "|".join(str(c.get(k)) for k in ("system", "code") for c in a["resource"]["code"].get("coding", []))
        + a["resource"]["code"]["text"]
        for s in card.get("suggestions", [])
        for a in s.get("actions", [])
    ]


def test_an_unreadable_pregnancy_status_and_no_hcg_are_one_row() -> None:
    request = copy.deepcopy(load_example("v01-clear-trd-eligible"))  # a woman of 45, IV ketamine
    _pregnancy_status(request)["effectiveDateTime"] = "2026-05-04T08:45:00"  # a time without a zone
    card = _gap_card(request)
    assert card is not None
    rows = [r for r in _rows(card) if "pregnancy" in r]
    assert rows == ["a readable pregnancy status — the latest could not be read"], rows
    assert card["summary"].count("pregnancy status") == 1, card["summary"]
    assert len(_orders(card)) == len(set(_orders(card))) == 1
    (suggestion,) = card["suggestions"]
    assert suggestion["label"] == "Order: pregnancy status"


def test_a_weight_that_could_not_be_read_is_ordered_as_a_missing_one_is() -> None:
    missing = copy.deepcopy(load_example("v02-one-failed-trial"))  # IV ketamine dosed by weight
    entries = missing["prefetch"]["vitalSigns"]["entry"]
    entries[:] = [e for e in entries if e["resource"] is not weight(missing)]
    unreadable = copy.deepcopy(load_example("v02-one-failed-trial"))
    weight(unreadable)["valueQuantity"]["value"] = "70"  # a string: FHIR JSON has a number
    labels = []
    for request in (missing, unreadable):
        card = _gap_card(request)
        assert card is not None
        (suggestion,) = [s for s in card["suggestions"] if "weight" in s["label"]]
        labels.append(suggestion["label"])
        assert suggestion["actions"][0]["description"] == suggestion["label"]
    assert labels == ["Order: body weight (last 30 days)"] * 2, labels
    # the row still says what is wrong with the one recorded
    assert any(r.startswith("a readable body weight") for r in _rows(_gap_card(unreadable) or {}))


def _observations(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for key in ("vitalSigns", "assessments", "pregnancyStatus")
        for e in (request["prefetch"].get(key) or {}).get("entry", [])
        if e.get("resource", {}).get("resourceType") == "Observation"
    ]


def _unreadable_date(obs: dict[str, Any]) -> None:
    obs["effectiveDateTime"] = str(obs.get("effectiveDateTime", "2026-05-04T08:00:00Z"))[:19]


def _value_as_string(obs: dict[str, Any]) -> None:
    if isinstance(obs.get("valueQuantity"), dict):
        obs["valueQuantity"]["value"] = str(obs["valueQuantity"].get("value"))
    for comp in obs.get("component", []):
        if isinstance(comp.get("valueQuantity"), dict):
            comp["valueQuantity"]["value"] = str(comp["valueQuantity"].get("value"))


@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("mutate", [_unreadable_date, _value_as_string], ids=["date", "value"])
def test_every_need_is_one_row_and_one_order_whatever_reading_fails(example: str, mutate: Any) -> None:
    """Each observation of the example made unreadable in turn: no two rows name one need (the
    words before " — "), no order is suggested twice, and no suggestion label carries a reason."""
    base = load_example(example)
    for i in range(len(_observations(base))):
        request = copy.deepcopy(base)
        mutate(_observations(request)[i])
        card = _gap_card(request)
        if card is None:
            continue
        names = [r.split(" — ")[0].removeprefix("a readable ").removeprefix("a usable ") for r in _rows(card)]
        assert len(names) == len(set(names)), (i, _rows(card))
        assert len(_orders(card)) == len(set(_orders(card))), (i, _orders(card))
        for s in card.get("suggestions", []):
            assert " — " not in s["label"] and "readable" not in s["label"], s["label"]
