"""Which rule set is serving: a content fingerprint, and no silent success on an empty rule set.

The fingerprint must be the same for the same rules in any folder, after ``touch`` and with CRLF
line endings (a Windows checkout), and it must reach /healthz, the pages, every card and every log line.
``lint`` and ``test-rules`` must fail when there is nothing to check.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_service.app import create_app
from cds_service.cli import main
from cds_service.engine.loader import fingerprint, load_ruleset

from .conftest import RULES, load_example, make_settings


def _copy(dest: Path) -> Path:
    # shutil.copy, not copy2: new modification times, as a fresh clone or an image build gives
    shutil.copytree(RULES, dest, copy_function=shutil.copy)
    return dest


def test_fingerprint_is_the_content_not_the_folder_or_the_mtimes(tmp_path: Path) -> None:
    original = fingerprint(RULES, RULES / "site.yaml")
    copy = _copy(tmp_path / "a" / "rules")
    assert fingerprint(copy, copy / "site.yaml") == original
    for p in copy.rglob("*.yaml"):
        os.utime(p, (1_000_000_000, 1_000_000_000))  # touch to another time
    assert fingerprint(copy, copy / "site.yaml") == original
    crlf = _copy(tmp_path / "b" / "rules")
    for p in crlf.rglob("*.yaml"):
        p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))
    assert fingerprint(crlf, crlf / "site.yaml") == original
    # the site file is named site.yaml wherever it lives
    elsewhere = tmp_path / "site-elsewhere.yaml"
    shutil.copy(RULES / "site.yaml", elsewhere)
    assert fingerprint(copy, elsewhere) == original
    assert load_ruleset(copy).fingerprint == original
    assert len(original) == 64 and int(original, 16) >= 0


def test_fingerprint_changes_with_content_names_and_files(tmp_path: Path) -> None:
    copy = _copy(tmp_path / "rules")
    site = copy / "site.yaml"
    seen = {fingerprint(copy, site)}
    dosing = copy / "dosing.yaml"
    dosing.write_bytes(dosing.read_bytes() + b"# a comment is a change of the audited text\n")
    seen.add(fingerprint(copy, site))
    (copy / "valuesets" / "tca.yaml").rename(copy / "valuesets" / "tca-renamed.yaml")
    seen.add(fingerprint(copy, site))
    (copy / "valuesets" / "tca-renamed.yaml").unlink()
    seen.add(fingerprint(copy, site))
    site.write_text(site.read_text() + "\n# site note\n")
    seen.add(fingerprint(copy, site))
    assert len(seen) == 5
    # rule tests are not part of the served rule set
    before = fingerprint(copy, site)
    (copy / "tests" / "extra.yaml").write_text("cases: []\n")
    assert fingerprint(copy, site) == before


def test_fingerprint_on_healthz_pages_cards_and_every_log_line(
    tmp_path: Path, json_stderr: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(tmp_path / "copied-rules")
    version = fingerprint(RULES, RULES / "site.yaml")[:12]
    app = create_app(make_settings(tmp_path, rules_dir=copy, log_level="INFO"))
    try:
        with app.test_client() as c:
            health = c.get("/healthz").get_json()
            assert health["fingerprint"] == fingerprint(RULES, RULES / "site.yaml")
            assert health["rules_version"] == version
            for page in ("/", "/rules"):
                assert version in c.get(page).get_data(as_text=True), page
            body = load_example("v01-clear-trd-eligible")
            resp = c.post("/cds-services/order-sign", json=body)
            assert resp.status_code == 200
            cards = resp.get_json()["cards"]
            assert cards
            for card in cards:
                assert card["extension"]["ketamine-cds.rules-version"] == version
    finally:
        app.extensions["ketamine_cds"].store.close()
    lines = [json.loads(line) for line in json_stderr.readouterr().err.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "cds_call" for line in lines)
    assert lines and all(line.get("rules_version") == version for line in lines), lines


# -- nothing to check is a failure ------------------------------------------------------------------
def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _without_rules(tmp_path: Path) -> Path:
    """Terminology, value sets, common.yaml and site.yaml, but no rule file."""
    copy = _copy(tmp_path / "rules")
    for p in copy.glob("*.yaml"):
        if p.name not in ("common.yaml", "site.yaml"):
            p.unlink()
    return copy


@pytest.mark.parametrize("command", ["lint", "test-rules"])
def test_missing_rules_folder_fails(command: str, tmp_path: Path) -> None:
    code, output = _run(command, "--rules", str(tmp_path / "nowhere"))
    assert code != 0
    assert "not found" in output


@pytest.mark.parametrize("command", ["lint", "test-rules"])
def test_empty_rules_folder_fails(command: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, output = _run(command, "--rules", str(tmp_path / "empty"))
    assert code != 0, output


@pytest.mark.parametrize("command", ["lint", "test-rules"])
def test_rule_set_without_rules_fails(command: str, tmp_path: Path) -> None:
    code, output = _run(command, "--rules", str(_without_rules(tmp_path)))
    assert code != 0, output
    assert "no rules" in output


def test_test_rules_without_cases_fails(tmp_path: Path) -> None:
    copy = _copy(tmp_path / "rules")
    shutil.rmtree(copy / "tests")
    code, output = _run("test-rules", "--rules", str(copy))
    assert code != 0
    assert "no rule tests" in output
    code, output = _run("test-rules", "--rules", str(RULES), "-k", "no-case-has-this-id")
    assert code != 0
    assert "no rule tests" in output


def test_the_bundled_rules_still_pass() -> None:
    code, output = _run("lint")
    assert code == 0, output
