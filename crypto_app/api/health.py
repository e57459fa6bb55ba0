"""Health: database, broker, workers and each source (fresh, blocked, failing); liveness and readiness.

Status codes: `healthy` and `degraded` answer 200 (data is served; degraded means the broker is down,
no worker is alive, or a source is stale, blocked or failing: see `reasons`), `unhealthy` answers 503
(the database is unreachable).

/health does no slow work in the request. The report is computed at most once a second per process
(HEALTH_CACHE_SECONDS) from one Redis round trip (a pipeline that pings, reads the
workers' heartbeats and the sources' locks; 1 s socket timeout) and one SQL statement (2 s statement
timeout). Workers are known alive from the heartbeats they write every 2 s (crypto_app/liveness.py),
never from a Celery broadcast ping, which would wait its whole timeout for replies.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

import marshmallow as ma
from flask import Response, current_app
from flask_smorest import Blueprint
from marshmallow import fields
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..coordination import KEY_PREFIX, redis_client
from ..extensions import db
from ..liveness import live_workers_command, parse_live
from .health_sources import assess, read_sources

log = logging.getLogger(__name__)
blp = Blueprint("health", __name__, url_prefix="/health", description=(
    "Health and probes. /health answers 200 when healthy or degraded, 503 when unhealthy."))
STATEMENT_TIMEOUT_MS = 2000
REDIS_TIMEOUT = 1.0


class ProbeSchema(ma.Schema):
    status = fields.String(required=True, metadata={"enum": ["up", "down", "unknown"]})
    latency_ms = fields.Float(allow_none=True)
    error = fields.String(allow_none=True)
    count = fields.Integer(allow_none=True, metadata={"description": "Workers alive (workers only)"})
    names = fields.List(fields.String(), metadata={"description": "Workers alive (workers only)"})
    last_seen_seconds = fields.Dict(keys=fields.String(), values=fields.Float(), metadata={
        "description": "Seconds since each live worker's last heartbeat (workers only)"})


class SourceHealthSchema(ma.Schema):
    last_success = fields.DateTime(allow_none=True, metadata={
        "description": "finished_at of the newest succeeded or partial run"})
    age_seconds = fields.Float(metadata={
        "description": "Seconds since the last success; never succeeded: since its first run or since the "
                       "API process started, whichever is longer (see age_since)"})
    age_since = fields.String(metadata={"enum": ["last_success", "first_run", "process_start"]})
    schedule_seconds = fields.Integer()
    stale = fields.Boolean(metadata={"description": "age_seconds is more than twice the schedule"})
    last_status = fields.String(allow_none=True, metadata={"description": "Status of the newest run"})
    last_run_at = fields.DateTime(allow_none=True)
    last_error = fields.String(allow_none=True, metadata={"description": "Error of the newest run, if it failed"})
    lock_holder = fields.String(allow_none=True, metadata={"description": "Run id holding the source's lock"})
    blocked = fields.String(allow_none=True, metadata={
        "description": "Why no run of this source can start (a dead run holds its lock), else null"})
    failing = fields.Boolean(metadata={"description": "Its last 3 finished runs failed"})


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


_clients: dict = {}
_clients_lock = threading.Lock()


def _redis(url: str):
    """One client (and connection pool) per URL for the process: no TCP handshake per request."""
    client = _clients.get(url)
    if client is None:
        with _clients_lock:
            client = _clients.setdefault(url, redis_client(url, timeout=REDIS_TIMEOUT))
    return client


def check_redis(settings) -> tuple[dict, dict, dict]:
    """(broker probe, workers probe, {source: (lock holder, ms left)}) in one round trip."""
    unknown = {"status": "unknown", "error": "broker unreachable", "count": 0, "names": []}
    if not settings.redis_url:
        return {"status": "down", "error": "REDIS_URL is not set"}, unknown, {}
    sources = list(settings.enabled_sources)
    started = time.perf_counter()
    try:
        client = _redis(settings.redis_url)
        pipe = client.pipeline(transaction=False)
        pipe.eval(*live_workers_command(settings.worker_stale_after_seconds))
        for name in sources:
            pipe.get(f"{KEY_PREFIX}:lock:{name}")
            pipe.pttl(f"{KEY_PREFIX}:lock:{name}")
        live, *replies = pipe.execute()
        workers = parse_live(live)
    except Exception as exc:  # redis raises several types (connection, timeout, auth); all mean "down"
        return {"status": "down", "latency_ms": _elapsed(started), "error": exc.__class__.__name__}, unknown, {}
    broker = {"status": "up", "latency_ms": _elapsed(started)}
    locks = {name: (replies[2 * i], replies[2 * i + 1]) for i, name in enumerate(sources) if replies[2 * i]}
    names = sorted(workers)
    probe = {"status": "up" if names else "down", "count": len(names), "names": names,
             "last_seen_seconds": workers}
    return broker, probe, locks


def check_database(settings, locks: dict) -> tuple[dict, list]:
    """The sources' rows (see health_sources.py) under a statement timeout."""
    started = time.perf_counter()
    try:
        db.session.execute(text("SET LOCAL statement_timeout = :ms"), {"ms": STATEMENT_TIMEOUT_MS})
        rows = read_sources(settings, locks)
        db.session.rollback()
    except SQLAlchemyError as exc:
        db.session.rollback()
        return {"status": "down", "latency_ms": _elapsed(started), "error": exc.__class__.__name__}, []
    return {"status": "up", "latency_ms": _elapsed(started)}, rows


def health_report() -> tuple[dict, int]:
    settings = current_app.config["SETTINGS"]
    broker, workers, locks = check_redis(settings)
    database, rows = check_database(settings, locks)
    sources, source_reasons = assess(settings, rows, locks)
    reasons = []
    if database["status"] != "up":
        reasons.append("database unreachable")
    if broker["status"] != "up":
        reasons.append("broker unreachable: runs cannot be triggered or scheduled")
    elif workers["status"] != "up":
        reasons.append(f"no worker alive (no heartbeat in the last {settings.worker_stale_after_seconds:g} s)")
    reasons += source_reasons
    maintenance = _maintenance(settings) if database["status"] == "up" else {"status": "unknown"}
    if maintenance["status"] == "degraded":
        reasons.append(maintenance["message"])
    status = "unhealthy" if database["status"] != "up" else ("degraded" if reasons else "healthy")
    body = {"status": status, "reasons": reasons, "checked_at": datetime.now(timezone.utc),
            "checks": {"database": database, "broker": broker, "workers": workers}, "sources": sources,
            "maintenance": maintenance}
    _log_change(status, reasons)
    return body, 503 if status == "unhealthy" else 200


_last_seen: dict = {"status": None, "reasons": None}


def _log_change(status: str, reasons: list[str]) -> None:
    """One log line when this process sees the health change (not one per request under load)."""
    if (status, reasons) == (_last_seen["status"], _last_seen["reasons"]):
        return
    _last_seen.update(status=status, reasons=reasons)
    level = logging.INFO if status == "healthy" else logging.WARNING
    log.log(level, "health changed", extra={"status": status, "reasons": reasons})


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
    _computed, data, code = cached_health(current_app._get_current_object())
    return Response(data, status=code, mimetype="application/json")


_cache: dict = {}
_refreshing = threading.Lock()


def cached_health(app) -> tuple[float, bytes, int]:
    """(when computed, JSON body, status code), recomputed at most every HEALTH_CACHE_SECONDS (1 s; 0 under
    TESTING unless set) per process. While one request recomputes it, the others answer with the previous
    report instead of queueing behind it: /health costs a dictionary lookup under load."""
    ttl = app.config.get("HEALTH_CACHE_SECONDS", 0 if app.testing else app.config["SETTINGS"].health_cache_seconds)
    entry = _cache.get(id(app))
    if ttl and entry and time.monotonic() - entry[0] < ttl:
        return entry
    if not _refreshing.acquire(blocking=not (ttl and entry)):
        return entry
    try:
        entry = _cache.get(id(app))
        if ttl and entry and time.monotonic() - entry[0] < ttl:
            return entry
        body, code = health_report()
        entry = (time.monotonic(), HealthSchema().dumps(body).encode(), code)
        if ttl:
            _cache[id(app)] = entry
        return entry
    finally:
        _refreshing.release()


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
