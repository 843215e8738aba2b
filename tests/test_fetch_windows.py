"""What fetch mode asks for: the vital-sign window derived from the rules, larger pages (issue 8 item 7)."""

from __future__ import annotations

import copy
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cds_service.engine.loader import load_ruleset
from cds_service.engine.windows import fetch_narrowing, key_windows, vital_signs_window
from cds_service.reading.fhir_client import PAGE_SIZE, with_page_size
from cds_service.reading.prefetch import Narrowed, PrefetchResult, resolve_prefetch
from cds_service.services import prefetch_for

from .conftest import RULES, load_example
from .record_support import LOCAL_FHIR

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


def test_bundled_rules_read_vital_signs_of_the_last_30_days_at_most() -> None:
    ruleset = load_ruleset(RULES)
    assert vital_signs_window(ruleset) == 30
    assert fetch_narrowing(ruleset, NOW)["vitalSigns"] == (
        Narrowed(params="date=ge2026-04-03"),
        Narrowed(params="date:missing=true"),  # dated by `issued` only, or not at all
    )


def _rules_with(tmp_path: Path, extra_rule: str) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    path = rules / "monitoring.yaml"
    path.write_text(path.read_text() + extra_rule)
    return rules


UNBOUNDED = """
  - id: test-any-weight
    title: A weight ever recorded
    source: {label: test, guideline: test, year: 2026, url: https://example.org/, evidence: local-policy}
    hooks: [order-sign]
    indicator: info
    when:
      all:
        - ref: ketamine-order
        - has_observation: {kind: weight}
    card: {summary: "A weight is recorded", detail: "test"}
"""


def test_a_rule_reading_vital_signs_without_a_window_turns_the_narrowing_off(tmp_path: Path) -> None:
    ruleset = load_ruleset(_rules_with(tmp_path, UNBOUNDED))
    assert vital_signs_window(ruleset) is None
    assert "vitalSigns" not in fetch_narrowing(ruleset, NOW)


def test_a_rule_with_a_longer_window_widens_it(tmp_path: Path) -> None:
    ruleset = load_ruleset(
        _rules_with(tmp_path, UNBOUNDED.replace("{kind: weight}", "{kind: weight, within_days: 90}"))
    )
    assert vital_signs_window(ruleset) == 90
    assert fetch_narrowing(ruleset, NOW)["vitalSigns"][0] == Narrowed(params="date=ge2026-02-02")


def test_page_size_is_raised_never_lowered() -> None:
    assert with_page_size("Condition?patient=p") == f"Condition?patient=p&_count={PAGE_SIZE}"
    assert with_page_size("Observation?patient=p&_count=200&_sort=-date") == (
        f"Observation?patient=p&_count={PAGE_SIZE}&_sort=-date"
    )
    assert (
        with_page_size(f"Observation?patient=p&_count={PAGE_SIZE * 2}")
        == f"Observation?patient=p&_count={PAGE_SIZE * 2}"
    )
    assert with_page_size("Patient/p") == "Patient/p"


# -- scores: the history TRD reads is kept whole, the screens read for 30 days are narrowed --------------
def test_bundled_rules_read_scores_over_the_history_and_screens_for_30_days() -> None:
    """TRD counting and course tracking read PHQ-9 and MADRS over the whole history (no window):
    they are asked for without a date; every other assessment kind is read within 30 days at most."""
    ruleset = load_ruleset(RULES)
    window = key_windows(ruleset)["assessments"]
    assert window.days == 30 and window.history == ("madrs", "phq9")
    parts = fetch_narrowing(ruleset, NOW)["assessments"]
    assert parts[0] == Narrowed(params="date=ge2026-04-03")  # every assessment code, 31 days
    assert parts[1] == Narrowed(params="date:missing=true")  # every code, no effective[x]
    history = set(parts[2].codes.split(","))
    madrs = "http://ketamine-cds.local/CodeSystem/assessment|madrs-total"
    assert parts[2].params == "" and history == {"44261-6", "89204-2", madrs}  # PHQ-9 (2 codes), MADRS


def test_a_rule_reading_a_screen_without_a_window_keeps_its_history(tmp_path: Path) -> None:
    ruleset = load_ruleset(_rules_with(tmp_path, UNBOUNDED.replace("{kind: weight}", "{kind: gad7}")))
    assert key_windows(ruleset)["assessments"].history == ("gad7", "madrs", "phq9")
    assert "70274-6" in fetch_narrowing(ruleset, NOW)["assessments"][2].codes.split(",")


def test_a_predicate_whose_reads_are_not_declared_turns_every_narrowing_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``engine/unread.py`` declares which keys each predicate reads; one declared nowhere may read
    any key, at any date: nothing is narrowed."""
    from cds_service.engine import unread, windows

    monkeypatch.delitem(unread.KEYS, "condition")
    monkeypatch.setattr(windows, "_cache", {})
    assert fetch_narrowing(load_ruleset(RULES), NOW) == {}


PID = "win1"


def observation(oid: str, system: str, code: str, when: str, **value: object) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{PID}"},
        "effectiveDateTime": when,
        **(value or {"valueInteger": 3}),
    }


def fetched(fhir_server: Any, patient_id: str) -> PrefetchResult:
    """Fetch mode for a patient-view of ``patient_id``, narrowed as the bundled rules narrow it."""
    ruleset = load_ruleset(RULES)
    request = {
        "hook": "patient-view",
        "context": {"patientId": patient_id, "userId": "Practitioner/1"},
        "fhirServer": fhir_server.base_url,
    }
    return resolve_prefetch(
        request,
        templates=prefetch_for(ruleset.observation_kinds),
        narrowing=fetch_narrowing(ruleset, NOW),
        policy=LOCAL_FHIR,
    )


def test_fetch_mode_keeps_the_score_history_and_narrows_the_screens(fhir_server) -> None:
    """On the real FHIR server: PHQ-9s of two years ago (TRD reads them) and a MADRS under a site's
    code are fetched; a C-SSRS item and a GAD-7 older than the rules look are not."""
    loinc = "http://loinc.org"
    fhir_server.put_resources(
        [
            {"resourceType": "Patient", "id": PID, "gender": "female", "birthDate": "1980-01-01"},
            observation("win1-phq-old", loinc, "44261-6", "2024-05-01T10:00:00Z", valueInteger=22),
            observation("win1-phq-new", loinc, "44261-6", "2026-05-01T10:00:00Z", valueInteger=9),
            observation(
                "win1-madrs-old",
                "http://ketamine-cds.local/CodeSystem/assessment",
                "madrs-total",
                "2025-01-01T10:00:00Z",
            ),
            observation("win1-cssrs-old", loinc, "93246-7", "2026-03-01T10:00:00Z"),
            observation("win1-cssrs-new", loinc, "93246-7", "2026-04-30T10:00:00Z"),
            observation("win1-gad7-old", loinc, "70274-6", "2025-01-01T10:00:00Z"),
            observation("win1-gad7-new", loinc, "70274-6", "2026-04-20T10:00:00Z"),
        ]
    )
    result = fetched(fhir_server, PID)
    got = sorted(r["id"] for r in result.resources["assessments"])
    assert got == ["win1-cssrs-new", "win1-gad7-new", "win1-madrs-old", "win1-phq-new", "win1-phq-old"]
    assert result.origin["assessments"] == "fetched"


def test_fetch_mode_finds_observations_dated_only_when_issued(fhir_server) -> None:
    """The reading layer dates an observation by effective[x], else by ``issued``; FHIR's ``date``
    search parameter matches effective[x] only. A C-SSRS answered today and a blood pressure taken
    today that carry only ``issued`` (or no date at all) must still be fetched when the searches are
    narrowed, as the whole template would fetch them: the narrowing asks for them by
    ``date:missing=true``."""
    loinc = "http://loinc.org"

    def undated(oid: str, code: str, **when: str) -> dict:
        o = observation(oid, loinc, code, "")
        del o["effectiveDateTime"]
        return {**o, **subject, **when}

    subject = {"subject": {"reference": "Patient/win2"}}
    bp = undated("win2-bp-issued", "85354-9", issued="2026-05-01T09:00:00Z")
    category = "http://terminology.hl7.org/CodeSystem/observation-category"
    bp["category"] = [{"coding": [{"system": category, "code": "vital-signs"}]}]
    fhir_server.put_resources(
        [
            {"resourceType": "Patient", "id": "win2", "gender": "female", "birthDate": "1980-01-01"},
            undated("win2-cssrs-issued", "93246-7", issued="2026-05-01T09:00:00Z"),
            undated("win2-cssrs-undated", "93246-7"),
            {**observation("win2-cssrs-old", loinc, "93246-7", "2026-03-01T10:00:00Z"), **subject},
            bp,
        ]
    )
    result = fetched(fhir_server, "win2")
    got = sorted(r["id"] for r in result.resources["assessments"])
    assert got == ["win2-cssrs-issued", "win2-cssrs-undated"]
    assert [r["id"] for r in result.resources["vitalSigns"]] == ["win2-bp-issued"]


# -- a prefetched bundle with a next link ------------------------------------------------------------------
def test_a_prefetched_vital_signs_bundle_is_not_paged_past_the_rules_window(app, fault_fhir) -> None:
    """The EHR prefetched a first page of vital signs and links to years more. The service does not
    page through them: it asks once for the rules' window (``date=ge``) and keeps the first page."""
    full = load_example("v01-clear-trd-eligible")
    body = copy.deepcopy(full)
    bundle = body["prefetch"]["vitalSigns"]
    first, rest = bundle["entry"][:1], bundle["entry"][1:]
    old_weight = copy.deepcopy(first[0])
    old_weight["resource"].update(id="v01-old-weight", effectiveDateTime="2021-05-01T08:00:00Z")
    history = "Observation?patient=v01&category=vital-signs&_sort=-date&_count=1&page="
    fault_fhir.ok("/Observation", {"resourceType": "Bundle", "type": "searchset", "entry": rest})
    for page in (2, 3):  # the history: pages of old vital signs, linked on and on
        older = {"resourceType": "Bundle", "type": "searchset", "entry": [old_weight]}
        older["link"] = [{"relation": "next", "url": fault_fhir.url(history + str(page + 1))}]
        fault_fhir.ok("/Observation", older, query={"page": str(page)})
    bundle["entry"] = first
    bundle["link"] = [{"relation": "next", "url": fault_fhir.url(history + "2")}]
    body["fhirServer"] = fault_fhir.base_url
    resp = app.test_client().post("/cds-services/order-sign", json=body)
    assert resp.status_code == 200, resp.get_json()
    asked = [r for r in fault_fhir.requests if r.path == "/Observation"]
    assert [r.param("page") for r in asked] == [None, None], [r.target for r in asked]
    assert {r.param("date") or r.param("date:missing") for r in asked} == {"ge2026-04-03", "true"}
    assert {r.param("category") for r in asked} == {"vital-signs"}
    expected = app.test_client().post("/cds-services/order-sign", json=full).get_json()["cards"]
    assert texts(resp.get_json()["cards"]) == texts(expected)


def texts(cards: list[dict]) -> list[tuple[str, str, str, str]]:
    return [(c["source"]["topic"]["code"], c["indicator"], c["summary"], c.get("detail", "")) for c in cards]


def test_a_narrowed_search_never_asks_for_less_than_it_can_say() -> None:
    """Codes are replaced only where the template has exactly one ``code``; otherwise the template
    is asked as is (more data, never less)."""
    history = Narrowed(codes="44261-6")
    assert (
        history.apply("Observation?patient=p&code=a,b&_count=200")
        == "Observation?patient=p&code=44261-6&_count=200"
    )
    assert history.apply("Observation?patient=p&category=survey") == "Observation?patient=p&category=survey"
    assert history.apply("Observation?patient=p&code=a&code=b") == "Observation?patient=p&code=a&code=b"
    assert Narrowed(params="date=ge2026-04-03").apply("Observation?patient=p") == (
        "Observation?patient=p&date=ge2026-04-03"
    )
    assert Narrowed(params="date=ge2026-04-03").apply("Patient/p") == "Patient/p"


# -- pregnancy status: read within 30 days, narrowed like the vital signs ------------------------------
def test_bundled_rules_read_pregnancy_status_of_the_last_30_days() -> None:
    ruleset = load_ruleset(RULES)
    assert key_windows(ruleset)["pregnancyStatus"].days == 30  # status_within_days
    assert fetch_narrowing(ruleset, NOW)["pregnancyStatus"] == (
        Narrowed(params="date=ge2026-04-03"),
        Narrowed(params="date:missing=true"),  # dated by `issued` only, or not at all
    )


def test_a_rule_reading_pregnancy_status_without_a_window_turns_its_narrowing_off(tmp_path: Path) -> None:
    ruleset = load_ruleset(
        _rules_with(tmp_path, UNBOUNDED.replace("{kind: weight}", "{kind: pregnancy_status}"))
    )
    assert key_windows(ruleset)["pregnancyStatus"].days is None
    assert "pregnancyStatus" not in fetch_narrowing(ruleset, NOW)
    assert "vitalSigns" in fetch_narrowing(ruleset, NOW)  # the other keys keep theirs


def test_fetch_mode_asks_for_recent_and_issued_only_pregnancy_status(fhir_server) -> None:
    """On the real FHIR server: a pregnancy status of two years ago (no rule reads it) is not
    fetched; one of last week and one dated only by ``issued`` are."""
    loinc = "http://loinc.org"
    pregnant = {"valueCodeableConcept": {"coding": [{"system": loinc, "code": "LA15173-0"}]}}

    def status(oid: str, when: str) -> dict:
        return {
            **observation(oid, loinc, "82810-3", when, **pregnant),
            "subject": {"reference": "Patient/win3"},
        }

    issued = status("win3-preg-issued", "")
    del issued["effectiveDateTime"]
    issued["issued"] = "2026-05-01T09:00:00Z"
    fhir_server.put_resources(
        [
            {"resourceType": "Patient", "id": "win3", "gender": "female", "birthDate": "1990-01-01"},
            status("win3-preg-old", "2024-05-01T10:00:00Z"),
            status("win3-preg-new", "2026-04-28T10:00:00Z"),
            issued,
        ]
    )
    result = fetched(fhir_server, "win3")
    got = sorted(r["id"] for r in result.resources["pregnancyStatus"])
    assert got == ["win3-preg-issued", "win3-preg-new"]


def test_the_history_search_is_built_once_per_rule_set_and_holds_no_date() -> None:
    """Every call computes the narrowing (issue 8: speed): the search by the codes of the kinds
    read over the whole history (the costly part) is built once per rule set; the dated ones,
    which hold the call's date, are made per call and kept nowhere."""
    from datetime import timedelta

    from cds_service.engine import windows

    ruleset = load_ruleset(RULES)
    first = fetch_narrowing(ruleset, NOW)["assessments"]
    later = fetch_narrowing(ruleset, NOW + timedelta(days=1))["assessments"]
    assert first[2] is later[2] and first[2].codes  # the same codes search, built once
    assert later[0] == Narrowed(params="date=ge2026-04-04") != first[0]
    kept = [s for s in windows._history_searches.values() if s is not None]
    assert kept and all(s.params == "" and "2026" not in s.codes for s in kept)
