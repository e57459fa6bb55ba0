"""End to end through real Celery worker processes, Redis as broker and PostgreSQL."""
import os
import signal
import time
from decimal import Decimal

import pytest

from conftest import wait_for
from crypto_app.pipeline.validate import parse_timestamp
from pipeline_helpers import table

pytestmark = pytest.mark.worker
INGEST = "tasks.ingest_source"


def _runs(db_conn, source="coingecko"):
    return table(db_conn, "SELECT id::text, status, fetched, loaded, rejected, pages, deliveries, error, stats "
                          "FROM etl_runs WHERE source = %s ORDER BY created_at", (source,))


def _finished(db_conn, source="coingecko", count=1):
    def check():
        runs = _runs(db_conn, source)
        done = [r for r in runs if r[1] in ("succeeded", "partial", "failed")]
        return done if len(done) >= count else None
    return check


def _expected_rows(fake):
    return sorted((c["id"], Decimal(str(c["current_price"])), parse_timestamp(c["last_updated"]))
                  for c in fake.coingecko_coins())


def _stored_rows(db_conn):
    rows = table(db_conn, "SELECT i.external_id, q.price_usd, q.observed_at FROM quotes q "
                          "JOIN asset_identifiers i ON i.asset_id = q.asset_id AND i.source = q.source "
                          "WHERE q.source = 'coingecko'")
    return sorted(rows)


def test_a_scheduled_enqueue_becomes_rows_in_postgres(worker, celery_probe, fake_upstream, db_conn):
    fake_upstream.set_coins(30)
    worker(env=fake_upstream.env(COINGECKO_PER_PAGE=10, COINGECKO_RATE_PER_MINUTE=6000))
    celery_probe.send_task(INGEST, kwargs={"source": "coingecko", "trigger": "schedule"})
    run = wait_for(_finished(db_conn), timeout=60, message="the run to finish")[0]
    assert run[1:6] == ("succeeded", 30, 30, 0, 4)
    assert len(table(db_conn, "SELECT 1 FROM latest_quotes WHERE source = 'coingecko'")) == 30


def test_sigkill_of_the_worker_mid_run_resumes_from_the_checkpoint(worker, celery_probe, fake_upstream, db_conn):
    fake_upstream.set_coins(120)
    fake_upstream.latency = 0.25
    w = worker(concurrency=1, env=fake_upstream.env(COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=20,
                                                    COINGECKO_RATE_PER_MINUTE=6000))
    celery_probe.send_task(INGEST, kwargs={"source": "coingecko", "trigger": "schedule"})
    for kill in range(3):   # three times in a row, each after some more progress
        wait_for(lambda: (_runs(db_conn) or [[0] * 6])[0][5] >= 3 * (kill + 1), timeout=60,
                 message=f"progress before kill {kill + 1}: {_runs(db_conn)} {w.log_tail()}")
        children = w.children()
        assert children, w.log_tail()
        os.kill(children[0], signal.SIGKILL)
        time.sleep(0.5)
    run = wait_for(_finished(db_conn), timeout=120, message="the resumed run to finish")[0]
    assert run[1] == "succeeded", run
    assert run[6] >= 4                                   # the first delivery plus three redeliveries
    assert _stored_rows(db_conn) == _expected_rows(fake_upstream)   # nothing missing, nothing twice
    pages = [r[2]["page"] for r in fake_upstream.requests_to("/api/v3/coins/markets")]
    assert len(pages) <= 13 + 3                          # resumed: at most the page in flight is fetched again


def test_the_rate_limit_holds_across_three_workers(worker, celery_probe, fake_upstream, db_conn):
    fake_upstream.set_coins(40)
    env = fake_upstream.env(COINGECKO_PER_PAGE=5, COINGECKO_MAX_PAGES=8, COINGECKO_RATE_PER_MINUTE=120,
                            COINPAPRIKA_RATE_PER_MINUTE=120, RATE_LIMIT_MAX_SLEEP_SECONDS=0.2)
    for name in ("a", "b", "c"):
        worker(concurrency=1, env=env, name=name)
    celery_probe.send_task(INGEST, kwargs={"source": "coingecko", "trigger": "schedule"})
    run = wait_for(_finished(db_conn), timeout=90, message="the rate-limited run to finish")[0]
    assert run[1:6] == ("succeeded", 40, 40, 0, 8)
    times = [t for t, *_ in fake_upstream.requests_to("/api/v3/coins/markets")]
    assert len(times) == 8
    for i, start in enumerate(times):                    # any window of 2 s sees at most 2/s * 2 s + 1 burst
        assert sum(1 for t in times[i:] if t - start < 2.0) <= 5, times
    assert run[8]["rate_limit_waits"] >= 5               # the workers did wait for tokens
    assert len(_stored_rows(db_conn)) == 40


def test_429_with_retry_after_is_honoured_then_the_run_succeeds(worker, celery_probe, fake_upstream, db_conn):
    fake_upstream.set_coins(5)
    fake_upstream.script("/api/v3/coins/markets", [fake_upstream.rate_limited(retry_after=2)])
    worker(env=fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000))
    celery_probe.send_task(INGEST, kwargs={"source": "coingecko", "trigger": "schedule"})
    run = wait_for(_finished(db_conn), timeout=60, message="the retried run to finish")[0]
    assert run[1] == "succeeded" and run[3] == 5
    assert run[8]["http_status"] == {"429": 1, "200": 1}
    first, second = [t for t, *_ in fake_upstream.requests_to("/api/v3/coins/markets")]
    assert second - first >= 2.0                         # Retry-After was honoured


def test_an_html_error_page_fails_the_run_without_burning_retries(worker, celery_probe, fake_upstream, db_conn):
    fake_upstream.script("/api/v3/coins/markets", [fake_upstream.html_error(403)])
    worker(env=fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000))
    celery_probe.send_task(INGEST, kwargs={"source": "coingecko", "trigger": "schedule"})
    run = wait_for(_finished(db_conn), timeout=60, message="the run to fail")[0]
    assert run[1] == "failed" and "403" in run[7]
    assert len(fake_upstream.requests_to("/api/v3/coins/markets")) == 1


def test_two_triggers_at_the_same_moment_make_one_run(worker, celery_probe, fake_upstream, db_conn):
    fake_upstream.set_coins(20)
    fake_upstream.latency = 0.3
    worker(concurrency=2, env=fake_upstream.env(COINGECKO_PER_PAGE=10, COINGECKO_RATE_PER_MINUTE=6000))
    for _ in range(2):
        celery_probe.send_task(INGEST, kwargs={"source": "coingecko", "trigger": "schedule"})
    wait_for(_finished(db_conn), timeout=60, message="the run to finish")
    time.sleep(1)
    assert len(_runs(db_conn)) == 1
    assert len(fake_upstream.requests_to("/api/v3/coins/markets")) == 3
