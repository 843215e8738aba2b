"""Retrieval that does not over-filter (issue 8 item 6) and a site's own observation codes.

- the `assessments` template asks by code, so a PHQ-9 without `category: survey` is retrieved (real
  FHIR server) and read;
- a site maps a local code (a MADRS under its EHR's code) to an observation kind in site.yaml: it is
  read as that kind, discovery asks for it, and lint reports mistakes with file and line.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_service.cli import main
from cds_service.compact import build_request
from cds_service.engine.loader import RuleLoadError, load_ruleset
from cds_service.reading.facts import Facts
from cds_service.reading.prefetch import resolve_prefetch
from cds_service.reading.record import PatientRecord
from cds_service.services import PREFETCH, code_tokens, prefetch_for

from .conftest import RULES, load_example
from .record_support import LOCAL_FHIR

LOCAL = "urn:oid:1.2.840.114350.1.13.0.1.7.2.727688"  # an EHR's local flowsheet code system
CASE = {
    "id": "retrieval",
    "now": "2026-05-04T09:00:00Z",
    "hook": "patient-view",
    "patient": {"id": "ret1", "sex": "female", "age": 40},
    "conditions": [{"code": ["icd:F33.2"], "onset": "2024-11"}],
}


def phq9(pid: str, oid: str, value: int, when: str, **extra) -> dict:
    """A PHQ-9 total as some EHRs store it: no category at all."""
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}], "text": "PHQ-9 total"},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueInteger": value,
        **extra,
    }


def facts_for(request: dict, ruleset) -> Facts:
    result = resolve_prefetch(request, templates=prefetch_for(ruleset.observation_kinds), policy=LOCAL_FHIR)
    record = PatientRecord.from_prefetch(result.resources, request["context"])
    from cds_service.pipeline import evaluation_time

    return Facts(
        record,
        ruleset.terminology,
        ruleset.observation_kinds,
        evaluation_time(request, True),
        request["hook"],
    )


def test_assessments_template_filters_on_codes_not_on_category():
    template = PREFETCH["assessments"]
    assert "category=" not in template
    assert "44261-6" in template.split("code=")[1].split("&")[0].split(",")


def test_the_static_template_is_what_the_bundled_rules_derive():
    assert prefetch_for(load_ruleset(RULES).observation_kinds) == PREFETCH


def test_phq9_without_category_is_fetched_from_the_fhir_server_and_read(fhir_server):
    fhir_server.put_resources(
        [
            {"resourceType": "Patient", "id": "ret1", "gender": "female", "birthDate": "1986-01-01"},
            phq9("ret1", "ret1-phq-a", 21, "2026-03-01T10:00:00Z"),
            phq9("ret1", "ret1-phq-b", 17, "2026-04-20T10:00:00Z"),
        ]
    )
    request = build_request(CASE)
    del request["prefetch"]["assessments"]
    request["fhirServer"] = fhir_server.base_url
    facts = facts_for(request, load_ruleset(RULES))
    assert [o.value for o in facts.series("phq9")] == [21, 17]


# -- a site's own codes ----------------------------------------------------------------------------
@pytest.fixture
def site_rules(tmp_path: Path) -> Path:
    dest = tmp_path / "rules"
    shutil.copytree(RULES, dest)
    return dest


SITE_MAPPING = f"""jurisdiction: US
observation_codes:
  madrs:
    - {{system: "{LOCAL}", code: "3045", display: MADRS total score}}
"""


def madrs_local(pid: str) -> dict:
    return {
        "resourceType": "Observation",
        "id": "madrs-local-1",
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}
                ]
            }
        ],
        "code": {"coding": [{"system": LOCAL, "code": "3045", "display": "MADRS TOTAL"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2026-05-01T10:00:00Z",
        "valueInteger": 31,
    }


def test_a_site_maps_a_local_madrs_code(site_rules: Path):
    (site_rules / "site.yaml").write_text(SITE_MAPPING)
    ruleset = load_ruleset(site_rules)
    request = build_request(CASE)
    request["prefetch"]["assessments"]["entry"] = [{"resource": madrs_local("ret1")}]
    facts = facts_for(copy.deepcopy(request), ruleset)
    assert [(o.kind, o.value) for o in facts.series("madrs")] == [("madrs", 31)]
    # discovery asks for the site's code too
    assert f"{LOCAL}|3045" in prefetch_for(ruleset.observation_kinds)["assessments"]
    # without the mapping the observation is not a MADRS
    assert facts_for(copy.deepcopy(request), load_ruleset(RULES)).series("madrs") == []


def test_discovery_serves_the_site_codes(site_rules: Path, tmp_path: Path):
    from cds_service.app import create_app

    from .conftest import make_settings

    (site_rules / "site.yaml").write_text(SITE_MAPPING)
    app = create_app(make_settings(tmp_path, rules_dir=site_rules))
    services = app.test_client().get("/cds-services").get_json()["services"]
    assert all(f"{LOCAL}|3045" in s["prefetch"]["assessments"] for s in services)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            f'observation_codes:\n  madrs_total:\n    - {{system: "{LOCAL}", code: "3045"}}\n',
            "unknown observation kind 'madrs_total'",
        ),
        (
            'observation_codes:\n  madrs:\n    - {system: "http://loinc.org", code: "44261-6"}\n',
            "already a code of observation kind 'phq9'",
        ),
        (f'observation_codes:\n  madrs:\n    - {{system: "{LOCAL}"}}\n', "'code' is a required property"),
    ],
)
def test_lint_reports_mapping_mistakes_with_file_and_line(site_rules: Path, text: str, message: str):
    site = site_rules / "site.yaml"
    site.write_text("jurisdiction: US\n" + text)
    with pytest.raises(RuleLoadError) as info:
        load_ruleset(site_rules)
    problems = [p for p in info.value.problems if message in p]
    assert problems, info.value.problems
    m = re.search(r"site\.yaml:(\d+):", problems[0])
    assert m and int(m.group(1)) in (3, 4), problems[0]  # the mapping's line, not the file's top
    result = CliRunner().invoke(main, ["lint", "--rules", str(site_rules)])
    assert result.exit_code != 0 and message in result.output + (result.stderr or "")


# -- a server that stores codes in OID form --------------------------------------------------------
LOINC_OID = "urn:oid:2.16.840.1.113883.6.1"  # LOINC's OID (hl7.org/fhir/R4/terminologies-systems.html)


def oid_coded(name: str, pid: str) -> dict:
    """An example request for patient ``pid`` whose Observations name LOINC by its OID, as a CDA
    converter or an older EHR stores them (the reading layer accepts both spellings)."""
    text = json.dumps(load_example(name)).replace('"v04', f'"{pid}').replace("/v04", f"/{pid}")
    request = json.loads(text)
    for value in request["prefetch"].values():
        for entry in (value or {}).get("entry") or []:
            resource = entry["resource"]
            if resource["resourceType"] == "Observation":
                for coding in resource["code"]["coding"]:
                    if coding.get("system") == "http://loinc.org":
                        coding["system"] = LOINC_OID
    return request


def cards_of(app, body: dict) -> dict[str, tuple[str, str, str]]:
    resp = app.test_client().post(f"/cds-services/{body['hook']}", json=body)
    assert resp.status_code == 200, resp.get_json()
    return {
        c["source"]["topic"]["code"]: (c["indicator"], c["summary"], c.get("detail", ""))
        for c in resp.get_json()["cards"]
    }


def test_fetch_mode_finds_observations_stored_with_the_loinc_oid(fhir_server, app):
    """v04 (pregnant, PHQ-9 and C-SSRS recorded) on a server that stores LOINC as its OID: fetch
    mode finds the pregnancy status and the scores, and gives the cards of the example itself."""
    request = oid_coded("v04-pregnancy", "oid04")
    resources = [
        r
        for v in request["prefetch"].values()
        if v
        for r in ([e["resource"] for e in v.get("entry") or []] if v["resourceType"] == "Bundle" else [v])
    ]
    fhir_server.put_resources(resources)
    expected = cards_of(app, load_example("v04-pregnancy"))
    assert expected["ci-pregnancy"][0] == "critical" and "data-gaps" not in expected, expected
    assert 'pregnancy status "Pregnant"' in expected["ci-pregnancy"][2]
    body = {k: v for k, v in request.items() if k != "prefetch"}
    body["fhirServer"] = fhir_server.base_url
    assert cards_of(app, body) == expected


def test_templates_ask_for_loinc_codes_in_any_system_and_keep_other_systems():
    """A conformant EHR fills the template as it stands: a LOINC code is a bare token (any system
    spelling matches it), a code of another system keeps it (``3045`` alone would match any system's
    ``3045``), in each spelling (a SNOMED code also under SNOMED's OID)."""
    tokens = PREFETCH["pregnancyStatus"].split("code=")[1].split("&")[0].split(",")
    assert tokens == ["82810-3"]
    tokens = PREFETCH["assessments"].split("code=")[1].split("&")[0].split(",")
    assert "44261-6" in tokens and not any(t.startswith(("http://loinc.org|", LOINC_OID)) for t in tokens)
    assert "http://ketamine-cds.local/CodeSystem/assessment|madrs-total" in tokens
    codes = ["http://snomed.info/sct|77386006", f"{LOCAL}|3045", "http://loinc.org|LA15173-0"]
    assert code_tokens(codes) == (
        "http://snomed.info/sct|77386006,urn:oid:2.16.840.1.113883.6.96|77386006,"
        f"{LOCAL}|3045,http://loinc.org|LA15173-0,urn:oid:2.16.840.1.113883.6.1|LA15173-0"
    )


def test_a_site_code_for_pregnancy_status_is_asked_for_by_its_key(site_rules: Path):
    """A site's own pregnancy-status code goes into ``pregnancyStatus`` (it was asked for by no key)."""
    mapping = f'  pregnancy_status:\n    - {{system: "{LOCAL}", code: "9921"}}\n'
    (site_rules / "site.yaml").write_text(f"jurisdiction: US\nobservation_codes:\n{mapping}")
    templates = prefetch_for(load_ruleset(site_rules).observation_kinds)
    assert templates["pregnancyStatus"].split("code=")[1].split("&")[0] == f"82810-3,{LOCAL}|9921"
    assert f"{LOCAL}|9921" not in templates["assessments"]
