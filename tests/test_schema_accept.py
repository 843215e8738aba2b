"""The compiled request check (cds_service/schema_accept.py, fastjsonschema as draft-07) is never more
lenient than jsonschema: for requests whose every field is drawn from valid and subtly invalid values,
a yes from the acceptor means jsonschema finds no error; and a keyword that does not mean the same in
draft-07 makes a schema uncompilable."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.errors import ApiError
from cds_service.schema_accept import Unsupported, compile_acceptor
from cds_service.services import SERVICES
from cds_service.validation import request_acceptor, schema_validator, validate_request

UUID = "7f3a1c52-0d1e-4b8a-9c3e-2f6b5a4d3c21"
ODD = st.sampled_from([None, True, False, 0, 1, -1, 2.0, 3.5, "", "x", [], {}, [1], {"a": 1}])


def field(*valid: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(valid) | ODD


STRINGS = field("Patient/1", "a" * 64, "a" * 65, "ok\n", "é", "1-2.3", "Practitioner/x y")
REQUEST = st.fixed_dictionaries(
    {
        "hook": field("order-sign", "x" * 100, "x" * 101),
        "hookInstance": field(UUID, UUID + "\n", UUID.upper(), UUID[:-1], " " + UUID),
        "context": st.fixed_dictionaries(
            {},
            optional={
                "userId": field("Practitioner/abc", "PractitionerRole/a.b-c", "Device/1", "Practitioner/"),
                "patientId": STRINGS,
                "encounterId": STRINGS,
                "selections": st.lists(field("MedicationRequest/1", "x" * 201), max_size=3) | ODD,
                "draftOrders": st.fixed_dictionaries(
                    {},
                    optional={
                        "resourceType": field("Bundle", "bundle"),
                        "entry": st.lists(
                            st.fixed_dictionaries({}, optional={"resource": field({"resourceType": "X"})})
                            | ODD,
                            max_size=3,
                        )
                        | ODD,
                    },
                )
                | ODD,
            },
        )
        | ODD,
    },
    optional={
        "fhirServer": field("https://ehr.example/fhir", "http://x", "ftp://x", "https://" + "a" * 2000),
        "fhirAuthorization": st.fixed_dictionaries(
            {},
            optional={
                "access_token": field("t", "t" * 20001),
                "token_type": field("Bearer", "bearer", "BEARER", "Basic", "Bearer "),
                "expires_in": field(0, 300, -1, 300.0, 2**70),
                "scope": STRINGS,
                "subject": STRINGS,
                "patient": STRINGS,
            },
        )
        | ODD,
        "prefetch": st.dictionaries(st.sampled_from(["patient", "meds"]), field({"resourceType": "Bundle"}))
        | ODD,
        "extension": field({"a": 1}),
    },
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=REQUEST)
def test_a_yes_is_never_more_lenient_than_the_schema(body: dict[str, Any]) -> None:
    if request_acceptor()(body):
        errors = [e.message for e in schema_validator("request").iter_errors(body)]
        assert errors == [], errors


def test_the_acceptor_agrees_on_the_cases_it_exists_for() -> None:
    good = {"hook": "order-sign", "hookInstance": UUID, "context": {"patientId": "p-1.2"}}
    assert request_acceptor()(good)
    for bad in (
        {**good, "hookInstance": UUID[:-1]},
        {**good, "context": {"patientId": "a/b"}},
        {**good, "fhirAuthorization": {"access_token": "t"}},
        {"hook": "order-sign", "context": {}},
    ):
        assert not request_acceptor()(bad)
        assert list(schema_validator("request").iter_errors(bad))


def test_where_the_shortcut_is_stricter_jsonschema_decides() -> None:
    """fastjsonschema writes a pattern's ``$`` as ``\\Z``: a hookInstance with a trailing newline, which
    jsonschema's ``re.search`` accepts, gets no yes from the shortcut, and the request is still
    accepted as before (by jsonschema)."""
    body = {
        "hook": "patient-view",
        "hookInstance": UUID + "\n",
        "context": {"patientId": "p", "userId": "Patient/p"},
    }
    assert not request_acceptor()(body)
    assert not list(schema_validator("request").iter_errors(body))
    assert validate_request(body, SERVICES["patient-view"]) is body


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "oneOf": [{"type": "object"}]},
        {"properties": {"a": {"format": "date-time"}}},
        {"properties": {"a": {"type": "array", "prefixItems": [{"type": "string"}]}}},
        {"items": [{"type": "string"}]},  # tuple items: draft-07 only
        {"dependentRequired": {"a": ["b"]}},  # 2020-12: draft-07 would ignore it
        {"properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {}}},
        {"const": 1},
        {"enum": ["a", True]},
        {"additionalProperties": {"type": "string"}, "patternProperties": {"^x": {}}},
    ],
)
def test_a_keyword_not_meaning_the_same_in_draft_7_makes_the_schema_uncompilable(
    schema: dict[str, Any],
) -> None:
    with pytest.raises(Unsupported):
        compile_acceptor(schema)


def test_the_request_schema_is_compiled() -> None:
    """Every keyword of the request schema means the same in draft-07: the shortcut exists."""
    assert compile_acceptor(schema_validator("request").schema)(
        {"hook": "x", "hookInstance": UUID, "context": {}}
    )


def test_a_request_schema_the_shortcut_cannot_compile_is_checked_by_jsonschema_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the request schema gains a keyword draft-07 reads otherwise, every request is still
    validated (by jsonschema, which names the field), never a 500."""
    from cds_service import schema_accept

    monkeypatch.setattr(schema_accept, "SAME_IN_DRAFT_7", schema_accept.SAME_IN_DRAFT_7 - {"pattern"})
    request_acceptor.cache_clear()
    try:
        good = {
            "hook": "patient-view",
            "hookInstance": UUID,
            "context": {"patientId": "p", "userId": "Patient/p"},
        }
        assert validate_request(good, SERVICES["patient-view"]) is good
        bad = {**good, "hookInstance": "not-a-uuid"}
        with pytest.raises(ApiError) as caught:
            validate_request(bad, SERVICES["patient-view"])
        assert caught.value.status == 400 and "hookInstance" in str(caught.value.field)
    finally:
        request_acceptor.cache_clear()
