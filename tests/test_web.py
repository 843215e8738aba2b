"""The built-in pages (overview, rule catalogue, playground) through the Flask test client.

The playground must show what the CDS endpoint returns, so several tests compare the two.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape

from cds_service import web
from cds_service.app import create_app
from cds_service.engine.loader import RuleSet
from cds_service.services import SERVICES
from cds_service.web import JURISDICTIONS, render_markdown

from .conftest import RULES, CheckedClient, example_names, load_example, make_settings


def esc(text: str) -> str:
    """Text as Jinja's autoescape writes it."""
    return str(escape(text))


INJECTION = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app for the module: loading the rule set takes seconds and these pages only read it."""
    app = create_app(make_settings(tmp_path_factory.mktemp("web")))
    app.test_client_class = CheckedClient
    yield app
    app.extensions["ketamine_cds"].store.close()


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def page(client: FlaskClient, url: str, status: int = 200, **kw: Any) -> str:
    resp = client.get(url, **kw)
    assert resp.status_code == status, resp.get_data(as_text=True)[:2000]
    assert resp.mimetype == "text/html"
    return resp.get_data(as_text=True)


def ruleset(app: Flask) -> RuleSet:
    return app.extensions["ketamine_cds"].rules.get()


def articles(body: str) -> dict[str, str]:
    """The catalogue's rule articles by rule id."""
    out = {}
    for chunk in body.split('<article class="rule')[1:]:
        rid = re.search(r'id="([^"]+)"', chunk)
        assert rid
        out[rid.group(1)] = chunk.split("</article>")[0]
    return out


def cards_on_page(body: str) -> list[dict[str, str]]:
    """Indicator, rule/panel topic and summary of every card the playground shows, in order."""
    pattern = re.compile(
        r'<article class="cds-card card-(\w+)" data-indicator="\w+"\s+data-topic="([^"]*)">.*?'
        r'<span class="summary">(.*?)</span>',
        re.S,
    )
    return [{"indicator": i, "topic": t, "summary": html.unescape(s)} for i, t, s in pattern.findall(body)]


def api_cards(client: FlaskClient, name: str, jurisdiction: str | None = None) -> list[dict[str, Any]]:
    """The same request through the CDS endpoint (only for the site's own jurisdiction)."""
    body = load_example(name)
    resp = client.post(f"/cds-services/{body['hook']}", json=body)
    assert resp.status_code == 200
    return resp.get_json()["cards"]


# -- every page -------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/", "/rules", "/playground", "/playground?example=v04-pregnancy"])
def test_pages_are_html_with_no_external_resources(client, url):
    resp = client.get(url)
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    body = resp.get_data(as_text=True)
    assert "<script src" not in body and 'rel="stylesheet"' not in body
    assert not re.search(r'\s(src|srcset)="(https?:)?//', body), "no external images or scripts"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "https:" not in csp
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and f'nonce="{nonce.group(1)}"' in body, "inline style carries the per-response nonce"


def test_overview_describes_the_services_and_discovery_url(client):
    body = page(client, "/")
    assert "http://localhost/cds-services" in body
    for service in SERVICES.values():
        d = service.discovery()
        for text in (d["id"], d["hook"], d["title"], d["description"]):
            assert esc(text) in body
        for key, template in d["prefetch"].items():
            assert f"<code>{key}</code>" in body
            assert esc(template) in body
    assert 'href="/rules"' in body and 'href="/playground"' in body


def test_overview_uses_public_base_url(app, client, monkeypatch):
    state = app.extensions["ketamine_cds"]
    monkeypatch.setattr(
        state, "settings", replace(state.settings, public_base_url="https://cds.example.org/")
    )
    assert "https://cds.example.org/cds-services" in page(client, "/")


def test_cds_endpoints_keep_json_errors(client):
    """The pages' HTML error handler must not change the API's error bodies."""
    resp = client.get("/no-such-page")
    assert resp.status_code == 404 and resp.is_json
    resp = client.post("/cds-services/order-sign", data="{", content_type="application/json")
    assert resp.status_code == 400 and resp.is_json


# -- catalogue --------------------------------------------------------------------------------------
def test_catalogue_lists_every_rule_value_set_and_observation_kind(app, client):
    body = page(client, "/rules")
    rs = ruleset(app)
    found = articles(body)
    assert sorted(found) == sorted(r.id for r in rs.rules)
    for rule in rs.rules:
        a = found[rule.id]
        assert esc(rule.title) in a
        assert esc(rule.source["label"]) in a
        assert f'href="{esc(rule.source["url"])}"' in a
        assert f"{rule.file}:{rule.line}" in a
        for hook in rule.hooks:
            assert f"<code>{hook}</code>" in a
        for need in rule.needs:
            assert need.partition(":")[2] in a
    for file in {r.file for r in rs.rules}:
        assert f'id="file-{file}"' in body
    for vs in rs.terminology.valuesets.values():
        row = re.search(rf'<tr id="vs-{re.escape(vs.id)}">(.*?)</tr>', body, re.S)
        assert row, vs.id
        assert esc(vs.title) in row.group(1) and f">{vs.size}<" in row.group(1)
    for kind in rs.observation_kinds:
        assert f'id="obs-{kind}"' in body
    assert f"<strong>{rs.jurisdiction}</strong>" in body


def test_catalogue_flags_seed_only_unverified_and_not_verified_sources(app, client):
    found = articles(page(client, "/rules"))
    rs = ruleset(app)
    seen = {"seed-only": 0, "unverified": 0, "not-verified": 0}
    for rule in rs.rules:
        sources = [rule.source, *rule.also_cites]
        a = found[rule.id]
        for evidence in ("seed-only", "unverified"):
            expected = sum(s["evidence"] == evidence for s in sources)
            assert a.count(f'class="flag flag-{evidence}"') == expected, (rule.id, evidence)
            seen[evidence] += expected
        expected = sum(s.get("verified") is False for s in sources)
        assert a.count('class="flag flag-not-verified"') == expected, rule.id
        seen["not-verified"] += expected
    assert seen["seed-only"] > 0, "the bundled rules cite seed-only sources; the catalogue must flag them"


def test_catalogue_shows_site_overrides(project_client):
    body = page(project_client, "/rules")
    found = articles(body)
    assert 'class="flag flag-disabled"' in found["framework-canmat-2021"]
    preg = found["ci-pregnancy"]
    row = re.search(r"<code>status_within_days</code>.*?</tr>", preg, re.S)
    assert row and "<code>14</code>" in row.group(0) and "site override" in row.group(0)
    assert "<code>30</code>" in row.group(0), "the rule file's default is shown next to it"
    shared = re.search(r"<code>trd_min_duration_days</code>.*?</tr>", body.split('id="site"')[1], re.S)
    assert shared and "<code>42</code>" in shared.group(0) and "site override" in shared.group(0)
    assert "<strong>UK</strong>" in body


def test_catalogue_filter_works_without_javascript(app, client):
    """``?q=`` hides non-matching rules on the server; all are still rendered for the live filter."""
    body = page(client, "/rules?q=CI-Pregnancy")
    found = articles(body)
    assert not found["ci-pregnancy"].split(">")[0].endswith(" hidden")
    assert found["framework-nice"].split(">")[0].endswith(" hidden")
    assert f"1 of {len(ruleset(app).rules)} rules" in body
    assert 'value="CI-Pregnancy"' in body


# -- playground -------------------------------------------------------------------------------------
def test_playground_form_lists_examples_with_hooks_and_jurisdictions(client):
    body = page(client, "/playground")
    for name in example_names():
        hook = load_example(name)["hook"]
        assert re.search(rf'<option value="{re.escape(name)}">{re.escape(name)}\.json — {hook}', body), name
    for j in JURISDICTIONS:
        assert f'<option value="{j}">{j}</option>' in body
    assert "Site default (US)" in body
    assert 'method="get"' in body, "the form works without JavaScript"


def test_playground_shows_the_critical_pregnancy_card(client):
    body = page(client, "/playground?example=v04-pregnancy")
    shown = cards_on_page(body)
    preg = [c for c in shown if c["topic"] == "ci-pregnancy"]
    assert len(preg) == 1
    assert preg[0]["indicator"] == "critical"
    assert "Pregnancy" in preg[0]["summary"]
    assert shown[0]["indicator"] == "critical", "most severe first, as the service orders them"
    card = body.split('data-topic="ci-pregnancy"')[1].split("</article>")[0]
    assert '<span class="badge ind-critical indicator-label">Critical</span>' in card
    assert "<summary>Why this card</summary>" in card
    assert '<code class="why-rule-id">ci-pregnancy</code>' in card
    assert "<li>" in card, "the detail's Markdown list is rendered as HTML"
    assert "Perinatal psychiatry consult</button>" in card
    assert re.search(r'<tr class="fired" data-rule="ci-pregnancy">', body)
    assert "Raw JSON response" in body


def test_playground_matches_the_cds_endpoint(client):
    """Same cards, same order, same summaries: the playground is the service, not a re-implementation."""
    for name in ("v04-pregnancy", "v13-missing-data", "v15-patient-view-course"):
        expected = [
            {"indicator": c["indicator"], "topic": c["source"]["topic"]["code"], "summary": c["summary"]}
            for c in api_cards(client, name)
        ]
        assert cards_on_page(page(client, f"/playground?example={name}")) == expected, name


def test_playground_accepts_post(client):
    resp = client.post("/playground", data={"example": "v04-pregnancy", "jurisdiction": "US"})
    assert resp.status_code == 200
    assert any(c["topic"] == "ci-pregnancy" for c in cards_on_page(resp.get_data(as_text=True)))


@pytest.mark.parametrize("jurisdiction", ["", *JURISDICTIONS])
@pytest.mark.parametrize("name", example_names())
def test_every_example_renders(client, name, jurisdiction):
    body = page(client, f"/playground?example={name}&jurisdiction={jurisdiction}")
    assert 'class="error"' not in body
    raw = re.search(r'<pre id="raw-response">(.*?)</pre>', body, re.S)
    assert raw, "the raw JSON response is shown"
    response = json.loads(html.unescape(raw.group(1)))
    assert len(cards_on_page(body)) == len(response["cards"])
    assert 'id="explain-table"' in body


def test_v12_under_uk_shows_a_nice_row(client):
    uk = page(client, "/playground?example=v12-nice-vs-expert-panel&jurisdiction=UK")
    eligibility = uk.split('data-topic="eligibility"')[1].split("</article>")[0]
    assert re.search(r"<tr>\s*<td><a [^>]*>NICE</a></td>", eligibility), "a NICE row in the rendered table"
    assert 'target="_blank" rel="noopener noreferrer"' in eligibility
    us = page(client, "/playground?example=v12-nice-vs-expert-panel&jurisdiction=US")
    assert ">NICE</a>" not in us.split('data-topic="eligibility"')[1].split("</article>")[0]
    assert '<tr class="skipped" data-rule="framework-nice">' in us


def test_unknown_example_is_a_404_page(client):
    body = page(client, "/playground?example=no-such-example", status=404)
    assert "no example request named" in body.lower()
    page(client, "/playground?example=../rules/site", status=404)


def test_unknown_jurisdiction_is_a_400_page(client):
    body = page(client, "/playground?example=v04-pregnancy&jurisdiction=XX", status=400)
    assert "Unknown jurisdiction" in body and 'class="cds-card' not in body


@pytest.fixture(scope="module")
def project_client(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    """An app on a copy of the rules with site overrides, next to a fhir_examples/ folder of
    awkward requests."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(RULES, root / "rules")
    (root / "rules" / "site.yaml").write_text(
        "jurisdiction: UK\n"
        "params: {trd_min_duration_days: 42}\n"
        "rules:\n"
        "  framework-canmat-2021: {enabled: false}\n"
        "  ci-pregnancy: {params: {status_within_days: 14}}\n"
    )
    rules_file = root / "rules" / "contraindications.yaml"
    text = rules_file.read_text()
    assert "    title: Pregnancy\n" in text
    rules_file.write_text(text.replace("    title: Pregnancy\n", f"    title: 'Pregnancy {INJECTION}'\n"))
    examples = root / "fhir_examples"
    examples.mkdir()
    v04 = load_example("v04-pregnancy")
    patched = 0
    for bundle in v04["prefetch"].values():
        for entry in (bundle or {}).get("entry", []) if isinstance(bundle, dict) else []:
            res = entry.get("resource", {})
            if res.get("resourceType") == "Condition":
                res["code"]["text"] = INJECTION
                patched += 1
    assert patched
    (examples / "v04-pregnancy.json").write_text(json.dumps(v04))
    (examples / "broken.json").write_text('{"hook": "order-sign", ')
    no_prefetch = load_example("v04-pregnancy")
    del no_prefetch["prefetch"]
    (examples / "no-prefetch.json").write_text(json.dumps(no_prefetch))
    invalid = load_example("v04-pregnancy")
    del invalid["hookInstance"]
    (examples / "invalid.json").write_text(json.dumps(invalid))
    return create_app(make_settings(root, rules_dir=root / "rules")).test_client()


def test_data_is_escaped_everywhere(project_client):
    client = project_client
    for url in ("/rules", "/playground?example=v04-pregnancy"):
        body = page(client, url)
        assert "<script>alert" not in body and "<img src=x" not in body, url
        assert esc(INJECTION) in body, url
    body = page(client, "/playground?example=v04-pregnancy")
    assert "&lt;script&gt;" in body.split('data-topic="ci-pregnancy"')[1].split("</article>")[0]


def test_request_errors_are_messages_not_500s(project_client):
    client = project_client
    body = page(client, "/playground?example=broken")
    assert 'data-status="400"' in body and "malformed JSON" in body
    body = page(client, "/playground?example=invalid")
    assert 'data-status="400"' in body and "hookInstance" in body
    body = page(client, "/playground?example=no-prefetch")
    assert 'data-status="412"' in body and "<code>patient</code>" in body
    assert 'class="cds-card' not in body


def test_missing_examples_folder(client, tmp_path, monkeypatch):
    monkeypatch.setattr(web, "examples_dir", lambda ruleset: tmp_path / "no-such-folder")
    body = page(client, "/playground")
    assert "No <code>fhir_examples/</code> folder" in body
    page(client, "/playground?example=v04-pregnancy", status=404)


def test_markdown_is_rendered_safely():
    out = str(
        render_markdown(
            "| a | b |\n|---|---|\n| 1 | <b>2</b> |\n\n[x](javascript:alert(1)) [y](https://e.org)"
        )
    )
    assert "<table>" in out and "<td>1</td>" in out
    assert "<b>" not in out and "&lt;b&gt;" in out
    assert 'href="javascript' not in out, "unsafe links stay text"
    assert '<a href="https://e.org" target="_blank" rel="noopener noreferrer">y</a>' in out
    assert str(render_markdown(None)) == ""


def test_unexpected_failure_is_an_html_page_naming_the_request(client, monkeypatch):
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(web.pipeline, "run", boom)
    body = page(client, "/playground?example=v04-pregnancy", status=500, headers={"X-Request-ID": "req-42"})
    assert "req-42" in body and "secret internals" not in body
