"""tools/build_terminology.py: the committed terminology is what the generator writes from the
shared sources and tools/external_codes.yaml, and a code listed there as unverified is refused."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, RULES

SHARED = ROOT.parent / "shared"


def build_terminology():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import build_terminology
    finally:
        sys.path.pop(0)
    return build_terminology


@pytest.fixture(scope="module")
def tool():
    if not (SHARED / "clinical" / "codes.csv").is_file():
        pytest.skip(f"the shared clinical sources are not beside the repository ({SHARED})")
    return build_terminology()


@pytest.fixture(scope="module")
def sources(tool):
    return tool.load_sources(SHARED)


def test_committed_terminology_matches_its_sources(tool, sources):
    assert tool.check(sources, RULES) == []


def test_every_external_code_has_a_cited_source(tool):
    external = tool.load_external()
    for kind in ("ingredient_codes", "multiple_ingredients", "products", "ndc", "codes"):
        for row in external[kind]:
            assert row["status"] in ("V", "V1"), (kind, row["code"])
            assert all(external["sources"][k]["cite"] for k in row["sources"]), (kind, row["code"])


def test_a_code_listed_as_unverified_is_refused_wherever_it_appears(tool, sources, tmp_path: Path):
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    meds = rules / "terminology" / "medications.yaml"
    text = meds.read_text(encoding="utf-8")
    text = text.replace(
        "products:\n",
        'products:\n  "8124":\n    display: "phenelzine sulfate"\n    ingredients: [phenelzine]\n'
        "    status: W\n    source: a secondary site\n",
        1,
    )
    meds.write_text(text, encoding="utf-8")
    problems = tool.check(sources, rules)
    assert any("product 8124 is listed as unverified" in p for p in problems)
