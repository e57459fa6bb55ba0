"""Storage maintenance as a run (source "maintenance" in etl_runs): rollups, retention, partition upkeep.

Each step is a sequence of short transactions that are complete on their own, so a maintenance run that
is killed anywhere loses nothing and duplicates nothing: the next delivery (the same run, redelivered by
Celery's acks_late, or the next scheduled run) starts again from what the tables say.

1. Rollup and expiry of full-resolution rows. For every snapshot dataset (no native interval, or one
   under an hour: API tickers), quote rows older than RETENTION_RAW_DAYS (cut at an hour boundary) are
   deleted MAINTENANCE_CHUNK_HOURS at a time, and the same statement writes the rows it deleted into
   hourly and daily candles (`DELETE ... RETURNING` feeds both INSERTs): a row is rolled up exactly in
   the transaction that deletes it, never before, never twice, and never deleted without its rollup.
   Candles are mergeable (first/last observation times beside open/close), so a row that arrives late
   for an already rolled-up bucket merges in at the next run: open, close and the extremes stay exact.
   `dataset_assets` (rows and span of the raw rows per dataset and asset) moves in the same transaction.
   Candle datasets (CSV files with a daily interval, ...) keep their rows: they are the history. CSV files
   with an interval under an hour (minute candles) are rolled up like snapshots. A candle keeps the last
   rolling 24h volume (volume_24h_usd) and the sum and count of the rows' interval volumes (volume_usd) in
   volume_sum and volumes: only an interval volume can be summed (migration 0007).
2. Hourly candles older than CANDLE_HOURLY_RETENTION_DAYS are deleted (daily candles stay forever).
3. Raw page bodies not seen for RAW_PAYLOAD_RETENTION_DAYS are pruned (the hash row stays).
4. Rejected records older than REJECTED_RETENTION_DAYS are deleted.
5. Compaction: complete daily partitions are rewritten once in (asset, dataset, time) order (compaction.py),
   up to compaction.PER_RUN a run, newest first.
6. VACUUM (ANALYZE) of the small hot tables and of what maintenance pruned (see `vacuum`).

Safe while ingestion writes: the loader only ever writes recent rows; a row it writes into an expired
range after the DELETE's snapshot survives and is merged by the next run. The run's counters
(fetched: quote rows rolled up; loaded: candle rows written) and stats move in each step's transaction.
"""
from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timedelta, timezone

import psycopg2
from psycopg2 import errors, sql
from psycopg2.extras import Json

from . import compaction, lifecycle, partitions
from .driver import DB_ERRORS, Delivery, Step
from .heartbeat import Heartbeat

log = logging.getLogger(__name__)
SOURCE = "maintenance"
ORIGIN = "TIMESTAMPTZ '2000-01-03 00:00:00+00'"   # the history API's bucket origin (a Monday)

_CANDLE_COLUMNS = ("o_open, o_high, o_low, close, s_open, s_high, s_low, ohlc, market_cap_usd, volume_24h_usd, "
                   "volume_sum, volumes, samples, first_observed_at, last_observed_at")


def _candles_from(rows: str, resolution: str, step: str) -> str:
    """INSERT of `rows`' candles at one resolution, merged into existing candles of the same bucket."""
    return f"""
    INSERT INTO candles AS c (dataset_id, asset_id, resolution, bucket, {_CANDLE_COLUMNS})
    SELECT dataset_id, asset_id, '{resolution}', date_bin(INTERVAL '{step}', observed_at, {ORIGIN}),
           (array_agg(price_usd ORDER BY observed_at))[1], max(price_usd), min(price_usd),
           (array_agg(price_usd ORDER BY observed_at DESC))[1],
           (array_agg(open_usd ORDER BY observed_at))[1], max(high_usd), min(low_usd),
           bool_and(open_usd IS NOT NULL AND high_usd IS NOT NULL AND low_usd IS NOT NULL),
           (array_agg(market_cap_usd ORDER BY observed_at DESC))[1],
           (array_agg(volume_24h_usd ORDER BY observed_at DESC))[1],
           sum(volume_usd), count(volume_usd), count(*), min(observed_at), max(observed_at)
    FROM {rows} GROUP BY 1, 2, 4
    ON CONFLICT (dataset_id, asset_id, resolution, bucket) DO UPDATE SET
        o_open = CASE WHEN EXCLUDED.first_observed_at < c.first_observed_at THEN EXCLUDED.o_open ELSE c.o_open END,
        s_open = CASE WHEN EXCLUDED.first_observed_at < c.first_observed_at THEN EXCLUDED.s_open ELSE c.s_open END,
        close = CASE WHEN EXCLUDED.last_observed_at > c.last_observed_at THEN EXCLUDED.close ELSE c.close END,
        market_cap_usd = CASE WHEN EXCLUDED.last_observed_at > c.last_observed_at THEN EXCLUDED.market_cap_usd
                              ELSE c.market_cap_usd END,
        volume_24h_usd = CASE WHEN EXCLUDED.last_observed_at > c.last_observed_at THEN EXCLUDED.volume_24h_usd
                              ELSE c.volume_24h_usd END,
        o_high = GREATEST(c.o_high, EXCLUDED.o_high), o_low = LEAST(c.o_low, EXCLUDED.o_low),
        s_high = GREATEST(c.s_high, EXCLUDED.s_high), s_low = LEAST(c.s_low, EXCLUDED.s_low),
        ohlc = c.ohlc AND EXCLUDED.ohlc,
        volume_sum = CASE WHEN c.volume_sum IS NULL THEN EXCLUDED.volume_sum
                          ELSE c.volume_sum + coalesce(EXCLUDED.volume_sum, 0) END,
        volumes = c.volumes + EXCLUDED.volumes, samples = c.samples + EXCLUDED.samples,
        first_observed_at = LEAST(c.first_observed_at, EXCLUDED.first_observed_at),
        last_observed_at = GREATEST(c.last_observed_at, EXCLUDED.last_observed_at), rolled_at = now()
    RETURNING 1"""


_ROLLED = ("dataset_id, asset_id, observed_at, price_usd, open_usd, high_usd, low_usd, market_cap_usd, volume_24h_usd, "
           "volume_usd")
_DELETE_RANGE = f"""
    DELETE FROM quotes WHERE source = %(source)s AND dataset_id = %(dataset_id)s AND observed_at >= %(since)s
      AND observed_at < %(until)s RETURNING {_ROLLED}"""
_ROLL_UP = f"""
WITH gone AS ({{gone}}
), hourly AS ({_candles_from("gone", "1h", "1 hour")}
), daily AS ({_candles_from("gone", "1d", "1 day")}
), counted AS (
    UPDATE dataset_assets da SET rows = da.rows - g.n FROM (
        SELECT dataset_id, asset_id, count(*) AS n FROM gone GROUP BY 1, 2) g
    WHERE da.dataset_id = g.dataset_id AND da.asset_id = g.asset_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM hourly), (SELECT count(*) FROM daily)
"""
ROLL_UP_AND_EXPIRE = _ROLL_UP.replace("{gone}", _DELETE_RANGE)
# a whole partition (locked against writers): every row goes into the candles, then the partition is dropped
ROLL_UP_PARTITION = _ROLL_UP.replace("{gone}", f"SELECT {_ROLLED} FROM {{partition}}")
# after the delete: the span of the raw rows that are left (NULL, NULL when none is)
RESPAN = """
UPDATE dataset_assets da SET first_observed_at = s.first,
       last_observed_at = CASE WHEN s.first IS NULL THEN NULL ELSE da.last_observed_at END
FROM (SELECT d.dataset_id, d.asset_id, (SELECT min(observed_at) FROM quotes q
                          WHERE q.asset_id = d.asset_id AND q.dataset_id = d.dataset_id) AS first
      FROM dataset_assets d WHERE d.dataset_id = ANY(%(datasets)s) AND d.first_observed_at < %(until)s) s
WHERE da.dataset_id = s.dataset_id AND da.asset_id = s.asset_id
"""
EXPIRING_DATASETS = """
SELECT id, source FROM datasets WHERE native_interval IS NULL OR native_interval < INTERVAL '1 hour' ORDER BY id
"""


def _progress(cur, run_id: str, step: str, counts: dict, fetched: int = 0, loaded: int = 0) -> None:
    """Add this transaction's counts to the run (same transaction as the work)."""
    cur.execute("UPDATE etl_runs SET fetched = fetched + %s, loaded = loaded + %s, pages = pages + 1, "
                "heartbeat_at = now(), stats = stats || jsonb_build_object('step', %s::text) || "
                "(SELECT coalesce(jsonb_object_agg(key, coalesce((etl_runs.stats ->> key)::bigint, 0) + value::bigint), "
                "'{}'::jsonb) FROM jsonb_each_text(%s::jsonb)) WHERE id = %s",
                (fetched, loaded, step, Json(counts), run_id))


def expiring_datasets(conn) -> list[tuple[int, str]]:
    with conn.cursor() as cur:
        cur.execute(EXPIRING_DATASETS)
        rows = cur.fetchall()
    conn.commit()
    return rows


def raw_cutoff(storage, now: datetime) -> datetime:
    """Snapshot rows observed before this (an hour boundary) are past RETENTION_RAW_DAYS."""
    return (now - timedelta(days=storage.retention_raw_days)).replace(minute=0, second=0, microsecond=0)


def roll_up_and_expire(conn, run_id: str, storage, ranges, should_stop=None) -> dict:
    """Roll up and DELETE the snapshot rows in each [since, until) of `ranges`, a chunk per transaction
    (rows that are not in a dated partition that will be dropped whole: see expire_partitions)."""
    chunk = timedelta(hours=storage.maintenance_chunk_hours)
    totals = {"quotes_rolled_up": 0, "hourly_candles": 0, "daily_candles": 0}
    for dataset_id, source in expiring_datasets(conn):
        for since, until in ranges:
            while True:
                if should_stop and should_stop():
                    raise InterruptedError(should_stop())
                with conn.cursor() as cur:
                    cur.execute("SELECT min(observed_at) FROM quotes WHERE source = %s AND dataset_id = %s "
                                "AND observed_at >= %s AND observed_at < %s", (source, dataset_id, since, until))
                    oldest = cur.fetchone()[0]
                    if oldest is None:
                        conn.commit()
                        break
                    chunk_end = min(until, oldest.replace(minute=0, second=0, microsecond=0) + chunk)
                    params = {"source": source, "dataset_id": dataset_id, "since": since, "until": chunk_end,
                              "datasets": [dataset_id]}
                    cur.execute(ROLL_UP_AND_EXPIRE, params)
                    rows, hourly, daily = cur.fetchone()
                    cur.execute(RESPAN, params)
                    counts = {"quotes_rolled_up": rows, "hourly_candles": hourly, "daily_candles": daily}
                    _progress(cur, run_id, "rollup", counts, fetched=rows, loaded=hourly + daily)
                conn.commit()
                for k, v in counts.items():
                    totals[k] += v
    return totals


def expire_partitions(conn, run_id: str, storage, now: datetime, should_stop=None) -> tuple[dict, list]:
    """Dated partitions (daily; weekly ones of a database migrated before 0008) that ended before the raw
    cutoff and hold only snapshot rows: all their rows go
    into the candles and the partition is dropped, in one transaction (no DELETE, no bloat). Returns the
    counts and the [lo, hi) ranges of expired partitions that also hold rows to keep (CSV candles), whose
    snapshot rows take the DELETE path instead."""
    cutoff = raw_cutoff(storage, now)
    snapshot_ids = [dataset_id for dataset_id, _ in expiring_datasets(conn)]
    totals = {"partitions_dropped": 0, "partitions_busy": 0, "quotes_rolled_up": 0, "hourly_candles": 0,
              "daily_candles": 0}
    mixed = []
    for part in partitions.partitions(conn):
        conn.commit()
        if not part.dated or part.hi > cutoff:
            continue
        if should_stop and should_stop():
            raise InterruptedError(should_stop())
        name = sql.Identifier(part.name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(partitions.LOCK_TIMEOUT)))
                cur.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(name))     # writers wait; readers go on
                cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE dataset_id <> ALL(%s))").format(name),
                            (snapshot_ids,))
                if cur.fetchone()[0]:
                    mixed.append((part.lo, part.hi))
                    conn.commit()
                    continue
                cur.execute(sql.SQL(ROLL_UP_PARTITION).format(partition=name))
                rows, hourly, daily = cur.fetchone()
                cur.execute(sql.SQL("DROP TABLE {}").format(name))
                cur.execute("SELECT cryptoflow_rm_mark_version()")    # a DROP fires no trigger
                cur.execute(RESPAN, {"datasets": snapshot_ids, "until": part.hi})
                counts = {"partitions_dropped": 1, "quotes_rolled_up": rows, "hourly_candles": hourly,
                          "daily_candles": daily}
                _progress(cur, run_id, "partitions", counts, fetched=rows, loaded=hourly + daily)
            conn.commit()
        except (errors.LockNotAvailable, errors.DeadlockDetected):   # a writer of that day: next run
            conn.rollback()
            counts = {"partitions_busy": 1}
            log.warning("partition busy, left for the next maintenance run", extra={"partition": part.name})
        for k, v in counts.items():
            totals[k] += v
    return totals, mixed


def upkeep_partitions(conn, now: datetime) -> dict:
    created = partitions.drain_default(conn) + partitions.ensure_ahead(conn, now)
    return {"partitions_created": len(created)}


def expire_small(conn, run_id: str, storage, now: datetime) -> dict:
    """Steps 2-4: hourly candles, raw page bodies, rejected records past their retention."""
    counts = {}
    with conn.cursor() as cur:
        cur.execute("DELETE FROM candles WHERE resolution = '1h' AND bucket < %s",
                    (now - timedelta(days=storage.candle_hourly_retention_days),))
        counts["hourly_candles_expired"] = cur.rowcount
        cur.execute("UPDATE raw_pages SET body = NULL, pruned_at = %s WHERE body IS NOT NULL AND last_seen_at < %s",
                    (now, now - timedelta(days=storage.raw_payload_retention_days)))
        counts["raw_pages_pruned"] = cur.rowcount
        cur.execute("DELETE FROM rejected_records WHERE created_at < %s",
                    (now - timedelta(days=storage.rejected_retention_days),))
        counts["rejected_expired"] = cur.rowcount
        _progress(cur, run_id, "retention", counts)
    conn.commit()
    return counts


VACUUMED = ("latest_quotes", "dataset_assets", "raw_pages", "candles", "rejected_records", "quotes_default")


def vacuum(dsn: str, changed: set[str] = frozenset()) -> list[str]:
    """Step 5: VACUUM (ANALYZE) the small tables rewritten all day (latest_quotes and dataset_assets: every
    row at every run) and the ones maintenance pruned, so their space is reused and the storage figures'
    estimates are current even where autovacuum is off or behind (it is off on the test machine, where
    the soak found latest_quotes at 224 MB for 3,000 rows after a simulated day without this). A table
    with no row modified or dead since its last ANALYZE is skipped unless this run changed it (`changed`,
    as its writes' statistics may reach the server after this ANALYZE, in which case the next run analyzes
    the table once more): candles change only when rows are rolled up or
    expire, and at 90 simulated days their hourly ANALYZE alone read ~0.9 s of sample pages for nothing
    (a 30,000-row sample, whatever the table's size). Returns the tables vacuumed."""
    conn = psycopg2.connect(dsn, connect_timeout=10)
    conn.autocommit = True
    done = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT relname FROM pg_stat_user_tables WHERE relname = ANY(%s) AND schemaname = "
                        "current_schema() AND n_mod_since_analyze = 0 AND n_dead_tup = 0", (list(VACUUMED),))
            idle = {name for (name,) in cur.fetchall()} - set(changed)
            for table in VACUUMED:
                if table not in idle:
                    cur.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
                    done.append(table)
    finally:
        conn.close()
    return done


def changed_tables(counts: dict) -> set[str]:
    """The tables this run's counts say it wrote (quotes_default: rows drained into partitions of their own)."""
    return {table for table, keys in (("candles", ("quotes_rolled_up", "hourly_candles_expired")),
                                      ("raw_pages", ("raw_pages_pruned",)),
                                      ("rejected_records", ("rejected_expired",)),
                                      ("quotes_default", ("partitions_created",)))
            if any(counts.get(key) for key in keys)}


def maintain(conn, run_id: str, storage, now: datetime | None = None, should_stop=None,
             dsn: str | None = None) -> dict:
    """Every step once, in order (each resumable); returns the counts of this delivery."""
    now = now or datetime.now(timezone.utc)
    started = time.monotonic()
    counts = upkeep_partitions(conn, now)
    dropped, mixed = expire_partitions(conn, run_id, storage, now, should_stop)
    weekly_from = partitions.weekly_from(conn)
    conn.commit()
    cutoff = raw_cutoff(storage, now)
    ranges = [(datetime(1, 1, 1, tzinfo=timezone.utc), min(cutoff, weekly_from))] + mixed
    deleted = roll_up_and_expire(conn, run_id, storage, ranges, should_stop)
    counts.update({k: dropped.get(k, 0) + deleted.get(k, 0) for k in set(dropped) | set(deleted)})
    counts.update(expire_small(conn, run_id, storage, now))
    counts.update(compaction.compact_days(         # not the days about to expire
        conn, now, not_before=cutoff + timedelta(days=1), should_stop=should_stop,
        record=lambda cur, c: _progress(cur, run_id, "compaction", c)))
    if dsn:
        vacuum(dsn, changed_tables(counts))
    counts["seconds"] = round(time.monotonic() - started, 3)
    return counts


def deliver_maintenance(settings, run_id: str | None = None, trigger: str = "schedule",
                        now: datetime | None = None, kind: str = "worker") -> Step:
    """One delivery of a maintenance run, with the ingestion runs' lock, run row, heartbeat and verdicts."""
    run_id = str(run_id or uuid.uuid4())
    d = Delivery(settings, SOURCE, run_id, kind)
    d.ctx["trigger"] = trigger
    try:
        d.connect()
    except DB_ERRORS as exc:
        d.close()
        return d.fail(f"PostgreSQL unreachable: {exc}".strip()[:300])
    try:
        status = lifecycle.run_status(d.conn, run_id)
        if status in lifecycle.TERMINAL:
            return Step(run_id, summary={"ignored": True, "status": status})
        if not d.lock.claim(run_id, d.ttl):
            holder = d.lock.holder()
            if status is None:
                log.info("maintenance skipped: already running", extra={**d.ctx, "running_run_id": holder})
                return Step(None, summary={"skipped": True, "running_run_id": holder})
            return d.fail(f"superseded: lost its lock; run {holder} holds {SOURCE}", release=False)
        if status is None:
            lifecycle.create_run(d.conn, run_id, SOURCE, trigger)
        died_before = lifecycle.start_delivery(d.conn, run_id, SOURCE)
        if died_before >= settings.max_deliveries:
            return d.fail(f"gave up: {died_before} deliveries in a row died mid-run")
        log.info("maintenance started", extra=d.ctx)
        with Heartbeat(settings.libpq_url, d.lock, run_id, d.ttl, kind=kind) as beat:
            counts = maintain(d.conn, run_id, settings.storage, now, should_stop=beat.lost_reason,
                              dsn=settings.libpq_url)
        lifecycle.finish_run(d.conn, run_id, "succeeded")
        d.lock.release(run_id)
        log.info("maintenance finished", extra={**d.ctx, **counts})
        return Step(run_id, status="succeeded", summary={"run_id": run_id, "status": "succeeded", **counts})
    except InterruptedError as exc:
        return d.fail(f"stopped: {exc}", release=False)
    except DB_ERRORS as exc:
        return d.fail(f"database error: {exc}".strip()[:300])
    except BaseException as exc:
        log.exception("maintenance crashed", extra=d.ctx)
        d.fail(f"{exc.__class__.__name__}: {exc}")
        raise
    finally:
        d.close()
