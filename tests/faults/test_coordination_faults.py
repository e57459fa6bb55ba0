"""Coordination broken on purpose (issue 12, findings 1-5), through real Celery workers, PostgreSQL and Redis:
a PostgreSQL outage shorter and longer than the retry budget, a lock deleted mid-run, segments whose
worker keeps dying, a killed `flask etl import`, and a 429 whose Retry-After must outlive its run.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from conftest import ROOT, wait_for
from crypto_app.coordination import SourceLock, redis_client

from .conftest import AUTH, INGEST, REAP, kill_group
from .helpers import TERMINAL, finished, progress, runs

pytestmark = pytest.mark.worker
CRAWL = dict(COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=20, COINGECKO_RATE_PER_MINUTE=6000)
DATA = ROOT / "data"
MARKETS = "/api/v3/coins/markets"


def history_csv(path: Path, days: int, coins: int = 20) -> int:
    """A price history CSV of days x coins rows (distinct dates per coin, plausible candles: low <= open,
    close <= high); returns the row count."""
    with path.open("w") as f:
        f.write("Date,Symbol,Name,Open,High,Low,Close,Volume,Marketcap\n")
        for day in range(days):
            date = f"{2000 + day // 336:04d}-{day % 336 // 28 + 1:02d}-{day % 28 + 1:02d}"
            for c in range(coins):
                f.write(f"{date},C{c},Coin {c},{c + 1}.5,{c + 9},{c + 1},{c + day % 7 + 1}.25,{day * 10},{c * 1000}\n")
    shutil.copy(DATA / "asset_overrides.json", path.parent)
    return days * coins


def quote_counts(conn) -> tuple[int, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT (asset_id, observed_at)) FROM quotes")
        return cur.fetchone()


def by_id(conn, run_id: str) -> dict:
    return next(r for r in runs(conn) if r["id"] == run_id)


# --- finding 1: PostgreSQL down ---------------------------------------------------------------------------

def test_a_database_outage_beyond_the_retry_count_is_survived_within_the_time_budget(
        start_worker, brokers, fake_upstream, test_env, throwaway_postgres, report):
    pg = throwaway_postgres()
    url = pg.create_migrated_database("cryptoflow_outage", test_env)
    fake_upstream.set_coins(120)
    fake_upstream.latency = 0.25
    w = start_worker({"DATABASE_URL": url, "TASK_MAX_RETRIES": 1, "DB_RETRY_BUDGET_SECONDS": 90,
                      "RETRY_BACKOFF_MAX_SECONDS": 2, **fake_upstream.env(**CRAWL)})
    own = psycopg2.connect(url, connect_timeout=5)
    own.autocommit = True
    brokers.send(test_env["REDIS_URL"], INGEST, source="coingecko", trigger="schedule")
    wait_for(lambda: progress(own) >= 3, timeout=60, message=f"progress before the outage: {w.log_tail()}")
    own.close()
    pg.stop("fast")
    stopped = time.monotonic()
    time.sleep(12)                     # TASK_MAX_RETRIES=1 used to give up after ~3 s of this
    pg.start()
    outage = time.monotonic() - stopped
    own = psycopg2.connect(url, connect_timeout=5)
    own.autocommit = True
    try:
        run = wait_for(finished(own), timeout=60, message=f"the run to finish after the outage: {w.log_tail()}")[0]
    finally:
        own.close()
    assert (run["status"], run["loaded"], run["pages"]) == ("succeeded", 120, 13), (run, w.log_tail())
    assert "database unreachable, retrying" in w.log_path.read_text()
    report("outage survived (s)", round(outage, 1))


def test_a_database_outage_beyond_the_budget_frees_the_source_and_fails_the_run_honestly(
        start_worker, brokers, fake_upstream, test_env, throwaway_postgres, redis, report):
    pg = throwaway_postgres()
    url = pg.create_migrated_database("cryptoflow_long_outage", test_env)
    fake_upstream.set_coins(120)
    fake_upstream.latency = 0.25
    w = start_worker({"DATABASE_URL": url, "DB_RETRY_BUDGET_SECONDS": 6, "RETRY_BACKOFF_MAX_SECONDS": 2,
                      **fake_upstream.env(**CRAWL)})
    own = psycopg2.connect(url, connect_timeout=5)
    own.autocommit = True
    brokers.send(test_env["REDIS_URL"], INGEST, source="coingecko", trigger="schedule")
    wait_for(lambda: progress(own) >= 3, timeout=60, message=f"progress before the outage: {w.log_tail()}")
    run_id = runs(own)[0]["id"]
    own.close()
    assert redis.get("cryptoflow:lock:coingecko").decode() == run_id

    pg.stop("fast")
    stopped = time.monotonic()
    # while PostgreSQL is still down, the run gives up and frees its source (not 15 minutes later)
    wait_for(lambda: redis.get("cryptoflow:lock:coingecko") is None, timeout=40,
             message=f"the lock to be released during the outage: {w.log_tail()}")
    freed_after = time.monotonic() - stopped
    assert "database unreachable, giving up" in w.log_path.read_text()
    pg.start()
    own = psycopg2.connect(url, connect_timeout=5)
    own.autocommit = True
    try:
        brokers.send(test_env["REDIS_URL"], REAP)          # what beat does every minute
        run = wait_for(lambda: [r for r in runs(own) if r["status"] in TERMINAL], timeout=30,
                       message=f"the failure to be written once PostgreSQL is back: {w.log_tail()}")[0]
    finally:
        own.close()
    assert run["id"] == run_id and run["status"] == "failed", run
    assert run["error"].startswith("gave up: PostgreSQL unreachable for"), run["error"]
    assert "DB_RETRY_BUDGET_SECONDS=6" in run["error"] and "worker lost" not in run["error"]
    report("source freed after (s) of outage", round(freed_after, 1))


# --- finding 2: a run that loses its lock ----------------------------------------------------------------

def test_a_run_that_loses_its_lock_stops_at_its_next_batch_and_is_failed_as_superseded(
        start_worker, client, db_conn, redis, tmp_path, report):
    total = history_csv(tmp_path / "history.csv", days=5000)          # 100,000 rows, 100 batches
    env = {"CSV_DATA_DIR": tmp_path, "CSV_SEGMENT_BYTES": 0, "CSV_CHUNK_ROWS": 1000, "RUN_STALE_AFTER_SECONDS": 20}
    w = start_worker(env, concurrency=2)
    first = client.post("/api/v1/runs", json={"source": "csv"}, headers=AUTH)
    assert first.status_code == 202, first.get_json()
    first_id = first.get_json()["id"]
    wait_for(lambda: progress(db_conn) >= 5, timeout=60, message=f"the first run to progress: {w.log_tail()}")
    redis.delete("cryptoflow:lock:csv")                               # Redis forgets who holds csv
    second = client.post("/api/v1/runs", json={"source": "csv"}, headers=AUTH)
    assert second.status_code == 202, second.get_json()
    second_id = second.get_json()["id"]
    wait_for(finished(db_conn, count=2), timeout=150, message=f"both runs to end: {runs(db_conn)} {w.log_tail()}")

    old, new = by_id(db_conn, first_id), by_id(db_conn, second_id)
    assert old["status"] == "failed" and old["error"].startswith("superseded: lost its lock"), old
    assert new["status"] == "succeeded", new
    assert old["loaded"] + new["loaded"] == total, (old["loaded"], new["loaded"])   # no row counted twice
    assert quote_counts(db_conn) == (total, total)
    report("rows loaded by the superseded run", old["loaded"])


# --- finding 3: MAX_DELIVERIES caps segment tasks -------------------------------------------------------

def test_a_segment_whose_worker_keeps_dying_is_given_up_and_its_deliveries_are_counted(
        start_worker, brokers, db_conn, test_env, tmp_path, report):
    history_csv(tmp_path / "big.csv", days=2000)                      # ~2.4 MB: two segments
    size = (tmp_path / "big.csv").stat().st_size
    env = {"CSV_DATA_DIR": tmp_path, "CSV_SEGMENT_BYTES": size // 2 - 1000, "CSV_CHUNK_ROWS": 200,
           "MAX_DELIVERIES": 2}
    w = start_worker(env, concurrency=1)
    brokers.send(test_env["REDIS_URL"], INGEST, source="csv", trigger="schedule")
    kills, last = 0, 0

    def moved_or_ended():
        row = (runs(db_conn) or [None])[0]
        return row and (row["status"] in TERMINAL or row["pages"] > last) and row

    while kills < 6:
        row = wait_for(moved_or_ended, timeout=60, message=f"progress or the end: {w.log_tail()}")
        if row["status"] in TERMINAL:
            break
        for pid in w.children():
            os.kill(pid, signal.SIGKILL)
        kills += 1
        time.sleep(0.5)
        last = (runs(db_conn) or [row])[0]["pages"]
    run = wait_for(finished(db_conn), timeout=90, message=f"the run to end: {w.log_tail()}")[0]
    assert run["status"] == "failed" and "deliveries in a row died mid-segment" in run["error"], run
    # two segments, two deaths each at most, plus at most one death of the coordinating delivery (a second
    # one would fail the run "mid-run", not "mid-segment"): a kill can land before the segments are queued
    assert kills <= 5
    assert run["deliveries"] >= kills + 1, run         # the coordinator's and every segment delivery
    report("kills before the run was given up", kills)


# --- finding 4: a killed `flask etl import` ------------------------------------------------------------

def test_a_killed_cli_import_is_taken_over_by_the_next_import(test_env, db_conn, tmp_path, report):
    total = history_csv(tmp_path / "history.csv", days=4000)
    env = {**test_env, "CSV_DATA_DIR": str(tmp_path), "CSV_CHUNK_ROWS": "500", "CSV_SEGMENT_BYTES": "0"}
    flask = [str(ROOT / ".venv" / "bin" / "flask"), "etl", "import", str(tmp_path / "history.csv")]
    doomed = subprocess.Popen(flask, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: progress(db_conn) >= 5, timeout=60, message="the first import to progress")
    finally:
        kill_group(doomed, signal.SIGKILL)
    dead = runs(db_conn)[0]
    assert dead["status"] == "running"
    started = time.monotonic()
    again = subprocess.run(flask, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"took over csv from run {dead['id']}" in again.stderr, again.stderr[-2000:]
    old, new = runs(db_conn)
    assert old["status"] == "failed" and old["error"].startswith("superseded: lost its lock"), old
    assert "is gone" in old["error"]
    assert new["status"] == "succeeded" and old["loaded"] + new["loaded"] == total, (old, new)
    assert quote_counts(db_conn) == (total, total)
    report("second import took (s)", round(time.monotonic() - started, 1))


def test_the_cli_says_how_long_a_live_holder_blocks_and_takes_over_when_asked(test_env, fake_upstream, db_conn):
    from crypto_app import create_app
    from pipeline_helpers import settings_for

    app = create_app({"TESTING": True}, settings=settings_for(test_env, **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000)))
    other = "00000000-0000-0000-0000-0000000000bb"
    with db_conn.cursor() as cur:
        cur.execute("INSERT INTO etl_runs (id, source, trigger, status) VALUES (%s, 'coingecko', 'api', 'running')",
                    (other,))
    lock = SourceLock(redis_client(test_env["REDIS_URL"]), "coingecko")
    assert lock.acquire(other, 600)
    lock.beat(other, 60, "worker")                     # alive, from this host, as a worker would be
    refused = app.test_cli_runner().invoke(args=["etl", "run", "coingecko"])
    assert refused.exit_code != 0 and f"already going: {other}" in refused.output
    assert "expires by itself within" in refused.output and "--take-over" in refused.output, refused.output
    taken = app.test_cli_runner().invoke(args=["etl", "run", "coingecko", "--take-over"])
    assert taken.exit_code == 0, taken.output
    assert f"took over coingecko from run {other}" in taken.output and "succeeded" in taken.output
    old = by_id(db_conn, other)
    assert old["status"] == "failed" and "--take-over" in old["error"], old


# --- finding 5: Retry-After outlives the run that received it ----------------------------------------------

def test_a_429_retry_after_blocks_the_source_for_the_next_run_too(start_worker, brokers, fake_upstream, db_conn,
                                                                   test_env, report):
    fake_upstream.set_coins(5)
    fake_upstream.script(MARKETS, [fake_upstream.rate_limited(retry_after=3)])
    w = start_worker(fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000, TASK_MAX_RETRIES=0))
    brokers.send(test_env["REDIS_URL"], INGEST, source="coingecko", trigger="schedule")
    gave_up = wait_for(finished(db_conn), timeout=60, message=f"the first run to give up: {w.log_tail()}")[0]
    assert gave_up["status"] == "failed" and "429" in gave_up["error"], gave_up
    brokers.send(test_env["REDIS_URL"], INGEST, source="coingecko", trigger="schedule")
    nxt = wait_for(finished(db_conn, count=2), timeout=60, message=f"the next run: {w.log_tail()}")[-1]
    assert nxt["status"] == "succeeded", nxt
    first, second = [t for t, *_ in fake_upstream.requests_to(MARKETS)]
    assert second - first >= 3.0, second - first       # nobody asked before Retry-After had passed
    report("seconds between the 429 and the next request", round(second - first, 2))
