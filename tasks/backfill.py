"""Celery task of one backfill window: a thin caller of crypto_app/pipeline/backfill_window.py.

Every window is its own task (id `backfill-window-<id>`), so any worker takes any window; acks_late and
reject-on-worker-lost re-queue a window whose worker died, and the window's state in PostgreSQL makes
the redelivery do exactly what is left.
"""
from __future__ import annotations

import psycopg2

from crypto_app.broker import send_task
from crypto_app.celery_settings import BACKFILL_TASK, KEEP_CURRENT_TASK
from crypto_app.pipeline.backfill_window import run_window
from crypto_app.pipeline.keep_current import keep_current

from . import celery_app, flask_app

RETRY_CAP = 100_000   # rate-limit waits re-queue too; the failure budget is TASK_MAX_RETRIES, in the pipeline


@celery_app.task(bind=True, name=BACKFILL_TASK, max_retries=RETRY_CAP,
                 shadow_name=lambda task, args, kwargs, options: f"backfill window {(kwargs or {}).get('window_id')}")
def backfill_window(self, window_id: int, failures: int = 0):
    step = run_window(flask_app.config["SETTINGS"], window_id, failures)
    if step.retry_in is not None:
        raise self.retry(kwargs={"window_id": window_id, "failures": step.failures}, countdown=step.retry_in)
    return {"window_id": window_id, "status": step.status, "error": step.error}


@celery_app.task(name=KEEP_CURRENT_TASK, ignore_result=True)
def keep_history_current(source: str):
    """Beat, every HISTORY_KEEP_CURRENT_SECONDS per history source: backfill tracked assets' new final days."""
    settings = flask_app.config["SETTINGS"]
    conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    try:
        return keep_current(conn, settings, source, lambda window_id: send_task(
            BACKFILL_TASK, {"window_id": window_id}, f"backfill-window-{window_id}"))
    finally:
        conn.close()
