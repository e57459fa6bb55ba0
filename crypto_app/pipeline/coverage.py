"""Coverage of an asset's series against the expected grid: covered ranges and gaps.

The grid is every bucket start from `since` to `until` (exclusive) at the interval, on the same origin
as the candles (Monday 2000-01-03 00:00 UTC: days start at 00:00, hours at hh:00). A bucket is covered
when at least one stored quote of the selection (a dataset, or every dataset of a source, or all) falls
in it. Ranges come from one gaps-and-islands query; nothing is read but the asset's quotes in the span.
"""
from __future__ import annotations

from datetime import timedelta

MAX_BUCKETS = 200_000

_COVERAGE = """
WITH grid AS (
    SELECT generate_series(%(since)s::timestamptz, %(until)s::timestamptz - %(step)s::interval, %(step)s::interval) AS bucket
), have AS (
    SELECT DISTINCT date_bin(%(step)s::interval, q.observed_at, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket
    FROM datasets d JOIN quotes q ON q.dataset_id = d.id
    WHERE q.asset_id = %(asset_id)s AND q.observed_at >= %(since)s AND q.observed_at < %(until)s
      AND (%(source)s::text IS NULL OR d.source = %(source)s)
      AND (%(dataset)s::text IS NULL OR d.name = %(dataset)s)
), marked AS (
    SELECT g.bucket, h.bucket IS NOT NULL AS covered,
           row_number() OVER (ORDER BY g.bucket)
           - row_number() OVER (PARTITION BY h.bucket IS NOT NULL ORDER BY g.bucket) AS island
    FROM grid g LEFT JOIN have h ON h.bucket = g.bucket
)
SELECT covered, min(bucket), max(bucket), count(*) FROM marked GROUP BY covered, island ORDER BY 2
"""


class CoverageError(ValueError):
    pass


def coverage(conn, asset_id: int, step: timedelta, since, until, source: str | None = None,
             dataset: str | None = None) -> dict:
    if since >= until:
        raise CoverageError("since must be before until")
    expected = int((until - since) / step)
    if expected > MAX_BUCKETS:
        raise CoverageError(f"{expected} buckets asked; at most {MAX_BUCKETS} per request (narrow since/until)")
    with conn.cursor() as cur:
        cur.execute(_COVERAGE, {"since": since, "until": until, "step": step, "asset_id": asset_id,
                                "source": source, "dataset": dataset})
        rows = cur.fetchall()
    conn.commit()
    covered = [{"first": first, "last": last, "buckets": n} for is_covered, first, last, n in rows if is_covered]
    gaps = [{"first": first, "last": last, "buckets": n} for is_covered, first, last, n in rows if not is_covered]
    return {"expected": expected, "covered_buckets": sum(r["buckets"] for r in covered),
            "missing": sum(g["buckets"] for g in gaps), "covered": covered, "gaps": gaps}
