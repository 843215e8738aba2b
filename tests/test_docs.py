"""Every file and folder the README and docs point at exists (docs that drift are worse than none)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_service.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE_PATH = re.compile(
    r"`((?:rules|docs|bench|tests|tools|fhir_examples|fhir_server|cds_service|config|scripts)/[\w./-]*)`"
)


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_paths_named_in_docs_exist(doc: Path):
    text = doc.read_text()
    missing = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        if not (doc.parent / target).exists() and not (ROOT / target).exists():
            missing.append(target)
    for target in CODE_PATH.findall(text):
        if "*" in target or "<" in target:
            continue
        if not (ROOT / target.rstrip("/")).exists():
            missing.append(target)
    assert not missing, f"{doc.name} names paths that do not exist: {sorted(set(missing))}"


def test_every_cli_command_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in main.commands:
        assert f"ketamine-cds {name}" in readme, f"`ketamine-cds {name}` is not documented in the README"


def test_cli_help_works_for_every_command():
    runner = CliRunner()
    for name in main.commands:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
