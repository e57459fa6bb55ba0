"""Celery tasks: thin wrappers that lock, call the pipeline, and retry.

Why retries are explicit (self.retry) rather than `autoretry_for`: a wait for a rate-limit token is not
a failure and must not spend the bounded retry budget, and an upstream's Retry-After must win over
the computed backoff. Transient failures still back off exponentially with jitter, at most
TASK_MAX_RETRIES times; the redelivery of a task whose worker died is capped by MAX_DELIVERIES.
"""
from __future__ import annotations

import logging
import math
import uuid

import psycopg2
from celery.exceptions import Retry, SoftTimeLimitExceeded

from crypto_app.celery_settings import INGEST_TASK, REAP_TASK
from crypto_app.coordination import SourceLock, redis_client
from crypto_app.pipeline import lifecycle
from crypto_app.pipeline.heartbeat import Heartbeat
from crypto_app.pipeline.ingest import IngestionRun, RateLimitWait, backoff_seconds
from crypto_app.pipeline.reaper import reap_stale_runs
from crypto_app.pipeline.runs import lock_ttl
from crypto_app.sources.base import PermanentSourceError, TransientSourceError

from . import celery_app, flask_app

log = logging.getLogger(__name__)
RETRY_CAP = 100_000  # Celery's own counter also counts rate-limit waits; our budgets are below


@celery_app.task(bind=True, name=INGEST_TASK, max_retries=RETRY_CAP)
def ingest_source(self, source: str, run_id: str | None = None, trigger: str = "schedule",
                  options: dict | None = None, failures: int = 0):
    settings = flask_app.config["SETTINGS"]
    redis = redis_client(settings.redis_url)
    lock = SourceLock(redis, source)
    ttl = lock_ttl(settings)
    conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    identity_conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    identity_conn.autocommit = True
    ctx = {"source": source, "trigger": trigger}
    try:
        # A scheduled task's run id is its task id: a redelivered message (worker lost) or a retry
        # carries the same id, finds its run and its lock, and resumes.
        run_id = run_id or self.request.id or str(uuid.uuid4())
        status = lifecycle.run_status(conn, run_id)
        if status in lifecycle.TERMINAL:
            log.warning("task for a finished run ignored", extra={**ctx, "run_id": run_id, "status": status})
            return {"ignored": True, "status": status}
        if not lock.claim(run_id, ttl):
            holder = lock.holder()
            if status is None:
                log.info("run skipped: source busy", extra={**ctx, "running_run_id": holder})
                return {"skipped": True, "running_run_id": holder}
            lifecycle.finish_run(conn, run_id, "failed", error=f"superseded: run {holder} holds {source}")
            return {"superseded_by": holder}
        if status is None:
            lifecycle.create_run(conn, run_id, source, trigger)
        ctx["run_id"] = run_id
        kwargs = {"source": source, "run_id": run_id, "trigger": trigger, "options": options or {},
                  "failures": failures}
        died_before = lifecycle.start_delivery(conn, run_id, source)
        if died_before >= settings.max_deliveries:
            return _fail(conn, lock, run_id, ctx, f"gave up: {died_before} deliveries in a row died mid-run")
        log.info("run started", extra={**ctx, "attempt": failures + 1})
        try:
            with Heartbeat(settings.libpq_url, lock, run_id, ttl):
                outcome = IngestionRun(run_id, source, settings, conn, identity_conn, redis=redis,
                                       options=options).execute()
        except RateLimitWait as wait:
            countdown = max(1, math.ceil(wait.seconds))
            return _retry(self, conn, lock, ttl, kwargs, countdown, f"rate limit: {countdown}s")
        except (TransientSourceError, psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            kwargs["failures"] = failures + 1
            if kwargs["failures"] > settings.task_max_retries:
                return _fail(conn, lock, run_id, ctx, f"gave up after {failures + 1} transient failures: {exc}")
            countdown = backoff_seconds(kwargs["failures"], getattr(exc, "retry_after", None))
            log.warning("transient failure, retrying", extra={**ctx, "error": str(exc), "countdown": countdown})
            return _retry(self, _fresh(conn, settings), lock, ttl, kwargs, countdown, f"retry: {exc}"[:300], exc)
        lifecycle.finish_run(conn, run_id, outcome.status, outcome=outcome)
        lock.release(run_id)
        log.info("run finished", extra={**ctx, "status": outcome.status, "fetched": outcome.fetched,
                                         "loaded": outcome.loaded, "rejected": outcome.rejected,
                                         "pages": outcome.pages})
        return {"run_id": run_id, "status": outcome.status, "loaded": outcome.loaded,
                "rejected": outcome.rejected}
    except Retry:
        raise
    except PermanentSourceError as exc:
        return _fail(conn, lock, run_id, ctx, str(exc))
    except SoftTimeLimitExceeded:
        return _fail(conn, lock, run_id, ctx, "time limit exceeded (RUN_TIME_LIMIT_SECONDS)")
    except Exception as exc:
        log.exception("run crashed", extra=ctx)
        if run_id:
            _fail(_fresh(conn, settings), lock, run_id, ctx, f"{exc.__class__.__name__}: {exc}")
        raise
    finally:
        for c in (conn, identity_conn):
            try:
                c.close()
            except Exception:
                pass


def _fresh(conn, settings):
    """The run's connection, or a new one if the database dropped it."""
    if conn.closed:
        return psycopg2.connect(settings.libpq_url, connect_timeout=10)
    try:
        conn.rollback()
        return conn
    except psycopg2.Error:
        return psycopg2.connect(settings.libpq_url, connect_timeout=10)


def _retry(task, conn, lock, ttl, kwargs, countdown, note, exc=None):
    try:
        lifecycle.postpone(conn, kwargs["run_id"], countdown, note)
    except psycopg2.Error:
        pass  # the database is down: the retry still happens; the reaper's grace covers the heartbeat
    lock.renew(kwargs["run_id"], ttl + countdown)
    raise task.retry(kwargs=kwargs, countdown=countdown, exc=exc)


def _fail(conn, lock, run_id, ctx, error):
    lifecycle.finish_run(conn, run_id, "failed", error=error)
    lock.release(run_id)
    log.error("run failed", extra={**ctx, "run_id": run_id, "error": error})
    return {"run_id": run_id, "status": "failed", "error": error}


@celery_app.task(name=REAP_TASK)
def reap_stale_runs_task():
    settings = flask_app.config["SETTINGS"]
    conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    try:
        return reap_stale_runs(conn, redis_client(settings.redis_url), settings.run_stale_after_seconds)
    finally:
        conn.close()
