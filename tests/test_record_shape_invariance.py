"""Sweeps of how an EHR may write the same record: the cards must not change, word for word.

For every example request and every request captured from the CDS Hooks Sandbox:

* the entries of each bundle (prefetch searches, ``draftOrders``) reversed or shuffled: a search
  returns them in any order;
* every entry sent twice: a repeated search page (the same id is read once);
* every inline drug (``medicationCodeableConcept``) moved to a Medication, contained in its record
  (``#m1``) or put in the search bundle by ``_include`` (``Medication/m1``; a draft order's stays
  contained), as EHRs name drugs;
* a primitive extension (``_status``, ``_effectiveDateTime``) beside every primitive value;
* every date of the request, and its evaluation time, moved 16 years on (leap years fall alike,
  so every age and interval is the same): the cards' dates move with them, nothing else changes.

The Medication rewrites found that a drug named through a Medication was named twice in cards ("lorazepam 1 MG
Oral Tablet lorazepam 1 MG Oral Tablet ≈ 15 mg diazepam-equivalent/day").
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Callable
from typing import Any

import pytest

from .test_unread_elements_sweep import REQUESTS, TIME_EXTENSION, _cards_as_sent, _run, resources

DRAFTS = "draftOrders"  # the key mutation_base.bundles gives the draft orders' bundle


def _bundles(request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(prefetch key or ``draftOrders``, bundle) for each bundle with entries to rewrite."""
    from mutation_base import bundles  # bench's (on the path: the sweep module put it there)

    return [(k, b) for k, b in bundles(request) if isinstance(b.get("entry"), list)]


def _reversed(request: dict[str, Any]) -> int:
    changed = 0
    for _key, b in _bundles(request):
        changed += len(b["entry"]) > 1
        b["entry"].reverse()
    return changed


def _shuffled(request: dict[str, Any]) -> int:
    rng = random.Random(8)
    changed = 0
    for _key, b in _bundles(request):
        before = list(b["entry"])
        rng.shuffle(b["entry"])
        changed += b["entry"] != before
    return changed


def _twice(request: dict[str, Any]) -> int:
    changed = 0
    for key, b in _bundles(request):
        if key != DRAFTS:  # a draft sent twice is two orders
            changed += bool(b["entry"])
            b["entry"] = [e for e in b["entry"] for _ in (0, 1)]
    return changed


def _as_medications(request: dict[str, Any], included: bool) -> int:
    moved = 0
    for key, b in _bundles(request):
        added = []
        for e in b["entry"]:
            res = e.get("resource") if isinstance(e, dict) else None
            if not isinstance(res, dict) or "medicationCodeableConcept" not in res:
                continue
            moved += 1
            mid = f"m{moved}"
            med = {"resourceType": "Medication", "id": mid, "code": res.pop("medicationCodeableConcept")}
            if included and key != DRAFTS:
                added.append({"resource": med, "search": {"mode": "include"}})
                res["medicationReference"] = {"reference": f"Medication/{mid}"}
            else:
                res.setdefault("contained", []).append(med)
                res["medicationReference"] = {"reference": f"#{mid}"}
        b["entry"].extend(added)
    return moved


#: FHIR JSON's extension of a primitive (``_birthDate``), as EHRs send a data-absent reason or a
#: local note beside a value
PRIMITIVE_EXTENSION = {
    "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
    ]
}


def _primitive_extensions(request: dict[str, Any]) -> int:
    """Every primitive element of every resource gets its ``_element`` extension (values kept)."""
    added = 0
    for _where, res in resources(request):
        for key in [k for k, v in res.items() if isinstance(v, str | int | float | bool)]:
            if key not in ("resourceType", "id"):
                res["_" + key] = copy.deepcopy(PRIMITIVE_EXTENSION)
                added += 1
    return added


REWRITES: dict[str, Callable[[dict[str, Any]], int]] = {
    "entries reversed": _reversed,
    "entries shuffled": _shuffled,
    "every entry sent twice": _twice,
    "drugs in contained Medications": lambda r: _as_medications(r, included=False),
    "drugs in included Medications": lambda r: _as_medications(r, included=True),
    "primitive extensions beside every value": _primitive_extensions,
}


def _variant(name: str, rewrite: str) -> tuple[dict[str, Any], int]:
    variant = copy.deepcopy(REQUESTS[name])
    return variant, REWRITES[rewrite](variant)


# only the pairs where the rewrite changes the request (a request without drugs has none to move)
CASES = [(n, w) for w in REWRITES for n in REQUESTS if _variant(n, w)[1]]


@pytest.mark.parametrize(("name", "rewrite"), CASES)
def test_the_same_record_written_another_way_gives_the_same_cards(name: str, rewrite: str) -> None:
    variant, changed = _variant(name, rewrite)
    assert changed
    assert _run(variant) == _cards_as_sent(name)


def test_each_rewrite_reaches_requests_with_cards() -> None:
    """Every rewrite changes requests whose cards name drugs: it could fail."""
    for rewrite in REWRITES:
        reached = [n for n, w in CASES if w == rewrite and _cards_as_sent(n)]
        assert len(reached) >= 10, rewrite


def _pregnancy_answer(request: dict[str, Any]) -> dict[str, Any]:
    [answer] = [
        e["resource"]["valueCodeableConcept"]
        for e in request["prefetch"]["pregnancyStatus"]["entry"]
        if "valueCodeableConcept" in e["resource"]
    ]
    return answer


def test_an_answer_coded_twice_is_quoted_by_its_name_once() -> None:
    """A pregnancy status answered "Pregnant" in LOINC and in a local code (as EHRs send a local
    code beside the standard one): the card quotes the answer as the record names it. Before,
    every display was joined: 'pregnancy status "Pregnant Pregnant local item"'."""
    request = copy.deepcopy(REQUESTS["v04-pregnancy.json"])
    _pregnancy_answer(request)["coding"].append(
        {"system": "urn:oid:1.2.840.99999.1", "code": "PREG-LOCAL", "display": "local item"}
    )
    assert _run(request) == _cards_as_sent("v04-pregnancy.json")
    assert any('pregnancy status "Pregnant" (' in c.get("detail", "") for c in _run(request))


def test_an_answer_without_text_is_quoted_by_every_display() -> None:
    """The other side: an answer without a text is quoted by each of its displays, once each (a
    local code first, LOINC's second): the first alone could hide what it says. What it says is
    read from every coding, as before (LOINC LA15173-0: pregnant)."""
    request = copy.deepcopy(REQUESTS["v04-pregnancy.json"])
    answer = _pregnancy_answer(request)
    answer.pop("text")
    answer["coding"] = [
        {"system": "urn:oid:1.2.840.99999.1", "code": "P-1", "display": "Pregnancy confirmed"},
        {"system": "urn:oid:1.2.840.99999.1", "code": "P-2", "display": "Pregnancy confirmed"},
        *answer["coding"],
    ]
    cards = _run(request)
    assert cards[0]["indicator"] == "critical"
    assert any('pregnancy status "Pregnancy confirmed / Pregnant" (' in c.get("detail", "") for c in cards)


_DATE = re.compile(r"^(\d{4})(-\d{2}(-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?$")
_YEARS = 16  # a whole number of leap cycles: every day keeps its month, day and leap year
# the dates a card prints from the record, once moved: from 2030 (the rules' own dates, such as a
# source's "2019-12-19", stay)
_CARD_DATE = re.compile(r"\b(20[3-9]\d)-(\d{2})-(\d{2})\b")


def _later(value: Any) -> Any:
    """Every FHIR date or dateTime in ``value`` (the time override included) 16 years on."""
    if isinstance(value, dict):
        return {k: _later(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_later(v) for v in value]
    if isinstance(value, str) and (m := _DATE.match(value)) and 1900 <= int(m.group(1)) <= 2080:
        return f"{int(m.group(1)) + _YEARS}{value[4:]}"
    return value


def _earlier_in_text(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cards with every date they print moved back 16 years."""
    text = json.dumps(cards, ensure_ascii=False)
    back = _CARD_DATE.sub(lambda m: f"{int(m.group(1)) - _YEARS}-{m.group(2)}-{m.group(3)}", text)
    return json.loads(back)  # type: ignore[no-any-return]


TIMED = [n for n in REQUESTS if TIME_EXTENSION in (REQUESTS[n].get("extension") or {})]


@pytest.mark.parametrize("name", TIMED)
def test_the_same_record_16_years_later_gives_the_same_cards(name: str) -> None:
    later = _later(copy.deepcopy(REQUESTS[name]))
    assert later != REQUESTS[name]
    assert _earlier_in_text(_run(later)) == _cards_as_sent(name)


def test_the_time_shift_reaches_most_requests() -> None:
    assert len(TIMED) >= 20
