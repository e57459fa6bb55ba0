"""The pipeline broken on purpose, through real Celery workers: database connections killed, PostgreSQL
restarted, Redis stopped, a beat tick during a manual run, a worker that never comes back.

Each test checks an invariant afterwards: the run finished, and its tables equal those of an undisturbed
run of the same upstream (row for row), or nothing was left stuck.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import psycopg2
import pytest

from api_data import app_with  # noqa: F401  (fixture)
from conftest import wait_for

from .conftest import AUTH, INGEST, REAP
from .helpers import finished, progress, runs, snapshot, terminate_other_backends, undisturbed_snapshot

pytestmark = pytest.mark.worker

CRAWL = dict(COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=20, COINGECKO_RATE_PER_MINUTE=6000)


def test_killed_database_connections_mid_run_are_retried_and_nothing_differs(
        start_worker, brokers, fake_upstream, db_conn, test_env, report):
    fake_upstream.set_coins(120)
    fake_upstream.latency = 0.2
    w = start_worker(fake_upstream.env(**CRAWL))
    brokers.send(test_env["REDIS_URL"], INGEST, source="coingecko", trigger="schedule")
    killed = []
    for round_ in (1, 2):            # twice, each time after more progress
        wait_for(lambda: progress(db_conn) >= 4 * round_, timeout=60,
                 message=f"progress before kill {round_}: {runs(db_conn)} {w.log_tail()}")
        killed.append(terminate_other_backends(db_conn))
    run = wait_for(finished(db_conn), timeout=90, message=f"the run to finish: {w.log_tail()}")[0]
    assert all(k >= 1 for k in killed), killed
    assert run["status"] == "succeeded", run
    assert (run["loaded"], run["pages"]) == (120, 13)         # nothing loaded twice, no page lost
    assert run["deliveries"] >= 3                              # the first delivery plus one retry per kill
    disturbed = snapshot(db_conn)
    assert len(disturbed["quotes"]) == 120
    assert disturbed == undisturbed_snapshot(test_env, fake_upstream, db_conn, **CRAWL)
    report("backends terminated", killed)
    report("deliveries", run["deliveries"])


def test_postgres_restarted_mid_run_health_503_then_200_and_the_run_finishes(
        start_worker, brokers, fake_upstream, db_conn, test_env, throwaway_postgres, app_with, report):
    pg = throwaway_postgres()
    url = pg.create_migrated_database("cryptoflow_restart", test_env)
    fake_upstream.set_coins(120)
    fake_upstream.latency = 0.25
    w = start_worker({"DATABASE_URL": url, **fake_upstream.env(**CRAWL)})
    client = app_with(DATABASE_URL=url).test_client()
    assert client.get("/health").status_code == 200
    own = psycopg2.connect(url, connect_timeout=5)
    own.autocommit = True
    brokers.send(test_env["REDIS_URL"], INGEST, source="coingecko", trigger="schedule")
    wait_for(lambda: progress(own) >= 3, timeout=60, message=f"progress before the restart: {w.log_tail()}")
    own.close()

    pg.stop("fast")
    stopped_at = time.monotonic()
    during = [client.get("/health") for _ in range(2)]
    assert [r.status_code for r in during] == [503, 503], [r.get_json() for r in during]
    assert during[0].get_json()["status"] == "unhealthy"
    assert client.get("/api/v1/data").status_code == 503
    time.sleep(max(0.0, 6.0 - (time.monotonic() - stopped_at)))     # longer than the first retry's countdown
    pg.start()
    outage = time.monotonic() - stopped_at
    wait_for(lambda: client.get("/health").status_code == 200, timeout=30,
             message="/health to answer 200 again without restarting the app")

    own = psycopg2.connect(url, connect_timeout=5)
    own.autocommit = True
    try:
        run = wait_for(finished(own), timeout=120, message=f"the run to finish after the restart: {w.log_tail()}")[0]
        assert run["status"] == "succeeded", (run, w.log_tail())
        assert (run["loaded"], run["pages"]) == (120, 13)
        disturbed = snapshot(own)
    finally:
        own.close()
    assert disturbed == undisturbed_snapshot(test_env, fake_upstream, db_conn, **CRAWL)
    log = w.log_path.read_text()
    # both paths were taken: the run's own connection died, and its retry found the database still down
    assert "transient failure, retrying" in log and "database unreachable, retrying" in log, w.log_tail()
    report("outage seconds", round(outage, 1))
    report("deliveries", run["deliveries"])


def test_redis_stopped_reads_answer_health_degraded_triggers_503_then_beat_and_workers_resume(
        start_worker, start_beat, fake_upstream, db_conn, test_env, throwaway_redis, app_with, report):
    r = throwaway_redis()
    broker = r.url(0)
    fake_upstream.set_coins(30)
    env = {"REDIS_URL": broker, **fake_upstream.env(COINGECKO_PER_PAGE=10, COINGECKO_RATE_PER_MINUTE=6000,
                                                     COINPAPRIKA_RATE_PER_MINUTE=6000)}
    w = start_worker(env, concurrency=2)
    beat = start_beat({**env, "ENABLED_SOURCES": "coingecko", "COINGECKO_SCHEDULE_SECONDS": 5})
    wait_for(finished(db_conn, "coingecko"), timeout=60, message=f"beat's first run: {w.log_tail()}")
    client = app_with(REDIS_URL=broker).test_client()
    rows_before = client.get("/api/v1/data?page_size=100").get_json()["data"]
    assert len(rows_before) == 30

    r.stop()
    stopped_at = time.monotonic()
    wait_for(lambda: all(x["status"] in ("succeeded", "partial", "failed") for x in runs(db_conn)), timeout=30,
             message="a run caught by the outage to end")
    runs_before = runs(db_conn)
    data = client.get("/api/v1/data?page_size=100")
    assert data.status_code == 200 and data.get_json()["data"] == rows_before      # reads keep answering
    health = client.get("/health")
    body = health.get_json()
    assert health.status_code == 200 and body["status"] == "degraded", body
    assert body["checks"]["broker"]["status"] == "down" and body["checks"]["database"]["status"] == "up"
    for path, kwargs in (("/api/v1/runs", {"json": {"source": "coinpaprika"}}), ("/api/v1/etl/run/coinpaprika", {})):
        started = time.monotonic()
        refused = client.post(path, headers=AUTH, **kwargs)
        assert refused.status_code == 503 and time.monotonic() - started < 10, refused.get_json()
        assert refused.get_json()["details"] == {"component": "broker"}
    assert runs(db_conn) == runs_before                  # no run row created, none left queued
    time.sleep(max(0.0, 6.0 - (time.monotonic() - stopped_at)))   # beat ticks into the void meanwhile

    r.start()                                            # same port, empty (no persistence)
    outage = time.monotonic() - stopped_at
    restarted_at = time.monotonic()
    wait_for(lambda: client.get("/health").get_json()["checks"]["broker"]["status"] == "up", timeout=20,
             message="/health to see the broker again")
    again = client.post("/api/v1/runs", json={"source": "coinpaprika"}, headers=AUTH)
    assert again.status_code == 202, again.get_json()  # the first trigger after the outage works
    manual = wait_for(finished(db_conn, "coinpaprika"), timeout=60,
                      message=f"the worker to reconnect and run the trigger: {w.log_tail()}")[0]
    assert manual["id"] == again.get_json()["id"] and manual["status"] == "succeeded", manual
    resumed_at = time.monotonic()

    def scheduled_after_restart():
        fresh = [x for x in runs(db_conn, "coingecko") if x["id"] not in {b["id"] for b in runs_before}]
        return [x for x in fresh if x["status"] == "succeeded"]
    wait_for(scheduled_after_restart, timeout=60, message=f"beat to schedule again: {beat.log_path.read_text()[-2000:]}")
    wait_for(lambda: not [x for x in runs(db_conn) if x["status"] in ("queued", "running")], timeout=30,
             message="no run left queued or running")
    assert not [x for x in runs(db_conn) if x["status"] == "failed"], runs(db_conn)
    report("outage seconds", round(outage, 1))
    report("trigger run done after restart (s)", round(resumed_at - restarted_at, 1))


def test_a_beat_tick_during_a_manual_run_and_two_simultaneous_triggers_make_one_run(
        start_worker, start_beat, client, fake_upstream, db_conn, redis, report):
    fake_upstream.set_coins(100)
    fake_upstream.latency = 0.7                           # 11 pages: about 8 s of run for the ticks to hit
    env = {"LOG_LEVEL": "INFO", **fake_upstream.env(**CRAWL)}
    w = start_worker(env, concurrency=2)

    barrier = threading.Barrier(2)
    answers = []

    def trigger():
        barrier.wait(timeout=10)
        answers.append(client.post("/api/v1/runs", json={"source": "coingecko"}, headers=AUTH))
    threads = [threading.Thread(target=trigger) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(a.status_code for a in answers) == [202, 409], [a.get_json() for a in answers]
    manual_id = next(a.get_json()["id"] for a in answers if a.status_code == 202)
    wait_for(lambda: [x for x in runs(db_conn) if x["status"] == "running"], timeout=30,
             message=f"the manual run to start: {w.log_tail()}")

    beat = start_beat({**env, "ENABLED_SOURCES": "coingecko", "COINGECKO_SCHEDULE_SECONDS": 1})
    wait_for(lambda: w.log_path.read_text().count("run skipped: source busy") >= 2, timeout=30,
             message=f"two beat ticks to reach the worker: {w.log_tail()}")
    beat.terminate()
    beat.wait(timeout=15)
    wait_for(lambda: redis.llen("celery") == 0, timeout=15, message="the ticks still queued to be consumed")
    time.sleep(1.0)                                       # the last consumed tick to be handled
    skipped = w.log_path.read_text().count("run skipped: source busy")
    still_running = [x for x in runs(db_conn) if x["status"] == "running"]
    assert [x["id"] for x in still_running] == [manual_id], "the manual run ended before the ticks were handled"

    wait_for(finished(db_conn), timeout=60, message="the manual run to finish")
    time.sleep(1.0)
    all_runs = runs(db_conn)
    assert [(x["id"], x["trigger"], x["status"]) for x in all_runs] == [(manual_id, "api", "succeeded")]
    pages = [q["page"] for _, _, q, _ in fake_upstream.requests_to("/api/v3/coins/markets")]
    assert sorted(pages, key=int) == [str(p) for p in range(1, 12)]   # one crawl: every page exactly once
    report("beat ticks skipped while the manual run held the source", skipped)


def test_a_worker_that_never_comes_back_is_reaped_and_the_next_run_resumes_its_checkpoint(
        start_worker, brokers, fake_upstream, db_conn, test_env, report):
    fake_upstream.set_coins(120)
    fake_upstream.latency = 0.3
    env = {"RUN_STALE_AFTER_SECONDS": 10, **fake_upstream.env(**CRAWL)}
    doomed = start_worker(env, name="doomed")
    brokers.send(test_env["REDIS_URL"], INGEST, source="coingecko", trigger="schedule")
    wait_for(lambda: progress(db_conn) >= 4, timeout=60, message=f"progress: {doomed.log_tail()}")
    os.killpg(doomed.proc.pid, signal.SIGKILL)            # the whole worker, and it never comes back
    doomed.proc.wait(timeout=10)
    killed_at = time.monotonic()
    dead = runs(db_conn)[0]
    assert dead["status"] == "running"
    with db_conn.cursor() as cur:
        cur.execute("SELECT cursor->'position'->>'page' FROM checkpoints WHERE source = 'coingecko'")
        checkpoint_page = int(cur.fetchone()[0])

    start_worker(env, name="survivor")
    reaped = None
    while reaped is None:                                  # what beat does every 60 s, every 1 s here
        assert time.monotonic() - killed_at < 60, f"not reaped: {runs(db_conn)}"
        brokers.send(test_env["REDIS_URL"], REAP)
        time.sleep(1.0)
        row = runs(db_conn)[0]
        if row["status"] != "running":
            reaped = row
    waited = time.monotonic() - killed_at
    assert reaped["status"] == "failed" and reaped["error"].startswith("worker lost"), reaped
    assert waited >= 10 - 3                                # not before RUN_STALE_AFTER_SECONDS of silence
    assert progress(db_conn) == dead["pages"]               # the reaper changed no data

    fake_upstream.clear_requests()
    fake_upstream.latency = 0.0
    brokers.send(test_env["REDIS_URL"], INGEST, source="coingecko", trigger="schedule")
    nxt = wait_for(finished(db_conn, count=2), timeout=60, message="the next run to finish")[-1]
    assert nxt["status"] == "succeeded", nxt
    pages = [int(q["page"]) for _, _, q, _ in fake_upstream.requests_to("/api/v3/coins/markets")]
    assert pages == list(range(checkpoint_page, 14)), pages   # resumed: the pages before were not fetched again
    disturbed = snapshot(db_conn)
    assert disturbed == undisturbed_snapshot(test_env, fake_upstream, db_conn, **CRAWL)
    report("seconds from kill to reaped", round(waited, 1))
    report("resumed at page", checkpoint_page)
