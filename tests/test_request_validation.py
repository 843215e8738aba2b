"""The request schema's shortcut (cds_service/validation.py, ``request_acceptor``: the schema compiled
to a yes/no check, cds_service/schema_accept.py) gives exactly the full schema's verdict: the same
first error, named by the same field, for every shape tried; it says yes only to what the schema
accepts, and yes to the requests real clients send (else it would save nothing)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from cds_service import validation
from cds_service.errors import ApiError
from cds_service.services import SERVICES
from cds_service.validation import request_acceptor, validate_request

from .conftest import load_example

NOT_OBJECTS: list[Any] = ["a string", 3, 2.5, True, False, [], [{}], None]


def verdict(body: Any) -> tuple[int, str, str] | None:
    """validate_request's answer as (status, field, message), None when it accepts the body."""
    hook = body.get("hook") if isinstance(body, dict) else None
    service = SERVICES.get(hook) if isinstance(hook, str) else None
    try:
        validate_request(body, service or SERVICES["order-sign"])
    except ApiError as exc:
        return (exc.status, exc.field or "", exc.message)
    return None


def full_schema_verdict(body: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str] | None:
    """The same with the full request schema for every body (no shortcut)."""
    with monkeypatch.context() as m:
        m.setattr(validation, "request_acceptor", lambda: lambda _body: False)
        return verdict(body)


def _copy(body: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(body))  # deepcopy of a whole example is 20x slower


def _mutations(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key in list(body.get("prefetch") or {}):
        for value in NOT_OBJECTS:
            b = _copy(body)
            b["prefetch"][key] = value
            out.append(b)
    for value in NOT_OBJECTS:
        b = _copy(body)
        b["prefetch"] = value
        out.append(b)
        b = _copy(body)
        orders = b["context"].setdefault("draftOrders", {"resourceType": "Bundle"})
        orders["entry"] = [{"resource": value}, *orders.get("entry", [])]
        out.append(b)
        b = _copy(body)
        b["context"].setdefault("draftOrders", {"resourceType": "Bundle"})["entry"] = [value]
        out.append(b)
        b = _copy(body)
        b["context"].setdefault("draftOrders", {"resourceType": "Bundle"})["entry"] = value
        out.append(b)
        b = _copy(body)
        b["context"]["draftOrders"] = value
        out.append(b)
        b = _copy(body)
        b["context"] = value
        out.append(b)
    return out


def _random_mutation(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Replace (or drop) one node within the first four levels by a value of another type."""
    b = _copy(body)
    node: Any = b
    for _ in range(rng.randint(1, 4)):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = rng.choice(keys)
        child = node[key]
        if not isinstance(child, dict | list) or rng.random() < 0.3:
            break
        node = child
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if keys:
        key = rng.choice(keys)
        if isinstance(node, dict) and rng.random() < 0.2:
            del node[key]
        else:
            node[key] = rng.choice([*NOT_OBJECTS, {}, {"resourceType": "Bundle"}, "x" * 300])
    return b


# order-sign with one and with several draft orders, missing data, patient-view (no draft orders)
@pytest.mark.parametrize(
    "name", ["v01-clear-trd-eligible", "v07-daily-lorazepam", "v13-missing-data", "v15-patient-view-course"]
)
def test_shortcut_agrees_with_the_full_schema(name, monkeypatch):
    body = load_example(name)
    assert request_acceptor()(body)  # the shortcut is taken for a real request
    rng = random.Random(name)
    cases = [body, *_mutations(body), *(_random_mutation(body, rng) for _ in range(40))]
    for case in cases:
        assert verdict(case) == full_schema_verdict(case, monkeypatch)
    assert sum(not request_acceptor()(c) for c in cases) >= 20  # the full schema's own cases ran


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r["prefetch"].update(patient="a string"), "prefetch.patient"),
        (lambda r: r["prefetch"].update(vitalSigns=[]), "prefetch.vitalSigns"),
        (lambda r: r["context"]["draftOrders"]["entry"].append("x"), "context.draftOrders.entry[1]"),
        (
            lambda r: r["context"]["draftOrders"]["entry"][0].update(resource=None),
            "context.draftOrders.entry[0].resource",
        ),
    ],
)
def test_a_resource_that_is_not_an_object_is_400_naming_it(mutate, field):
    body = load_example("v01-clear-trd-eligible")
    mutate(body)
    assert not request_acceptor()(body)
    with pytest.raises(ApiError) as exc:
        validate_request(body, SERVICES["order-sign"])
    assert exc.value.status == 400 and exc.value.field == field
