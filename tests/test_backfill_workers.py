"""Backfills through the HTTP API and real Celery workers, PostgreSQL, Redis and the fake upstream."""
from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta, timezone

from conftest import wait_for
from pipeline_helpers import run_inline, settings_for, table

AUTH = {"Authorization": "Bearer test-token"}
RATE = 60          # requests per minute per source, burst 1


def _day(days_ago: int) -> str:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today - timedelta(days=days_ago)).date().isoformat()


def _known(test_env, fake, coins):
    fake.set_coins(coins)
    settings = settings_for(test_env, **fake.env(COINGECKO_RATE_PER_MINUTE=6000, COINPAPRIKA_RATE_PER_MINUTE=6000))
    run_inline(settings, "coingecko")
    run_inline(settings, "coinpaprika")
    fake.clear_requests()


def _finished(client, location):
    def check():
        body = client.get(location).get_json()
        return body if body["status"] != "running" else None
    return check


def _rate_held(requests, per_minute, burst=1):
    """n requests through a bucket of `burst` refilled at per_minute/60 per second span at least
    (n - burst) / rate seconds (5% slack for clock granularity)."""
    times = sorted(r[0] for r in requests)
    if len(times) <= burst:
        return True
    return times[-1] - times[0] >= (len(times) - burst) * 60.0 / per_minute * 0.95


def test_backfill_of_both_sources_survives_a_sigkill_and_a_second_one_writes_nothing(
        client, test_env, worker, fake_upstream, db_conn):
    _known(test_env, fake_upstream, 6)
    fake_upstream.latency = 0.3
    w = worker(concurrency=1, env=fake_upstream.env(COINGECKO_RATE_PER_MINUTE=RATE, COINPAPRIKA_RATE_PER_MINUTE=RATE,
                                                    RATE_LIMIT_MAX_SLEEP_SECONDS=0.5))
    body = {"assets": [f"coin-{i}" for i in range(1, 7)], "sources": ["coingecko", "coinpaprika"],
            "since": _day(364), "interval": "1d"}
    created = client.post("/api/v1/backfills", json=body, headers=AUTH)
    assert created.status_code == 202, created.get_json()
    location = created.headers["Location"]
    first = created.get_json()
    assert first["windows"]["total"] == 12 and first["eta_seconds"] > 0
    # the same asset/source/interval while it runs: 409 naming it
    conflict = client.post("/api/v1/backfills", json={**body, "since": _day(30)}, headers=AUTH)
    assert conflict.status_code == 409 and conflict.get_json()["backfill_id"] == first["id"]
    wait_for(lambda: client.get(location).get_json()["windows"]["done"] >= 3, timeout=60,
             message=f"progress before the kill: {w.log_tail()}")
    children = w.children()
    assert children, w.log_tail()
    os.kill(children[0], signal.SIGKILL)
    done = wait_for(_finished(client, location), timeout=150, message=f"the backfill to finish: {w.log_tail()}")
    assert done["status"] == "succeeded", done
    assert done["windows"]["done"] == 12 and done["errors"] == []
    assert done["rows"]["inserted"] == 12 * 365 and done["rows"]["rejected"] == 0   # 364 days ago .. today 00:00
    per_dataset = table(db_conn, "SELECT d.name, count(*), count(DISTINCT q.asset_id) FROM quotes q JOIN datasets d "
                                 "ON d.id = q.dataset_id WHERE d.endpoint IN ('market_chart', 'historical') "
                                 "GROUP BY 1 ORDER BY 1")
    assert per_dataset == [("coingecko:market_chart:1d", 6 * 365, 6), ("coinpaprika:historical:1d", 6 * 365, 6)]
    for prefix in ("/api/v3/coins/", "/v1/tickers/"):
        sent = fake_upstream.requests_to(prefix)
        assert _rate_held(sent, RATE), prefix
        span = max(r[0] for r in sent) - min(r[0] for r in sent)
        print(f"{prefix}: {len(sent)} requests in {span:.1f}s = {(len(sent) - 1) / span * 60:.1f}/min (limit {RATE})")
    # coverage: no gaps on the daily grid
    cover = client.get(f"/api/v1/assets/coin-3/coverage?dataset=coinpaprika:historical:1d&interval=1d"
                       f"&since={_day(364)}&until={_day(0)}").get_json()
    assert cover["missing"] == 0 and cover["gaps"] == [] and cover["expected"] == 364
    # a second identical backfill: every row already there, nothing written
    before = table(db_conn, "SELECT asset_id, dataset_id, observed_at, price_usd, run_id FROM quotes ORDER BY 1, 2, 3")
    again = client.post("/api/v1/backfills", json=body, headers=AUTH)
    assert again.status_code == 202
    second = wait_for(_finished(client, again.headers["Location"]), timeout=150, message="the second backfill")
    assert second["status"] == "succeeded"
    assert second["rows"] == {"fetched": 12 * 365, "inserted": 0, "updated": 0, "unchanged": 12 * 365, "rejected": 0}
    assert table(db_conn, "SELECT asset_id, dataset_id, observed_at, price_usd, run_id FROM quotes "
                          "ORDER BY 1, 2, 3") == before


def test_cancel_leaves_unstarted_windows_cancelled_and_workers_skip_them(client, test_env, worker, fake_upstream,
                                                                         db_conn, redis):
    _known(test_env, fake_upstream, 3)
    created = client.post("/api/v1/backfills", json={"assets": ["coin-1", "coin-2", "coin-3"], "since": _day(20)},
                          headers=AUTH)
    assert created.status_code == 202
    assert client.delete(created.headers["Location"]).status_code == 401
    cancelled = client.delete(created.headers["Location"], headers=AUTH).get_json()
    assert cancelled["status"] == "cancelled" and cancelled["windows"]["cancelled"] == 6
    worker(concurrency=1, env=fake_upstream.env())
    # the queued tasks are consumed (their results recorded) and find their windows cancelled
    wait_for(lambda: len(redis.keys("celery-task-meta-backfill-window-*")) == 6, timeout=60,
             message="the six window tasks to be consumed")
    assert fake_upstream.requests_to("/api/v3/coins/") == [] and fake_upstream.requests_to("/v1/tickers/") == []
    assert client.get(created.headers["Location"]).get_json()["windows"]["cancelled"] == 6


def test_bad_backfill_requests(client, db_conn):
    assert client.post("/api/v1/backfills", json={"assets": ["x"], "since": "2025-01-01"}).status_code == 401
    both = client.post("/api/v1/backfills", json={"assets": ["x"], "top": 3, "since": "2025-01-01"}, headers=AUTH)
    assert both.status_code == 422
    unknown = client.post("/api/v1/backfills", json={"assets": ["nope"], "since": "2025-01-01"}, headers=AUTH)
    assert unknown.status_code == 422 and "unknown assets: nope" in unknown.get_json()["message"]
    bad = client.post("/api/v1/backfills", json={"assets": ["x"], "since": "yesterday"}, headers=AUTH)
    assert bad.status_code == 422
    assert client.get("/api/v1/backfills/00000000-0000-0000-0000-000000000000").status_code == 404


def test_windows_whose_queue_messages_were_lost_are_requeued_by_the_reaper(client, test_env, worker, fake_upstream,
                                                                           db_conn, redis):
    from crypto_app.broker import send_task
    from crypto_app.celery_settings import BACKFILL_TASK
    from crypto_app.pipeline.backfill_reaper import requeue_stalled_windows

    _known(test_env, fake_upstream, 2)
    created = client.post("/api/v1/backfills", json={"assets": ["coin-1", "coin-2"], "since": _day(20)},
                          headers=AUTH)
    assert created.status_code == 202, created.get_json()
    location = created.headers["Location"]
    redis.flushdb()                      # no worker has taken them yet: the queued messages are gone
    worker(concurrency=1, env=fake_upstream.env())
    assert client.get(location).get_json()["windows"]["pending"] == 4
    with db_conn.cursor() as cur:        # as if BACKFILL_STALL_SECONDS had passed
        cur.execute("UPDATE backfill_windows SET touched_at = now() - interval '1 hour'")
    db_conn.commit()
    with client.application.app_context():
        conn = __import__("psycopg2").connect(client.application.config["SETTINGS"].libpq_url)
        try:
            got = requeue_stalled_windows(conn, lambda window_id: send_task(
                BACKFILL_TASK, {"window_id": window_id}, f"backfill-window-{window_id}"), stall_seconds=600)
        finally:
            conn.close()
    assert len(got["requeued"]) == 4
    done = wait_for(_finished(client, location), timeout=60, message="the re-queued backfill to finish")
    assert done["status"] == "succeeded" and done["windows"]["done"] == 4
    assert table(db_conn, "SELECT max(requeues) FROM backfill_windows") == [(1,)]
