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


def daily_week(db_conn, week) -> list:
    """The (empty) weekly partition of `week` from migration 0005 replaced by seven daily partitions, as
    a database migrated before 0008 has them from then on. Returns the days."""
    from psycopg2 import sql

    days = [week + timedelta(days=i) for i in range(7)]
    with db_conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(f"quotes_w{week:%Y%m%d}")))
        for day in days:
            partitions._create(cur, f"quotes_d{day:%Y%m%d}", day, day + timedelta(days=1))
        cur.execute("COMMIT")
    return days


def test_compaction_killed_at_its_swap_leaves_the_day_as_it_was_and_the_next_run_compacts_it(
        test_env, db_conn, start_worker, brokers):
    """Compaction copies a day sorted into a new table and swaps it in, in one transaction. The test holds
    an ACCESS SHARE lock on `quotes` (as a long read would), so the swap's DETACH waits; the worker is
    killed there, after the copy. Nothing of the half-done compaction is left, the day's rows are all in
    their partition, and the next run compacts it."""
    from crypto_app.pipeline.maintenance import deliver_maintenance
    from crypto_app.config import load_settings
    from pipeline_helpers import quotes_snapshot

    assert deliver_maintenance(load_settings(test_env), trigger="cli", kind="cli").status == "succeeded"  # nothing due
    ids = assets(db_conn, 20)
    run_id = d.run(db_conn, "coingecko")
    week = partitions.week_start(now() - timedelta(weeks=3))
    day = daily_week(db_conn, week)[6]        # the newest complete day: compacted first
    name = f"quotes_d{day:%Y%m%d}"
    write_snapshots(test_env["DATABASE_URL"], run_id, ids, day + timedelta(hours=6), count=24)
    before = quotes_snapshot(db_conn)
    reader = psycopg2.connect(test_env["DATABASE_URL"])
    with reader.cursor() as cur:
        cur.execute("LOCK TABLE ONLY quotes IN ACCESS SHARE MODE")
    doomed = start_worker({"RUN_STALE_AFTER_SECONDS": 10}, name="doomed")
    brokers.send(test_env["REDIS_URL"], MAINTENANCE, trigger="schedule")
    wait_for(lambda: table(db_conn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND starts_with(query, %s)", (f'ALTER TABLE quotes DETACH PARTITION "{name}"',)
                           )[0][0] == 1,
             timeout=60, interval=0.05, message=f"the swap waiting: {doomed.log_tail()}")
    os.killpg(doomed.proc.pid, signal.SIGKILL)
    doomed.proc.wait(timeout=10)
    reader.rollback()
    reader.close()

    def left_over():
        return table(db_conn, "SELECT relname FROM pg_class WHERE relkind = 'r' AND starts_with(relname, %s)", (name,))

    wait_for(lambda: left_over() == [(name,)], timeout=30, message=f"left over: {left_over()}")
    assert quotes_snapshot(db_conn) == before
    assert table(db_conn, "SELECT obj_description(%s::regclass, 'pg_class')", (name,)) == [(None,)]

    start_worker({"RUN_STALE_AFTER_SECONDS": 10}, name="survivor")
    killed_at = time.monotonic()
    while maintenance_runs(db_conn)[-1][1] == "running":
        assert time.monotonic() - killed_at < 60, maintenance_runs(db_conn)
        brokers.send(test_env["REDIS_URL"], REAP)
        time.sleep(1.0)
    brokers.send(test_env["REDIS_URL"], MAINTENANCE, trigger="schedule")
    wait_for(lambda: maintenance_runs(db_conn)[-1][1] == "succeeded" and len(maintenance_runs(db_conn)) == 3,
             timeout=60, message=f"next run: {maintenance_runs(db_conn)}")
    assert quotes_snapshot(db_conn) == before
    assert table(db_conn, "SELECT starts_with(obj_description(%s::regclass, 'pg_class'), 'cryptoflow: compacted')",
                 (name,)) == [(True,)]
    physical = table(db_conn, f"SELECT asset_id, observed_at FROM ONLY {name} ORDER BY ctid")
    assert physical == sorted(physical) and len(physical) == 20 * 24
