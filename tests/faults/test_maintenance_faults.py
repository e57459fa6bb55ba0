"""A maintenance run killed mid-way (a real Celery worker, SIGKILLed) and run again loses nothing and
duplicates nothing: every expired row ends up in exactly one hourly and one daily candle, with the
extremes and the last close of the rows it held.

How the kill lands mid-way without any hook in the code: the test locks one quote row in the middle of
the expired range (SELECT ... FOR UPDATE in its own transaction); the maintenance run commits the chunks
before it and blocks on that row's chunk; the worker is killed there; then the lock is released, and the
dead worker's transaction can never commit."""
from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import psycopg2

import api_data as d
from crypto_app.pipeline import partitions
from conftest import wait_for
from pipeline_helpers import table
from storage_data import assets, expected_candles, now, write_snapshots

from .conftest import REAP

MAINTENANCE = "tasks.maintenance"


def maintenance_runs(db_conn) -> list[tuple]:
    return table(db_conn, "SELECT id::text, status, fetched, error FROM etl_runs WHERE source = 'maintenance' "
                          "ORDER BY created_at")


def test_killed_maintenance_loses_and_duplicates_nothing(test_env, db_conn, start_worker, brokers):
    ids = assets(db_conn, 20)
    run_id = d.run(db_conn, "coingecko")
    start = (now() - timedelta(days=70)).replace(hour=0, minute=0, second=0, microsecond=0)
    old = write_snapshots(test_env["DATABASE_URL"], run_id, ids, start, count=24 * 12)   # a day, every 5 min
    setup = psycopg2.connect(test_env["DATABASE_URL"])
    partitions.drain_default(setup)      # the rows' year has its partition (the DELETE path, in chunks)
    setup.close()
    blocker = psycopg2.connect(test_env["DATABASE_URL"])
    with blocker.cursor() as cur:   # a row in hour 12: chunks of 1 h, so 12 commit before the run blocks
        cur.execute("SELECT 1 FROM quotes WHERE asset_id = %s AND observed_at = %s FOR UPDATE",
                    (ids[5], start + timedelta(hours=12, minutes=30)))
    env = {"RUN_STALE_AFTER_SECONDS": 10, "MAINTENANCE_CHUNK_HOURS": 1}
    doomed = start_worker(env, name="doomed")
    brokers.send(test_env["REDIS_URL"], MAINTENANCE, trigger="schedule")
    wait_for(lambda: table(db_conn, "SELECT count(*) FROM candles WHERE resolution = '1h'")[0][0] >= 12 * 20,
             timeout=60, message=f"first chunks: {doomed.log_tail()}")
    time.sleep(1.0)
    assert table(db_conn, "SELECT count(*) FROM candles WHERE resolution = '1h'") == [(12 * 20,)]   # blocked
    os.killpg(doomed.proc.pid, signal.SIGKILL)
    doomed.proc.wait(timeout=10)
    blocker.rollback()
    blocker.close()
    dead = maintenance_runs(db_conn)
    assert [r[1] for r in dead] == ["running"] and dead[0][2] == 12 * 12 * 20     # 12 chunks counted

    start_worker(env, name="survivor")
    killed_at = time.monotonic()
    while maintenance_runs(db_conn)[0][1] == "running":     # what beat does every 60 s, every 1 s here
        assert time.monotonic() - killed_at < 60, maintenance_runs(db_conn)
        brokers.send(test_env["REDIS_URL"], REAP)
        time.sleep(1.0)
    assert maintenance_runs(db_conn)[0][3].startswith("worker lost")
    brokers.send(test_env["REDIS_URL"], MAINTENANCE, trigger="schedule")
    wait_for(lambda: len(maintenance_runs(db_conn)) == 2 and maintenance_runs(db_conn)[1][1] == "succeeded",
             timeout=60, message=f"second run: {maintenance_runs(db_conn)}")

    assert maintenance_runs(db_conn)[1][2] == len(old) - 12 * 12 * 20    # it resumed where the first stopped
    assert table(db_conn, "SELECT count(*) FROM quotes") == [(0,)]
    for resolution, width in (("1h", timedelta(hours=1)), ("1d", timedelta(days=1))):
        got = {(a, b): (o, h, lo, c, n) for a, b, o, h, lo, c, n in table(
            db_conn, "SELECT asset_id, bucket, o_open, o_high, o_low, close, samples FROM candles "
                     "WHERE resolution = %s", (resolution,))}
        assert got == expected_candles(old, now(), width), resolution
