"""Celery tasks: thin callers of the run driver (crypto_app/pipeline/driver.py).

Why retries are explicit (self.retry) rather than `autoretry_for`: a wait for a rate-limit token is not
a failure and must not spend the bounded retry budget, and an upstream's Retry-After must win over
the computed backoff; the driver decides, the task only re-queues with the countdown it is given.

What Flower (and the result backend) show is the truth: a run that ended failed raises RunFailed with
the run's error after it was recorded (FAILURE), a retry is a RETRY, and each task is named after its
source through Celery's `shadow` name ("ingest coingecko", "ingest csv segment big.csv@1048576").
"""
from __future__ import annotations

import psycopg2

from crypto_app.broker import send_task
from crypto_app.celery_settings import BACKFILL_TASK, INGEST_TASK, REAP_TASK, SEGMENT_TASK, display_name
from crypto_app.coordination import redis_client
from crypto_app.pipeline.driver import Attempt, RunFailed, SegmentAttempt, deliver, deliver_segment
from crypto_app.pipeline.backfill_reaper import requeue_stalled_windows
from crypto_app.pipeline.reaper import reap_stale_runs

from . import celery_app, flask_app

RETRY_CAP = 100_000  # Celery's own counter also counts rate-limit waits; our budgets are below


def _shadow(task_name):
    def shadow_name(task, args, kwargs, options):
        return display_name(task_name, kwargs or {})
    return shadow_name


def _conclude(task, step):
    if step.retry_in is not None:
        raise task.retry(kwargs=step.attempt.kwargs(), countdown=step.retry_in, exc=step.exc)
    if step.status == "failed":
        raise RunFailed(f"run {step.run_id} failed: {step.error}")
    return step.summary


@celery_app.task(bind=True, name=INGEST_TASK, max_retries=RETRY_CAP, throws=(RunFailed,),
                 shadow_name=_shadow(INGEST_TASK))
def ingest_source(self, source: str, run_id: str | None = None, trigger: str = "schedule",
                  options: dict | None = None, failures: int = 0, db_retries: int = 0,
                  outage_since: float | None = None):
    # A scheduled task's run id is its task id: a redelivered message (worker lost) or a retry carries
    # the same id, finds its run and its lock, and resumes.
    attempt = Attempt(source, run_id or self.request.id, trigger, options or {}, failures, db_retries, outage_since)

    def queue_segment(kwargs):
        self.app.send_task(SEGMENT_TASK, kwargs=kwargs, shadow=display_name(SEGMENT_TASK, kwargs))

    return _conclude(self, deliver(flask_app.config["SETTINGS"], attempt, queue_segment=queue_segment))


@celery_app.task(bind=True, name=SEGMENT_TASK, max_retries=RETRY_CAP, throws=(RunFailed,),
                 shadow_name=_shadow(SEGMENT_TASK))
def ingest_csv_segment(self, run_id: str, rel: str, start: int, end: int, failures: int = 0,
                       outage_since: float | None = None):
    """Load one segment of a large CSV file (see crypto_app/pipeline/segments.py)."""
    attempt = SegmentAttempt(run_id, rel, start, end, failures, outage_since)
    return _conclude(self, deliver_segment(flask_app.config["SETTINGS"], attempt, self.request.id))


@celery_app.task(name=REAP_TASK, ignore_result=True)
def reap_stale_runs_task():
    settings = flask_app.config["SETTINGS"]
    conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    try:
        reaped = reap_stale_runs(conn, redis_client(settings.redis_url), settings.run_stale_after_seconds)
        requeue_stalled_windows(conn, lambda window_id: send_task(
            BACKFILL_TASK, {"window_id": window_id}, f"backfill-window-{window_id}"), settings.backfill_stall_seconds)
        return reaped
    finally:
        conn.close()
