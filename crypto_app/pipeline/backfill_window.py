"""Executing one backfill window: claim, take a rate-limit token, fetch, validate, load, mark done.

`run_window(settings, window_id, failures)` returns a WindowStep. The window's rows, its raw payload,
its rejections and its `done` state are written in ONE transaction (load.load_batch with
`in_transaction`): a worker killed before the commit leaves nothing behind and the redelivered task
does the window again; one killed after it finds the window done and does nothing.

- the token comes from the source's shared bucket (coordination.RateLimiter, the one scheduled runs
  use); a wait longer than RATE_LIMIT_MAX_SLEEP_SECONDS returns `retry_in` (not a failure);
- a transient upstream failure (5xx, 429, timeout) is retried with backoff up to TASK_MAX_RETRIES,
  a 429's Retry-After blocking the bucket for everyone; then the window is `failed`;
- the upstream saying "beyond your plan" (402, CoinGecko's time-range 401) -> `unavailable`, never
  retried; any other permanent refusal (401 bad key, 404 unknown coin) -> `failed` with its message;
- a cancelled backfill's windows that have not started become `cancelled`.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

from datetime import datetime, timezone

import psycopg2

from ..coordination import RateLimiter, redis_client
from ..sources import build_history_source
from ..sources.base import PermanentSourceError, TransientSourceError
from ..sources.history import INTERVALS, Unavailable
from .backfill_plan import PROVISIONAL, newest_final
from .datasets import DatasetRegistry
from .identity import IdentityResolver, load_overrides
from .ingest import RateLimitWait, backoff_seconds, make_throttle, transform
from .load import LoadBatch, load_batch
from .plausibility import PlausibilityCheck

log = logging.getLogger(__name__)

_CLAIM = """
UPDATE backfill_windows w SET status = 'running', attempts = attempts + 1,
       touched_at = now(), started_at = coalesce(w.started_at, now())
FROM backfills b
WHERE w.id = %s AND b.id = w.backfill_id AND w.status IN ('pending', 'running') AND b.status = 'running'
RETURNING w.backfill_id, w.source, w.asset_id, w.external_id, w.interval, w.starts_at, w.ends_at,
          coalesce((b.request->>'provisional')::boolean, false)
"""

_FINISH_BACKFILL = """
UPDATE backfills b SET finished_at = now(), status = CASE
    WHEN NOT EXISTS (SELECT 1 FROM backfill_windows w WHERE w.backfill_id = b.id AND w.status <> 'done') THEN 'succeeded'
    WHEN EXISTS (SELECT 1 FROM backfill_windows w WHERE w.backfill_id = b.id AND w.status = 'done') THEN 'partial'
    ELSE 'failed' END
WHERE b.id = %s AND b.status = 'running'
  AND NOT EXISTS (SELECT 1 FROM backfill_windows w WHERE w.backfill_id = b.id AND w.status IN ('pending', 'running'))
"""


@dataclass
class WindowStep:
    window_id: int
    status: str | None = None           # the window's state when this delivery ended
    retry_in: float | None = None       # deliver again after this many seconds
    failures: int = 0
    error: str | None = None


def finish_backfill_if_complete(conn, backfill_id: str) -> None:
    with conn.cursor() as cur:
        cur.execute(_FINISH_BACKFILL, (backfill_id,))
    conn.commit()


def cancel_backfill(conn, backfill_id: str) -> bool:
    """Cancel: windows not started become `cancelled`; running ones finish their transaction."""
    with conn.cursor() as cur:
        cur.execute("UPDATE backfills SET status = 'cancelled', cancelled_at = now(), finished_at = now() "
                    "WHERE id = %s AND status = 'running'", (backfill_id,))
        changed = cur.rowcount == 1
        cur.execute("UPDATE backfill_windows SET status = 'cancelled', finished_at = now() "
                    "WHERE backfill_id = %s AND status = 'pending'", (backfill_id,))
    conn.commit()
    return changed


def run_window(settings, window_id: int, failures: int = 0) -> WindowStep:
    conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    identity_conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    identity_conn.autocommit = True
    try:
        return _run(settings, conn, identity_conn, int(window_id), failures)
    finally:
        conn.close()
        identity_conn.close()


def _run(settings, conn, identity_conn, window_id: int, failures: int) -> WindowStep:
    with conn.cursor() as cur:
        cur.execute(_CLAIM, (window_id,))
        claimed = cur.fetchone()
        if claimed is None:     # done already (a redelivery), or its backfill was cancelled
            cur.execute("UPDATE backfill_windows w SET status = 'cancelled', finished_at = now() FROM backfills b "
                        "WHERE w.id = %s AND b.id = w.backfill_id AND b.status = 'cancelled' "
                        "AND w.status IN ('pending', 'running')", (window_id,))
            cur.execute("SELECT status FROM backfill_windows WHERE id = %s", (window_id,))
            row = cur.fetchone()
            conn.commit()
            return WindowStep(window_id, status=row[0] if row else None)
        cur.execute("SELECT symbol, name FROM assets WHERE id = %s", (claimed[2],))
        symbol, name = cur.fetchone()
    conn.commit()
    backfill_id, source_name, asset_id, external_id, interval, starts_at, ends_at, provisional = claimed
    backfill_id = str(backfill_id)
    ctx = {"backfill_id": backfill_id, "window_id": window_id, "source": source_name, "asset": external_id}
    statuses: Counter = Counter()
    source = build_history_source(source_name, settings, on_http_status=lambda s: statuses.update([s]))
    redis = redis_client(settings.redis_url)
    source_settings = settings.sources[source_name]
    limiter = RateLimiter(redis, source_name, source_settings.rate_per_minute, source_settings.burst)
    source.throttle = make_throttle(limiter, settings.rate_limit_max_sleep_seconds, {})
    identity = {"symbol": symbol, "name": name}
    try:
        batch = source.fetch_window(external_id, starts_at, ends_at, interval, identity, provisional=provisional)
    except RateLimitWait as wait:
        _set(conn, window_id, "pending", None, 0)
        return WindowStep(window_id, "pending", retry_in=max(1, math.ceil(wait.seconds)), failures=failures)
    except Unavailable as exc:
        log.warning("backfill window unavailable", extra={**ctx, "error": str(exc)})
        return _end(conn, backfill_id, window_id, "unavailable", str(exc), statuses, failures)
    except TransientSourceError as exc:
        failures += 1
        if exc.retry_after:
            limiter.block(exc.retry_after)
        if failures > settings.task_max_retries:
            return _end(conn, backfill_id, window_id, "failed",
                        f"gave up after {failures} transient failures: {exc}", statuses, failures)
        countdown = backoff_seconds(failures, exc.retry_after, settings.retry_backoff_max_seconds)
        log.warning("backfill window retrying", extra={**ctx, "error": str(exc), "countdown": countdown})
        _set(conn, window_id, "pending", f"retrying in {countdown}s: {exc}"[:500], sum(statuses.values()))
        return WindowStep(window_id, "pending", retry_in=countdown, failures=failures, error=str(exc))
    except PermanentSourceError as exc:
        log.error("backfill window failed", extra={**ctx, "error": str(exc)})
        return _end(conn, backfill_id, window_id, "failed", str(exc), statuses, failures)

    resolver = IdentityResolver(identity_conn, source_name, load_overrides(settings.csv_data_dir))
    datasets = DatasetRegistry(identity_conn, backfill_id)
    dataset = datasets.for_batch(source, batch.locator)
    checks = PlausibilityCheck(settings.plausibility, source_name, identity_conn)
    rows, rejections, _quality = transform(source, resolver, batch, checks, dataset.id)
    requests = sum(statuses.values())
    final_until = newest_final(datetime.now(timezone.utc), INTERVALS[interval], source_name)
    for row in rows:                    # younger than the newest final grid point: not final yet
        if row["observed_at"] > final_until:
            row["flags"] = sorted({*(row.get("flags") or []), PROVISIONAL})

    def mark_done(cur, result):
        cur.execute("UPDATE backfill_windows SET status = 'done', error = NULL, finished_at = now(), "
                    "touched_at = now(), "
                    "requests = requests + %s, fetched = %s, inserted = %s, updated = %s, unchanged = %s, "
                    "rejected = %s WHERE id = %s",
                    (requests, len(batch.records) + len(batch.invalid), result.inserted, result.updated,
                     result.unchanged, len(rejections), window_id))
        if rows:                        # provisional rows older than what this window stored are superseded
            cur.execute("DELETE FROM quotes WHERE asset_id = %s AND dataset_id = %s AND %s = ANY(flags) "
                        "AND observed_at < %s AND observed_at <> ALL(%s)",
                        (asset_id, dataset.id, PROVISIONAL, max(r["observed_at"] for r in rows),
                         [r["observed_at"] for r in rows]))

    load_batch(conn, LoadBatch(
        run_id=backfill_id, source=source_name, rows=rows, dataset_id=dataset.id,
        dataset_interval=datasets.learned_interval(dataset, rows), content_hash=batch.content_hash,
        locator={**batch.locator, "backfill_id": backfill_id, "window_id": window_id},
        fetched_at=batch.fetched_at, raw_body=batch.raw, record_count=len(batch.records), rejections=rejections,
        in_transaction=mark_done))
    finish_backfill_if_complete(conn, backfill_id)
    log.info("backfill window done", extra={**ctx, "rows": len(rows), "rejected": len(rejections)})
    return WindowStep(window_id, "done", failures=failures)


def _set(conn, window_id: int, status: str, error: str | None, requests: int) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE backfill_windows SET status = %s, error = coalesce(%s, error), touched_at = now(), "
                    "requests = requests + %s WHERE id = %s AND status IN ('pending', 'running')",
                    (status, error, requests, window_id))
    conn.commit()


def _end(conn, backfill_id, window_id, status, error, statuses, failures) -> WindowStep:
    with conn.cursor() as cur:
        cur.execute("UPDATE backfill_windows SET status = %s, error = %s, finished_at = now(), touched_at = now(), "
                    "requests = requests + %s WHERE id = %s AND status IN ('pending', 'running')",
                    (status, error[:1000], sum(statuses.values()), window_id))
    conn.commit()
    finish_backfill_if_complete(conn, backfill_id)
    return WindowStep(window_id, status, failures=failures, error=error)
