"""leaderboard.html in a real headless Chromium: it renders, sorts, requests nothing, and injected markup stays text.

Uses Debian's /usr/bin/chromium through Playwright (never `playwright install`); skipped when either is absent.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import hookimpl
from harness.leaderboard import write_leaderboard
from tests.leaderboard_fixtures import build_store, built_in_registry

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEFENSE = "<script>window.__pwned = 1</script>"
DESCRIPTION = '<img src=x onerror="window.__pwned = 2">fine-tunes everything'

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason=f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium)")]


class EvilAttack:
    """An attack plugin whose description is markup."""

    @hookimpl
    def register_attacks(self, register):
        register("evil", description=DESCRIPTION, factory="nowhere:attack")


@pytest.fixture(scope="module")
def browser_view(tmp_path_factory):
    """The page, plus every request it made and every error it logged."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the PyPI package) is not installed")
    results = build_store(tmp_path_factory.mktemp("results"), defense=DEFENSE, attack_plugin="evil")
    [html] = write_leaderboard(results, formats=["html"], registry=built_in_registry(EvilAttack()))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        view = SimpleNamespace(page=browser.new_page(), requests=[], problems=[])
        view.page.on("request", lambda request: view.requests.append(request.url))
        view.page.on("console", lambda message: message.type == "error" and view.problems.append(message.text))
        view.page.on("pageerror", lambda error: view.problems.append(str(error)))
        view.page.goto(html.as_uri(), wait_until="load")
        yield view
        browser.close()


@pytest.fixture
def page(browser_view):
    return browser_view.page


def test_renders_without_requests_or_errors(browser_view, page):
    assert page.title().startswith("untunable leaderboard")
    assert page.locator("section").count() == 2
    assert page.locator("#s0-attacks tbody tr").count() == 6  # 2 attacks × 3 starts
    sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(sizes) == 5 and all(size > 100 for size in sizes)
    assert [url for url in browser_view.requests if not url.startswith(("file:", "data:"))] == []
    assert browser_view.problems == []  # CSP violations included: own script and style run under their hashes


def test_injected_markup_stays_text(page):
    assert page.evaluate("window.__pwned") is None
    text = page.locator("#s0").inner_text()
    assert f"defense:{DEFENSE}" in text and DESCRIPTION in text
    assert page.locator("section script, section img[src=x]").count() == 0


def _column(page, table: str, header: str) -> list[str]:
    index = page.eval_on_selector_all(f"{table} thead th", "ths => ths.map(th => th.textContent)").index(header)
    return page.eval_on_selector_all(f"{table} tbody tr",
                                     f"rows => rows.map(r => r.cells[{index}].getAttribute('data-sort'))")


def test_clicking_a_header_sorts(page):
    table = "#s0-attacks"
    page.click(f"{table} thead th:text-is('AUC')")
    ascending = [float(v) for v in _column(page, table, "AUC")]
    assert ascending == sorted(ascending) and len(ascending) == 6
    assert page.get_attribute(f"{table} thead th:text-is('AUC')", "aria-sort") == "ascending"
    page.click(f"{table} thead th:text-is('AUC')")
    assert [float(v) for v in _column(page, table, "AUC")] == sorted(ascending, reverse=True)

    page.click(f"{table} thead th:text-is('R')")
    values = _column(page, table, "R")
    defined = [float(v) for v in values if v]
    assert defined == sorted(defined) and values[len(defined):] == [""] * 3  # the n/a rows sort last
    starts = _column(page, table, "start")
    assert starts[:3] == ["original", "scratch", f"defense:{DEFENSE}"]  # R = 0, 1, 1.75
