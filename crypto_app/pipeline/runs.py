"""Run bookkeeping: an etl_runs row goes queued -> running -> succeeded / partial / failed.

`trigger_run` is how the API and the CLI start a run: it takes the source's lock in Redis for the new
run id first (so two triggers at the same moment cannot both win), records the run as queued, and
publishes the ingestion task by name. If the broker cannot be reached the run is marked failed and the
lock released: no run is left stuck in `queued`.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone

import redis as redis_lib
from flask import current_app

from ..celery_settings import INGEST_TASK
from ..coordination import SourceLock, redis_client
from ..extensions import db
from ..models import EtlRun

log = logging.getLogger(__name__)
TERMINAL = ("succeeded", "partial", "failed")


class RunAlreadyActive(Exception):
    def __init__(self, source: str, run_id: str | None):
        super().__init__(f"a {source} run is already going: {run_id}")
        self.source = source
        self.run_id = run_id


class BrokerUnavailable(Exception):
    pass


class UnknownSource(ValueError):
    pass


def now() -> datetime:
    return datetime.now(timezone.utc)


def lock_ttl(settings) -> float:
    """How long a lock lives without renewal: a queued run waits at most this long for a worker."""
    return float(settings.run_stale_after_seconds)


def check_source(settings, source: str) -> None:
    if source not in settings.sources:
        raise UnknownSource(f"unknown source {source!r}; known: {', '.join(settings.sources)}")
    if not settings.sources[source].enabled:
        raise UnknownSource(f"source {source!r} is disabled (ENABLED_SOURCES)")


def trigger_run(source: str, trigger: str, options: dict | None = None, send=None) -> EtlRun:
    """Queue a run of `source`. Raises UnknownSource, RunAlreadyActive or BrokerUnavailable."""
    from ..broker import send_task

    settings = current_app.config["SETTINGS"]
    check_source(settings, source)
    run_id = uuid.uuid4()
    lock = SourceLock(redis_client(settings.redis_url, timeout=2), source)
    try:
        if not lock.acquire(str(run_id), lock_ttl(settings)):
            raise RunAlreadyActive(source, lock.holder())
    except redis_lib.RedisError as exc:
        raise BrokerUnavailable(f"the broker (Redis) is unreachable: {exc.__class__.__name__}") from None
    run = EtlRun(id=run_id, source=source, trigger=trigger, status="queued", stats={})
    db.session.add(run)
    db.session.commit()
    try:
        (send or send_task)(INGEST_TASK, {"source": source, "run_id": str(run_id), "trigger": trigger,
                                          "options": options or {}}, str(run_id))
    except Exception as exc:  # kombu raises several types for an unreachable broker
        run.status, run.error, run.finished_at = "failed", f"broker unreachable: {exc.__class__.__name__}", now()
        db.session.commit()
        try:
            lock.release(str(run_id))
        except redis_lib.RedisError:
            pass
        log.error("run could not be queued", extra={"run_id": str(run_id), "source": source})
        raise BrokerUnavailable("the broker (Redis) is unreachable; the run was not queued") from None
    log.info("run queued", extra={"run_id": str(run_id), "source": source, "trigger": trigger})
    return run


def get_run(run_id) -> EtlRun | None:
    try:
        key = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    except ValueError:
        return None
    return db.session.get(EtlRun, key)
