"""Card text over every example and rule-test case: what a prescriber reads (issue 9)."""

from __future__ import annotations

import re

import pytest

from cds_service.rule_tests import RuleSets, default_case_files, load_case_file, run_case

from .conftest import RULES

_rulesets = RuleSets(RULES)
CASES = [(case, path, line) for path in default_case_files(RULES) for case, line in load_case_file(path)]
RESULTS = {case["id"]: run_case(case, _rulesets, file=str(path), line=line) for case, path, line in CASES}
CARDS = [(cid, c) for cid, r in RESULTS.items() for c in r.cards]
REMS_URL = "accessdata.fda.gov/scripts/cder/rems"


def _text(card: dict) -> str:
    return f"{card['summary']}\n{card.get('detail') or ''}"


def test_cards_cite_publications_not_internal_names():
    for cid, card in CARDS:
        text = _text(card)
        for internal in ("seed 00", "knowledge.md", "Table 3", "evidence: seed-only"):
            assert internal not in text, (cid, card["source"]["topic"]["code"], internal)


def test_unverified_sources_say_unverified_in_words():
    cards = [c for _, c in CARDS if "Berthold-Losleben" in _text(c) and "protocol" in _text(c)]
    assert cards
    assert all("unverified" in _text(c) for c in cards)


def test_data_gap_cards_do_not_cite_the_rems_page():
    gaps = [c for _, c in CARDS if c["source"]["topic"]["code"] == "data-gaps"]
    assert gaps
    assert not [c for c in gaps if REMS_URL in (c["source"].get("url") or "")]


DOUBLED = re.compile(r"(\b[\w][\w .,/()\[\]-]{10,}?) \1\b")


def test_no_name_is_written_twice():
    for cid, card in CARDS:
        m = DOUBLED.search(_text(card))
        assert m is None, (cid, card["source"]["topic"]["code"], m and m.group(0))


def test_value_set_titles_keep_their_case():
    card = next(
        c
        for c in RESULTS["value-set-title-keeps-its-case"].cards
        if c["source"]["topic"]["code"] == "data-gaps"
    )
    assert "MAOIs" in card["summary"] and "maois" not in card["summary"]


RAW_FLOAT = re.compile(r"(?<![\w.:/])\d+\.\d{3,}(?![\w/.])")  # not a DOI or URL part


@pytest.mark.parametrize("part", ["summary", "detail"])
def test_measured_values_are_rounded_as_clinicians_write_them(part):
    for cid, card in CARDS:
        text = card.get(part) or ""
        assert not RAW_FLOAT.search(text), (
            cid,
            card["source"]["topic"]["code"],
            RAW_FLOAT.search(text).group(0),
        )
    summary = " ".join(c["summary"] for c in RESULTS["measured-values-as-clinicians-write-them"].cards)
    assert "BP 152/95" in summary and "98.3 kg" in summary


def test_reassurance_is_not_shown_beside_a_critical_card():
    reassuring = (
        "within the label",
        "in the studied range",
        "a labelled dose",
        "the third-line option applies",
    )
    for cid, result in RESULTS.items():
        if any(c["indicator"] == "critical" for c in result.cards):
            for c in result.cards:
                for words in reassuring:
                    assert words not in _text(c), (cid, c["source"]["topic"]["code"], words)


def test_render_keeps_the_sandbox_and_leaves_the_context_alone() -> None:
    """cards._render skips Template.render's copies of the context (issue 8): same output, the
    sandbox still refuses unsafe attributes, undefined names still fail, ``set`` stays local."""
    from cds_service.cards import _render
    from cds_service.engine.templating import TEMPLATES

    ctx = {**TEMPLATES.globals, "dose": 56, "hook": "order-sign"}  # as cards._base_context builds it
    before = dict(ctx)
    text = TEMPLATES.from_string(
        "{% set n = dose * 2 %}{{ n }} mg {{ hook }} {% for i in range(2) %}{{ i }}{% endfor %}"
    )
    assert _render(text, ctx, "r") == "112 mg order-sign 01" == text.render(ctx).strip()
    assert ctx == before
    assert _render(TEMPLATES.from_string("{{ hook.__class__ }}"), ctx, "r") == ""
    assert _render(TEMPLATES.from_string("{{ nowhere }}"), ctx, "r") == ""


@pytest.mark.parametrize("name", ["v01-clear-trd-eligible", "v07-daily-lorazepam", "v13-missing-data"])
def test_explanations_are_what_each_rule_bound(name: str) -> None:
    """Bound facts several rules share (the TRD picture, the order) are converted once per
    response (issue 8); every card's explanation is still exactly its rules' own facts."""
    import json as _json

    from cds_service import pipeline
    from cds_service.cards import EXPLANATION, _explanation
    from cds_service.config import Settings
    from cds_service.engine.loader import load_ruleset

    from .conftest import load_example

    body = load_example(name)
    rs = load_ruleset(RULES, RULES / "site.yaml")
    out = pipeline.run(body, rs, Settings(rules_dir=RULES, allow_time_override=True))
    by_id = {o.rule.id: o for o in out.evaluation.outcomes}
    checked = 0
    for card in out.response["cards"]:
        rules = card["extension"][EXPLANATION]["rules"]
        alone = _explanation([by_id[r["rule"]] for r in rules])["rules"]  # converted without sharing
        assert _json.loads(_json.dumps(rules)) == _json.loads(_json.dumps(alone))
        checked += sum(1 for r in rules if "facts" in r)
    assert checked


REFERENCE = re.compile(
    r"(?<![\w/.])(Patient|Condition|Medication\w*|Observation|Procedure|AllergyIntolerance|Encounter)/[\w.-]+"
)


def test_no_card_names_a_record_by_its_id():
    """A card names the kind of record and why, never its reference (the explanation's evidence does)."""
    for cid, card in CARDS:
        m = REFERENCE.search(_text(card))
        assert m is None, (cid, card["source"]["topic"]["code"], m and m.group(0))
