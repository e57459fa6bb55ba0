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

from crypto_app.celery_settings import INGEST_TASK, REAP_TASK, SEGMENT_TASK
from crypto_app.coordination import SourceLock, redis_client
from crypto_app.pipeline import lifecycle, segments
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
    ctx = {"source": source, "trigger": trigger}
    conn = identity_conn = None
    try:
        conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
        identity_conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    except psycopg2.OperationalError as exc:
        # The database is down as this delivery starts (often: a retry firing during an outage).
        # Raising here would end the task for good and leave its run 'running' until the reaper.
        for c in (conn, identity_conn):
            if c is not None:
                c.close()
        kwargs = {"source": source, "run_id": run_id or self.request.id, "trigger": trigger,
                  "options": options or {}, "failures": failures + 1}
        if kwargs["failures"] > settings.task_max_retries:
            log.error("database unreachable, giving up", extra={**ctx, "run_id": kwargs["run_id"], "error": str(exc)})
            raise
        countdown = backoff_seconds(kwargs["failures"], None)
        log.warning("database unreachable, retrying", extra={**ctx, "run_id": kwargs["run_id"], "error": str(exc),
                                                              "countdown": countdown})
        try:
            lock.renew(kwargs["run_id"], ttl + countdown)
        except Exception:  # Redis may be down too; the retry is what matters
            pass
        raise self.retry(kwargs=kwargs, countdown=countdown, exc=exc)
    identity_conn.autocommit = True
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
        # a retry or a rate-limit wait comes back to a running run: "resumed", not a second "started"
        log.info("run started" if status in (None, "queued") else "run resumed",
                 extra={**ctx, "attempt": failures + 1})
        split = set()
        if source == "csv" and not (options or {}).get("files"):
            # large files go to segment tasks that any worker can take; the rest is read here
            segment_tasks, split = segments.plan(conn, settings, run_id)
            for segment in segment_tasks:
                self.app.send_task(SEGMENT_TASK, kwargs=segment)
            options = {**(options or {}), "exclude": sorted(split)}
        try:
            with Heartbeat(settings.libpq_url, lock, run_id, ttl):
                outcome = IngestionRun(run_id, source, settings, conn, identity_conn, redis=redis,
                                       options=options).execute()
        except RateLimitWait as wait:
            countdown = max(1, math.ceil(wait.seconds))
            log.info("rate limit wait", extra={**ctx, "wait_seconds": round(wait.seconds, 2), "countdown": countdown})
            return _retry(self, conn, lock, ttl, kwargs, countdown, f"rate limit: {countdown}s")
        except (TransientSourceError, psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            kwargs["failures"] = failures + 1
            ctx["error_kind"] = getattr(exc, "kind", None) or "database"
            if kwargs["failures"] > settings.task_max_retries:
                return _fail(conn, lock, run_id, ctx, f"gave up after {failures + 1} transient failures: {exc}")
            countdown = backoff_seconds(kwargs["failures"], getattr(exc, "retry_after", None))
            log.warning("transient failure, retrying", extra={**ctx, "error": str(exc), "countdown": countdown})
            return _retry(self, _fresh(conn, settings), lock, ttl, kwargs, countdown, f"retry: {exc}"[:300], exc)
        if split or lifecycle.run_flag(conn, run_id, "segmented"):
            lifecycle.record_outcome(conn, run_id, outcome, coordinator_done=True)
            final = segments.finalize(conn, settings, run_id)
            if final is None:
                log.info("run waits for its segments", extra=ctx)
                return {"run_id": run_id, "status": "running", "segments": sorted(split)}
            lock.release(run_id)
            log.info("run finished", extra={**ctx, "status": final})
            return {"run_id": run_id, "status": final}
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
        return _fail(conn, lock, run_id, {**ctx, "error_kind": exc.kind}, str(exc))
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
    """The run's connection, or a new one if the database dropped it; while the database is still
    down, the dead one (its callers tolerate psycopg2 errors: a retry must not die reconnecting)."""
    if not conn.closed:
        try:
            conn.rollback()
            return conn
        except psycopg2.Error:
            pass
    try:
        return psycopg2.connect(settings.libpq_url, connect_timeout=10)
    except psycopg2.OperationalError:
        return conn


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


@celery_app.task(bind=True, name=SEGMENT_TASK, max_retries=RETRY_CAP)
def ingest_csv_segment(self, run_id: str, rel: str, start: int, end: int, failures: int = 0):
    """Load one segment of a large CSV file (see crypto_app/pipeline/segments.py)."""
    settings = flask_app.config["SETTINGS"]
    redis = redis_client(settings.redis_url)
    lock, ttl = SourceLock(redis, "csv"), lock_ttl(settings)
    claim = SourceLock(redis, f"csv-segment:{run_id}:{rel}:{start}")   # one task per segment at a time
    ctx = {"source": "csv", "run_id": run_id, "file": rel, "segment": start}
    if not claim.claim(self.request.id, ttl):
        log.info("segment already being loaded", extra=ctx)
        return {"skipped": True}
    conn = identity_conn = None
    try:
        conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
        identity_conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
        identity_conn.autocommit = True
        if lifecycle.run_status(conn, run_id) != "running":
            return {"ignored": True}
        with Heartbeat(settings.libpq_url, lock, run_id, ttl, extra_locks=((claim, self.request.id),)):
            segments.run_segment(settings, conn, identity_conn, run_id, rel, start, end)
        final = segments.finalize(conn, settings, run_id)
        if final:
            lock.release(run_id)
            log.info("run finished", extra={**ctx, "status": final})
        return {"run_id": run_id, "segment": start, "run_status": final or "running"}
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        if failures + 1 > settings.task_max_retries:
            return _fail(_fresh(conn, settings) if conn else psycopg2.connect(settings.libpq_url, connect_timeout=10),
                         lock, run_id, ctx, f"segment {rel}@{start}: {exc}")
        claim.release(self.request.id)
        raise self.retry(kwargs={"run_id": run_id, "rel": rel, "start": start, "end": end, "failures": failures + 1},
                         countdown=backoff_seconds(failures + 1, None), exc=exc)
    except Retry:
        raise
    except Exception as exc:
        log.exception("segment crashed", extra=ctx)
        _fail(_fresh(conn, settings) if conn else psycopg2.connect(settings.libpq_url, connect_timeout=10),
              lock, run_id, ctx, f"segment {rel}@{start}: {exc.__class__.__name__}: {exc}")
        raise
    finally:
        claim.release(self.request.id)
        for c in (conn, identity_conn):
            if c is not None:
                c.close()


@celery_app.task(name=REAP_TASK)
def reap_stale_runs_task():
    settings = flask_app.config["SETTINGS"]
    conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    try:
        return reap_stale_runs(conn, redis_client(settings.redis_url), settings.run_stale_after_seconds)
    finally:
        conn.close()
