"""The worker's side of run bookkeeping (plain SQL on the worker's own connection)."""
from __future__ import annotations

from psycopg2.extras import Json

from .load import KEEP_QUALITY, source_lock_key

TERMINAL = ("succeeded", "partial", "failed")


def create_run(conn, run_id: str, source: str, trigger: str) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO etl_runs (id, source, trigger, status) VALUES (%s, %s, %s, 'queued') "
                    "ON CONFLICT (id) DO NOTHING", (run_id, source, trigger))
    conn.commit()


def run_status(conn, run_id: str) -> str | None:
    with conn.cursor() as cur:
        cur.execute("SELECT status FROM etl_runs WHERE id = %s", (run_id,))
        row = cur.fetchone()
    conn.commit()
    return row[0] if row else None


def run_flag(conn, run_id: str, flag: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT COALESCE((stats->>%s)::boolean, false) FROM etl_runs WHERE id = %s", (flag, run_id))
        row = cur.fetchone()
    conn.commit()
    return bool(row and row[0])


def start_delivery(conn, run_id: str, source: str) -> int:
    """Mark the run running for this delivery; return how many deliveries in a row died mid-way before.

    Whoever starts a delivery holds the source's Redis lock, so any other run of the source still marked
    running has lost its lock: it is failed as superseded here, under the source's advisory lock taken
    exclusively, so none of its batches can commit after this (see load.guard_run)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (source_lock_key(source),))
        cur.execute("UPDATE etl_runs SET status = 'failed', finished_at = now(), unfinished_deliveries = 0, "
                    "duration_seconds = EXTRACT(EPOCH FROM now() - COALESCE(started_at, created_at)), "
                    "error = 'superseded: lost its lock; run ' || %s || ' took ' || source "
                    "WHERE source = %s AND status = 'running' AND id <> %s",
                    (str(run_id), source, run_id))
        cur.execute("SELECT cursor FROM checkpoints WHERE source = %s", (source,))
        row = cur.fetchone()
        cur.execute("UPDATE etl_runs SET status = 'running', started_at = COALESCE(started_at, now()), "
                    "heartbeat_at = now(), deliveries = deliveries + 1, "
                    "unfinished_deliveries = unfinished_deliveries + 1, "
                    "checkpoint_before = COALESCE(checkpoint_before, %s) WHERE id = %s "
                    "RETURNING unfinished_deliveries - 1",
                    (Json(row[0] if row else {}), run_id))
        died_before = cur.fetchone()[0]
    conn.commit()
    return died_before


def postpone(conn, run_id: str, countdown: float, note: str) -> None:
    """The delivery ends cleanly and the run continues in `countdown` seconds (a retry)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE etl_runs SET unfinished_deliveries = 0, "
                    "heartbeat_at = now() + make_interval(secs => %s), "
                    "stats = jsonb_set(stats, '{last_wait}', to_jsonb(%s::text)) WHERE id = %s",
                    (countdown, note, run_id))
    conn.commit()


def record_outcome(conn, run_id: str, outcome, **flags) -> None:
    """Store what a coordinator learnt (stats, drift) while its segments are still loading."""
    with conn.cursor() as cur:
        cur.execute("UPDATE etl_runs SET stats = stats || (%s::jsonb - 'quality'), schema_drift = %s WHERE id = %s",
                    (Json({**outcome.stats, **flags}), Json(outcome.schema_drift) if outcome.schema_drift else None,
                     run_id))
    conn.commit()


def finish_run(conn, run_id: str, status: str, outcome=None, error: str | None = None) -> None:
    with conn.cursor() as cur:
        if outcome is not None:
            cur.execute("UPDATE etl_runs SET stats = (%s::jsonb - 'quality') || " + KEEP_QUALITY + ", "
                        "schema_drift = %s WHERE id = %s",
                        (Json(outcome.stats), Json(outcome.schema_drift) if outcome.schema_drift else None, run_id))
        cur.execute("UPDATE etl_runs SET status = %s, error = COALESCE(%s, error), finished_at = now(), "
                    "unfinished_deliveries = 0, "
                    "duration_seconds = EXTRACT(EPOCH FROM now() - COALESCE(started_at, created_at)) "
                    "WHERE id = %s AND status NOT IN ('succeeded', 'partial', 'failed')", (status, error, run_id))
    conn.commit()


def run_error(conn, run_id: str) -> str | None:
    with conn.cursor() as cur:
        cur.execute("SELECT error FROM etl_runs WHERE id = %s", (run_id,))
        row = cur.fetchone()
    conn.commit()
    return row[0] if row else None


def apply_pending_verdicts(conn, verdicts) -> list[str]:
    """Write the run failures decided while PostgreSQL was down (coordination.PendingVerdicts)."""
    applied = []
    for run_id, verdict in verdicts.all().items():
        finish_run(conn, run_id, "failed", error=verdict["error"])
        verdicts.done(run_id)
        applied.append(run_id)
    return applied
