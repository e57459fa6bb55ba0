"""/health names a source that cannot run (issue 12, finding 1) and knows workers from their heartbeats.

A blocked source: its Redis lock is held by a run that already ended, by a running run whose heartbeat
stopped (the worker died or the database outage outlasted its retries), or by an id that is no run. A
failing source: its last three finished runs failed. The state is written the way the system writes it
(etl_runs rows, the lock key with its TTL); the workers are real Celery workers.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import api_data as d
from conftest import wait_for

from crypto_app import liveness

LOCK = "cryptoflow:lock:{}"


def _healthy_otherwise(db_conn, redis, sources=("coingecko", "coinpaprika", "csv")):
    liveness.beat_worker(redis, "worker@test")
    for source in sources:
        d.run(db_conn, source, finished_at=datetime.now(timezone.utc) - timedelta(seconds=30))


def _set(db_conn, run_id, **columns):
    with db_conn.cursor() as cur:
        for column, value in columns.items():
            cur.execute(f"UPDATE etl_runs SET {column} = %s WHERE id = %s", (value, run_id))  # noqa: S608 (test)


def test_a_lock_held_by_a_run_whose_heartbeat_stopped_blocks_the_source(client, db_conn, redis):
    _healthy_otherwise(db_conn, redis)
    dead = d.run(db_conn, "csv", "running")
    _set(db_conn, dead, heartbeat_at=datetime.now(timezone.utc) - timedelta(minutes=10))
    redis.set(LOCK.format("csv"), dead, px=300_000)
    body = client.get("/health").get_json()
    assert body["status"] == "degraded"
    [reason] = body["reasons"]
    assert reason.startswith(f"source csv is blocked: run {dead} holds its lock but its last heartbeat is 6")
    assert "s old (its worker is gone or stuck); the lock expires in 30" in reason
    assert body["sources"]["csv"]["lock_holder"] == dead and body["sources"]["csv"]["blocked"]


def test_a_running_run_that_beats_or_waits_for_a_retry_does_not_block(client, db_conn, redis):
    _healthy_otherwise(db_conn, redis)
    beating = d.run(db_conn, "csv", "running")
    _set(db_conn, beating, heartbeat_at=datetime.now(timezone.utc) - timedelta(seconds=5))
    redis.set(LOCK.format("csv"), beating, px=300_000)
    waiting = d.run(db_conn, "coingecko", "running")       # postponed: heartbeat_at is in the future
    _set(db_conn, waiting, heartbeat_at=datetime.now(timezone.utc) + timedelta(minutes=5))
    redis.set(LOCK.format("coingecko"), waiting, px=600_000)
    body = client.get("/health").get_json()
    assert body["status"] == "healthy", body["reasons"]
    assert body["sources"]["csv"]["lock_holder"] == beating and body["sources"]["csv"]["blocked"] is None


def test_a_lock_held_by_a_run_that_ended_or_by_no_run_blocks_the_source(client, db_conn, redis, settings):
    _healthy_otherwise(db_conn, redis)
    ended = d.run(db_conn, "coingecko", "failed", error="worker lost")
    redis.set(LOCK.format("coingecko"), ended, px=120_000)
    ttl_ms = settings.run_stale_after_seconds * 1000
    redis.set(LOCK.format("coinpaprika"), "not-a-run", px=ttl_ms - 120_000)     # taken 2 minutes ago
    body = client.get("/health").get_json()
    assert f"source coingecko is blocked: its lock is held by run {ended}, which already ended (failed); " \
           "the lock expires in 120 s" in body["reasons"]
    assert any(r.startswith("source coinpaprika is blocked: its lock is held by 'not-a-run', which is not a "
                            "recorded run") for r in body["reasons"])
    redis.set(LOCK.format("coinpaprika"), "just-taken", px=ttl_ms)   # a trigger between lock and INSERT
    assert client.get("/health").get_json()["sources"]["coinpaprika"]["blocked"] is None


def test_a_source_whose_last_three_runs_failed_is_failing(client, db_conn, redis):
    _healthy_otherwise(db_conn, redis, ("coingecko", "csv"))
    now = datetime.now(timezone.utc)
    d.run(db_conn, "coinpaprika", created_at=now - timedelta(minutes=8))     # fresh: 2 x 300 s not passed
    for minutes, error in ((7, "first"), (6, "second"), (5, "coinpaprika: DNS lookup failed for x (y) on /v1")):
        d.run(db_conn, "coinpaprika", "failed", error=error, created_at=now - timedelta(minutes=minutes))
    body = client.get("/health").get_json()
    assert body["reasons"] == ["source coinpaprika is failing: its last 3 runs failed (latest: coinpaprika: "
                               "DNS lookup failed for x (y) on /v1)"]
    assert body["sources"]["coinpaprika"]["failing"] is True and body["sources"]["coinpaprika"]["stale"] is False
    d.run(db_conn, "coinpaprika", created_at=now)
    assert client.get("/health").get_json()["status"] == "healthy"


def test_health_sees_real_workers_by_their_heartbeats_and_forgets_one_that_stops(worker, client, db_conn):
    _fresh = datetime.now(timezone.utc) - timedelta(seconds=30)
    for source in ("coingecko", "coinpaprika", "csv"):
        d.run(db_conn, source, finished_at=_fresh)
    w = worker(name="beating")

    def workers():
        return client.get("/health").get_json()["checks"]["workers"]

    alive = wait_for(lambda: w.name in workers()["names"] and workers(), timeout=20,
                     message=f"{w.name} in /health: {w.log_tail()}")
    assert alive["status"] == "up" and alive["last_seen_seconds"][w.name] < 5
    started = time.monotonic()
    assert client.get("/health").get_json()["status"] == "healthy"
    assert time.monotonic() - started < 1            # no broadcast ping waiting for replies
    w.stop()                                          # a clean shutdown removes it at once
    assert w.name not in workers()["names"]


def test_health_is_computed_at_most_once_per_cache_period(client, db_conn, redis, app, monkeypatch):
    from crypto_app.api import health as health_module

    monkeypatch.setattr(health_module, "_cache", {})
    monkeypatch.setitem(app.config, "HEALTH_CACHE_SECONDS", 60)
    _healthy_otherwise(db_conn, redis)
    first = client.get("/health")
    redis.delete(liveness.WORKERS_KEY)                 # the worker vanishes...
    second = client.get("/health")                     # ...but within the period the cached report is served
    assert first.get_data() == second.get_data() and second.get_json()["status"] == "healthy"
    assert second.content_type == "application/json"
    monkeypatch.setitem(app.config, "HEALTH_CACHE_SECONDS", 0.2)
    time.sleep(0.3)
    assert client.get("/health").get_json()["status"] == "degraded"
