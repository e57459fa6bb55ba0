"""Storage in the open: table sizes, rows per resolution, the oldest row kept, maintenance freshness.

Read from the catalog and a few index-only lookups, never a scan: sizes are pg_total_relation_size
(heap + TOAST + indexes; a partitioned table sums its partitions), row counts are the planner's
estimates (pg_class.reltuples, kept current by autovacuum's ANALYZE) split per candle resolution by
pg_stats' frequencies, and each "oldest" is the first entry of an index.

Used by /api/v1/stats (`storage`), /metrics (StorageCollector) and /health (`maintenance_health`).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from flask import current_app
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db

log = logging.getLogger(__name__)
TABLES = ("quotes", "latest_quotes", "candles", "raw_pages", "raw_payloads", "rejected_records", "etl_runs")

SIZES_SQL = text("""
    SELECT t.name, coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint AS bytes,
           coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint AS rows, count(*) FILTER (WHERE c.oid <> t.oid) AS parts
    FROM (SELECT name, to_regclass(name)::oid AS oid FROM unnest(CAST(:tables AS text[])) name) t
    JOIN pg_class c ON c.oid = t.oid OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = t.oid)
    GROUP BY t.name
""")
RESOLUTION_SHARES_SQL = text("""
    SELECT v.value AS resolution, v.freq FROM pg_stats s,
         LATERAL unnest(s.most_common_vals::text::text[], s.most_common_freqs) AS v(value, freq)
    WHERE s.tablename = 'candles' AND s.attname = 'resolution'
""")
OLDEST_SQL = text("""
    SELECT 'raw' AS resolution, min(o) AS oldest FROM (
        SELECT (SELECT min(observed_at) FROM quotes q WHERE q.source = s.source) AS o
        FROM (SELECT DISTINCT source FROM datasets) s) x
    UNION ALL SELECT '1h', (SELECT min(bucket) FROM candles WHERE resolution = '1h')
    UNION ALL SELECT '1d', (SELECT min(bucket) FROM candles WHERE resolution = '1d')
""")
RAW_PAGES_SQL = text("""
    SELECT count(*) AS kept, min(first_seen_at) AS oldest FROM raw_pages WHERE body IS NOT NULL
""")
LAST_MAINTENANCE_SQL = text("""
    SELECT max(finished_at) FILTER (WHERE status = 'succeeded') AS last_success,
           max(finished_at) FILTER (WHERE status = 'failed') AS last_failure
    FROM etl_runs WHERE source = 'maintenance'
""")


def storage_report() -> dict:
    tables = {r["name"]: {"bytes": r["bytes"], "rows_estimate": r["rows"], "partitions": r["parts"]}
              for r in db.session.execute(SIZES_SQL, {"tables": list(TABLES)}).mappings()}
    candle_rows = tables.get("candles", {}).get("rows_estimate", 0)
    shares = {r["resolution"]: float(r["freq"]) for r in db.session.execute(RESOLUTION_SHARES_SQL).mappings()}
    rows = {"raw": tables.get("quotes", {}).get("rows_estimate", 0),
            "1h": round(candle_rows * shares.get("1h", 0.0)), "1d": round(candle_rows * shares.get("1d", 0.0))}
    oldest = {r["resolution"]: r["oldest"] for r in db.session.execute(OLDEST_SQL).mappings()}
    pages = db.session.execute(RAW_PAGES_SQL).mappings().one()
    return {"tables": tables, "rows_by_resolution": rows, "oldest": oldest,
            "raw_payloads": {"bytes": tables.get("raw_pages", {}).get("bytes", 0)
                             + tables.get("raw_payloads", {}).get("bytes", 0),
                             "pages_with_body": pages["kept"], "oldest_body": pages["oldest"]}}


def maintenance_age(now: datetime) -> tuple[datetime | None, float | None]:
    """(last successful maintenance run's end, seconds since then); a database that never ran one is judged
    from its first run's age (None: no run at all yet)."""
    last = db.session.execute(LAST_MAINTENANCE_SQL).mappings().one()["last_success"]
    if last is not None:
        return last, (now - last).total_seconds()
    first = db.session.execute(text("SELECT min(created_at) FROM etl_runs")).scalar()
    return None, (now - first).total_seconds() if first else None


def maintenance_health(settings, now: datetime | None = None) -> dict:
    """For /health: "ok", or "degraded" when no maintenance run succeeded within its overdue time
    (3 schedules + 10 minutes). A database that never ran one is judged from its first run's age."""
    now = now or datetime.now(timezone.utc)
    limit = settings.storage.overdue_after_seconds
    last, age = maintenance_age(now)
    status = "ok" if age is None or age <= limit else "degraded"
    out = {"status": status, "last_success": last.isoformat() if last else None,
           "overdue_after_seconds": limit}
    if status == "degraded":
        out["message"] = (f"maintenance (rollups, retention, partitions) has not succeeded for {age:.0f}s "
                          f"(limit {limit}s): check the worker and beat, and the maintenance runs' errors in "
                          f"/api/v1/runs?source=maintenance")
    return out


class StorageCollector:
    """Storage gauges for /metrics (needs an app context)."""

    def collect(self):
        try:
            db.session.execute(text("SET LOCAL statement_timeout = 5000"))
            report = storage_report()
            _, age = maintenance_age(datetime.now(timezone.utc))
            db.session.rollback()
        except SQLAlchemyError as exc:
            db.session.rollback()
            log.error("storage metrics unavailable", extra={"error": exc.__class__.__name__})
            return
        size = GaugeMetricFamily("cryptoflow_storage_bytes", "Bytes on disk (heap, TOAST, indexes) by table",
                                 labels=["table"])
        rows = GaugeMetricFamily("cryptoflow_storage_rows", "Estimated rows by table", labels=["table"])
        for name, t in sorted(report["tables"].items()):
            size.add_metric([name], float(t["bytes"]))
            rows.add_metric([name], float(t["rows_estimate"]))
        by_res = GaugeMetricFamily("cryptoflow_storage_quote_rows", "Estimated price rows by resolution "
                                   "(raw quotes, 1h and 1d candles)", labels=["resolution"])
        oldest = GaugeMetricFamily("cryptoflow_storage_oldest_seconds", "Age of the oldest row kept by resolution",
                                   labels=["resolution"])
        now = datetime.now(timezone.utc)
        for res, n in report["rows_by_resolution"].items():
            by_res.add_metric([res], float(n))
            if report["oldest"].get(res) is not None:
                oldest.add_metric([res], (now - report["oldest"][res]).total_seconds())
        pages = GaugeMetricFamily("cryptoflow_storage_raw_pages_with_body", "Raw pages whose body is kept")
        pages.add_metric([], float(report["raw_payloads"]["pages_with_body"]))
        freshness = GaugeMetricFamily("cryptoflow_maintenance_last_success_age_seconds",
                                      "Seconds since the last successful maintenance run finished (never "
                                      "succeeded: since the first run of any source), as /health judges it")
        if age is not None:
            freshness.add_metric([], age)
        overdue = GaugeMetricFamily("cryptoflow_maintenance_overdue_after_seconds",
                                    "Maintenance is overdue (/health degraded) past this age: 3 x "
                                    "MAINTENANCE_SCHEDULE_SECONDS + 10 minutes")
        overdue.add_metric([], float(current_app.config["SETTINGS"].storage.overdue_after_seconds))
        yield from (size, rows, by_res, oldest, pages, freshness, overdue)
