"""An upstream that misbehaves, through real Celery workers and the shared Redis token bucket: 429 storms
with and without Retry-After, 500/502/503 bursts, stalls longer than HTTP_TIMEOUT_SECONDS, HTML pages,
truncated JSON, a renamed field, an empty page in the middle, duplicates across pages.

Invariants: every run ends (succeeded, partial or failed with a clear error, never stuck); the data
finally stored equals an undisturbed crawl's, row for row; and the fake upstream, which timestamps every
request, never saw more requests in any window than the configured rate allows.
"""
from __future__ import annotations

import pytest

from conftest import wait_for
from fake_upstream import gecko_coin

from .conftest import INGEST, allowed_in_window, assert_within_rate
from .helpers import finished, runs, snapshot, undisturbed_snapshot

pytestmark = pytest.mark.worker
MARKETS = "/api/v3/coins/markets"
TICKERS = "/v1/tickers"


def _times(fake, path):
    return [t for t, *_ in fake.requests_to(path)]


def _page_times(fake, page: int) -> list[float]:
    return [t for t, _, q, _ in fake.requests_to(MARKETS) if q.get("page") == str(page)]


def test_429_storms_5xx_bursts_and_stalls_are_retried_to_complete_data_within_the_rate(
        start_worker, brokers, fake_upstream, db_conn, test_env, report):
    rate = 60                                        # a request a second per source, burst 1
    fake_upstream.set_coins(35)
    settings = dict(COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=10, COINGECKO_RATE_PER_MINUTE=rate,
                    COINPAPRIKA_RATE_PER_MINUTE=rate, HTTP_TIMEOUT_SECONDS=1, TASK_MAX_RETRIES=4)
    f = fake_upstream
    f.script(MARKETS, [f.rate_limited(), f.rate_limited(retry_after=5, html=True)], query={"page": "2"})
    f.script(MARKETS, [f.stalled(3.0)], query={"page": "3"})           # 3 s > HTTP_TIMEOUT_SECONDS
    f.script(TICKERS, [f.paprika_error(500, "Internal Server Error"), f.html_error(502),
                       f.json_response(503, {"error": "Service Unavailable"})])
    w = start_worker(f.env(**settings), concurrency=2)
    for source in ("coingecko", "coinpaprika"):      # both at once: two buckets, two storms
        brokers.send(test_env["REDIS_URL"], INGEST, source=source, trigger="schedule")
    done = wait_for(finished(db_conn, count=2), timeout=90, message=f"both runs to finish: {w.log_tail()}")
    by_source = {r["source"]: r for r in done}

    gecko, paprika = by_source["coingecko"], by_source["coinpaprika"]
    assert (gecko["status"], gecko["loaded"], gecko["pages"]) == ("succeeded", 35, 4), gecko
    assert gecko["stats"]["http_status"] == {"429": 2, "200": 4}       # the stalled request has no status
    assert (paprika["status"], paprika["loaded"]) == ("succeeded", 35), paprika
    assert paprika["stats"]["http_status"] == {"500": 1, "502": 1, "503": 1, "200": 1}

    page2 = _page_times(f, 2)
    assert len(page2) == 3 and len(_page_times(f, 3)) == 2
    assert 0.9 <= page2[1] - page2[0] < 5.0, page2    # 429 without Retry-After: exponential backoff
    assert page2[2] - page2[1] >= 5.0, page2           # 429 with Retry-After: 5 s honoured
    busiest = {path: assert_within_rate(_times(f, path), rate, burst=1) for path in (MARKETS, TICKERS)}
    report("upstream requests (gecko, paprika)", (len(_times(f, MARKETS)), len(_times(f, TICKERS))))

    stored = snapshot(db_conn)
    assert stored == undisturbed_snapshot(test_env, f, db_conn, sources=("coingecko", "coinpaprika"),
                                          **{**settings, "COINGECKO_RATE_PER_MINUTE": 6000,
                                             "COINPAPRIKA_RATE_PER_MINUTE": 6000})
    report(f"busiest 5 s window (allowed {allowed_in_window(rate, 1)})", busiest)


def test_html_pages_truncated_json_a_renamed_field_an_empty_page_and_duplicates(
        start_worker, brokers, fake_upstream, db_conn, test_env, report):
    rate, burst = 120, 2
    fake_upstream.set_coins(35)
    f = fake_upstream
    settings = dict(COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=10, COINGECKO_RATE_PER_MINUTE=rate,
                    COINGECKO_RATE_BURST=burst, TASK_MAX_RETRIES=1)
    w = start_worker(f.env(**settings))
    n = 0

    def run_once(message):
        nonlocal n
        n += 1
        f.clear_requests() if n == 1 else None
        before = len(f.requests_to(MARKETS))
        brokers.send(test_env["REDIS_URL"], INGEST, source="coingecko", trigger="schedule")
        row = wait_for(finished(db_conn, count=n), timeout=60, message=f"{message}: {w.log_tail()}")[-1]
        pages = [q["page"] for _, _, q, _ in f.requests_to(MARKETS)[before:]]
        return row, pages

    # a 5xx burst longer than the retry budget: the run fails, what it stored stays, the checkpoint too
    f.script(MARKETS, [f.gecko_error(500, "Internal"), f.json_response(502, {"error": "Bad Gateway"})],
             query={"page": "2"})
    run, pages = run_once("a run that exhausts its retries")
    assert run["status"] == "failed" and run["error"].startswith("gave up after 2 transient failures"), run
    assert (run["loaded"], pages) == (10, ["1", "2", "2"])

    # an HTML page with 200 instead of JSON: permanent, no retry burnt; the run resumed at page 2
    f.script(MARKETS, [f.html_error(200)], query={"page": "2"})
    run, pages = run_once("a run that meets an HTML page")
    assert run["status"] == "failed" and "expected JSON, got text/html" in run["error"], run
    assert pages == ["2"]

    # truncated JSON (a complete response that does not decode) is retried; page 3 comes back empty in
    # the middle of the list: the crawl ends there, succeeded, with what came before
    f.script(MARKETS, [f.truncated_json()], query={"page": "2"})
    f.empty_page_at(3)
    run, pages = run_once("a run that meets truncated JSON and an empty page")
    assert (run["status"], run["loaded"], pages) == ("succeeded", 10, ["2", "2", "3"]), run
    assert run["stats"]["http_status"] == {"200": 3}

    # a fresh crawl: the ranking shifted, coin 10 shows again on page 2 (a duplicate across pages), and
    # page 4's connection is cut short mid-body
    f.empty_page_at(None)
    shifted = [gecko_coin(i) for i in range(10, 20)]
    f.script(MARKETS, [f.json_response(200, shifted)], query={"page": "2"})
    f.script(MARKETS, [f.truncated_json(cut_connection=True)], query={"page": "4"})
    run, pages = run_once("a crawl with a duplicate across pages")
    assert (run["status"], run["fetched"], run["loaded"]) == ("succeeded", 34, 34), run
    assert pages == ["1", "2", "3", "4", "4"]
    with db_conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT (asset_id, observed_at)) FROM quotes")
        total, distinct = cur.fetchone()
    assert total == distinct == 35                     # nothing twice; coin 20 came from the earlier run

    # a field renamed upstream: every record quarantined with its reason, drift recorded, nothing stored
    f.rename_field("current_price", "price")
    before = snapshot(db_conn)
    run, _ = run_once("a run after a rename")
    assert (run["status"], run["rejected"], run["loaded"]) == ("partial", 35, 0), run
    with db_conn.cursor() as cur:
        cur.execute("SELECT schema_drift FROM etl_runs WHERE id = %s", (run["id"],))
        drift = cur.fetchone()[0]
        cur.execute("SELECT DISTINCT reason FROM rejected_records WHERE run_id = %s", (run["id"],))
        reasons = [r[0] for r in cur.fetchall()]
    assert drift["added"] == ["price"] and drift["removed"] == ["current_price"]
    assert reasons == ["invalid fields: price_usd"]
    assert snapshot(db_conn) == before

    f.rename_field("price", "current_price")          # the upstream reverts
    run, _ = run_once("a clean run")
    assert run["status"] == "succeeded", run
    busiest = assert_within_rate(_times(f, MARKETS), rate, burst)
    assert sum(r["stats"].get("rate_limit_waits", 0) for r in runs(db_conn)) >= 1   # the bucket did bite
    assert [r["status"] for r in runs(db_conn)] == ["failed", "failed", "succeeded", "succeeded", "partial",
                                                    "succeeded"]
    stored = snapshot(db_conn)
    assert stored == undisturbed_snapshot(test_env, f, db_conn, **{**settings, "COINGECKO_RATE_PER_MINUTE": 6000})
    report("runs", n)
    report(f"busiest 5 s window (allowed {allowed_in_window(rate, burst)})", busiest)
