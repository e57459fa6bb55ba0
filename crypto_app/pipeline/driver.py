"""One run driver: the lock / create / start / heartbeat / retry / finish sequence of an ingestion run,
written once for the Celery tasks (tasks/ingest.py) and the CLI (crypto_app/cli.py).

`deliver(settings, attempt)` performs one delivery of a run and returns a `Step`:
- `step.retry_in` set: deliver `step.attempt` again after that many seconds (the task re-queues itself
  with that countdown, the CLI sleeps). Every committed batch kept its checkpoint, nothing is lost.
- otherwise the delivery is over: `step.status` is the run's final status when this delivery finished it
  ("succeeded", "partial" or "failed" with `step.error`), or None when nothing more is to be done here
  (skipped: the source is busy; ignored: the run had already ended; waiting for its segments).

Retry budgets. Transient upstream failures are counted (TASK_MAX_RETRIES); a 429's Retry-After also
blocks the source's shared token bucket for everyone. PostgreSQL being unreachable is budgeted in time:
the run keeps retrying for DB_RETRY_BUDGET_SECONDS from the first failed attempt, backoff capped at
RETRY_BACKOFF_MAX_SECONDS. When the budget runs out with the database still down, the source's lock is
released at once and the failure is kept in Redis (PendingVerdicts) until the next delivery of any
source, or the reaper, can write it.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field

import psycopg2
import redis as redis_lib
from celery.exceptions import SoftTimeLimitExceeded

from ..coordination import PendingVerdicts, RateLimiter, SourceLock, redis_client
from ..sources.base import PermanentSourceError, TransientSourceError
from . import lifecycle, segments
from .heartbeat import Heartbeat
from .ingest import IngestionRun, RateLimitWait, backoff_seconds
from .load import RunSuperseded
from .runs import lock_ttl

log = logging.getLogger(__name__)
DB_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


class RunFailed(Exception):
    """Raised by a task after its run was recorded as failed; the message is the run's error."""


@dataclass
class Attempt:
    """What one delivery of a run needs (also the Celery task's kwargs, see `kwargs`)."""

    source: str
    run_id: str | None = None
    trigger: str = "schedule"
    options: dict = field(default_factory=dict)
    failures: int = 0                   # transient upstream failures so far
    db_retries: int = 0                 # deliveries that found PostgreSQL unreachable in this outage
    outage_since: float | None = None   # epoch seconds: PostgreSQL first found unreachable

    def kwargs(self) -> dict:
        return asdict(self)


@dataclass
class Step:
    run_id: str | None
    status: str | None = None
    error: str | None = None
    retry_in: float | None = None
    attempt: object = None
    exc: BaseException | None = None
    summary: dict = field(default_factory=dict)


class Delivery:
    """The shared plumbing of one delivery: connections, lock, budgets, failing a run."""

    def __init__(self, settings, source: str, run_id: str, kind: str):
        self.settings = settings
        self.source = source
        self.run_id = str(run_id)
        self.kind = kind
        self.redis = redis_client(settings.redis_url)
        self.lock = SourceLock(self.redis, source)
        self.ttl = lock_ttl(settings)
        self.ctx = {"source": source, "run_id": self.run_id}
        self.conn = self.identity_conn = None

    def connect(self) -> None:
        self.conn = psycopg2.connect(self.settings.libpq_url, connect_timeout=10)
        self.identity_conn = psycopg2.connect(self.settings.libpq_url, connect_timeout=10)
        self.identity_conn.autocommit = True
        try:
            lifecycle.apply_pending_verdicts(self.conn, PendingVerdicts(self.redis))
        except redis_lib.RedisError:
            pass

    def close(self) -> None:
        for c in (self.conn, self.identity_conn):
            if c is not None:
                try:
                    c.close()
                except psycopg2.Error:
                    pass

    def fresh(self):
        """The delivery's connection, or a new one if the database dropped it; None while it is down."""
        if self.conn is not None and not self.conn.closed:
            try:
                self.conn.rollback()
                return self.conn
            except psycopg2.Error:
                pass
        try:
            self.conn = psycopg2.connect(self.settings.libpq_url, connect_timeout=10)
            return self.conn
        except psycopg2.OperationalError:
            return None

    def fail(self, error: str, release: bool = True) -> Step:
        """Record the run failed (or keep the verdict in Redis while PostgreSQL is down); free the lock."""
        conn = self.fresh()
        try:
            if conn is None:
                raise psycopg2.OperationalError("no connection")
            lifecycle.finish_run(conn, self.run_id, "failed", error=error)
            error = lifecycle.run_error(conn, self.run_id) or error
        except psycopg2.Error:
            PendingVerdicts(self.redis).add(self.run_id, self.source, error)
            log.error("run failure kept in Redis until PostgreSQL is back", extra={**self.ctx, "error": error})
        if release:
            self.lock.release(self.run_id)
        log.error("run failed", extra={**self.ctx, "error": error})
        return Step(self.run_id, status="failed", error=error,
                    summary={"run_id": self.run_id, "status": "failed", "error": error})

    def retry(self, attempt, countdown: float, note: str, exc: BaseException | None = None) -> Step:
        conn = self.fresh()
        if conn is not None:
            try:
                lifecycle.postpone(conn, self.run_id, countdown, note)
            except psycopg2.Error:
                pass  # the retry still happens; the reaper's grace covers the heartbeat
        if self.lock.renew(self.run_id, self.ttl + countdown):
            self.lock.beat(self.run_id, countdown + 60, self.kind)
        return Step(self.run_id, retry_in=countdown, attempt=attempt, exc=exc, error=note)

    def database_down(self, attempt, exc: BaseException, message: str) -> Step:
        """PostgreSQL is unreachable: retry within the time budget, else give up (lock freed now)."""
        now = time.time()
        attempt.outage_since = attempt.outage_since or now
        self.ctx["error_kind"] = "database"
        waited = now - attempt.outage_since
        budget = self.settings.db_retry_budget_seconds
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        if waited >= budget:
            log.error("database unreachable, giving up", extra={**self.ctx, "error": cause})
            return self.fail(f"gave up: PostgreSQL unreachable for {waited:.0f}s "
                             f"(DB_RETRY_BUDGET_SECONDS={budget}): {cause}")
        attempt.db_retries += 1
        countdown = min(backoff_seconds(attempt.db_retries, None, self.settings.retry_backoff_max_seconds),
                        max(1, math.ceil(budget - waited)))
        log.warning(message, extra={**self.ctx, "error": cause, "countdown": countdown,
                                     "outage_seconds": round(waited, 1)})
        return self.retry(attempt, countdown, f"database unreachable: {cause}"[:300], exc)


def deliver(settings, attempt: Attempt, *, kind: str = "worker", queue_segment=None, max_sleep=None,
            progress=None, on_started=None) -> Step:
    """One delivery of run `attempt.run_id` of `attempt.source` (a new run if it does not exist yet).

    queue_segment(kwargs): publishes a CSV segment task (workers only; without it CSV files are read here).
    on_started(run_id): called once the run row exists and its lock is held."""
    attempt.run_id = str(attempt.run_id or uuid.uuid4())
    d = Delivery(settings, attempt.source, attempt.run_id, kind)
    d.ctx["trigger"] = attempt.trigger
    try:
        d.connect()
    except DB_ERRORS as exc:
        d.close()
        return d.database_down(attempt, exc, "database unreachable, retrying")
    try:
        attempt.outage_since, attempt.db_retries = None, 0
        return _run(d, attempt, queue_segment, max_sleep, progress, on_started)
    except RunSuperseded as exc:
        return d.fail(str(exc), release=False)
    except PermanentSourceError as exc:
        d.ctx["error_kind"] = exc.kind
        return d.fail(str(exc))
    except SoftTimeLimitExceeded:
        return d.fail("time limit exceeded (RUN_TIME_LIMIT_SECONDS)")
    except BaseException as exc:
        log.exception("run crashed", extra=d.ctx)
        d.fail(f"{exc.__class__.__name__}: {exc}")
        raise
    finally:
        d.close()


def _run(d: Delivery, attempt: Attempt, queue_segment, max_sleep, progress, on_started) -> Step:
    settings, run_id, conn = d.settings, d.run_id, d.conn
    status = lifecycle.run_status(conn, run_id)
    if status in lifecycle.TERMINAL:
        log.warning("task for a finished run ignored", extra={**d.ctx, "status": status})
        return Step(run_id, summary={"ignored": True, "status": status})
    if not d.lock.claim(run_id, d.ttl):
        holder = d.lock.holder()
        if status is None:
            log.info("run skipped: source busy", extra={**d.ctx, "running_run_id": holder})
            return Step(None, summary={"skipped": True, "running_run_id": holder})
        return d.fail(f"superseded: lost its lock; run {holder} holds {d.source}", release=False)
    d.lock.beat(run_id, 60, d.kind)
    if status is None:
        lifecycle.create_run(conn, run_id, d.source, attempt.trigger)
    if on_started:
        on_started(run_id)
    died_before = lifecycle.start_delivery(conn, run_id, d.source)
    if died_before >= settings.max_deliveries:
        return d.fail(f"gave up: {died_before} deliveries in a row died mid-run")
    # a retry or a rate-limit wait comes back to a running run: "resumed", not a second "started"
    log.info("run started" if status in (None, "queued") else "run resumed",
             extra={**d.ctx, "attempt": attempt.failures + 1})
    options, split = dict(attempt.options or {}), set()
    if d.source == "csv" and queue_segment is not None and not options.get("files"):
        # large files go to segment tasks that any worker can take; the rest is read here
        segment_tasks, split = segments.plan(conn, settings, run_id)
        for segment in segment_tasks:
            queue_segment(segment)
        options["exclude"] = sorted(split)
    try:
        with Heartbeat(settings.libpq_url, d.lock, run_id, d.ttl, kind=d.kind) as beat:
            outcome = IngestionRun(run_id, d.source, settings, conn, d.identity_conn, redis=d.redis,
                                   max_sleep=max_sleep, options=options, progress=progress,
                                   should_stop=beat.lost_reason).execute()
    except RateLimitWait as wait:
        countdown = max(1, math.ceil(wait.seconds))
        log.info("rate limit wait", extra={**d.ctx, "wait_seconds": round(wait.seconds, 2), "countdown": countdown})
        return d.retry(attempt, countdown, f"rate limit: {countdown}s")
    except TransientSourceError as exc:
        attempt.failures += 1
        d.ctx["error_kind"] = exc.kind
        if exc.retry_after:          # the upstream said when: nobody asks it before then
            source_settings = settings.sources[d.source]
            RateLimiter(d.redis, d.source, source_settings.rate_per_minute, source_settings.burst).block(
                exc.retry_after)
        if attempt.failures > settings.task_max_retries:
            return d.fail(f"gave up after {attempt.failures} transient failures: {exc}")
        countdown = backoff_seconds(attempt.failures, exc.retry_after, settings.retry_backoff_max_seconds)
        log.warning("transient failure, retrying", extra={**d.ctx, "error": str(exc), "countdown": countdown})
        return d.retry(attempt, countdown, f"retry: {exc}"[:300], exc)
    except DB_ERRORS as exc:
        return d.database_down(attempt, exc, "transient failure, retrying")
    if split or lifecycle.run_flag(conn, run_id, "segmented"):
        lifecycle.record_outcome(conn, run_id, outcome, coordinator_done=True)
        final = segments.finalize(conn, settings, run_id)
        if final is None:
            log.info("run waits for its segments", extra=d.ctx)
            return Step(run_id, summary={"run_id": run_id, "status": "running", "segments": sorted(split)})
        d.lock.release(run_id)
        log.info("run finished", extra={**d.ctx, "status": final})
        return Step(run_id, status=final, summary={"run_id": run_id, "status": final})
    lifecycle.finish_run(conn, run_id, outcome.status, outcome=outcome)
    d.lock.release(run_id)
    log.info("run finished", extra={**d.ctx, "status": outcome.status, "fetched": outcome.fetched,
                                     "loaded": outcome.loaded, "rejected": outcome.rejected, "pages": outcome.pages})
    return Step(run_id, status=outcome.status,
                summary={"run_id": run_id, "status": outcome.status, "loaded": outcome.loaded,
                         "rejected": outcome.rejected})


@dataclass
class SegmentAttempt:
    """One segment of a large CSV file of run `run_id` (crypto_app.pipeline.segments); the task's kwargs."""

    run_id: str
    rel: str
    start: int
    end: int
    failures: int = 0                   # deliveries that found PostgreSQL unreachable in this outage
    outage_since: float | None = None

    @property
    def db_retries(self) -> int:
        return self.failures

    @db_retries.setter
    def db_retries(self, value: int) -> None:
        self.failures = value

    def kwargs(self) -> dict:
        return asdict(self)


def deliver_segment(settings, attempt: SegmentAttempt, delivery_id: str) -> Step:
    """One delivery of a segment: the same lock, heartbeat, delivery cap and database budget as a run.
    Every delivery is counted on the run (etl_runs.deliveries); MAX_DELIVERIES deliveries of one segment
    that died in a row fail the run."""
    d = Delivery(settings, "csv", attempt.run_id, "worker")
    d.ctx.update({"file": attempt.rel, "segment": attempt.start})
    claim = SourceLock(d.redis, f"csv-segment:{attempt.run_id}:{attempt.rel}:{attempt.start}")
    if not claim.claim(delivery_id, d.ttl):      # one delivery per segment at a time
        log.info("segment already being loaded", extra=d.ctx)
        return Step(attempt.run_id, summary={"skipped": True})
    where = f"segment {attempt.rel}@{attempt.start}"
    try:
        try:
            d.connect()
        except DB_ERRORS as exc:
            return d.database_down(attempt, exc, "database unreachable, retrying")
        attempt.outage_since, attempt.failures = None, 0
        if lifecycle.run_status(d.conn, attempt.run_id) != "running":
            return Step(attempt.run_id, summary={"ignored": True})
        died_before = segments.start_delivery(d.conn, attempt.run_id, attempt.rel, attempt.start)
        if died_before >= settings.max_deliveries:
            return d.fail(f"gave up: {where}: {died_before} deliveries in a row died mid-segment")
        with Heartbeat(settings.libpq_url, d.lock, attempt.run_id, d.ttl,
                       extra_locks=((claim, delivery_id),)) as beat:
            segments.run_segment(settings, d.conn, d.identity_conn, attempt.run_id, attempt.rel, attempt.start,
                                 attempt.end, should_stop=beat.lost_reason)
        final = segments.finalize(d.conn, settings, attempt.run_id)
        if final:
            d.lock.release(attempt.run_id)
            log.info("run finished", extra={**d.ctx, "status": final})
        return Step(attempt.run_id, status=final, summary={"run_id": attempt.run_id, "segment": attempt.start,
                                                           "run_status": final or "running"})
    except DB_ERRORS as exc:
        return d.database_down(attempt, exc, "transient failure, retrying")
    except RunSuperseded as exc:
        return d.fail(str(exc), release=False)
    except BaseException as exc:
        log.exception("segment crashed", extra=d.ctx)
        d.fail(f"{where}: {exc.__class__.__name__}: {exc}")
        raise
    finally:
        claim.release(delivery_id)
        d.close()
