"""The pages in a real browser: Debian's headless Chromium driven by Playwright for Python.

No browser is downloaded (never ``playwright install``): Playwright drives ``/usr/bin/chromium``
(``apt-get install -y chromium``). Without it these tests fail, so a missing browser cannot pass
silently; set KETAMINE_CDS_SKIP_BROWSER=1 to skip them instead. KETAMINE_CDS_SCREENSHOT=path
saves a screenshot of the playground there.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from cds_service.app import create_app

from .conftest import load_example, make_settings

CHROMIUM = Path(os.environ.get("KETAMINE_CDS_CHROMIUM", "/usr/bin/chromium"))
SKIP_ENV = "KETAMINE_CDS_SKIP_BROWSER"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CRITICAL_RED = "rgb(192, 38, 45)"  # --critical in base.html


def _require_browser() -> Any:
    """Playwright's sync API, or fail (skip only when asked to) saying what to install."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} not found: apt-get install -y chromium"
    else:
        try:
            from playwright import sync_api
        except ImportError:
            problem = "Playwright for Python is not installed: pip install playwright (no browser download)"
    if problem:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(problem)
        pytest.fail(f"{problem} (or set {SKIP_ENV}=1 to skip the browser tests)")
    return sync_api


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """The real app on a free port on 127.0.0.1, served from a background thread."""
    app = create_app(make_settings(tmp_path_factory.mktemp("browser")))
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, name="web-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}", app
    finally:
        srv.shutdown()
        thread.join(timeout=10)
        app.extensions["ketamine_cds"].store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = _require_browser()
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Tab:
    """A page that records what a person would not see: requests elsewhere and console errors."""

    page: Any
    base: str
    outside: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def check_clean(self) -> None:
        assert not self.outside, f"requests outside the service: {self.outside}"
        assert not self.console_errors, f"console errors (CSP violations?): {self.console_errors}"


def _tab(browser: Any, base: str, *, javascript: bool = True) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, java_script_enabled=javascript)
    context.set_default_timeout(10_000)
    page = context.new_page()
    tab = Tab(page, base)
    page.on("request", lambda r: None if r.url.startswith((base, "data:")) else tab.outside.append(r.url))
    page.on("console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None)
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def tab(browser: Any, server: tuple[str, Any]) -> Iterator[Tab]:
    yield from _tab(browser, server[0])


@pytest.fixture
def tab_without_js(browser: Any, server: tuple[str, Any]) -> Iterator[Tab]:
    yield from _tab(browser, server[0], javascript=False)


def _expected_summary(app: Any, example: str, topic: str) -> str:
    """What the CDS endpoint says, so the test checks the page shows it rather than restating rule text."""
    body = load_example(example)
    cards = app.test_client().post(f"/cds-services/{body['hook']}", json=body).get_json()["cards"]
    return next(c["summary"] for c in cards if c["source"]["topic"]["code"] == topic)


def _run(tab: Tab, example: str, jurisdiction: str = "") -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.select_option("#example", example)
    page.select_option("#jurisdiction", jurisdiction)
    page.get_by_role("button", name="Run").click()
    expect(page).to_have_url(re.compile(rf"example={re.escape(example)}"))


def test_pregnancy_card_from_the_home_page(tab: Tab, server: tuple[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(tab.base + "/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("decision support")
    page.get_by_role("link", name="Playground →").click()
    expect(page).to_have_url(tab.base + "/playground")
    _run(tab, "v04-pregnancy")

    card = page.locator("article.cds-card", has=page.locator(".summary", has_text="Pregnancy")).first
    summary = _expected_summary(server[1], "v04-pregnancy", "ci-pregnancy")
    assert "Pregnancy" in summary
    expect(card.locator(".summary")).to_have_text(summary)
    expect(card).to_be_visible()
    expect(card).to_have_class(re.compile(r"\bcard-critical\b"))
    expect(card.locator(".indicator-label")).to_have_text("Critical")
    assert card.evaluate("el => getComputedStyle(el).borderLeftColor") == CRITICAL_RED
    expect(page.locator("article.cds-card").first).to_have_class(re.compile(r"\bcard-critical\b"))

    why = card.locator("details.why")
    rule_id = why.locator(".why-rule-id", has_text="ci-pregnancy")
    expect(rule_id).to_be_hidden()
    why.get_by_text("Why this card").click()
    expect(why).to_have_attribute("open", "")
    expect(rule_id).to_be_visible()
    expect(why).to_contain_text("fired")

    expect(page.locator('#explain-table tr[data-rule="ci-pregnancy"]')).to_contain_text("fired")
    shot = Path(os.environ.get("KETAMINE_CDS_SCREENSHOT") or tmp_path / "playground.png")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shot))
    tab.check_clean()


def test_v12_under_uk_shows_the_nice_row(tab: Tab) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(tab.base + "/playground")
    _run(tab, "v12-nice-vs-expert-panel", "UK")
    expect(page.locator("#result-jurisdiction")).to_have_text("UK")
    table = page.locator('article.cds-card[data-topic="eligibility"] .detail table')
    expect(table).to_be_visible()
    # NICE's own position, and the local "sixth-line" pathway as a separate, unverified row
    expect(table.get_by_role("link", name="NICE", exact=True)).to_have_count(1)
    expect(table.get_by_role("link", name="Local pathway (unverified)", exact=True)).to_have_count(1)

    _run(tab, "v12-nice-vs-expert-panel", "US")
    expect(page.locator("#result-jurisdiction")).to_have_text("US")
    expect(table.locator("tbody tr", has_text="NICE")).to_have_count(0)
    tab.check_clean()


def test_rule_filter(tab: Tab) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(tab.base + "/rules")
    rules = page.locator("article.rule")
    total = rules.count()
    assert total > 10
    expect(page.locator("#rule-count")).to_have_text(f"{total} of {total} rules")
    expect(page.locator("#filter-submit")).to_be_hidden()  # the live filter replaces it

    page.locator("#q").press_sequentially("pregnan")
    expect(page.locator("#ci-pregnancy")).to_be_visible()
    expect(page.locator("#framework-nice")).to_be_hidden()
    visible = page.locator("article.rule:visible")
    shown = visible.count()
    assert 0 < shown < total
    expect(page.locator("#rule-count")).to_have_text(f"{shown} of {total} rules")
    for text in visible.evaluate_all("els => els.map(e => e.dataset.search)"):
        assert "pregnan" in text
    expect(page).to_have_url(re.compile(r"\?q=pregnan"))

    page.locator("#q").fill("")
    expect(page.locator("#framework-nice")).to_be_visible()
    expect(page.locator("#rule-count")).to_have_text(f"{total} of {total} rules")
    tab.check_clean()


def test_forms_work_without_javascript(tab_without_js: Tab) -> None:
    from playwright.sync_api import expect

    tab = tab_without_js
    page = tab.page
    page.goto(tab.base + "/playground")
    _run(tab, "v04-pregnancy")
    expect(page.locator('article.cds-card[data-topic="ci-pregnancy"] .indicator-label')).to_have_text(
        "Critical"
    )

    page.goto(tab.base + "/rules")
    page.locator("#q").fill("ci-pregnancy")
    page.locator("#filter-submit").click()
    expect(page).to_have_url(re.compile(r"\?q=ci-pregnancy"))
    expect(page.locator("#ci-pregnancy")).to_be_visible()
    expect(page.locator("#framework-nice")).to_be_hidden()
    tab.check_clean()
