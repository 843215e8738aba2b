"""A sweep of issue 8's promise: an element no fact reads never changes a card, whatever it holds.

For every example request and every request captured from the CDS Hooks Sandbox, each resource
(prefetched, the Patient and the draft orders) gets, at once: a key R4B does not define, every
present element no fact reads written in the other shape (an array as one value, one value as an
array) or as content of the wrong type, and absent ones added in the wrong shape. The cards must
be the same as for the request as sent (their ``extension`` aside: it says what was ignored).
``modifierExtension`` is left out: a modifier the service does not understand changes what the
resource means, so such a resource is rightly not read.

Which elements no fact reads comes from the walk's own plan (``element_walk``), so a fact that
starts reading an element takes it out of the sweep by itself. This found that a Patient whose
``id`` was not a string was silently dropped (no age, pregnancy or deceased check, and no word
why): see ``test_a_patient_with_an_unreadable_id_is_still_the_patient``.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cds_service import pipeline
from cds_service.config import Settings
from cds_service.engine.loader import load_ruleset
from cds_service.reading.element_walk import _compiled

from .conftest import EXAMPLES, ROOT, RULES, load_example

sys.path.insert(0, str(ROOT / "bench"))
# the card snapshot's uuid blanking and Sandbox captures; the differential's resource walk
from golden import SANDBOX, SANDBOX_TIME, TIME_EXTENSION, _blank_uuids  # noqa: E402
from mutation_base import resources  # noqa: E402

UNKNOWN_KEY = "zzLocalElement"  # not an element of any R4B resource


@functools.cache
def _rules() -> Any:
    return load_ruleset(RULES)


def _outcome(request: dict[str, Any]) -> pipeline.Outcome:
    settings = Settings(rules_dir=RULES, allow_time_override=True)
    return pipeline.run(copy.deepcopy(request), _rules(), settings)


def _run(request: dict[str, Any]) -> list[dict[str, Any]]:
    return _comparable(_outcome(request).response["cards"])


def _comparable(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cards without their extensions (what was ignored is said there) and uuids (random)."""
    return [_blank_uuids({k: v for k, v in c.items() if k != "extension"}) for c in cards]


def _requests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(EXAMPLES.glob("*.json")):
        yield path.name, load_example(path.stem)
    for path in sorted(SANDBOX.glob("*.json")):
        request = json.loads(path.read_text())
        if "hook" in request:  # not a feedback body
            request["extension"] = {TIME_EXTENSION: SANDBOX_TIME}
            yield f"sandbox/{path.name}", request


REQUESTS = dict(_requests())


@functools.cache
def _cards_as_sent(name: str) -> list[dict[str, Any]]:
    return _run(REQUESTS[name])


def _resources(request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Each resource of the request (prefetch bundles, the Patient, the draft orders)."""
    return (res for _key, res in resources(request))


def _unread(rtype: Any) -> dict[str, bool]:
    """The elements of ``rtype`` no fact reads, each with whether R4B makes it an array."""
    done = _compiled(rtype) if isinstance(rtype, str) else None
    if done is None:  # a type no fact reads at all
        return {}
    return {
        k: many
        for k, many in done.table.actions.items()
        if isinstance(many, bool) and k != "modifierExtension"
    }


def _flipped(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else {}
    return [value]


def _wrong_type(many: bool) -> Any:
    return [{"zz": 1}, 7, None] if many else {"zz": [True, 1e308, "x"]}


def _wrong_shape(many: bool) -> Any:
    return {"id": "x"} if many else [{"id": "x"}]


MUTATIONS: dict[str, Callable[[dict[str, Any], dict[str, bool]], None]] = {
    "present unread elements in the other shape": lambda r, unread: r.update(
        {k: _flipped(v) for k, v in r.items() if k in unread}
    ),
    "present unread elements of the wrong type": lambda r, unread: r.update(
        {k: _wrong_type(unread[k]) for k in r if k in unread}
    ),
    "absent unread elements added in the wrong shape": lambda r, unread: r.update(
        {k: _wrong_shape(many) for k, many in unread.items() if k not in r}
    ),
    "an unknown key": lambda r, unread: r.update({UNKNOWN_KEY: {"a": [1, {"b": None}]}}),
}


def _mutated(request: dict[str, Any], mutation: str) -> tuple[dict[str, Any], int]:
    variant = copy.deepcopy(request)
    changed = 0
    for res in _resources(variant):
        unread = _unread(res.get("resourceType"))
        if unread:
            before = dict(res)
            MUTATIONS[mutation](res, unread)
            changed += res != before
    return variant, changed


@pytest.mark.parametrize("mutation", list(MUTATIONS))
@pytest.mark.parametrize("name", list(REQUESTS))
def test_unread_elements_never_change_a_card(name: str, mutation: str) -> None:
    request = REQUESTS[name]
    variant, changed = _mutated(request, mutation)
    assert changed, "the sweep changed nothing: it would prove nothing"
    assert _run(variant) == _cards_as_sent(name)


def test_the_sweep_reaches_every_kind_of_resource_the_examples_hold() -> None:
    """Every resource type in the requests that facts read has elements in the sweep."""
    kinds = {res.get("resourceType") for r in REQUESTS.values() for res in _resources(r)}
    read = {k for k in kinds if _compiled(k) is not None}
    assert {"Patient", "MedicationRequest", "Observation", "Condition"} <= read
    assert all(_unread(k) for k in read)


@pytest.mark.parametrize("bad_id", [["v01"], {"value": "v01"}, 17, True, ""])
def test_a_patient_with_an_unreadable_id_is_still_the_patient(bad_id: Any) -> None:
    """The prefetched Patient whose ``id`` is not a FHIR id is no one else's either: it is read
    as a Patient without an id (as one sent with none), and the id is reported as ignored.
    Before, it was dropped without a word: "date of birth" asked for although it was sent."""
    request = load_example("v01-clear-trd-eligible")
    expected = _run(request)
    request["prefetch"]["patient"]["id"] = bad_id
    out = _outcome(request)
    assert _comparable(out.response["cards"]) == expected
    ignored = out.response["extension"][pipeline.IGNORED_EXTENSION]
    assert {"resourceType": "Patient", "element": "id"}.items() <= ignored[0].items()
    assert "v01" not in json.dumps(ignored)  # never the value


def test_a_patient_of_another_id_is_left_out_and_said() -> None:
    """The other side: a readable id naming another patient is not this patient's record. It is
    left out (its date of birth is not this patient's) and the card on entries not read says
    why, without that patient's id: before, only "date of birth missing" showed, for a date of
    birth that had been sent."""
    request = load_example("v01-clear-trd-eligible")
    request["prefetch"]["patient"]["id"] = "someone-else"
    cards = _run(request)
    assert any("date of birth" in c["summary"] for c in cards)
    left_out = [c for c in cards if "could not be read" in c["summary"]]
    assert len(left_out) == 1 and "(Patient)" in left_out[0]["summary"]
    assert "another patient" in left_out[0]["detail"]
    assert "someone-else" not in json.dumps(_outcome(request).response)


def test_a_condition_whose_clinical_status_codings_are_no_list_is_no_500() -> None:
    """``clinicalStatus.coding`` written as a number: the Condition's clinical status cannot be
    read (said), and asking whether it is current no longer crashes the call (a 500, found by a
    sweep of wrong types over every element)."""
    request = load_example("v01-clear-trd-eligible")
    condition = request["prefetch"]["conditions"]["entry"][0]["resource"]
    condition["clinicalStatus"] = {"coding": 17}
    cards = _run(request)
    assert any("could not be read" in c["summary"] or "not read in full" in c["summary"] for c in cards)
