"""The dashboard in headless Chromium against a running system with data (see conftest.py): pages render
from the JSON API, charts draw, links lead to a failed run's cause and to rejected records with their
reasons, untrusted names stay text, the page refreshes itself in place, and the console stays clean."""
from __future__ import annotations

import pytest

from .conftest import EVIL_NAME, needs_chromium

pytestmark = [needs_chromium, pytest.mark.browser]

# A canvas of the chart holds pixels other than the background: the chart drew something.
CHART_DRAWN = """
const box = document.getElementById(arguments[0]);
if (!box) return false;
let coloured = 0;
for (const canvas of box.querySelectorAll('canvas')) {
  if (!canvas.width || !canvas.height) continue;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < data.length; i += 16) {
    const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
    if (a > 0 && !(r > 240 && g > 240 && b > 240)) coloured++;
  }
}
return coloured > 500 ? coloured : false;
"""


def test_overview_shows_sources_runs_and_prices_and_a_failed_run_in_red(page, system):
    page.open("/").refreshed()
    assert page.text("#health-status") in ("healthy", "degraded", "unhealthy")
    sources = page.js("return [...document.querySelectorAll('#sources-table tbody tr')].map(r => r.dataset.source);")
    assert sources == ["coingecko", "coinpaprika", "csv"]
    gecko = page.text("#sources-table tr[data-source=coingecko]")
    assert "401" in gecko and "stale" in gecko                # its last error and freshness, at a glance
    assert "fresh" in page.text("#sources-table tr[data-source=csv]")
    runs = page.js("return [...document.querySelectorAll('#runs-table tbody tr.run')].map(r => "
                   "[r.dataset.runId, r.cells[1].textContent, r.cells[3].textContent]);")
    assert sorted((source, status) for _, source, status in runs) == [
        ("coingecko", "failed"), ("coinpaprika", "succeeded"), ("csv", system.runs["csv"]["status"])]
    failed_colour = page.js("return getComputedStyle(document.querySelector("
                            "'#runs-table tr.status-row-failed .pill')).color;")
    assert failed_colour == "rgb(198, 40, 40)"              # failed is red
    assert "Bitcoin" in page.text("#prices-table")
    assert page.console_errors() == []
    page.screenshot("overview")


def test_a_failed_run_links_to_its_cause(page, system):
    page.open("/").refreshed()
    page.js("document.querySelector('#runs-table tr.status-row-failed td a').click();")
    page.wait("return location.pathname.startsWith('/runs/');")
    page.refreshed()
    assert page.text("#run-status") == "failed"
    assert page.js("return document.getElementById('run-error').hidden;") is False
    cause = page.text("#run-error-text")
    assert "401" in cause and cause == system.runs["coingecko"]["error"]
    assert page.console_errors() == []
    page.screenshot("run-failed")


def test_rejected_records_are_listed_with_their_reasons(page, system):
    page.open("/").refreshed()
    page.js("document.querySelector('#runs-table a.rejected-link').click();")
    page.wait("return location.hash === '#rejected' && location.pathname.startsWith('/runs/');")
    page.refreshed()
    assert page.text("#run-status") == system.runs["csv"]["status"]
    rows = page.js("return [...document.querySelectorAll('#rejected-table tr.rejected-row')].map(r => "
                   "[r.cells[1].textContent, r.cells[2].textContent, r.cells[3].textContent]);")
    assert len(rows) == system.runs["csv"]["rejected"] >= 1
    reason, errors, record = next(row for row in rows if "BADC" in row[2])
    assert reason and "price" in (reason + errors).lower()
    assert page.console_errors() == []
    page.screenshot("run-rejected")


def test_asset_page_draws_prices_per_source_consensus_and_candles(page):
    page.open("/assets/bitcoin").refreshed()
    assert page.text("#asset-name") == "Bitcoin"
    quotes = page.js("return [...document.querySelectorAll('#quotes-table tbody tr')].map(r => r.cells[0].textContent);")
    assert quotes == ["coinpaprika:tickers", "csv:bitcoin_history.csv", "csv:sample_markets.csv"]   # a row per dataset
    head = page.js("return [...document.querySelectorAll('#quotes-table thead th')].map(c => c.textContent);")
    day_volume, rolling = head.index("Volume (row's interval)"), head.index("Volume 24h")
    volumes = page.js("return [...document.querySelectorAll('#quotes-table tbody tr')].map(r => "
                      f"[r.cells[{rolling}].textContent, r.cells[{day_volume}].textContent]);")
    # the daily file's Volume is the day's volume (volume_usd), not a 24h volume; the ticker's is a 24h volume
    assert volumes[1][0] == "–" and volumes[1][1].endswith(" / 1d")
    assert volumes[0][0] != "–" and volumes[0][1] == "–"
    cards = page.text("#consensus-cards")
    assert "consensus (median)" in cards and "spread" in cards
    assert page.wait(CHART_DRAWN, "price-chart", message="the price chart to draw")
    legend = page.text("#price-legend")
    assert "csv" in legend and "coinpaprika" in legend and "consensus" in legend
    assert page.js("return document.getElementById('candles-section').hidden;") is False
    assert page.wait(CHART_DRAWN, "candle-chart", message="the candle chart to draw")
    assert "candles of 1d" in page.text("#candle-note")
    page.screenshot("asset")
    page.js("document.querySelector('#ranges button[data-range=\"48h\"]').click();")
    page.wait("return document.getElementById('price-note').textContent.includes('observations');")
    assert page.js("return document.getElementById('candles-section').hidden;") is True
    assert page.console_errors() == []


def test_untrusted_names_from_upstreams_stay_text(page):
    page.open("/assets?q=evil").refreshed()
    link = page.js("const a = document.querySelector('#assets-table tbody a'); return a && [a.textContent, a.href];")
    assert link and link[0] == EVIL_NAME
    assert page.js("return document.querySelectorAll('main img, main script').length;") == 0
    page.screenshot("assets-search")
    page.driver.get(link[1])
    page.refreshed()
    assert page.text("#asset-name") == EVIL_NAME
    assert page.js("return window.__xss === undefined && document.querySelectorAll('main img').length === 0;")
    assert page.console_errors() == []


def test_the_overview_picks_up_a_new_run_without_reloading(page, system):
    page.open("/?refresh=1").refreshed()
    page.js("window.__sameDocument = 'yes';")
    before = page.js("return document.querySelectorAll('#runs-table tbody tr.run').length;")
    run = system.trigger("csv")
    page.wait(f"return !!document.querySelector('#runs-table tr[data-run-id=\"{run['id']}\"]');", timeout=20,
              message="the new run to appear")
    assert page.js("return document.querySelectorAll('#runs-table tbody tr.run').length;") == before + 1
    assert page.js("return window.__sameDocument;") == "yes"   # updated in place, not reloaded
    assert page.console_errors() == []


def test_pages_send_a_content_security_policy_and_root_still_answers_json(system):
    import requests

    html = requests.get(system.base + "/", headers={"Accept": "text/html"}, timeout=10)
    assert html.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in html.headers["Content-Security-Policy"]
    assert "test-token" not in html.text and "<script>" not in html.text.replace("<script src=", "")
    index = requests.get(system.base + "/", headers={"Accept": "application/json"}, timeout=10)
    assert index.json()["openapi"] == "/openapi.json"
