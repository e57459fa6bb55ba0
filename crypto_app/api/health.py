"""Health: database, broker, workers and freshness of each source; liveness and readiness probes.

Status codes: `healthy` and `degraded` answer 200 (data is served; degraded means the broker is down,
no worker answered, or a source is stale), `unhealthy` answers 503 (the database is unreachable).
Every probe is bounded: statement timeout on the database, 1 s socket timeout on Redis, 1 s Celery
ping inside a 3 s hard limit.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from datetime import datetime, timezone

import marshmallow as ma
from flask import current_app
from flask_smorest import Blueprint
from marshmallow import fields
from sqlalchemy import bindparam, text
from sqlalchemy.exc import SQLAlchemyError

from ..broker import ping_workers
from ..coordination import redis_client
from ..extensions import db

log = logging.getLogger(__name__)
blp = Blueprint("health", __name__, url_prefix="/health", description=(
    "Health and probes. /health answers 200 when healthy or degraded, 503 when unhealthy."))
_pinger = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health-ping")
STATEMENT_TIMEOUT_MS = 2000
LAST_RUNS_SQL = text("""
    SELECT s.source, ok.finished_at AS last_success, last.status AS last_status,
           last.created_at AS last_run_at, extract(epoch FROM now() - ok.finished_at) AS age
    FROM unnest(CAST(:sources AS text[])) AS s(source)
    LEFT JOIN LATERAL (SELECT finished_at FROM etl_runs r WHERE r.source = s.source
                       AND r.status IN ('succeeded', 'partial') ORDER BY r.created_at DESC LIMIT 1) ok ON true
    LEFT JOIN LATERAL (SELECT status, created_at FROM etl_runs r WHERE r.source = s.source
                       ORDER BY r.created_at DESC LIMIT 1) last ON true
""").bindparams(bindparam("sources", type_=db.ARRAY(db.Text)))


class ProbeSchema(ma.Schema):
    status = fields.String(required=True, metadata={"enum": ["up", "down", "unknown"]})
    latency_ms = fields.Float(allow_none=True)
    error = fields.String(allow_none=True)
    count = fields.Integer(allow_none=True, metadata={"description": "Workers that answered (workers only)"})
    names = fields.List(fields.String(), metadata={"description": "Workers that answered (workers only)"})
    cached = fields.Boolean(metadata={"description": "The workers' answer is reused from a ping less than "
                                                     "5 s old (workers only)"})


class SourceHealthSchema(ma.Schema):
    last_success = fields.DateTime(allow_none=True, metadata={
        "description": "finished_at of the newest succeeded or partial run"})
    age_seconds = fields.Float(allow_none=True)
    schedule_seconds = fields.Integer()
    stale = fields.Boolean(metadata={"description": "Never succeeded, or last success older than 2x the schedule"})
    last_status = fields.String(allow_none=True, metadata={"description": "Status of the newest run"})
    last_run_at = fields.DateTime(allow_none=True)


class HealthSchema(ma.Schema):
    status = fields.String(required=True, metadata={"enum": ["healthy", "degraded", "unhealthy"]})
    reasons = fields.List(fields.String(), metadata={"description": "Why the status is not healthy"})
    maintenance = fields.Dict(metadata={"description": "Storage maintenance (crypto_app/api/storage_stats.py): "
                                                       "status ok/degraded/unknown, last_success, "
                                                       "overdue_after_seconds, message"})
    checked_at = fields.DateTime()
    checks = fields.Dict(keys=fields.String(), values=fields.Nested(ProbeSchema), metadata={
        "description": "database, broker, workers"})
    sources = fields.Dict(keys=fields.String(), values=fields.Nested(SourceHealthSchema))


class ProbeStatusSchema(ma.Schema):
    status = fields.String(required=True)
    reason = fields.String(allow_none=True)


def _elapsed(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def check_database(settings) -> tuple[dict, dict]:
    """SELECT 1 and each enabled source's last runs, under a statement timeout."""
    started = time.perf_counter()
    try:
        db.session.execute(text("SET LOCAL statement_timeout = :ms"), {"ms": STATEMENT_TIMEOUT_MS})
        db.session.execute(text("SELECT 1"))
        probe = {"status": "up", "latency_ms": _elapsed(started)}
        rows = db.session.execute(LAST_RUNS_SQL, {"sources": list(settings.enabled_sources)}).mappings().all()
        db.session.rollback()
    except SQLAlchemyError as exc:
        db.session.rollback()
        return {"status": "down", "latency_ms": _elapsed(started), "error": exc.__class__.__name__}, {}
    sources = {}
    for row in rows:
        schedule = settings.sources[row["source"]].schedule_seconds
        age = None if row["age"] is None else max(float(row["age"]), 0.0)
        sources[row["source"]] = {
            "last_success": row["last_success"], "age_seconds": None if age is None else round(age, 1),
            "schedule_seconds": schedule, "stale": age is None or age > 2 * schedule,
            "last_status": row["last_status"], "last_run_at": row["last_run_at"],
        }
    return probe, sources


def check_broker(settings) -> dict:
    started = time.perf_counter()
    if not settings.redis_url:
        return {"status": "down", "error": "REDIS_URL is not set"}
    client = redis_client(settings.redis_url, timeout=1.0)
    try:
        client.ping()
        return {"status": "up", "latency_ms": _elapsed(started)}
    except Exception as exc:  # redis raises several types (connection, timeout, auth); all mean "down"
        return {"status": "down", "latency_ms": _elapsed(started), "error": exc.__class__.__name__}
    finally:
        client.close()


_worker_cache: dict = {}
_worker_cache_lock = threading.Lock()


def check_workers(app) -> dict:
    """The Celery ping waits its whole timeout to collect replies, so its result is reused for
    HEALTH_WORKERS_CACHE_SECONDS (5 s; 0 under TESTING): /health stays cheap under load."""
    ttl = app.config.get("HEALTH_WORKERS_CACHE_SECONDS", 0 if app.testing else 5.0)
    key = id(app)
    cached = _worker_cache.get(key)
    if ttl and cached and time.monotonic() - cached[0] < ttl:
        return {**cached[1], "cached": True}
    with _worker_cache_lock:
        cached = _worker_cache.get(key)
        if ttl and cached and time.monotonic() - cached[0] < ttl:
            return {**cached[1], "cached": True}
        result = _ping_workers_now(app)
        if ttl:
            _worker_cache[key] = (time.monotonic(), result)
        return result


def _ping_workers_now(app) -> dict:
    started = time.perf_counter()

    def ping():
        with app.app_context():
            return ping_workers(timeout=1.0)

    try:
        names = _pinger.submit(ping).result(timeout=3.0)
    except concurrent.futures.TimeoutError:
        return {"status": "unknown", "latency_ms": _elapsed(started), "error": "ping timed out", "count": 0,
                "names": []}
    except Exception as exc:  # a broken broker connection surfaces as kombu/redis errors of several types
        return {"status": "unknown", "latency_ms": _elapsed(started), "error": exc.__class__.__name__,
                "count": 0, "names": []}
    return {"status": "up" if names else "down", "latency_ms": _elapsed(started), "count": len(names),
            "names": names}


def health_report() -> tuple[dict, int]:
    settings = current_app.config["SETTINGS"]
    database, sources = check_database(settings)
    broker = check_broker(settings)
    workers = (check_workers(current_app._get_current_object()) if broker["status"] == "up"
               else {"status": "unknown", "error": "broker unreachable", "count": 0, "names": []})
    reasons = []
    if database["status"] != "up":
        reasons.append("database unreachable")
    if broker["status"] != "up":
        reasons.append("broker unreachable: runs cannot be triggered or scheduled")
    elif workers["status"] != "up":
        reasons.append("no worker answered the ping")
    reasons += [f"source {name} is stale" for name, s in sources.items() if s["stale"]]
    maintenance = _maintenance(settings) if database["status"] == "up" else {"status": "unknown"}
    if maintenance["status"] == "degraded":
        reasons.append(maintenance["message"])
    status = "unhealthy" if database["status"] != "up" else ("degraded" if reasons else "healthy")
    if status != "healthy":
        log.warning("health not healthy", extra={"status": status, "reasons": reasons})
    body = {"status": status, "reasons": reasons, "checked_at": datetime.now(timezone.utc),
            "checks": {"database": database, "broker": broker, "workers": workers}, "sources": sources,
            "maintenance": maintenance}
    return body, 503 if status == "unhealthy" else 200


# --- storage maintenance (issue 11): one call, kept apart from the checks above -----------------------
def _maintenance(settings) -> dict:
    from .storage_stats import maintenance_health

    try:
        return maintenance_health(settings)
    except SQLAlchemyError as exc:
        db.session.rollback()
        return {"status": "unknown", "error": exc.__class__.__name__}


@blp.route("")
@blp.response(200, HealthSchema, description="healthy or degraded (see `status` and `reasons`)")
@blp.alt_response(503, schema=HealthSchema, description="unhealthy: the database is unreachable")
def health():
    """Health of the service and its dependencies"""
    return health_report()


@blp.route("/live")
@blp.response(200, ProbeStatusSchema, description="The process answers (no dependency is checked)")
def live():
    """Liveness probe"""
    return {"status": "alive"}


@blp.route("/ready")
@blp.response(200, ProbeStatusSchema, description="The database answers and its schema is migrated to head")
@blp.alt_response(503, schema=ProbeStatusSchema, description="Not ready: database unreachable or not migrated")
def ready():
    """Readiness probe"""
    try:
        db.session.execute(text("SET LOCAL statement_timeout = :ms"), {"ms": STATEMENT_TIMEOUT_MS})
        current = set(db.session.execute(text("SELECT version_num FROM alembic_version")).scalars())
        db.session.rollback()
    except SQLAlchemyError as exc:
        db.session.rollback()
        return {"status": "not_ready", "reason": f"database: {exc.__class__.__name__}"}, 503
    heads = migration_heads()
    if current != heads:
        return {"status": "not_ready", "reason": f"migrations not applied: at {sorted(current)}, "
                                                 f"code expects {sorted(heads)}"}, 503
    return {"status": "ready", "reason": None}


def migration_heads() -> set[str]:
    heads = current_app.extensions.get("cryptoflow_migration_heads")
    if heads is None:
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        from ..config import PROJECT_ROOT

        config = Config()
        config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
        heads = set(ScriptDirectory.from_config(config).get_heads())
        current_app.extensions["cryptoflow_migration_heads"] = heads
    return heads
