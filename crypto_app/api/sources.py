"""GET /api/v1/sources: each enabled source at a glance, for operators and the dashboard.

Per source: its schedule, the last success and its age (stale when never succeeded or older than twice
the schedule, as /health says), the newest run, the newest error, and over the last 24 hours the runs,
the failed runs, the rate-limit waits (count and seconds) and the HTTP 429 answers the upstream gave
(from the runs' `stats`). Read from etl_runs with a few index lookups per source; not cached (ages move
with the clock).
"""
from __future__ import annotations

import marshmallow as ma
from flask import current_app
from flask_smorest import Blueprint
from marshmallow import fields
from sqlalchemy import bindparam, text

from ..extensions import db

blp = Blueprint("sources", __name__, url_prefix="/api/v1", description="Sources: freshness, last error, rate limits")
WINDOW_HOURS = 24
SOURCES_SQL = text("""
    SELECT s.source,
           ok.finished_at AS last_success, extract(epoch FROM now() - ok.finished_at) AS age,
           last.id AS last_run_id, last.status AS last_status, last.created_at AS last_run_at,
           err.id AS error_run_id, err.error AS error, err.at AS error_at,
           recent.runs, recent.failed, recent.waits, recent.wait_seconds, recent.http_429
    FROM unnest(CAST(:sources AS text[])) AS s(source)
    LEFT JOIN LATERAL (SELECT finished_at FROM etl_runs r WHERE r.source = s.source
                       AND r.status IN ('succeeded', 'partial') ORDER BY r.created_at DESC LIMIT 1) ok ON true
    LEFT JOIN LATERAL (SELECT id, status, created_at FROM etl_runs r WHERE r.source = s.source
                       ORDER BY r.created_at DESC LIMIT 1) last ON true
    LEFT JOIN LATERAL (SELECT id, error, coalesce(finished_at, created_at) AS at FROM etl_runs r
                       WHERE r.source = s.source AND r.error IS NOT NULL
                       ORDER BY r.created_at DESC LIMIT 1) err ON true
    LEFT JOIN LATERAL (
        SELECT count(*) AS runs, count(*) FILTER (WHERE status = 'failed') AS failed,
               coalesce(sum(CASE WHEN jsonb_typeof(stats->'rate_limit_waits') = 'number'
                                 THEN (stats->>'rate_limit_waits')::numeric END), 0)::bigint AS waits,
               coalesce(sum(CASE WHEN jsonb_typeof(stats->'rate_limit_wait_seconds') = 'number'
                                 THEN (stats->>'rate_limit_wait_seconds')::numeric END), 0)::float8 AS wait_seconds,
               coalesce(sum(CASE WHEN jsonb_typeof(stats->'http_status'->'429') = 'number'
                                 THEN (stats->'http_status'->>'429')::numeric END), 0)::bigint AS http_429
        FROM etl_runs r WHERE r.source = s.source AND r.created_at >= now() - make_interval(hours => :hours)
    ) recent ON true
    ORDER BY s.source
""").bindparams(bindparam("sources", type_=db.ARRAY(db.Text)))


class RecentRunsSchema(ma.Schema):
    hours = fields.Integer(metadata={"description": "The window: runs created in the last this many hours"})
    runs = fields.Integer()
    failed = fields.Integer()
    rate_limit_waits = fields.Integer(metadata={"description": "Times the runs waited for the rate limiter "
                                                               "or a Retry-After"})
    rate_limit_wait_seconds = fields.Float()
    http_429 = fields.Integer(metadata={"description": "HTTP 429 answers from the upstream"})


class SourceStatusSchema(ma.Schema):
    source = fields.String(required=True)
    schedule_seconds = fields.Integer(metadata={"description": "Seconds between scheduled runs"})
    last_success = fields.DateTime(allow_none=True, metadata={
        "description": "finished_at of the newest succeeded or partial run"})
    age_seconds = fields.Float(allow_none=True, metadata={"description": "Seconds since last_success"})
    stale = fields.Boolean(metadata={"description": "Never succeeded, or last success older than 2x the schedule"})
    last_run_id = fields.UUID(allow_none=True)
    last_status = fields.String(allow_none=True, metadata={"description": "Status of the newest run"})
    last_run_at = fields.DateTime(allow_none=True, metadata={"description": "When the newest run was created"})
    last_error = fields.String(allow_none=True, metadata={
        "description": "Error of the newest run that recorded one (it may be older than a later success)"})
    last_error_at = fields.DateTime(allow_none=True, metadata={
        "description": "When that run finished (or was created, if unfinished)"})
    last_error_run_id = fields.UUID(allow_none=True, metadata={"description": "That run (GET /api/v1/runs/{id})"})
    recent = fields.Nested(RecentRunsSchema)


class SourceListSchema(ma.Schema):
    data = fields.List(fields.Nested(SourceStatusSchema), required=True)


def source_statuses() -> list[dict]:
    settings = current_app.config["SETTINGS"]
    rows = db.session.execute(SOURCES_SQL, {"sources": list(settings.enabled_sources),
                                            "hours": WINDOW_HOURS}).mappings().all()
    out = []
    for row in rows:
        schedule = settings.sources[row["source"]].schedule_seconds
        age = None if row["age"] is None else round(max(float(row["age"]), 0.0), 1)
        out.append({
            "source": row["source"], "schedule_seconds": schedule, "last_success": row["last_success"],
            "age_seconds": age, "stale": age is None or age > 2 * schedule, "last_run_id": row["last_run_id"],
            "last_status": row["last_status"], "last_run_at": row["last_run_at"], "last_error": row["error"],
            "last_error_at": row["error_at"], "last_error_run_id": row["error_run_id"],
            "recent": {"hours": WINDOW_HOURS, "runs": row["runs"], "failed": row["failed"],
                       "rate_limit_waits": row["waits"], "rate_limit_wait_seconds": round(row["wait_seconds"], 3),
                       "http_429": row["http_429"]},
        })
    return out


@blp.route("/sources")
@blp.response(200, SourceListSchema, description="Each enabled source: freshness against its schedule, newest "
                                                 "run and error, rate-limit waits and 429s over 24 hours")
def list_sources():
    """Sources at a glance"""
    return {"data": source_statuses()}
