"""Starting a backfill and reading its progress: what the API and the CLI share.

`start_backfill` plans, stores (409 on overlap: BackfillConflict) and publishes one task per pending
window through `send(window_id)`; a broker failure fails the windows not yet published and re-raises.
`summary` is the truth about one backfill: windows per state, rows, requests, errors per window, ETA.
"""
from __future__ import annotations

import logging

from .backfill_plan import Plan, create_backfill, pending_windows, plan_backfill
from .backfill_window import finish_backfill_if_complete

log = logging.getLogger(__name__)
WINDOW_STATES = ("pending", "running", "done", "failed", "unavailable", "cancelled")
ERRORS_SHOWN = 100


def start_backfill(conn, settings, request: dict, send, trigger: str = "api") -> Plan:
    plan = plan_backfill(conn, settings, request)
    create_backfill(conn, plan, trigger)
    published = 0
    try:
        for window_id in pending_windows(conn, plan.id):
            send(window_id)
            published += 1
    except Exception:  # kombu raises several types for an unreachable broker
        with conn.cursor() as cur:
            cur.execute("UPDATE backfill_windows SET status = 'failed', finished_at = now(), "
                        "error = 'broker unreachable: the window was never queued' "
                        "WHERE backfill_id = %s AND status = 'pending' AND id NOT IN (SELECT id FROM backfill_windows "
                        "WHERE backfill_id = %s AND status = 'pending' ORDER BY starts_at DESC, id LIMIT %s)",
                        (plan.id, plan.id, published))
        conn.commit()
        finish_backfill_if_complete(conn, plan.id)
        raise
    finish_backfill_if_complete(conn, plan.id)       # every window unavailable: nothing to wait for
    log.info("backfill queued", extra={"backfill_id": plan.id, "windows": len(plan.windows),
                                       "requests": plan.requests})
    return plan


def summary(conn, settings, backfill_id: str) -> dict | None:
    with conn.cursor() as cur:
        cur.execute("SELECT id, status, interval, since, until, sources, request, trigger, created_at, finished_at, "
                    "cancelled_at FROM backfills WHERE id = %s", (str(backfill_id),))
        row = cur.fetchone()
        if row is None:
            conn.commit()
            return None
        keys = ("id", "status", "interval", "since", "until", "sources", "request", "trigger", "created_at",
                "finished_at", "cancelled_at")
        out = dict(zip(keys, row))
        out["id"] = str(out["id"])
        cur.execute("SELECT status, source, count(*), sum(requests), sum(fetched), sum(inserted), sum(updated), "
                    "sum(unchanged), sum(rejected) FROM backfill_windows WHERE backfill_id = %s "
                    "GROUP BY status, source", (out["id"],))
        windows = {state: 0 for state in WINDOW_STATES}
        rows = {"fetched": 0, "inserted": 0, "updated": 0, "unchanged": 0, "rejected": 0}
        requests, left_by_source = 0, {}
        for status, source, count, req, *counts in cur.fetchall():
            windows[status] += count
            requests += int(req or 0)
            for key, value in zip(rows, counts):
                rows[key] += int(value or 0)
            if status in ("pending", "running"):
                left_by_source[source] = left_by_source.get(source, 0) + count
        cur.execute("SELECT w.id, a.slug, w.source, w.external_id, w.starts_at, w.ends_at, w.status, w.attempts, "
                    "w.error FROM backfill_windows w JOIN assets a ON a.id = w.asset_id "
                    "WHERE w.backfill_id = %s AND w.error IS NOT NULL ORDER BY w.id LIMIT %s",
                    (out["id"], ERRORS_SHOWN))
        errors = [dict(zip(("window_id", "asset", "source", "external_id", "starts_at", "ends_at", "status",
                            "attempts", "error"), r)) for r in cur.fetchall()]
    conn.commit()
    windows["total"] = sum(windows[s] for s in WINDOW_STATES)
    windows["left"] = windows["pending"] + windows["running"]
    out.update(windows=windows, rows=rows, requests=requests, errors=errors,
               skipped=(out["request"] or {}).get("skipped", []))
    # one request per window; each source's bucket refills at its own rate, so the slowest source decides
    eta = [left * 60.0 / settings.sources[source].rate_per_minute for source, left in left_by_source.items()]
    out["eta_seconds"] = round(max(eta), 1) if eta and out["status"] == "running" else None
    return out
