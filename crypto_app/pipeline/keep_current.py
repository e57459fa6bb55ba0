"""Keeping history current: a scheduled backfill per history source of the assets it already tracks.

Tracked assets are those with rows in the source's history dataset at the interval
(`coingecko:market_chart:1d`, `coinpaprika:historical:1d`). Each is filled from just after its newest
FINAL row (a row without the `provisional` flag) up to the end of the current bucket: the points whose
finality delay has passed are stored final, so a day is fetched once, when final, and never again; the
newer ones (CoinGecko's "now" point, a grid point younger than the delay) are stored with the flag
`provisional` and replaced by the next keep-current (backfill_window: the final point upserts over a
provisional one at the same time, and older provisional rows of the asset are deleted in the same
transaction). Assets at the same position share one backfill. A backfill already filling the same range
(BackfillConflict) makes it a no-op.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from ..sources.history import INTERVALS
from .backfill_plan import PROVISIONAL, BackfillConflict, PlanError, floor_to, history_dataset
from .backfills import start_backfill

log = logging.getLogger(__name__)
NOW_POINT = {"coingecko": True, "coinpaprika": False}   # does a range answer end with a "now" point?


def keep_current(conn, settings, source: str, send, interval: str = "1d", now: datetime | None = None) -> list[str]:
    """Start the backfills that bring `source`'s tracked assets up to date; return their ids."""
    now = now or datetime.now(timezone.utc)
    with conn.cursor() as cur:
        # the newest final row: provisional rows are the newest few, so the backward index scan stops early
        cur.execute("SELECT a.slug, f.observed_at FROM dataset_assets da JOIN datasets d ON d.id = da.dataset_id "
                    "JOIN assets a ON a.id = da.asset_id CROSS JOIN LATERAL (SELECT q.observed_at FROM quotes q "
                    "  WHERE q.asset_id = da.asset_id AND q.dataset_id = da.dataset_id "
                    "  AND NOT (%s = ANY(coalesce(q.flags, '{}'))) ORDER BY q.observed_at DESC LIMIT 1) f "
                    "WHERE d.name = %s ORDER BY a.slug", (PROVISIONAL, history_dataset(source, interval)))
        tracked = cur.fetchall()
    conn.commit()
    by_start: dict = {}
    newest_grid = floor_to(now, INTERVALS[interval])
    for slug, last in tracked:
        if last >= newest_grid and not NOW_POINT.get(source, False):
            continue                        # no grid point after it yet, and no "now" point: nothing to ask
        by_start.setdefault(last + timedelta(seconds=1), []).append(slug)
    started = []
    for since, slugs in sorted(by_start.items()):
        request = {"assets": slugs, "sources": [source], "since": since, "interval": interval, "provisional": True}
        try:
            plan = start_backfill(conn, settings, request, send, trigger="schedule")
        except PlanError:
            continue                        # already current
        except BackfillConflict as exc:
            log.info("keep-current skipped: a backfill is already filling it",
                     extra={"source": source, "backfill_id": exc.backfill_id})
            continue
        started.append(plan.id)
    return started
