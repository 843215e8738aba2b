"""Card templates render as the plain Jinja sandbox renders them, only cheaper (issue 8: speed).

``engine/templating.py`` answers the sandbox's checks directly for plain dicts, loops and
``namespace()``, renders without copying the context, and renders once, at load, the texts that
read only their rule's own values. Each must give the sandbox's exact text, undefined names and
refusals included.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
from jinja2.sandbox import SandboxedEnvironment

from cds_service.engine.loader import load_ruleset
from cds_service.engine.templating import OPTIONS, TEMPLATES, fixed_text, render

from .conftest import RULES

PLAIN = SandboxedEnvironment(**OPTIONS)

CTX = {
    "m": {"name": "gabapentin <300> | mg", "dose": 300, "items": "shadowed?", "none": None},
    "xs": [3, 1, 2],
    "bound": {"meds": [{"ingredients": "a"}, {"ingredients": "b"}, {"ingredients": "a"}]},
    "s": "text",
}

TEMPLATES_TO_COMPARE = [
    "{{ m.name }} {{ m.dose }} {{ m.none }}",
    "{{ m.get('dose') }} {{ m.get('nowhere', 'n/a') }}",
    "{{ m['items'] }} / {{ m.items() | list | length }}",  # an item named like a dict method
    "{% for k, v in m.items() %}{{ k }}{% if not loop.last %}, {% endif %}{% endfor %}",
    "{% for x in xs %}{{ loop.index }}:{{ x }}{{ ',' if not loop.last }}{% endfor %}"
    " {{ xs | sort | join('-') }}",
    "{% for x in xs %}{{ loop.first }} {{ loop.length }} {{ loop.revindex0 }}"
    " {{ loop.cycle('a', 'b') }};{% endfor %}",
    "{% set ns = namespace(n=[]) %}{% for g in ['meds', 'other'] %}{% if g in bound %}"
    "{% set ns.n = ns.n + (bound[g] | map(attribute='ingredients') | list) %}{% endif %}{% endfor %}"
    "{{ ns.n | unique | join(', ') | truncate(50) }}",
    "{{ namespace(a=1).a }} {{ namespace({'b': 2}).b }}",
    "{{ s.upper() }} {{ '%s mg' % m.dose }} {{ '{} mg'.format(m.dose) }}",
    "{{ bound.meds | selectattr('ingredients', 'ne', 'b') | list | length }}"
    " {{ bound.meds | rejectattr('ingredients', 'eq', 'a') | map(attribute='ingredients') | first }}",
    "{{ xs | select('odd') | list }} {{ xs | reject('odd') | list }} {{ xs | sum }} {{ xs | first }}",
    "{% for g in bound.meds | groupby('ingredients') %}{{ g.grouper }}={{ g.list | length }};{% endfor %}"
    " {{ xs | slice(2) | list }} {{ xs | map('string') | join }}",
]
REFUSED = [
    "{{ m.__class__ }}",
    "{{ m._private }}",
    "{{ xs.__class__.__mro__ }}",
    "{% for x in xs %}{{ loop.__class__ }}{% endfor %}",
    "{% for x in xs %}{{ loop._iterator }}{% endfor %}",
    "{{ m.nowhere }}",
    "{% for x in xs %}{{ loop.nowhere }}{% endfor %}",
    "{{ ''.__class__ }}",
]


def plain(source: str) -> str:
    t = PLAIN.from_string(source)
    return t.render(CTX)


def ours(source: str) -> str:
    return render(TEMPLATES.from_string(source), {**TEMPLATES.globals, **CTX})


@pytest.mark.parametrize("source", TEMPLATES_TO_COMPARE)
def test_same_text_as_the_plain_sandbox(source):
    assert ours(source) == plain(source)


@pytest.mark.parametrize("source", REFUSED)
def test_same_refusals_as_the_plain_sandbox(source):
    with pytest.raises(jinja2.TemplateError) as expected:
        plain(source)
    with pytest.raises(jinja2.TemplateError) as got:
        ours(source)
    assert type(got.value) is type(expected.value)
    assert str(got.value) == str(expected.value)


def test_a_template_reading_only_its_rule_is_rendered_once():
    values = {"params": {"max_mg": 84}, "rule": {"id": "r", "title": "T"}}
    src = "Max {{ params.max_mg }} mg ({{ rule.id }}){% for i in range(2) %}.{% endfor %}"
    fixed = fixed_text(src, TEMPLATES.from_string(src), values)
    assert (
        fixed is not None and fixed.text == "Max 84 mg (r).." and fixed.names == {"params", "rule", "range"}
    )


@pytest.mark.parametrize(
    "src",
    [
        "{{ dose_mg }} mg",  # a binding: per patient
        "{% if critical %}x{% endif %}",  # the other cards of this response
        "{{ jurisdiction }}",  # the call's
        "{{ lipsum(1) }}",  # random
        "{{ [1, 2] | random }}",  # random
        "{{ params.nowhere }}",  # fails: logged per card, as before
    ],
)
def test_a_template_reading_anything_else_is_rendered_per_card(src):
    values = {"params": {"max_mg": 84}, "rule": {"id": "r", "title": "T"}}
    assert fixed_text(src, TEMPLATES.from_string(src), values) is None


def test_rules_with_fixed_texts_and_a_binding_that_shadows_a_global():
    from cds_service.cards import _rule_text
    from cds_service.engine.evaluate import Outcome
    from cds_service.engine.predicates import Result

    rs = load_ruleset(Path(RULES))
    fixed = [(r, k) for r in rs.rules for k in r.fixed]
    assert fixed, "the bundled rules have texts that read only their own values"
    rule, key = next((r, k) for r, k in fixed if not k.startswith("row:"))
    names = rule.fixed[key].names
    o = Outcome(rule, "fired", "", Result(True, {"unrelated": 1}))
    assert _rule_text(o, key, {}) == rule.fixed[key].text
    # a binding named like a global the text uses would change it: rendered per card then
    if names - {"params", "rule"}:
        shadow = next(iter(names - {"params", "rule"}))
        o = Outcome(rule, "fired", "", Result(True, {shadow: 1}))
        ctx = {
            **TEMPLATES.globals,
            shadow: 1,
            "params": rule.params,
            "rule": {"id": rule.id, "title": rule.title},
        }
        assert _rule_text(o, key, ctx) == render(rule.templates[key], ctx).strip()


def test_card_ids_are_random_version_4_uuids():
    import uuid

    from cds_service.cards import uuid4 as _uuid

    ids = {_uuid() for _ in range(5000)}
    assert len(ids) == 5000
    for text in ids:
        u = uuid.UUID(text)
        assert str(u) == text and u.version == 4 and u.variant == uuid.RFC_4122


def test_a_forked_worker_never_repeats_the_card_ids_of_another():
    """Cards drew their ids from a pool of their own that a fork copied (gunicorn workers forked
    from a parent that had rendered a card would hand out the same card uuids, and feedback is
    keyed by them); they use cds_service.ids, which forgets its bytes after a fork."""
    from cds_service import cards

    from .support.forks import child_and_parent_ids

    cards.uuid4()  # the pool now holds bytes not yet handed out
    child, parent = child_and_parent_ids(cards.uuid4)
    assert len(child) == 20 and not child & parent
