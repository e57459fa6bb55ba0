"""ETL metrics computed at scrape time from the database.

Workers record every run in `etl_runs` (counts, duration, and `stats` with upstream HTTP status codes
and rate-limit waits). Reading them back at scrape time makes the metrics right whichever worker
process, on whichever machine, ran the job, and survive restarts. Counters only count finished runs
(a run's status changes while it goes, a counter must not go down); runs under way are a gauge.
"""
from __future__ import annotations

import logging

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db
from .freshness import source_age

log = logging.getLogger(__name__)
TERMINAL = ("succeeded", "partial", "failed")
ACTIVE = ("queued", "running")
# run durations span a 1 s API page to an hour-long CSV import
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


# JSONB values are summed only when they are numbers: one malformed `stats` must not fail a scrape.
RUNS_SQL = text("""
    SELECT source, status, count(*) AS runs,
           coalesce(sum(loaded), 0) AS loaded, coalesce(sum(rejected), 0) AS rejected,
           count(duration_seconds) AS timed, coalesce(sum(duration_seconds), 0) AS duration,
           coalesce(sum(CASE WHEN jsonb_typeof(stats->'rate_limit_waits') = 'number'
                             THEN (stats->>'rate_limit_waits')::numeric END), 0) AS waits,
           coalesce(sum(CASE WHEN jsonb_typeof(stats->'rate_limit_wait_seconds') = 'number'
                             THEN (stats->>'rate_limit_wait_seconds')::numeric END), 0) AS wait_seconds,
           extract(epoch FROM now() - max(finished_at)) AS age,
           extract(epoch FROM now() - min(created_at)) AS first_age,
           ARRAY[{buckets}] AS buckets
    FROM etl_runs GROUP BY source, status
""".format(buckets=", ".join(f"count(*) FILTER (WHERE duration_seconds <= {b!r})" for b in DURATION_BUCKETS)))
HTTP_SQL = text("""
    SELECT r.source, h.key AS code,
           coalesce(sum(CASE WHEN jsonb_typeof(h.value) = 'number' THEN (h.value #>> '{}')::numeric END), 0)
             AS responses
    FROM etl_runs r
    CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(r.stats->'http_status') = 'object'
                                       THEN r.stats->'http_status' ELSE '{}'::jsonb END) h
    GROUP BY r.source, h.key
""")

ERRORS_SQL = text("""
    SELECT r.source, e.key AS kind,
           coalesce(sum(CASE WHEN jsonb_typeof(e.value) = 'number' THEN (e.value #>> '{}')::numeric END), 0)
             AS errors
    FROM etl_runs r
    CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(r.stats->'upstream_errors') = 'object'
                                       THEN r.stats->'upstream_errors' ELSE '{}'::jsonb END) e
    GROUP BY r.source, e.key
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

    def __init__(self, sources, schedules: dict | None = None):
        self.sources = tuple(sources)
        self.schedules = dict(schedules or {})     # {source: schedule seconds}, for staleness alerts

    def collect(self):
        up = GaugeMetricFamily("cryptoflow_etl_metrics_up", "1 if the ETL metrics could be read from the database")
        try:
            db.session.execute(text("SET LOCAL statement_timeout = 5000"))
            runs = db.session.execute(RUNS_SQL).mappings().all()
            http = db.session.execute(HTTP_SQL).mappings().all()
            errors = db.session.execute(ERRORS_SQL).mappings().all()
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
        yield from self._families(runs, http, errors)
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

    def _families(self, runs, http, errors):
        runs_total = CounterMetricFamily("cryptoflow_etl_runs", "Finished ETL runs by source and final status",
                                         labels=["source", "status"])
        active = GaugeMetricFamily("cryptoflow_etl_runs_in_progress", "ETL runs queued or running",
                                   labels=["source", "status"])
        loaded = CounterMetricFamily("cryptoflow_etl_records_loaded", "Records loaded by ETL runs",
                                     labels=["source"])
        rejected = CounterMetricFamily("cryptoflow_etl_records_rejected", "Records rejected by validation",
                                       labels=["source"])
        duration = HistogramMetricFamily("cryptoflow_etl_run_duration_seconds", "Duration of finished ETL runs",
                                         labels=["source"])
        waits = CounterMetricFamily("cryptoflow_rate_limit_waits", "Times a run waited for the rate limiter",
                                    labels=["source"])
        wait_seconds = CounterMetricFamily("cryptoflow_rate_limit_wait_seconds",
                                           "Seconds runs spent waiting for the rate limiter", labels=["source"])
        freshness = GaugeMetricFamily("cryptoflow_source_freshness_seconds",
                                      "Seconds since the last successful (or partial) run of the source finished; "
                                      "never succeeded: since its first run or since this process started, "
                                      "whichever is longer", labels=["source"])
        schedule = GaugeMetricFamily("cryptoflow_source_schedule_seconds",
                                     "Seconds between scheduled runs of the source (stale after twice this)",
                                     labels=["source"])
        for source, seconds in sorted(self.schedules.items()):
            schedule.add_metric([source], float(seconds))
        never = GaugeMetricFamily("cryptoflow_source_never_succeeded",
                                  "1 while the source has no succeeded or partial run", labels=["source"])

        def empty():
            return {"loaded": 0, "rejected": 0, "timed": 0, "duration": 0.0, "waits": 0, "wait_seconds": 0.0,
                    "age": None, "first_age": None, "buckets": [0] * len(DURATION_BUCKETS)}

        by_source: dict[str, dict] = {s: empty() for s in self.sources}
        counts = {(s, st): 0 for s in self.sources for st in TERMINAL + ACTIVE}
        for row in runs:
            counts[(row["source"], row["status"])] = row["runs"]
            acc = by_source.setdefault(row["source"], empty())
            for key in ("loaded", "rejected", "timed", "duration", "waits", "wait_seconds"):
                acc[key] += float(row[key])
            acc["buckets"] = [a + int(b) for a, b in zip(acc["buckets"], row["buckets"])]
            if row["first_age"] is not None:
                acc["first_age"] = max(float(row["first_age"]), acc["first_age"] or 0.0)
            if row["status"] in ("succeeded", "partial") and row["age"] is not None:
                age = max(float(row["age"]), 0.0)
                acc["age"] = age if acc["age"] is None else min(acc["age"], age)
        for (source, status), n in sorted(counts.items()):
            (runs_total if status in TERMINAL else active).add_metric([source, status], n)
        for source, acc in sorted(by_source.items()):
            loaded.add_metric([source], acc["loaded"])
            rejected.add_metric([source], acc["rejected"])
            cumulative = [(repr(le), n) for le, n in zip(DURATION_BUCKETS, acc["buckets"])]
            duration.add_metric([source], buckets=cumulative + [("+Inf", acc["timed"])],
                                sum_value=float(acc["duration"]))
            waits.add_metric([source], float(acc["waits"]))
            wait_seconds.add_metric([source], float(acc["wait_seconds"]))
            if source in self.sources or acc["age"] is not None:
                age, _since = source_age(acc["age"], acc["first_age"])
                freshness.add_metric([source], round(age, 3))
                never.add_metric([source], 1 if acc["age"] is None else 0)
        upstream = CounterMetricFamily("cryptoflow_upstream_http_responses",
                                       "HTTP responses from upstream APIs by status code", labels=["source", "status"])
        for row in sorted(http, key=lambda r: (r["source"], r["code"])):
            upstream.add_metric([row["source"], row["code"]], float(row["responses"]))
        kinds = CounterMetricFamily("cryptoflow_upstream_errors",
                                    "Failed upstream requests by cause: dns, refused, timeout, tls, reset, truncated, "
                                    "connection, redirect, invalid_payload, http_<status>", labels=["source", "kind"])
        for row in sorted(errors, key=lambda r: (r["source"], r["kind"])):
            kinds.add_metric([row["source"], row["kind"]], float(row["errors"]))
        yield from (runs_total, active, loaded, rejected, duration, upstream, kinds, waits, wait_seconds, freshness,
                    never, schedule)
