"""The prefetch's fast paths against their definitions, on random shapes.

``bundle_resources`` takes the usual searchset in one loop without calls and ``PatientRecord.from_prefetch``
takes a usual key's resources at once: both must give exactly what the entry-by-entry definition
gives (the same objects, in the same order, the same problems) for every Bundle, usual or not."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.reading import fhir_client
from cds_service.reading.fhir_client import bundle_resources, entries_resources
from cds_service.reading.record import PatientRecord
from cds_service.services import PREFETCH_TYPES

FAST = settings(max_examples=200, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KINDS = st.sampled_from(["Observation", "MedicationRequest", "Medication", "OperationOutcome", "Patient"])
IDS = st.one_of(st.sampled_from(["a", "b", "c", "p1"]), st.integers(0, 2), st.none(), st.just(["a"]))
OUTCOME_ISSUES = st.lists(
    st.fixed_dictionaries({"severity": st.sampled_from(["error", "warning"])}), max_size=2
)


@st.composite
def resources(draw: Any, objects_only: bool = False) -> Any:
    """A resource as a FHIR server or an EHR might send one, or (in a Bundle) something that is not
    one (``bundle_resources`` hands the record objects only)."""
    if not objects_only and draw(st.integers(0, 9)) == 0:
        return draw(
            st.one_of(st.none(), st.text(max_size=3), st.integers(), st.just([{"resourceType": "X"}]))
        )
    res: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        res["resourceType"] = draw(KINDS)
    if draw(st.integers(0, 5)):
        res["id"] = draw(IDS)
    if res.get("resourceType") == "OperationOutcome":
        res["issue"] = draw(OUTCOME_ISSUES)
    return res


SEARCHES = st.one_of(
    st.just({"mode": "match"}),
    st.just({"mode": "outcome"}),
    st.just({"mode": "include"}),
    st.just({}),
    st.just({"mode": None}),
    st.none(),
    st.just("match"),
    st.just({"mode": ["outcome"]}),
)


@st.composite
def entries(draw: Any) -> Any:
    """Mostly the usual entry (so that one odd entry among usual ones is tried), else anything."""
    if draw(st.integers(0, 2)):
        return {"resource": draw(resources(objects_only=True)), "search": {"mode": "match"}}
    if draw(st.integers(0, 14)) == 0:
        return draw(st.one_of(st.none(), st.text(max_size=2), st.just([])))
    entry: dict[str, Any] = {}
    if draw(st.integers(0, 12)):
        entry["resource"] = draw(resources())
    if draw(st.integers(0, 3)):
        entry["search"] = draw(SEARCHES)
    return entry


def without_search(entry: Any) -> Any:
    return {k: v for k, v in entry.items() if k != "search"} if isinstance(entry, dict) else entry


BUNDLES = st.one_of(
    st.fixed_dictionaries({"resourceType": st.just("Bundle"), "entry": st.lists(entries(), max_size=8)}),
    st.fixed_dictionaries(  # a server that writes no search on any entry
        {"resourceType": st.just("Bundle"), "entry": st.lists(entries().map(without_search), max_size=8)}
    ),
    st.fixed_dictionaries({"resourceType": st.just("Bundle"), "entry": st.one_of(st.none(), st.just({}))}),
    st.fixed_dictionaries({"resourceType": st.just("Bundle")}),
)


@FAST
@given(bundle=BUNDLES)
def test_bundle_resources_is_its_definition(bundle: dict[str, Any]) -> None:
    got, want = bundle_resources(bundle), entries_resources(bundle)
    assert [id(r) for r in got] == [id(r) for r in want], (got, want)


def test_the_usual_searchset_takes_the_fast_path(monkeypatch: Any) -> None:
    """The fast path is taken (the test above would pass without one)."""
    calls: list[Any] = []
    monkeypatch.setattr(fhir_client, "entries_resources", lambda b: calls.append(b) or [])
    usual = {
        "resourceType": "Bundle",
        "entry": [{"resource": {"resourceType": "Condition", "id": "c1"}, "search": {"mode": "match"}}],
    }
    assert bundle_resources(usual) == [usual["entry"][0]["resource"]] and not calls
    included = {  # a searchset with the Medications its orders name (_include)
        "resourceType": "Bundle",
        "entry": [
            *usual["entry"],
            {"resource": {"resourceType": "Medication", "id": "m1"}, "search": {"mode": "include"}},
        ],
    }
    assert bundle_resources(included) == [e["resource"] for e in included["entry"]] and not calls
    noted = {
        "resourceType": "Bundle",
        "entry": [
            *usual["entry"],
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
        ],
    }
    bundle_resources(noted)
    assert calls == [noted], "an outcome note is read entry by entry (its severity decides)"


KEYS = st.sampled_from(["patient", "vitalSigns", "assessments", "medicationRequests", "custom"])


@st.composite
def prefetches(draw: Any) -> dict[str, Any]:
    """Keys mostly as usual (each resource of the key's type, ids distinct in the key but maybe
    repeated in another key of that type), else anything."""
    out = {}
    for key in draw(st.lists(KEYS, unique=True, max_size=5)):
        if draw(st.integers(0, 2)):
            kind = PREFETCH_TYPES.get(key, "Observation")
            ids = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "p1"]), unique=True, max_size=4))
            out[key] = [{"resourceType": kind, "id": i} for i in ids]
        else:
            out[key] = draw(st.lists(resources(objects_only=True), max_size=6))
    return out


@FAST
@given(
    prefetch=prefetches(),
    patient_id=st.sampled_from([None, "p1", "a"]),
)
def test_from_prefetch_takes_whole_keys_as_its_loop_would(prefetch: dict[str, Any], patient_id: Any) -> None:
    context = {"patientId": patient_id} if patient_id else {}
    fast = PatientRecord.from_prefetch(prefetch, context)
    taken = PatientRecord._take_whole
    try:
        PatientRecord._take_whole = lambda *_args: False  # type: ignore[method-assign]
        slow = PatientRecord.from_prefetch(prefetch, context)
    finally:
        PatientRecord._take_whole = taken  # type: ignore[method-assign]
    assert {t: [id(r) for r in rs] for t, rs in fast.by_type.items()} == {
        t: [id(r) for r in rs] for t, rs in slow.by_type.items()
    }
    assert fast.patient is slow.patient
    assert fast.problems == slow.problems and fast.unread == slow.unread


def test_a_usual_key_is_taken_whole_and_a_repeated_resource_once() -> None:
    obs = [{"resourceType": "Observation", "id": str(i)} for i in range(3)]
    record = PatientRecord.from_prefetch(
        {"vitalSigns": obs, "assessments": [obs[1], {"resourceType": "Observation", "id": "x"}]}, {}
    )
    assert [r["id"] for r in record.by_type["Observation"]] == ["0", "1", "2", "x"]
    # sent twice in one key: read once
    again = {"resourceType": "Condition", "id": "c"}
    record = PatientRecord.from_prefetch({"conditions": [again, dict(again), {**again, "id": "d"}]}, {})
    assert record.by_type["Condition"] == [again, {**again, "id": "d"}]
