"""Keeping history current: a scheduled backfill per history source of the assets it already tracks.

Tracked assets are those with rows in the source's history dataset (`coingecko:market_chart`,
`coinpaprika:historical`). Each is filled at `1d` from the bucket after its newest stored row up to the
newest final point (backfill_plan.final_until), so a day is fetched once, when final, and never again;
assets at the same position share one backfill. Nothing to fetch, or a backfill already filling the same
range (BackfillConflict), is a no-op.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from .backfill_plan import ENDPOINTS, BackfillConflict, PlanError
from .backfills import start_backfill
from ..sources.history import INTERVALS

log = logging.getLogger(__name__)


def keep_current(conn, settings, source: str, send, interval: str = "1d", now: datetime | None = None) -> list[str]:
    """Start the backfills that bring `source`'s tracked assets up to date; return their ids."""
    now = now or datetime.now(timezone.utc)
    step = INTERVALS[interval]
    with conn.cursor() as cur:
        cur.execute("SELECT a.slug, da.last_observed_at FROM dataset_assets da JOIN datasets d ON d.id = da.dataset_id "
                    "JOIN assets a ON a.id = da.asset_id WHERE d.name = %s AND da.last_observed_at IS NOT NULL "
                    "ORDER BY a.slug", (f"{source}:{ENDPOINTS[source]}",))
        tracked = cur.fetchall()
    conn.commit()
    by_start: dict = {}
    for slug, last in tracked:
        by_start.setdefault(last + step, []).append(slug)
    started = []
    for since, slugs in sorted(by_start.items()):
        request = {"assets": slugs, "sources": [source], "since": since, "interval": interval}
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
