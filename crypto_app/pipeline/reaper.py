"""Fails runs whose worker vanished, so the next run can take the source and resume its checkpoint."""
from __future__ import annotations

import logging

import redis as redis_lib

from ..coordination import PendingVerdicts, SourceLock
from .lifecycle import apply_pending_verdicts

log = logging.getLogger(__name__)


def reap_stale_runs(conn, redis, stale_after_seconds: int) -> list[tuple[str, str]]:
    """Mark failed every run that stopped beating (running) or was never picked up (queued).

    First, the failures decided while PostgreSQL was down (their honest error, not "worker lost")."""
    try:
        for run_id in apply_pending_verdicts(conn, PendingVerdicts(redis)):
            log.warning("run failure written after the database came back", extra={"run_id": run_id})
    except redis_lib.RedisError as exc:
        log.warning("pending run failures unreadable", extra={"error": str(exc)})
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE etl_runs SET status = 'failed', finished_at = now(), "
            "duration_seconds = EXTRACT(EPOCH FROM now() - COALESCE(started_at, created_at)), "
            "error = CASE WHEN status = 'running' THEN 'worker lost: no heartbeat since ' || heartbeat_at::text "
            "             ELSE 'never started: no worker took the task' END "
            "WHERE (status = 'running' AND heartbeat_at < now() - make_interval(secs => %s)) "
            "   OR (status = 'queued' AND created_at < now() - make_interval(secs => %s)) "
            "RETURNING id::text, source",
            (stale_after_seconds, stale_after_seconds * 4))
        reaped = cur.fetchall()
    conn.commit()
    for run_id, source in reaped:
        SourceLock(redis, source).release(run_id)
        log.warning("stale run failed", extra={"run_id": run_id, "source": source})
    return reaped
