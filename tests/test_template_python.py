"""Card templates translated to Python give Jinja's text, or leave the render to Jinja (issue 8: speed).

``engine/template_python.py`` compiles the Jinja subset the rule files use into plain Python at
load; anything outside it is not translated, and a render meeting anything undefined stops and is
rendered by Jinja. These tests hold the translation to the sandbox's exact text: on the constructs
one by one, and on every template render of every rule-test vignette and FHIR example.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest

from cds_service import cards, pipeline
from cds_service.config import Settings
from cds_service.engine import templating
from cds_service.engine.loader import load_ruleset
from cds_service.engine.template_python import Fallback, card_template, compile_template
from cds_service.engine.templating import TEMPLATES, render, render_jinja
from cds_service.rule_tests import RuleSets, default_case_files, load_case_file, run_case
from cds_service.services import SERVICES
from cds_service.validation import validate_request

from .conftest import RULES
from .test_card_templating import CTX, REFUSED, TEMPLATES_TO_COMPARE

EXAMPLES = Path(__file__).resolve().parent.parent / "fhir_examples"

CONSTRUCTS = [
    "{% for x in xs if x > 1 %}{{ loop.index0 }}/{{ loop.revindex }}={{ x }} {% else %}none{% endfor %}",
    "{% for x in [] %}{{ x }}{% else %}empty {{ s }}{% endfor %}",
    "{% for a in xs %}{% for b in xs %}{{ loop.index }}{% endfor %}|{{ loop.last }} {% endfor %}",
    "{% set s = 'top' %}{{ s }}{% for s in xs %}{{ s }}{% endfor %}{{ s }}",  # a loop var shadows
    "{{ s }}{% if xs %}{% set s = 'set in if' %}{% endif %}{{ s }}",  # before the set: the context's
    "{% if nowhere is defined %}a{% elif m.name is defined and m.nowhere is undefined %}b{% endif %}",
    "{{ m['dose'] is defined }} {{ m['nowhere'] is defined }} {{ s is defined }} {{ xs[0] is defined }}",
    "{{ 'up to %s' % m.dose if m.dose }}|{{ 'x' if m.none }}|{{ 'y' if m.none else 'z' }}",
    "{{ '<b>|' }} <literal|text> {{ m.name }} {{ m.none }} {{ 3 / 2 }} {{ 7 // 2 }} {{ -m.dose }}",
    "{{ xs[1:] }} {{ xs[:-1] | join(',') }} {{ s ~ m.dose ~ m.none }} {{ 1 < m.dose <= 300 }}",
    "{{ 2 in xs }} {{ 9 not in xs }} {{ m.none is none }} {{ not xs and s or 'alt' }} {{ {'a': 1}.a }}",
    "{{ (1, 2) | list }} {{ [m.dose, s] | join(' ') }} {{ m.dose | round(1) }} {{ '4.7' | float | int }}",
    "{{ bound['meds'] | map(attribute='ingredients') | unique | list | length }} {{ xs | max }}",
    "{% for i in range(3) %}{{ i }}{% endfor %} {{ dict(a=1).a }} {{ range(2) | list }}",
    # a set inside a loop is the iteration's own; before it, the outer value (Jinja's scoping)
    "{% for x in xs %}{% if x == 2 %}{% set s = x %}{% endif %}{{ s }}{% endfor %}{{ s }}",
    "{% for x in xs %}{{ s }}{% set s = x %}{{ s }}{% endfor %}{{ s }}",
    "{% set s = 'top' %}{% for x in xs %}{% set s = s ~ x %}{{ s }};{% endfor %}{{ s }}",
    "{% set ns = namespace(n=0) %}{% for x in xs %}{% set k = x * 2 %}{% set ns.n = ns.n + k %}"
    "{% for y in [k] %}{{ loop.index }}{{ y }}{% endfor %}{% endfor %}{{ ns.n }}",
]
#: Outside the subset: Jinja renders them (macros, a set in a loop, loop.cycle, a method that
#: changes its value, a template's own filter blocks).
NOT_TRANSLATED = [
    "{% macro f(x) %}{{ x }}{% endmacro %}{{ f(1) }}",
    "{% for x in xs %}{{ loop.cycle('a', 'b') }}{% endfor %}",
    "{{ xs.append(4) }}",
    "{% filter upper %}x{% endfilter %}",
    "{{ xs | batch(2) | list }}",
]
#: Undefined on the way: the translation stops, Jinja gives the text or the error.
UNDEFINED = [
    "{{ m.nowhere | default('fallback') }}",
    "{% for x in xs %}{% set y = x %}{% endfor %}{{ y | default('loop-local') }}",
    # a name set at the top level after a loop is missing inside it until set, not the context's
    "{% for x in xs %}{% if x == 2 %}{% set s = x %}{% endif %}{{ s | default('-') }}{% endfor %}"
    "{% set s = 'late' %}{{ s }}",
    "{{ nowhere | default(m.name) }}",
    "{% if m.nowhere is none %}none{% else %}not none{% endif %}",
]


def ctx() -> dict:
    return {**TEMPLATES.globals, **json.loads(json.dumps(CTX))}


@pytest.mark.parametrize("source", TEMPLATES_TO_COMPARE + CONSTRUCTS + UNDEFINED)
def test_the_translation_gives_jinjas_text(source):
    template = card_template(source)
    assert render(template, ctx()) == render_jinja(template, ctx())


@pytest.mark.parametrize("source", CONSTRUCTS)
def test_the_subset_is_translated(source):
    template = card_template(source)
    assert template.python is not None
    assert template.python(ctx()) == render_jinja(template, ctx())


@pytest.mark.parametrize("source", NOT_TRANSLATED)
def test_outside_the_subset_jinja_renders(source):
    assert compile_template(source) is None
    context = ctx()
    assert render(card_template(source), context) == render_jinja(TEMPLATES.from_string(source), ctx())


@pytest.mark.parametrize("source", UNDEFINED)
def test_undefined_stops_the_translation(source):
    template = card_template(source)
    assert template.python is not None
    with pytest.raises((Fallback, KeyError)):  # a missing key or attribute
        template.python(ctx())


@pytest.mark.parametrize("source", REFUSED + ["{{ nowhere }}", "{{ m.name.nowhere }}"])
def test_jinjas_errors_stay_jinjas(source):
    template = card_template(source)
    with pytest.raises(jinja2.TemplateError) as expected:
        render_jinja(template, ctx())
    with pytest.raises(jinja2.TemplateError) as got:
        render(template, ctx())
    assert type(got.value) is type(expected.value) and str(got.value) == str(expected.value)


def test_a_render_that_stops_leaves_its_values_as_they_were():
    """Jinja renders again what the translation began: nothing it did may show."""
    source = (
        "{% set ns = namespace(n=[]) %}{% for g in ['meds', 'other'] %}{% if g in bound %}"
        "{% set ns.n = ns.n + (bound[g] | map(attribute='ingredients') | list) %}{% endif %}{% endfor %}"
        "{{ ns.n | join(',') }} {{ m.nowhere | default('-') }}"
    )
    context = ctx()
    before = json.dumps(context["bound"])
    assert render(card_template(source), context) == "a,b,a -"
    assert json.dumps(context["bound"]) == before


def test_every_bundled_template_is_translated():
    """A template the translation does not cover still renders (by Jinja), only slower: this
    says which, so that the subset grows with what the rule files use."""
    rs = load_ruleset(RULES)
    templates = [(r.id, k, t) for r in rs.rules for k, t in [*r.templates.items(), *r.row.items()]]
    templates += [
        (p.id, k, t) for p in rs.panels.values() for k, t in (("summary", p.summary), ("detail", p.detail))
    ]
    assert templates
    assert [(rid, key) for rid, key, t in templates if t.python is None] == []


def test_every_vignette_render_is_jinjas_text(monkeypatch):
    """Each template render of the rule tests and the FHIR examples, translated and by Jinja."""
    renders: list[tuple[str, str]] = []
    stopped = []

    def both(template, context):
        expected = render_jinja(template, context)
        if template.python is None:  # Jinja's (test_every_bundled_template_is_translated)
            return expected
        try:
            renders.append((template.python(context), expected))
        except Exception:  # noqa: BLE001 - counted: Jinja renders these
            stopped.append(template)
        return expected

    monkeypatch.setattr(cards, "render", both)
    monkeypatch.setattr(templating, "render", both)
    rulesets = RuleSets(RULES)
    for path in default_case_files(RULES):
        for case, line in load_case_file(path):
            run_case(case, rulesets, file=str(path), line=line)
    settings = Settings(rules_dir=RULES, allow_time_override=True)
    for path in sorted(EXAMPLES.glob("*.json")):
        request = json.loads(path.read_text())
        pipeline.run(validate_request(request, SERVICES[request["hook"]]), rulesets.get({}), settings)
    assert len(renders) > 500
    assert [pair for pair in renders if pair[0] != pair[1]] == []
    assert len(stopped) <= len(renders) // 20  # undefined values are rare in what rules render
