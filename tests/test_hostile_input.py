"""Hostile and malformed input against the HTTP service.

Whatever a client sends, the service must answer with one of 200, 400, 404, 412, 413 or 415, never a
5xx and never after a long wait: every 4xx is a JSON object with ``error`` (and ``field`` for a
400), every body is strict JSON (no ``NaN``/``Infinity``), and every 200 from a service call
validates against ``cds_service/schemas/response.schema.json``.

The property-based tests start from the real requests in ``fhir_examples/`` and mutate them: keys
dropped or replaced at random paths, wrong JSON types, 1 MB strings, deep nesting, unicode and
control characters, numbers where strings belong, and invalid FHIR inside prefetch. No FHIR server
is reachable (``fhirServer`` is absent or refuses connections at once), so a prefetch key that is
missing is a fast 412. Hypothesis draws only small descriptors (paths, kinds, sizes), which are
turned into the large values when a request is built, so a failure report stays readable.

The deterministic tests below pin down the limits (413, depth, 5 MB values) and what happens to
malformed resources: skipped, reported in the ``data-unreadable-resources`` card, never a 500.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import date
from functools import cache
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from cds_service import pipeline
from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.engine.loader import load_ruleset
from cds_service.validation import MAX_DEPTH

from .conftest import RULES, CheckedClient, assert_conformant, example_names, load_example, make_settings
from .support.fault_fhir import refused_url

ALLOWED = {200, 400, 404, 412, 413, 415}
TIME_LIMIT = 5.0  # seconds per call; nothing here needs the network, so this is generous
SERVICES = ("patient-view", "order-select", "order-sign")
NAMES = example_names()
ORDER_SIGN = [n for n in NAMES if load_example(n)["hook"] == "order-sign"]
# No example database (nothing written into the checkout) and no "explain" phase: it re-runs a
# failing example many times to annotate it, which costs more than the whole search.
HYPOTHESIS = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
UNREADABLE = "data-unreadable-resources"
REFUSED = refused_url("/fhir")  # connecting there fails at once (ECONNREFUSED)


# -- the app under test --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hclient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    """One app for the whole module (hypothesis runs many examples against it)."""
    app = create_app(make_settings(tmp_path_factory.mktemp("hostile")))
    app.test_client_class = CheckedClient
    with app.test_client() as c:
        yield c
    app.extensions["ketamine_cds"].store.close()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def check(resp: Any, elapsed: float, *, service_call: bool = True) -> Any:
    """The properties every answer must have; returns the parsed body."""
    assert elapsed < TIME_LIMIT, f"the call took {elapsed:.2f} s"
    assert resp.status_code in ALLOWED, (resp.status_code, resp.data[:1000])
    assert resp.mimetype == "application/json", resp.mimetype
    body = json.loads(resp.data, parse_constant=_reject_constant)
    if resp.status_code >= 400:
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), str) and body["error"], body
        if resp.status_code == 400:
            assert isinstance(body.get("field"), str) and body["field"], body
    elif service_call:
        assert_conformant(body)
    return body


def send(
    client: FlaskClient,
    path: str,
    data: bytes | str,
    content_type: str = "application/json",
    *,
    service_call: bool = True,
) -> tuple[Any, Any]:
    """POST, time it, check the properties; returns (response, parsed body)."""
    t0 = time.perf_counter()
    resp = client.post(path, data=data, content_type=content_type)
    elapsed = time.perf_counter() - t0
    return resp, check(resp, elapsed, service_call=service_call)


def dumps(body: Any) -> str:
    """Serialise as a hostile client might: NaN/Infinity tokens and lone surrogates included."""
    return json.dumps(body, allow_nan=True)


def is_strict_json(raw: str) -> bool:
    """False when the text is not RFC 8259 JSON as the service reads it (orjson): NaN/Infinity,
    numbers beyond a double, lone surrogates (the service answers 400)."""
    try:
        orjson.loads(raw.encode("utf-8", "surrogatepass"))
    except orjson.JSONDecodeError:
        return False
    return True


def post_body(client: FlaskClient, body: Any, service: str | None = None) -> tuple[Any, Any]:
    if service is None:
        hook = body.get("hook") if isinstance(body, dict) else None
        service = hook if hook in SERVICES else "order-sign"
    return send(client, f"/cds-services/{service}", dumps(body))


# -- base requests -----------------------------------------------------------------------------------
@cache
def _example(name: str) -> str:
    return json.dumps(load_example(name))


def example(name: str) -> dict[str, Any]:
    return json.loads(_example(name))


def as_order_select(body: dict[str, Any]) -> dict[str, Any]:
    body["hook"] = "order-select"
    entries = body["context"]["draftOrders"]["entry"]
    body["context"]["selections"] = [
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries
    ]
    return body


def draw_base(data: st.DataObject) -> dict[str, Any]:
    """A real example request; only its name is drawn, so a failure report stays short."""
    name = data.draw(st.sampled_from(NAMES), label="example")
    body = example(name)
    body.pop("fhirServer", None)
    if body["hook"] == "order-sign" and data.draw(st.booleans(), label="as order-select"):
        as_order_select(body)
    return body


# -- value strategies ----------------------------------------------------------------------------------
NUMBERS = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 0.5, 1e308, -1e308, 5e-324, 2**63, 2**64, 10**400, -(10**400)]),
)
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\x00\x01\x02\x1b[31m\x7f",
    "\ud800",
    "\udfff\ud800",
    "\u202eevil",
    "\ufeff",
    "\u2028\u2029\u0085",
    "𝕂𝔼𝕋𝔸𝕄𝕀ℕ𝔼",
    "ketamine\x00",
    "{{context.patientId}}",
    "{% for x in range(10**9) %}{% endfor %}",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "Bearer x.y.z",
    "null",
    "NaN",
]
TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(ODD_STRINGS),
    st.text(st.characters(max_codepoint=0x1F), max_size=8),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
RESOURCE_TYPES = [
    "Patient",
    "Condition",
    "Observation",
    "MedicationRequest",
    "MedicationStatement",
    "MedicationDispense",
    "MedicationAdministration",
    "Procedure",
    "Bundle",
    "OperationOutcome",
    "Binary",
    "NotAType",
    "",
]
FHIRISH = st.fixed_dictionaries(
    {"resourceType": st.one_of(st.sampled_from(RESOURCE_TYPES), SCALARS)},
    optional={
        "id": st.one_of(st.text(max_size=20), SCALARS),
        "status": st.one_of(st.sampled_from(["active", "final", "draft", "completed"]), SCALARS),
        "code": JSON,
        "subject": JSON,
        "entry": JSON,
        "valueQuantity": JSON,
        "medicationCodeableConcept": JSON,
    },
)
ANY_VALUE = st.one_of(JSON, FHIRISH)
# for a slot FHIR defines as a list (entry, link, coding, component): mostly the wrong type
LIST_SLOT = st.one_of(NUMBERS, st.booleans(), TEXT, ANY_VALUE)
BAD_DATES = st.one_of(
    st.sampled_from(
        [
            "",
            "yesterday",
            "last spring",
            "2024-13-45",
            "2024-02-30",
            "0000-00-00",
            "0001-01-01",
            "9999-12-31",
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59+14:00",
            "0001-01-01T00:00:00-14:00",
            "2024-01-01T25:61:61Z",
            "2024",
            "20240101",
            "2024-1-1",
            "2026-05-04T09:00:00",
            "2026-05-04T09:00:00.123456789Z",
            "+002024-01-01",
            "2024-05-04\x00",
        ]
    ),
    st.dates().map(date.isoformat),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    NUMBERS,
    TEXT,
)
DATE_FIELDS = [
    "effectiveDateTime",
    "issued",
    "birthDate",
    "onsetDateTime",
    "abatementDateTime",
    "recordedDate",
    "authoredOn",
    "whenHandedOver",
    "performedDateTime",
]
HUGE = 1_000_000


def nest(depth: int, kind: str, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if kind == "list" or (kind == "mixed" and i % 2) else {"k": value}
    return value


# -- paths into a document -----------------------------------------------------------------------------
JsonPath = tuple[Any, ...]


def all_paths(doc: Any, prefix: JsonPath = ()) -> list[JsonPath]:
    out: list[JsonPath] = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        p = (*prefix, k)
        out.append(p)
        out.extend(all_paths(v, p))
    return out


def get_at(doc: Any, path: JsonPath) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def set_at(doc: Any, path: JsonPath, value: Any) -> Any:
    if not path:
        return value
    get_at(doc, path[:-1])[path[-1]] = value
    return doc


def drop_at(doc: Any, path: JsonPath) -> Any:
    parent = get_at(doc, path[:-1])
    del parent[path[-1]]
    return doc


def resource_paths(body: dict[str, Any]) -> list[JsonPath]:
    """Paths of every FHIR resource object in prefetch and draftOrders (whatever else is there)."""
    out: list[JsonPath] = []

    def entries_of(bundle: Any) -> list[Any]:
        entries = bundle.get("entry") if isinstance(bundle, dict) else None
        return entries if isinstance(entries, list) else []

    prefetch = body.get("prefetch") if isinstance(body.get("prefetch"), dict) else {}
    for key, value in prefetch.items():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            for i, e in enumerate(entries_of(value)):
                if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                    out.append(("prefetch", key, "entry", i, "resource"))
        elif isinstance(value, dict):
            out.append(("prefetch", key))
    context = body.get("context") if isinstance(body.get("context"), dict) else {}
    for i, e in enumerate(entries_of(context.get("draftOrders"))):
        if isinstance(e, dict) and isinstance(e.get("resource"), dict):
            out.append(("context", "draftOrders", "entry", i, "resource"))
    return out


# -- mutations -----------------------------------------------------------------------------------------
def generic_mutation(data: st.DataObject, body: Any) -> Any:
    """One mutation at a random path; the drawn arguments are small, the built values may be huge."""
    paths = all_paths(body)
    shallow = [p for p in paths if len(p) <= 3]
    pool = data.draw(st.sampled_from(["shallow", "any"]), label="path pool")
    path = data.draw(st.sampled_from((shallow if pool == "shallow" else paths) or [()]), label="path")
    op = data.draw(st.sampled_from(["drop", "replace", "huge", "nest", "weird", "number"]), label="op")
    event(f"op: {op}")
    if op == "drop" and path:
        return drop_at(body, path)
    if op == "huge":
        char = data.draw(st.sampled_from(["a", "é", "\x00", "\ud800", "𝕂", '"', "\\"]), label="huge char")
        note(f"{char!r} * {HUGE} at {path}")
        return set_at(body, path, char * HUGE)
    if op == "nest":
        depth = data.draw(st.integers(1, 3 * MAX_DEPTH), label="nesting depth")
        kind = data.draw(st.sampled_from(["list", "dict", "mixed"]), label="nesting kind")
        return set_at(body, path, nest(depth, kind))
    if op == "weird":
        return set_at(body, path, data.draw(TEXT, label="text"))
    if op == "number":
        strings = [p for p in paths if isinstance(get_at(body, p), str)]
        if strings:
            path = data.draw(st.sampled_from(strings), label="string path")
        return set_at(body, path, data.draw(NUMBERS, label="number"))
    return set_at(body, path, data.draw(ANY_VALUE, label="value"))


def fhir_mutation(data: st.DataObject, body: dict[str, Any]) -> dict[str, Any]:
    """Invalid FHIR inside prefetch (and draftOrders), of the kinds EHRs really send."""
    prefetch = body.setdefault("prefetch", {})
    keys = sorted(prefetch)
    resources = resource_paths(body)
    op = data.draw(
        st.sampled_from(
            [
                "wrong-type",
                "value-quantity",
                "bad-date",
                "entries",
                "bundle-fields",
                "operation-outcome",
                "codeable-concept",
                "field",
            ]
        ),
        label="fhir op",
    )
    event(f"fhir op: {op}")
    if op == "wrong-type" and keys and resources:
        key = data.draw(st.sampled_from(keys), label="key")
        source = copy.deepcopy(get_at(body, data.draw(st.sampled_from(resources), label="resource")))
        shape = data.draw(st.sampled_from(["single", "bundle", "appended"]), label="shape")
        if shape == "single":
            prefetch[key] = source
        elif shape == "bundle":
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": source}]}
        elif isinstance(prefetch[key], dict) and isinstance(prefetch[key].get("entry"), list):
            prefetch[key]["entry"].append({"resource": source})
    elif op == "value-quantity":
        observations = [p for p in resources if get_at(body, p).get("resourceType") == "Observation"]
        if observations:
            obs = get_at(body, data.draw(st.sampled_from(observations), label="observation"))
            where = data.draw(st.sampled_from(["valueQuantity", "value", "unit", "code", "component"]))
            value = data.draw(LIST_SLOT if where == "component" else ANY_VALUE, label="value")
            if where in ("valueQuantity", "component"):
                obs[where] = value
            else:
                vq = obs.get("valueQuantity")
                obs["valueQuantity"] = {**(vq if isinstance(vq, dict) else {}), where: value}
    elif op == "bad-date" and resources:
        res = get_at(body, data.draw(st.sampled_from(resources), label="resource"))
        res[data.draw(st.sampled_from(DATE_FIELDS), label="date field")] = data.draw(BAD_DATES, label="date")
    elif op == "entries" and keys:
        key = data.draw(st.sampled_from(keys), label="key")
        entries = data.draw(st.lists(st.one_of(SCALARS, JSON, st.just({"resource": None})), max_size=5))
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    elif op == "bundle-fields" and keys:
        key = data.draw(st.sampled_from(keys), label="key")
        field = data.draw(st.sampled_from(["entry", "link", "total", "type", "resourceType"]), label="field")
        bundle = prefetch[key] if isinstance(prefetch[key], dict) else {"resourceType": "Bundle"}
        bundle[field] = data.draw(LIST_SLOT, label="value")
        prefetch[key] = bundle
    elif op == "operation-outcome" and keys:
        key = data.draw(st.sampled_from(keys), label="key")
        prefetch[key] = {
            "resourceType": "OperationOutcome",
            "issue": data.draw(st.one_of(JSON, st.just([{"severity": "error", "code": "exception"}]))),
        }
        if data.draw(st.booleans(), label="refusing fhirServer"):
            body["fhirServer"] = REFUSED
    elif op == "codeable-concept" and resources:
        res = get_at(body, data.draw(st.sampled_from(resources), label="resource"))
        field = data.draw(
            st.sampled_from(["code", "medicationCodeableConcept", "category", "clinicalStatus"])
        )
        concept = res.get(field) if isinstance(res.get(field), dict) else {}
        part = data.draw(st.sampled_from(["whole", "coding", "text", "coding item"]), label="part")
        value = data.draw(LIST_SLOT if part == "coding" else ANY_VALUE, label="value")
        if part == "whole":
            res[field] = value
        elif part == "coding item":
            res[field] = {**concept, "coding": [value]}
        else:
            res[field] = {**concept, part: value}
    elif op == "field" and resources:
        res = get_at(body, data.draw(st.sampled_from(resources), label="resource"))
        paths = all_paths(res) or [()]
        path = data.draw(st.sampled_from(paths), label="path in resource")
        if path:
            set_at(res, path, data.draw(ANY_VALUE, label="value"))
    return body


def context_mutation(data: st.DataObject, body: dict[str, Any]) -> dict[str, Any]:
    """Random draftOrders contents, selections and extensions."""
    context = body.setdefault("context", {})
    op = data.draw(st.sampled_from(["draftOrders", "draft entry", "selections", "extension", "time"]))
    if op == "draftOrders":
        entries = data.draw(
            st.lists(st.fixed_dictionaries({}, optional={"resource": FHIRISH, "fullUrl": TEXT}), max_size=4)
        )
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    elif op == "draft entry":
        drafts = context.get("draftOrders") or {}
        entries = drafts.get("entry") if isinstance(drafts, dict) else None
        if entries and isinstance(entries[0], dict) and isinstance(entries[0].get("resource"), dict):
            res = entries[0]["resource"]
            paths = all_paths(res) or [()]
            path = data.draw(st.sampled_from(paths), label="path in draft order")
            if path:
                set_at(res, path, data.draw(ANY_VALUE, label="value"))
    elif op == "selections":
        context["selections"] = data.draw(
            st.one_of(
                st.lists(TEXT, max_size=5),
                st.lists(st.sampled_from(["MedicationRequest/v01-order-1", "MedicationRequest/", "/"])),
                JSON,
            ),
            label="selections",
        )
    elif op == "extension":
        body["extension"] = data.draw(
            st.one_of(st.dictionaries(TEXT, ANY_VALUE, max_size=4), ANY_VALUE), label="extension"
        )
    else:
        ext = body.get("extension") if isinstance(body.get("extension"), dict) else {}
        body["extension"] = {**ext, pipeline.TIME_EXTENSION: data.draw(BAD_DATES, label="evaluation time")}
    return body


# -- property-based tests ------------------------------------------------------------------------------
@settings(HYPOTHESIS, max_examples=150)
@given(data=st.data())
def test_mutated_example_requests(hclient: FlaskClient, data: st.DataObject) -> None:
    body: Any = draw_base(data)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        body = generic_mutation(data, body)
    resp, _ = post_body(hclient, body)
    event(f"status {resp.status_code}")


@settings(HYPOTHESIS, max_examples=250)
@given(data=st.data())
def test_invalid_fhir_inside_prefetch(hclient: FlaskClient, data: st.DataObject) -> None:
    body = draw_base(data)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        body = fhir_mutation(data, body)
    resp, out = post_body(hclient, body)
    event(f"status {resp.status_code}")
    if not is_strict_json(dumps(body)):
        assert resp.status_code == 400 and out["field"] == "(body)", out
        return
    assert resp.status_code in (200, 412), out  # the request itself is well formed


@settings(HYPOTHESIS, max_examples=100)
@given(data=st.data())
def test_random_draft_orders_selections_and_extensions(hclient: FlaskClient, data: st.DataObject) -> None:
    body = draw_base(data)
    for _ in range(data.draw(st.integers(1, 2), label="mutations")):
        body = context_mutation(data, body)
    resp, _ = post_body(hclient, body)
    event(f"status {resp.status_code}")


@settings(HYPOTHESIS, max_examples=60)
@given(
    name=st.sampled_from(NAMES),
    service=st.one_of(st.sampled_from(SERVICES), st.text(min_size=1, max_size=40)),
    hook=st.one_of(st.sampled_from(SERVICES), st.text(max_size=120), SCALARS),
    feedback=st.booleans(),
)
def test_random_hook_names_and_service_ids(
    hclient: FlaskClient, name: str, service: str, hook: Any, feedback: bool
) -> None:
    body = example(name)
    body["hook"] = hook
    path = "/cds-services/" + quote(service.replace("/", "_"), safe="")
    if feedback:
        path += "/feedback"
    resp, out = send(hclient, path, dumps(body), service_call=not feedback)
    if service not in SERVICES:
        assert resp.status_code == 404, out
    elif not is_strict_json(dumps(body)):
        assert resp.status_code == 400 and out["field"] == "(body)", out
    elif not feedback and hook != service:
        assert resp.status_code == 400 and out["field"] == "hook", out


@settings(HYPOTHESIS, max_examples=60)
@given(
    content_type=st.one_of(
        st.sampled_from(
            [
                "application/json",
                "application/json; charset=utf-8",
                "application/fhir+json",
                "application/json; charset=utf-16",
                "APPLICATION/JSON",
                "text/json",
                "text/plain",
                "text/html",
                "application/xml",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/octet-stream",
                "application/",
                "json",
                "*/*",
                "",
            ]
        ),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
    ),
    endpoint=st.sampled_from(["/cds-services/order-sign", "/cds-services/order-sign/feedback"]),
)
def test_random_content_types(hclient: FlaskClient, content_type: str, endpoint: str) -> None:
    body = example("v01-clear-trd-eligible") if "feedback" not in endpoint else {"feedback": []}
    resp, out = send(hclient, endpoint, dumps(body), content_type, service_call="feedback" not in endpoint)
    mimetype = resp.request.mimetype
    if mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json")):
        assert resp.status_code != 415, out
    else:
        assert resp.status_code == 415 and out["field"] == "Content-Type", out


@settings(HYPOTHESIS, max_examples=80)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda v: dumps(v).encode()),
        st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.sampled_from([b"", b"{", b"}", b"[]", b"null", b"NaN", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00"]),
    ),
    endpoint=st.sampled_from(
        ["/cds-services/" + s for s in SERVICES] + ["/cds-services/order-sign/feedback"]
    ),
)
def test_random_bodies(hclient: FlaskClient, raw: bytes, endpoint: str) -> None:
    resp, out = send(hclient, endpoint, raw, service_call="feedback" not in endpoint)
    assert resp.status_code == 400, out  # none of these is a valid request


FEEDBACK_ITEM = st.fixed_dictionaries(
    {
        "card": st.one_of(st.uuids().map(str), TEXT, SCALARS),
        "outcome": st.one_of(st.sampled_from(["accepted", "overridden"]), TEXT),
        "outcomeTimestamp": st.one_of(BAD_DATES, st.just("2026-05-04T10:00:00Z")),
    },
    optional={
        "acceptedSuggestions": st.one_of(st.lists(st.fixed_dictionaries({"id": TEXT}), max_size=3), JSON),
        "overrideReason": st.one_of(
            st.fixed_dictionaries(
                {"reason": st.fixed_dictionaries({"code": TEXT, "system": TEXT})},
                optional={"userComment": TEXT},
            ),
            JSON,
        ),
    },
)


@settings(HYPOTHESIS, max_examples=60)
@given(body=st.one_of(st.fixed_dictionaries({"feedback": st.lists(FEEDBACK_ITEM, max_size=4)}), JSON))
def test_random_feedback(hclient: FlaskClient, body: Any) -> None:
    resp, out = send(hclient, "/cds-services/order-sign/feedback", dumps(body), service_call=False)
    assert resp.status_code in (200, 400), out
    if resp.status_code == 200:
        assert isinstance(out.get("stored"), int)


def true_depth(value: Any) -> int:
    """Levels of containers that hold a value, as validation counts them ({"a": 1} is 1)."""
    if isinstance(value, dict):
        return 1 + max((true_depth(v) for v in value.values()), default=-1)
    if isinstance(value, list):
        return 1 + max((true_depth(v) for v in value), default=-1)
    return 0


@settings(HYPOTHESIS, max_examples=40)
@given(
    depth=st.integers(MAX_DEPTH - 12, MAX_DEPTH + 12) | st.integers(1, 600),
    kind=st.sampled_from(["list", "dict", "mixed"]),
    where=st.sampled_from(["extension", "context", "prefetch resource", "draft order"]),
)
def test_nesting_around_the_depth_limit(hclient: FlaskClient, depth: int, kind: str, where: str) -> None:
    """Below the limit the nesting is harmless (200); above it the body is refused (400)."""
    body = example("v02-one-failed-trial")
    value = nest(depth, kind)
    if where == "extension":
        body["extension"]["deep"] = value
    elif where == "context":
        body["context"]["deep"] = value
    elif where == "prefetch resource":
        body["prefetch"]["conditions"]["entry"][0]["resource"]["extension"] = value
    else:
        body["context"]["draftOrders"]["entry"][0]["resource"]["extension"] = value
    levels = true_depth(body)
    resp, out = post_body(hclient, body)
    note(f"body nesting {levels}")
    if levels > MAX_DEPTH:
        assert resp.status_code == 400 and out["field"] == "(body)", (levels, resp.status_code, out)
    else:
        assert resp.status_code == 200, (levels, out)


# -- limits ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["/cds-services/order-sign", "/cds-services/order-sign/feedback"])
def test_body_over_the_limit_is_413(tmp_path: Any, endpoint: str) -> None:
    app = create_app(make_settings(tmp_path, max_body_bytes=10_000))
    app.test_client_class = CheckedClient
    try:
        with app.test_client() as c:
            resp, out = send(c, endpoint, dumps(example("v01-clear-trd-eligible")), service_call=False)
            assert resp.status_code == 413
            assert "10000" in out["error"] and out["field"] == "(body)"
            # exactly at the limit the body is read (and is then just not a valid request)
            resp, out = send(c, endpoint, b"[" + b" " * 9_998 + b"]", service_call=False)
            assert resp.status_code == 400, out
    finally:
        app.extensions["ketamine_cds"].store.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"{",
        b'{"hook": "order-sign",}',
        b"\xff\xfe\xfd",
        b'{"hook": "\xff"}',
        b"{'hook': 'order-sign'}",
        b'{"a": 1} trailing',
        b"\x00",
    ],
)
def test_malformed_json_is_400(hclient: FlaskClient, raw: bytes) -> None:
    resp, out = send(hclient, "/cds-services/order-sign", raw)
    assert resp.status_code == 400 and out["field"] == "(body)", out


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"hook":"order-sign","context":' + b'{"x":[' * 50_000 + b"]}" * 50_000 + b"}",
        b"[" * 100_000,  # deep and unterminated
    ],
    ids=["arrays", "objects", "mixed-inside-context", "unterminated"],
)
def test_100k_deep_nesting_is_400_fast(hclient: FlaskClient, raw: bytes) -> None:
    resp, out = send(hclient, "/cds-services/order-sign", raw)
    assert resp.status_code == 400 and out["field"] == "(body)", out


def test_nesting_at_the_limit_is_accepted_and_one_more_level_refused(hclient: FlaskClient) -> None:
    body = example("v02-one-failed-trial")
    base = true_depth(body)
    assert base < MAX_DEPTH
    # the body is level 1 and extension level 2, so d nested lists under it reach level 2 + d
    body["extension"]["deep"] = nest(MAX_DEPTH - 2, "list")
    assert true_depth(body) == MAX_DEPTH
    resp, out = post_body(hclient, body)
    assert resp.status_code == 200, out
    body["extension"]["deep"] = nest(MAX_DEPTH - 1, "list")
    assert true_depth(body) == MAX_DEPTH + 1
    resp, out = post_body(hclient, body)
    assert resp.status_code == 400 and out["field"] == "(body)", (
        f"a body nested {MAX_DEPTH + 1} levels deep was accepted: {resp.status_code}"
    )


def test_5mb_string_values_in_context(hclient: FlaskClient) -> None:
    five_mb = "x" * 5_000_000
    body = example("v01-clear-trd-eligible")
    body["context"]["patientId"] = five_mb
    resp, out = post_body(hclient, body)
    assert resp.status_code == 400 and out["field"] == "context.patientId"
    assert len(resp.data) < 2000, "the error does not echo the value"

    body = example("v01-clear-trd-eligible")
    body["context"]["userId"] = "Practitioner/" + five_mb
    resp, out = post_body(hclient, body)
    assert resp.status_code == 400 and out["field"] == "context.userId"
    assert len(resp.data) < 2000

    body = example("v01-clear-trd-eligible")
    body["context"]["clinicianNote"] = five_mb  # a context field no hook defines: ignored
    resp, _ = post_body(hclient, body)
    assert resp.status_code == 200

    body = example("v01-clear-trd-eligible")
    body["context"]["draftOrders"]["entry"][0]["resource"]["note"] = [{"text": five_mb}]
    resp, out = post_body(hclient, body)
    assert resp.status_code == 200
    assert len(resp.data) < 1_000_000, "the order's note is not copied into the cards"


def test_unknown_hook_and_unknown_service(hclient: FlaskClient) -> None:
    body = example("v01-clear-trd-eligible")
    body["hook"] = "medication-prescribe"
    resp, out = post_body(hclient, body, "order-sign")
    assert resp.status_code == 400 and out["field"] == "hook"
    resp, out = post_body(hclient, body, "medication-prescribe")
    assert resp.status_code == 404 and out["field"] == "service"
    resp, out = send(hclient, "/cds-services/medication-prescribe/feedback", "{}", service_call=False)
    assert resp.status_code == 404


def test_missing_prefetch_key_without_fhir_server_is_412_fast(hclient: FlaskClient) -> None:
    body = example("v01-clear-trd-eligible")
    del body["prefetch"]["vitalSigns"]
    resp, out = post_body(hclient, body)
    assert resp.status_code == 412 and out["missing"] == ["vitalSigns"]
    body["fhirServer"] = REFUSED
    resp, out = post_body(hclient, body)
    assert resp.status_code == 412 and out["missing"] == ["vitalSigns"]


@pytest.mark.parametrize("with_server", [False, True])
def test_operation_outcome_prefetch_is_412_when_it_cannot_be_fetched(
    hclient: FlaskClient, with_server: bool
) -> None:
    body = example("v01-clear-trd-eligible")
    body["prefetch"]["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "forbidden"}],
    }
    if with_server:
        body["fhirServer"] = REFUSED
    resp, out = post_body(hclient, body)
    assert resp.status_code == 412 and out["missing"] == ["conditions"], out


def test_unicode_and_control_characters_in_strings(hclient: FlaskClient) -> None:
    for text in ODD_STRINGS:
        body = example("v01-clear-trd-eligible")
        draft = body["context"]["draftOrders"]["entry"][0]["resource"]
        draft["medicationCodeableConcept"]["text"] = text
        draft["dosageInstruction"][0]["text"] = text
        body["prefetch"]["conditions"]["entry"][0]["resource"]["code"]["text"] = text
        body["prefetch"]["patient"]["name"] = [{"text": text}]
        resp, out = post_body(hclient, body)
        if not is_strict_json(dumps(body)):  # a lone surrogate is not valid Unicode text
            assert resp.status_code == 400 and out["field"] == "(body)", text
            continue
        assert resp.status_code == 200, text
        body["context"]["patientId"] = text
        resp, out = post_body(hclient, body)
        if re.fullmatch(r"[A-Za-z0-9.-]{1,64}", text):
            assert resp.status_code == 200, text
        else:
            assert resp.status_code == 400 and out["field"] == "context.patientId", text


# -- malformed resources: skipped and reported ---------------------------------------------------------
def cards_by_topic(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["source"]["topic"]["code"]: c for c in out["cards"]}


def weight_observation(body: dict[str, Any]) -> dict[str, Any]:
    """The body-weight Observation (LOINC 29463-7) of an example."""
    for e in body["prefetch"]["vitalSigns"]["entry"]:
        if any(c.get("code") == "29463-7" for c in e["resource"]["code"]["coding"]):
            return e["resource"]
    raise AssertionError("no weight Observation")


@cache
def _ruleset() -> Any:
    return load_ruleset(RULES)


def explain(body: dict[str, Any]) -> pipeline.Outcome:
    """The in-process evaluation of the same request (what `ketamine-cds explain` runs)."""
    settings = Settings(rules_dir=RULES, allow_time_override=True)
    return pipeline.run(body, _ruleset(), settings, request_id="hostile-input-explain")


def test_wrong_resource_type_in_a_prefetch_key_is_skipped_and_reported(hclient: FlaskClient) -> None:
    body = example("v02-one-failed-trial")
    weight = copy.deepcopy(weight_observation(body))
    body["prefetch"]["patient"] = weight  # an Observation where the Patient belongs
    resp, out = post_body(hclient, body)
    assert resp.status_code == 200
    cards = cards_by_topic(out)
    assert UNREADABLE in cards, list(cards)
    assert "expected Patient, got Observation" in cards[UNREADABLE]["detail"]
    assert "data-gaps" in cards, "without a Patient the age check cannot run"
    problems = explain(body).evaluation.facts.record.problems
    assert [(p.where, p.resource) for p in problems] == [("patient", f"Observation/{weight['id']}")]


def test_wrong_resource_type_inside_a_bundle_is_skipped_and_reported(hclient: FlaskClient) -> None:
    body = example("v02-one-failed-trial")
    weight = copy.deepcopy(weight_observation(body))
    body["prefetch"]["conditions"]["entry"].append({"resource": weight})
    resp, out = post_body(hclient, body)
    assert resp.status_code == 200
    cards = cards_by_topic(out)
    assert "expected Condition, got Observation" in cards[UNREADABLE]["detail"]
    assert "trd-not-established" in cards, "the readable Conditions are still used"


def test_malformed_weight_observation_is_skipped_and_reported(hclient: FlaskClient) -> None:
    """v02 orders IV ketamine dosed by weight: a weight with an unreadable date must show up."""
    body = example("v02-one-failed-trial")
    weight = weight_observation(body)
    weight["effectiveDateTime"] = "the day before yesterday"
    resp, out = post_body(hclient, body)
    assert resp.status_code == 200
    cards = cards_by_topic(out)
    assert UNREADABLE in cards, list(cards)
    detail = cards[UNREADABLE]["detail"]
    # the entry by type and prefetch key (the explanation's evidence has its reference), never its id
    assert "Observation, from vitalSigns: not read: effectiveDateTime" in detail, detail
    assert weight["id"] not in cards[UNREADABLE]["summary"] + detail
    assert "data-gaps" in cards, "the dose check lacks a usable weight"
    problems = explain(body).evaluation.facts.record.problems
    assert [p.resource for p in problems] == [f"Observation/{weight['id']}"]


@pytest.mark.parametrize(
    "value_quantity",
    [
        {"value": "seventy", "unit": "kg"},
        {"value": [80], "unit": "kg"},
        {"value": {"kg": 80}},
        {"value": True, "unit": "kg"},
        {"value": 80, "unit": 7},
        "80 kg",
        [{"value": 80}],
    ],
)
def test_wrong_types_in_observation_value_quantity_are_skipped_and_reported(
    hclient: FlaskClient, value_quantity: Any
) -> None:
    body = example("v02-one-failed-trial")
    weight = weight_observation(body)
    weight["valueQuantity"] = value_quantity
    resp, out = post_body(hclient, body)
    assert resp.status_code == 200
    cards = cards_by_topic(out)
    assert (
        UNREADABLE in cards and "Observation, from vitalSigns: not read: value" in cards[UNREADABLE]["detail"]
    ), list(cards)


@pytest.mark.parametrize(
    "entries",
    [
        [1, "x", None, [], True],
        [{"resource": "Condition/1"}, {"resource": None}, {"resource": [1]}, {"fullUrl": "urn:x"}],
        [{"search": {"mode": "outcome"}, "resource": {"resourceType": "OperationOutcome", "issue": []}}],
        [{"resource": {"resourceType": "OperationOutcome", "issue": []}}],
    ],
)
def test_bundle_with_non_object_entries_is_tolerated(hclient: FlaskClient, entries: list[Any]) -> None:
    body = example("v02-one-failed-trial")
    body["prefetch"]["conditions"]["entry"].extend(entries)
    resp, out = post_body(hclient, body)
    assert resp.status_code == 200
    assert "trd-not-established" in cards_by_topic(out), "the readable entries are still used"


@pytest.mark.parametrize("field", ["entry", "link"])
@pytest.mark.parametrize("value", [5, 1.5, True, "abc", {"resource": {}}])
def test_bundle_entry_or_link_that_is_not_a_list_is_not_a_500(
    hclient: FlaskClient, field: str, value: Any
) -> None:
    body = example("v02-one-failed-trial")
    body["prefetch"]["conditions"][field] = value
    resp, out = post_body(hclient, body)
    assert resp.status_code in (200, 400), out


@pytest.mark.parametrize(
    ("where", "mutate"),
    [
        ("Condition.code.coding", lambda b: _first(b, "conditions")["code"].__setitem__("coding", 5)),
        ("Observation.code.coding", lambda b: weight_observation(b)["code"].__setitem__("coding", 5)),
        ("Observation.component", lambda b: weight_observation(b).__setitem__("component", 5)),
        (
            "draft medicationCodeableConcept.coding",
            lambda b: _draft(b)["medicationCodeableConcept"].__setitem__("coding", 7),
        ),
        (
            "MedicationRequest.medicationCodeableConcept.coding",
            lambda b: _first(b, "medicationRequests")["medicationCodeableConcept"].__setitem__("coding", 1.5),
        ),
    ],
)
def test_scalar_where_fhir_has_a_list_is_not_a_500(
    hclient: FlaskClient, where: str, mutate: Callable[[dict[str, Any]], Any]
) -> None:
    body = example("v02-one-failed-trial")
    mutate(body)
    resp, out = post_body(hclient, body)
    assert resp.status_code == 200, (where, out)


def _first(body: dict[str, Any], key: str) -> dict[str, Any]:
    return body["prefetch"][key]["entry"][0]["resource"]


def _draft(body: dict[str, Any]) -> dict[str, Any]:
    return body["context"]["draftOrders"]["entry"][0]["resource"]


@pytest.mark.parametrize(
    ("where", "mutate"),
    [
        (
            "weight valueQuantity.value = 10**400",
            lambda b: weight_observation(b)["valueQuantity"].__setitem__("value", 10**400),
        ),
        (
            "draft doseQuantity.value = 10**400",
            lambda b: _draft(b)["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"].__setitem__(
                "value", 10**400
            ),
        ),
        (
            "draft timing.repeat.duration = 10**400",
            lambda b: _draft(b)["dosageInstruction"][0]["timing"]["repeat"].__setitem__("duration", 10**400),
        ),
        (
            "MedicationDispense daysSupply.value = 1e12",
            lambda b: _first(b, "medicationDispenses")["daysSupply"].__setitem__("value", 1e12),
        ),
        (
            "MedicationDispense whenHandedOver = 9999-12-31",
            lambda b: _first(b, "medicationDispenses").__setitem__("whenHandedOver", "9999-12-31"),
        ),
    ],
)
def test_numbers_beyond_float_or_date_range_are_not_a_500(
    hclient: FlaskClient, where: str, mutate: Callable[[dict[str, Any]], Any]
) -> None:
    body = example("v02-one-failed-trial")
    mutate(body)
    resp, out = post_body(hclient, body)
    assert resp.status_code in (200, 400), (where, out)


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59Z", "9999-12-31", "0001-01-01T00:00:00Z"])
def test_evaluation_time_at_the_edge_of_the_calendar_is_not_a_500(hclient: FlaskClient, when: str) -> None:
    body = example("v01-clear-trd-eligible")
    body["extension"][pipeline.TIME_EXTENSION] = when
    resp, out = post_body(hclient, body)
    assert resp.status_code in (200, 400), out


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("v02-one-failed-trial", {"authoredOn": "last week"}),
        ("v01-clear-trd-eligible", {"authoredOn": "last week"}),
        ("v02-one-failed-trial", {"status": ["draft"]}),
    ],
)
def test_malformed_ketamine_draft_order_is_not_silently_ignored(
    hclient: FlaskClient, name: str, change: dict[str, Any]
) -> None:
    """The order being signed is what the service is asked about: if it cannot be read, say so."""
    body = example(name)
    readable = cards_by_topic(post_body(hclient, body)[1])
    assert readable, "control: the readable order gets cards"
    _draft(body).update(change)
    resp, out = post_body(hclient, body)
    assert resp.status_code == 200
    cards = cards_by_topic(out)
    assert cards, f"a malformed ketamine order ({change}) got no cards at all (readable: {sorted(readable)})"
    assert UNREADABLE in cards or "data-gaps" in cards, sorted(cards)


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(hclient: FlaskClient, token: bytes) -> None:
    raw = json.dumps(example("v01-clear-trd-eligible")).encode().replace(b'"order-sign"', token, 1)
    resp, out = send(hclient, "/cds-services/order-sign", raw)
    assert resp.status_code == 400 and out["field"] == "(body)" and "not valid JSON" in out["error"]
