"""ETL metrics computed at scrape time from the database.

Workers record every run in `etl_runs` (counts, duration, and `stats` with upstream HTTP status codes
and rate-limit waits). Reading them back at scrape time makes the metrics right whichever worker
process, on whichever machine, ran the job, and survive restarts. Counters only count finished runs
(a run's status changes while it goes, a counter must not go down); runs under way are a gauge.
"""
from __future__ import annotations

import logging

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db

log = logging.getLogger(__name__)
TERMINAL = ("succeeded", "partial", "failed")
ACTIVE = ("queued", "running")


# JSONB values are summed only when they are numbers: one malformed `stats` must not fail a scrape.
RUNS_SQL = text("""
    SELECT source, status, count(*) AS runs,
           coalesce(sum(loaded), 0) AS loaded, coalesce(sum(rejected), 0) AS rejected,
           count(duration_seconds) AS timed, coalesce(sum(duration_seconds), 0) AS duration,
           coalesce(sum(CASE WHEN jsonb_typeof(stats->'rate_limit_waits') = 'number'
                             THEN (stats->>'rate_limit_waits')::numeric END), 0) AS waits,
           coalesce(sum(CASE WHEN jsonb_typeof(stats->'rate_limit_wait_seconds') = 'number'
                             THEN (stats->>'rate_limit_wait_seconds')::numeric END), 0) AS wait_seconds,
           extract(epoch FROM now() - max(finished_at)) AS age
    FROM etl_runs GROUP BY source, status
""")
HTTP_SQL = text("""
    SELECT r.source, h.key AS code,
           coalesce(sum(CASE WHEN jsonb_typeof(h.value) = 'number' THEN (h.value #>> '{}')::numeric END), 0)
             AS responses
    FROM etl_runs r
    CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(r.stats->'http_status') = 'object'
                                       THEN r.stats->'http_status' ELSE '{}'::jsonb END) h
    GROUP BY r.source, h.key
""")

# Data-quality counts that batches add to etl_runs.stats->'quality' ("ambiguous_numbers", "soft:<rule>",
# "hard:<rule>"); they only grow, so runs under way count too.
QUALITY_SQL = text("""
    SELECT r.source, q.key, coalesce(sum((q.value #>> '{}')::numeric), 0) AS n
    FROM etl_runs r
    CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(r.stats->'quality') = 'object'
                                       THEN r.stats->'quality' ELSE '{}'::jsonb END) q
    WHERE jsonb_typeof(q.value) = 'number'
    GROUP BY r.source, q.key
""")


class EtlCollector:
    """A prometheus_client custom collector; needs an app context (it runs inside the /metrics view)."""

    def __init__(self, sources):
        self.sources = tuple(sources)

    def collect(self):
        up = GaugeMetricFamily("cryptoflow_etl_metrics_up", "1 if the ETL metrics could be read from the database")
        try:
            db.session.execute(text("SET LOCAL statement_timeout = 5000"))
            runs = db.session.execute(RUNS_SQL).mappings().all()
            http = db.session.execute(HTTP_SQL).mappings().all()
            quality = db.session.execute(QUALITY_SQL).mappings().all()
            db.session.rollback()
        except SQLAlchemyError as exc:
            db.session.rollback()
            log.error("etl metrics unavailable", extra={"error": exc.__class__.__name__})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._families(runs, http)
        yield from self._quality(quality)

    def _quality(self, rows):
        flags = CounterMetricFamily("cryptoflow_plausibility_flags",
                                    "Records that broke a plausibility rule: severity soft = stored with a flag, "
                                    "hard = quarantined", labels=["source", "rule", "severity"])
        ambiguous = CounterMetricFamily("cryptoflow_ambiguous_numbers",
                                        "Records quarantined for a number whose convention their file does not settle",
                                        labels=["source"])
        for row in sorted(rows, key=lambda r: (r["source"], r["key"])):
            severity, _, rule = row["key"].partition(":")
            if row["key"] == "ambiguous_numbers":
                ambiguous.add_metric([row["source"]], float(row["n"]))
            elif severity in ("soft", "hard") and rule:
                flags.add_metric([row["source"], rule, severity], float(row["n"]))
        yield from (flags, ambiguous)

    def _families(self, runs, http):
        runs_total = CounterMetricFamily("cryptoflow_etl_runs", "Finished ETL runs by source and final status",
                                         labels=["source", "status"])
        active = GaugeMetricFamily("cryptoflow_etl_runs_in_progress", "ETL runs queued or running",
                                   labels=["source", "status"])
        loaded = CounterMetricFamily("cryptoflow_etl_records_loaded", "Records loaded by ETL runs",
                                     labels=["source"])
        rejected = CounterMetricFamily("cryptoflow_etl_records_rejected", "Records rejected by validation",
                                       labels=["source"])
        duration = SummaryMetricFamily("cryptoflow_etl_run_duration_seconds", "Duration of finished ETL runs",
                                       labels=["source"])
        waits = CounterMetricFamily("cryptoflow_rate_limit_waits", "Times a run waited for the rate limiter",
                                    labels=["source"])
        wait_seconds = CounterMetricFamily("cryptoflow_rate_limit_wait_seconds",
                                           "Seconds runs spent waiting for the rate limiter", labels=["source"])
        freshness = GaugeMetricFamily("cryptoflow_source_freshness_seconds",
                                      "Seconds since the last successful (or partial) run of the source finished",
                                      labels=["source"])
        by_source: dict[str, dict] = {s: {"loaded": 0, "rejected": 0, "timed": 0, "duration": 0.0, "waits": 0,
                                          "wait_seconds": 0.0, "age": None} for s in self.sources}
        counts = {(s, st): 0 for s in self.sources for st in TERMINAL + ACTIVE}
        for row in runs:
            counts[(row["source"], row["status"])] = row["runs"]
            acc = by_source.setdefault(row["source"], {"loaded": 0, "rejected": 0, "timed": 0, "duration": 0.0,
                                                       "waits": 0, "wait_seconds": 0.0, "age": None})
            for key in ("loaded", "rejected", "timed", "duration", "waits", "wait_seconds"):
                acc[key] += float(row[key])
            if row["status"] in ("succeeded", "partial") and row["age"] is not None:
                age = max(float(row["age"]), 0.0)
                acc["age"] = age if acc["age"] is None else min(acc["age"], age)
        for (source, status), n in sorted(counts.items()):
            (runs_total if status in TERMINAL else active).add_metric([source, status], n)
        for source, acc in sorted(by_source.items()):
            loaded.add_metric([source], acc["loaded"])
            rejected.add_metric([source], acc["rejected"])
            duration.add_metric([source], count_value=acc["timed"], sum_value=float(acc["duration"]))
            waits.add_metric([source], float(acc["waits"]))
            wait_seconds.add_metric([source], float(acc["wait_seconds"]))
            if acc["age"] is not None:
                freshness.add_metric([source], acc["age"])
        upstream = CounterMetricFamily("cryptoflow_upstream_http_responses",
                                       "HTTP responses from upstream APIs by status code", labels=["source", "status"])
        for row in sorted(http, key=lambda r: (r["source"], r["code"])):
            upstream.add_metric([row["source"], row["code"]], float(row["responses"]))
        yield from (runs_total, active, loaded, rejected, duration, upstream, waits, wait_seconds, freshness)
