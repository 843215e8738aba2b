"""The compact patient builder, the vignettes written with it, and the committed fhir_examples."""

from __future__ import annotations

import copy
import csv
import functools
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fhir.resources.R4B import get_fhir_model_class

from cds_service import compact
from cds_service.compact import (
    CaseError,
    age_at,
    birth_date_for_age,
    build_draft_orders,
    build_request,
    build_resources,
    load_cases,
    parse_now,
    resolve_date,
    resolve_datetime,
)
from cds_service.services import PREFETCH, PREFETCH_TYPES

ROOT = Path(__file__).resolve().parents[1]
VIGNETTES = ROOT / "rules" / "tests" / "vignettes.yaml"
EXAMPLES = ROOT / "fhir_examples"
SHARED = ROOT.parent / "shared" / "clinical"
NOW = parse_now("2026-05-04T09:00:00Z")

CASES = load_cases(VIGNETTES)
CASE_IDS = [c["id"] for c in CASES]


@functools.cache
def rule_ids() -> frozenset[str]:
    """Rule and panel ids of the bundled rule set; expectations must use only these."""
    from cds_service.engine.loader import load_ruleset

    rs = load_ruleset(ROOT / "rules")
    return frozenset({r.id for r in rs.rules} | set(rs.panels))


def minimal_case(**overrides: Any) -> dict[str, Any]:
    case: dict[str, Any] = {
        "id": "t-minimal",
        "now": "2026-05-04T09:00:00Z",
        "hook": "order-sign",
        "patient": {"id": "t1", "sex": "female", "age": 40},
        "orders": [{"code": "rx:2201625", "text": "Spravato 56 mg", "dose": "56 mg", "route": "nasal"}],
    }
    case.update(overrides)
    return case


def validate(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def bundle_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", [])]


# -- every case builds and validates ----------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_case_builds_and_every_resource_validates(case: dict[str, Any]) -> None:
    resources = build_resources(case)
    orders = build_draft_orders(case)
    assert resources[0]["resourceType"] == "Patient"
    ids = [(r["resourceType"], r["id"]) for r in resources + orders]
    assert len(ids) == len(set(ids)), "resource ids must be unique within a case"
    for resource in resources + orders:
        validate(resource)
        for key in ("subject", "patient"):
            if key in resource:
                assert resource[key] == {"reference": f"Patient/{case['patient']['id']}"}
    request = build_request(case)
    for value in request["prefetch"].values():
        validate(value)
    if "draftOrders" in request["context"]:
        validate(request["context"]["draftOrders"])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_request_matches_the_request_schema(case: dict[str, Any]) -> None:
    schema = json.loads((ROOT / "cds_service" / "schemas" / "request.schema.json").read_text())
    jsonschema.validate(build_request(case), schema)


def test_case_ids_patient_ids_and_hook_instances_are_unique() -> None:
    requests = [build_request(c) for c in CASES]
    assert len({r["hookInstance"] for r in requests}) == len(CASES)
    assert len({r["context"]["patientId"] for r in requests}) == len(CASES)
    assert build_request(CASES[0])["hookInstance"] == requests[0]["hookInstance"]


def test_no_dates_left_unresolved() -> None:
    relative = re.compile(r'"(today|[+-]\d+[dwmy])"')
    for case in CASES:
        text = json.dumps(build_request(case))
        assert not relative.search(text), case["id"]


# -- dates and ages ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("today", "2026-05-04"),
        ("-3d", "2026-05-01"),
        ("+2d", "2026-05-06"),
        ("-15w", "2026-01-19"),
        ("-2m", "2026-03-04"),
        ("-1y", "2025-05-04"),
        ("2024-11", "2024-11"),
        ("2019", "2019"),
        ("2025-03-01", "2025-03-01"),
        ("2026-04-01T10:30:00Z", "2026-04-01T10:30:00Z"),
    ],
)
def test_relative_and_absolute_dates_resolve(value: str, expected: str) -> None:
    assert resolve_date(value, NOW) == expected


def test_month_and_year_arithmetic_clamps_to_the_month_end() -> None:
    assert resolve_date("-1m", parse_now("2026-03-31T09:00:00Z")) == "2026-02-28"
    assert resolve_date("-1y", parse_now("2024-02-29T09:00:00Z")) == "2023-02-28"


def test_yaml_dates_and_clock_times() -> None:
    from datetime import date

    assert resolve_date(date(2025, 3, 1), NOW) == "2025-03-01"
    assert resolve_datetime("today", NOW) == "2026-05-04T08:45:00Z"
    assert resolve_datetime("-1d", NOW, "10:05") == "2026-05-03T10:05:00Z"
    assert resolve_datetime("2024-11", NOW) == "2024-11"
    with pytest.raises(CaseError):
        resolve_date("yesterday", NOW)


@pytest.mark.parametrize(
    ("age", "birth", "years"),
    [
        ("17y364d", "2008-05-05", 17),  # 18 tomorrow
        ("18y0d", "2008-05-04", 18),  # 18 today
        ("18y1d", "2008-05-03", 18),
        (45, "1981-01-04", 45),  # an integer age: last birthday four months ago
        (17, "2009-01-04", 17),
    ],
)
def test_age_edge_cases(age: Any, birth: str, years: int) -> None:
    assert birth_date_for_age(age, NOW) == birth
    assert age_at(birth, NOW) == years


def test_age_on_a_leap_day() -> None:
    now = parse_now("2028-02-29T09:00:00Z")
    birth = birth_date_for_age("18y0d", now)
    assert birth == "2010-02-28"
    assert age_at(birth, now) == 18
    assert age_at(birth_date_for_age("17y364d", now), now) == 17


def test_vignette_ages_at_hook_time() -> None:
    by_id = {c["id"]: c for c in CASES}
    for cid, years in [
        ("v10-age-17", 17),
        ("v10b-age-17y364d", 17),
        ("v10c-age-18-today", 18),
        ("v01-clear-trd-eligible", 45),
    ]:
        patient = build_resources(by_id[cid])[0]
        assert age_at(patient["birthDate"], parse_now(by_id[cid]["now"])) == years, cid


# -- prefetch ---------------------------------------------------------------------------------------
def architecture_keys() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Prefetch keys", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Za-z]+)` \|", section, re.MULTILINE)


def test_prefetch_keys_are_the_architecture_contract() -> None:
    assert architecture_keys() == list(PREFETCH)
    for case in CASES:
        assert list(build_request(case)["prefetch"]) == list(PREFETCH)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_prefetch_bundles_hold_exactly_the_right_resources(case: dict[str, Any]) -> None:
    request = build_request(case)
    prefetch = request["prefetch"]
    resources = build_resources(case)
    assert prefetch["patient"] == resources[0]
    seen: set[tuple[str, str]] = {("Patient", resources[0]["id"])}
    for key, bundle in prefetch.items():
        if key == "patient":
            continue
        assert bundle is not None
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        items = bundle_resources(bundle)
        assert bundle["total"] == len(items)
        if not items:
            assert "entry" not in bundle
        for entry in bundle.get("entry", []):
            res = entry["resource"]
            assert entry["search"] == {"mode": "match"}
            assert entry["fullUrl"].endswith(f"/{res['resourceType']}/{res['id']}")
            assert res["resourceType"] == PREFETCH_TYPES[key]
            seen.add((res["resourceType"], res["id"]))
        categories = [{c["code"] for cat in r.get("category", []) for c in cat["coding"]} for r in items]
        if key == "vitalSigns":
            assert all("vital-signs" in c for c in categories)
        if key == "assessments":
            assert all("survey" in c for c in categories)
        if key == "pregnancyStatus":
            assert all(r["code"]["coding"][0]["code"] == "82810-3" for r in items)
        if key in ("vitalSigns", "assessments", "pregnancyStatus"):
            times = [r["effectiveDateTime"] for r in items]
            assert times == sorted(times, reverse=True), f"{key} must be newest first"
    # every resource of the record is returned by some query
    assert seen == {(r["resourceType"], r["id"]) for r in resources}


def test_empty_prefetch_keys_are_empty_bundles_not_null() -> None:
    prefetch = build_request(minimal_case())["prefetch"]
    for key in PREFETCH:
        if key != "patient":
            assert prefetch[key]["total"] == 0 and "entry" not in prefetch[key]


def test_context_extension_and_options() -> None:
    case = minimal_case(hook="order-select")
    case["orders"].append({"code": "rx:238082", "dose": "35 mg", "route": "iv", "infusion_minutes": 40})
    request = build_request(case, prefetch=False, fhir_server="https://ehr.example.org/fhir")
    assert "prefetch" not in request
    assert request["fhirServer"] == "https://ehr.example.org/fhir"
    assert request["extension"] == {"ketamine-cds.evaluation-time": "2026-05-04T09:00:00Z"}
    ctx = request["context"]
    assert ctx["userId"] == "Practitioner/example" and ctx["patientId"] == "t1"
    assert ctx["selections"] == ["MedicationRequest/t1-order-1"]
    assert [e["resource"]["id"] for e in ctx["draftOrders"]["entry"]] == ["t1-order-1", "t1-order-2"]
    with_prefetch = build_request(case, fhir_server="https://ehr.example.org/fhir/")
    assert with_prefetch["prefetch"]["conditions"]["link"][0]["url"] == (
        "https://ehr.example.org/fhir/Condition?patient=t1"
    )
    pv = build_request(minimal_case(hook="patient-view", orders=[]))
    assert "draftOrders" not in pv["context"] and "selections" not in pv["context"]


# -- resource details -------------------------------------------------------------------------------
def test_draft_orders() -> None:
    case = minimal_case(
        orders=[
            {
                "code": "rx:2201625",
                "text": "Spravato 56 mg intranasal (2 x 28 mg devices)",
                "dose": "56 mg",
                "route": "nasal",
                "frequency": "once",
                "note": "day 1",
            },
            {
                "code": "rx:238082",
                "text": "Ketamine HCl 50 mg/mL injection",
                "dose": "35 mg",
                "route": "iv",
                "infusion_minutes": 40,
            },
        ]
    )
    esk, ket = build_draft_orders(case)
    assert esk["status"] == "draft" and esk["intent"] == "order"
    assert esk["medicationCodeableConcept"]["coding"] == [
        {
            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
            "code": "2201625",
            "display": "esketamine Nasal Spray [Spravato]",
        }
    ]
    d = esk["dosageInstruction"][0]
    assert d["route"] == {"text": "intranasal"}
    assert d["timing"]["repeat"] == {"count": 1}
    assert d["doseAndRate"][0]["doseQuantity"]["code"] == "mg"
    assert esk["note"] == [{"text": "day 1"}]
    # ketamine: no verified display, text only
    assert "display" not in ket["medicationCodeableConcept"]["coding"][0]
    assert ket["medicationCodeableConcept"]["text"] == "Ketamine HCl 50 mg/mL injection"
    k = ket["dosageInstruction"][0]
    assert k["timing"]["repeat"] == {"duration": 40, "durationUnit": "min"}
    assert k["route"] == {"text": "intravenous"}
    assert k["doseAndRate"][0]["rateQuantity"]["value"] == 0.875


def test_medication_history_kinds_and_dispenses() -> None:
    case = minimal_case(
        medications=[
            {
                "code": "rx:312941",
                "dose": "150 mg",
                "frequency": "1/d",
                "start": "2025-03-01",
                "end": "2025-06-15",
                "reason": "lack of efficacy",
                "dispenses": "30d",
            },
            {"code": "rx:351250", "as": "statement", "dose": "20 mg", "frequency": "1/d", "start": "-10w"},
            {
                "code": "rx:197901",
                "as": "dispense",
                "dose": "1 mg",
                "frequency": "tid",
                "start": "-60d",
                "dispenses": {"every": "30d", "supply": "30d"},
            },
            {
                "code": "rx:238082",
                "as": "administration",
                "dose": "36 mg",
                "route": "iv",
                "infusion_minutes": 40,
                "dates": ["-7d", "-4d"],
                "time": "09:00",
            },
        ]
    )
    resources = build_resources(case)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    (req,) = by_type["MedicationRequest"]
    assert req["status"] == "completed" and req["intent"] == "order"
    assert req["statusReason"] == {"text": "lack of efficacy"}
    assert req["dispenseRequest"]["validityPeriod"] == {"start": "2025-03-01", "end": "2025-06-15"}
    assert req["dosageInstruction"][0]["timing"]["repeat"]["frequency"] == 1
    (stmt,) = by_type["MedicationStatement"]
    assert stmt["status"] == "active" and stmt["effectivePeriod"] == {"start": "2026-02-23"}
    dispenses = by_type["MedicationDispense"]
    sertraline = [d for d in dispenses if d["medicationCodeableConcept"]["coding"][0]["code"] == "312941"]
    assert [d["whenHandedOver"] for d in sertraline] == [
        "2025-03-01",
        "2025-03-31",
        "2025-04-30",
        "2025-05-30",
    ]
    assert sertraline[0]["quantity"] == {"value": 90, "unit": "tablet"}  # 3 x 50 mg a day for 30 days
    assert sertraline[0]["authorizingPrescription"] == [{"reference": f"MedicationRequest/{req['id']}"}]
    lorazepam = [d for d in dispenses if d["medicationCodeableConcept"]["coding"][0]["code"] == "197901"]
    assert [d["whenHandedOver"] for d in lorazepam] == ["2026-03-05", "2026-04-04", "2026-05-04"]
    assert "authorizingPrescription" not in lorazepam[0]
    adms = by_type["MedicationAdministration"]
    assert [a["effectiveDateTime"] for a in adms] == ["2026-04-27T09:00:00Z", "2026-04-30T09:00:00Z"]
    assert adms[0]["dosage"]["dose"]["value"] == 36 and adms[0]["dosage"]["route"] == {"text": "intravenous"}


def test_conditions_observations_procedures() -> None:
    case = minimal_case(
        conditions=[
            {"code": ["icd:F33.2", "sct:36474008"], "onset": "2024-11"},
            {"code": "icd:F29", "onset": "2019-03", "abatement": "2019-08", "status": "resolved"},
        ],
        observations=[
            {"code": "loinc:29463-7", "value": "70 kg", "date": "-6d"},
            {"code": "loinc:85354-9", "systolic": 128, "diastolic": 82, "date": "today"},
            {"code": "loinc:8867-4", "value": 76, "date": "today"},
            {"code": "loinc:44261-6", "value": 21, "date": "today"},
            {"code": "local:madrs-total", "value": 34, "date": "today"},
            {"code": "loinc:82810-3", "answer": "LA15173-0 Pregnant", "date": "-14d"},
            {"cssrs_screen": "negative", "date": "today"},
        ],
        procedures=[{"code": "cpt:90870", "date": "2025-01-10"}],
    )
    resources = build_resources(case)
    for r in resources:
        validate(r)
    conds = [r for r in resources if r["resourceType"] == "Condition"]
    assert conds[0]["clinicalStatus"]["coding"][0]["code"] == "active"
    assert conds[0]["category"][0]["coding"][0]["code"] == "problem-list-item"
    assert conds[0]["onsetDateTime"] == "2024-11"
    assert conds[1]["clinicalStatus"]["coding"][0]["code"] == "resolved"
    assert conds[1]["abatementDateTime"] == "2019-08"
    obs = [r for r in resources if r["resourceType"] == "Observation"]
    weight, bp, hr, phq, madrs, preg = obs[:6]
    assert weight["valueQuantity"] == {
        "value": 70,
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    }
    assert weight["effectiveDateTime"] == "2026-04-28T08:45:00Z"
    assert [c["code"]["coding"][0]["code"] for c in bp["component"]] == ["8480-6", "8462-4"]
    assert bp["component"][0]["valueQuantity"]["code"] == "mm[Hg]"
    assert hr["valueQuantity"]["code"] == "/min"
    assert phq["valueInteger"] == 21 and phq["category"][0]["coding"][0]["code"] == "survey"
    assert madrs["code"]["coding"][0]["system"] == "http://ketamine-cds.local/CodeSystem/assessment"
    assert preg["category"][0]["coding"][0]["code"] == "social-history"
    assert preg["valueCodeableConcept"]["coding"][0]["code"] == "LA15173-0"
    cssrs = obs[6:]
    assert [o["code"]["coding"][0]["code"] for o in cssrs] == ["93246-7", "93247-5", "93248-3", "93249-1"]
    assert all(o["valueCodeableConcept"] == {"text": "No"} for o in cssrs)
    (proc,) = [r for r in resources if r["resourceType"] == "Procedure"]
    assert proc["status"] == "completed" and proc["performedDateTime"].startswith("2025-01-10")


@pytest.mark.parametrize(
    "bad",
    [
        {"conditions": [{"code": "icd:F33.2", "onset": "2024", "severity": "high"}]},
        {"conditions": [{"code": "F33.2"}]},
        {"conditions": [{"code": "icd:F33.2", "abatement": "2025-01", "status": "active"}]},
        {"medications": [{"code": "rx:312941", "start": "2025-01-01", "frequency": "sometimes"}]},
        {"observations": [{"code": "loinc:29463-7", "value": "70 kg"}]},
        {"observations": [{"code": "loinc:1234-5", "value": 3, "date": "today"}]},
        {"hook": "order-dispatch"},
        {"patient": {"id": "t1", "sex": "female"}},
    ],
)
def test_malformed_cases_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(CaseError):
        build_request(minimal_case(**bad))


def test_load_cases_rejects_duplicate_ids(tmp_path: Path) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text("cases:\n  - {id: a}\n  - {id: a}\n", encoding="utf-8")
    with pytest.raises(CaseError, match="duplicate"):
        load_cases(path)


# -- the vignettes' expectations --------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_expectations_use_known_rule_ids(case: dict[str, Any]) -> None:
    expect = case["expect"]
    assert set(expect) <= {"cards", "fired", "not_fired", "summary_contains", "detail_contains"}
    severity = {"critical": 0, "warning": 1, "info": 2}
    ranks = []
    for card in expect["cards"]:
        assert set(card) == {"topic", "indicator"} and card["topic"] in rule_ids()
        ranks.append(severity[card["indicator"]])
    assert ranks == sorted(ranks), "cards are listed most severe first"
    fired, not_fired = set(expect.get("fired", [])), set(expect.get("not_fired", []))
    assert fired <= rule_ids() and not_fired <= rule_ids() and not fired & not_fired
    assert not {c["topic"] for c in expect["cards"]} & not_fired


def test_the_vignette_set() -> None:
    assert {f"v{n:02d}" for n in range(1, 16)} <= {cid[:3] for cid in CASE_IDS}
    by_id = {c["id"]: c for c in CASES}
    assert by_id["v12-nice-vs-expert-panel"]["site"] == {"jurisdiction": "UK"}
    assert by_id["v05b-psychosis-norway"]["site"] == {"jurisdiction": "NO"}
    assert by_id["v14-not-concerned"]["expect"]["cards"] == []
    assert by_id["v15-patient-view-course"]["hook"] == "patient-view"


# -- codes come from the shared clinical sources ----------------------------------------------------
def shared_codes() -> tuple[dict[tuple[str, str], set[str]], str]:
    displays: dict[tuple[str, str], set[str]] = {}
    for path in sorted((SHARED / "valuesets").glob("*/*.json")):
        for c in json.loads(path.read_text(encoding="utf-8")).get("expansion", {}).get("contains", []):
            displays.setdefault((c["system"], c["code"]), set()).add(c.get("display", ""))
    text = (SHARED / "knowledge.md").read_text(encoding="utf-8")
    with open(SHARED / "codes.csv", encoding="utf-8") as fh:
        text += "\n" + "\n".join(",".join(row) for row in csv.reader(fh))
    return displays, text


needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared clinical sources not present")


@needs_shared
def test_every_display_is_copied_from_the_shared_sources() -> None:
    displays, text = shared_codes()
    for (prefix, code), display in compact.DISPLAYS.items():
        if prefix == "local":
            continue
        found = displays.get((compact.SYSTEMS[prefix], code))
        if found:
            assert display in found, (code, display, found)
        else:  # knowledge.md / codes.csv name the code and every word of its display
            words = re.findall(r"[a-z0-9]+", display.lower())
            assert code in text and all(w in text.lower() for w in words), (code, display)


@needs_shared
def test_every_code_in_the_vignettes_is_verified() -> None:
    displays, text = shared_codes()
    known = {code for _, code in displays}
    used: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("system"), str) and isinstance(node.get("code"), str):
                used.add((node["system"], node["code"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for case in CASES:
        walk(build_request(case))
    clinical = set(compact.SYSTEMS.values()) - {compact.SYSTEMS["local"]}
    for system, code in sorted(used):
        if system in clinical:
            assert code in known or re.search(rf"(?<![\w.-]){re.escape(code)}(?![\w-])", text), (system, code)


# -- the committed examples -------------------------------------------------------------------------
def test_fhir_examples_are_up_to_date() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import build_examples
    finally:
        sys.path.pop(0)
    expected = build_examples.expected_files(VIGNETTES)
    stale = [
        name
        for name, text in expected.items()
        if not (EXAMPLES / name).exists() or (EXAMPLES / name).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"run python tools/build_examples.py ({', '.join(stale)})"
    assert build_examples.main(["--check"]) == 0


def test_builder_is_deterministic() -> None:
    case = copy.deepcopy(CASES[0])
    assert json.dumps(build_request(case), sort_keys=True) == json.dumps(
        build_request(CASES[0]), sort_keys=True
    )
    when = build_request(case)["extension"]["ketamine-cds.evaluation-time"]
    assert datetime.fromisoformat(when.replace("Z", "+00:00")) == NOW
