"""Rule loading: every problem at once with file, line and rule id; refusal to start; hot reload."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from cds_service.app import create_app
from cds_service.engine.loader import RuleLoadError, load_ruleset

from .conftest import RULES, load_example, make_settings


@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "rules"
    shutil.copytree(RULES, dest)
    return dest


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_every_problem_is_listed_with_file_line_and_rule(rules_copy: Path):
    ci = rules_copy / "contraindications.yaml"
    edit(ci, "        - age: {lt: $min_age}", "        - age_in_years: {lt: $min_age}")  # unknown predicate
    edit(
        ci, "condition: {valueset: breastfeeding, active_only: true}", "condition: {valueset: breast-feeding}"
    )
    dosing = rules_copy / "dosing.yaml"
    edit(dosing, "      url: https://www.nature.com/articles/s41380-018-0256-5\n", "")  # source without url
    edit(rules_copy / "interactions.yaml", "  - id: ddi-lamotrigine", "  - id: ddi-maoi")  # duplicate id
    (rules_copy / "broken.yaml").write_text("rules:\n  - id: x\n    title: [unclosed\n")

    with pytest.raises(RuleLoadError) as info:
        load_ruleset(rules_copy)
    problems = info.value.problems
    text = "\n".join(problems)
    assert len(problems) >= 5, text
    assert re.search(
        rf"contraindications.yaml:{line_of(ci, 'age_in_years')}: \[rule ci-age-under-18\]"
        r".*unknown predicate 'age_in_years'",
        text,
    ), text
    assert re.search(
        rf"contraindications.yaml:{line_of(ci, 'breast-feeding')}: \[rule ci-breastfeeding\]"
        r".*unknown value set 'breast-feeding'",
        text,
    ), text
    assert re.search(r"dosing.yaml:\d+: \[rule dose-ketamine-high\].*'url' is a required property", text), (
        text
    )
    assert re.search(r"interactions.yaml:\d+: \[rule ddi-maoi\] duplicate rule id", text), text
    assert re.search(r"broken.yaml:\d+: YAML syntax", text), text


def test_a_rule_without_source_or_evidence_is_rejected(rules_copy: Path):
    edit(rules_copy / "monitoring.yaml", "      evidence: regulatory-label\n", "")
    with pytest.raises(RuleLoadError) as info:
        load_ruleset(rules_copy)
    assert any(
        "[rule monitoring-esketamine-rems]" in p and "'evidence' is a required property" in p
        for p in info.value.problems
    )


def test_site_config_errors_are_reported(rules_copy: Path):
    (rules_copy / "site.yaml").write_text(
        "jurisdiction: US\nparams: {trd_min_weeks: 6}\nrules:\n  no-such-rule: {enabled: false}\n"
        "  ci-blood-pressure: {params: {warn_sistolic: 150}}\n"
    )
    with pytest.raises(RuleLoadError) as info:
        load_ruleset(rules_copy)
    text = "\n".join(info.value.problems)
    assert "unknown shared parameter 'trd_min_weeks'" in text
    assert "unknown rule 'no-such-rule'" in text
    assert "unknown parameter 'warn_sistolic'" in text


def test_norway_must_be_quoted(rules_copy: Path):
    """YAML reads an unquoted NO as false; the schema catches it instead of silently mis-keying."""
    edit(rules_copy / "frameworks.yaml", 'jurisdictions: ["NO"]', "jurisdictions: [NO]")
    with pytest.raises(RuleLoadError) as info:
        load_ruleset(rules_copy)
    assert any("framework-norway" in p and "False" in p for p in info.value.problems)


def test_service_refuses_to_start_on_invalid_rules(rules_copy: Path, tmp_path: Path):
    edit(rules_copy / "trd.yaml", "indicator: info", "indicator: loud")
    with pytest.raises(RuleLoadError):
        create_app(make_settings(tmp_path, rules_dir=rules_copy))


def test_hot_reload_picks_up_a_change_and_keeps_serving_on_an_invalid_one(rules_copy, tmp_path, caplog):
    app = create_app(make_settings(tmp_path, rules_dir=rules_copy, hot_reload=True))
    provider = app.extensions["ketamine_cds"].rules
    provider.interval = 0
    body = json.dumps(load_example("v04-pregnancy"))

    def pregnancy_summary(client) -> str:
        resp = client.post("/cds-services/order-sign", data=body, content_type="application/json")
        assert resp.status_code == 200
        return next(
            c["summary"] for c in resp.get_json()["cards"] if c["source"]["topic"]["code"] == "ci-pregnancy"
        )

    ci = rules_copy / "contraindications.yaml"
    with app.test_client() as c:
        assert pregnancy_summary(c).startswith("Pregnancy recorded")
        edit(ci, 'summary: "Pregnancy recorded:', 'summary: "Pregnant (edited):')
        assert pregnancy_summary(c).startswith("Pregnant (edited)")

        edit(ci, "indicator: critical", "indicator: catastrophic")
        with caplog.at_level(logging.ERROR):
            assert pregnancy_summary(c).startswith("Pregnant (edited)"), "the previous rule set keeps serving"
        assert any("rule set change rejected" in r.getMessage() for r in caplog.records)
        assert any("catastrophic" in r.getMessage() for r in caplog.records)
        health = c.get("/healthz").get_json()
        assert health["rejected_rule_change"] >= 1

        edit(ci, "indicator: catastrophic", "indicator: critical")
        assert pregnancy_summary(c).startswith("Pregnant (edited)")
        assert "rejected_rule_change" not in c.get("/healthz").get_json()


def test_a_panel_lead_must_be_a_rule(rules_copy: Path):
    edit(rules_copy / "common.yaml", "    lead: [trd-met]", "    lead: [trd-mett]")
    with pytest.raises(RuleLoadError) as info:
        load_ruleset(rules_copy)
    assert any("common.yaml" in p and "lead 'trd-mett' is not a rule" in p for p in info.value.problems)


def test_hot_reload_looks_at_the_files_at_most_once_per_interval(monkeypatch, rules_copy):
    """Calls in between serve the current rule set without a stat; a check with nothing changed
    stats the files but computes no fingerprint (issue 8: per-call cost); any change is seen."""
    import os

    from cds_service import ruleset_provider
    from cds_service.ruleset_provider import RuleSetProvider

    looks: list[Path] = []
    real = ruleset_provider.fingerprint
    monkeypatch.setattr(ruleset_provider, "fingerprint", lambda d, s: looks.append(d) or real(d, s))
    provider = RuleSetProvider(rules_copy, rules_copy / "site.yaml", interval=3600)
    first = provider.get()
    assert all(provider.get() is first for _ in range(200))
    provider.interval = 0
    assert all(provider.get() is first for _ in range(20))
    assert looks == []

    trd = rules_copy / "trd.yaml"
    os.utime(trd, ns=(trd.stat().st_atime_ns, trd.stat().st_mtime_ns + 10**9))  # touched, same bytes
    assert provider.get() is first  # same content: fingerprinted, not reloaded
    assert len(looks) == 1
    (rules_copy / "valuesets" / "notes.txt").write_text("not a rule file")  # the folder changed
    provider.get()
    assert len(looks) == 2
    new_folder = rules_copy / "terminology" / "local"
    new_folder.mkdir()
    provider.get()
    (new_folder / "extra.yaml").write_text("# nothing yet\n")  # a file in a folder created since
    provider.get()
    assert len(looks) == 4
    current = provider.get()  # a new (empty) rule file: a new rule set, or one rejected and logged
    assert provider.get() is current and len(looks) == 4
