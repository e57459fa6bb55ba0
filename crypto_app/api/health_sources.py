"""Per-source health: freshness against the schedule, and whether the source is blocked or failing.

One SQL statement reads, per enabled source: the last success, the newest run, the first run, the
last three finished runs, and the run that holds the source's Redis lock (its id comes from Redis).

- stale: older than twice the schedule (see freshness.py; a source that never succeeded is measured
  from its first run or from process start, so a fresh install is not stale before its schedule).
- blocked: the source's lock is held by a run that already ended, by a running run whose heartbeat
  stopped (its worker is gone: nothing will run the source until the lock expires or the reaper
  acts), or by an id that is no run at all. The reason names the run, the heartbeat age and when the
  lock expires.
- failing: its last FAILING_AFTER finished runs all failed; the reason quotes the latest error.
"""
from __future__ import annotations

import uuid

from sqlalchemy import bindparam, text

from ..extensions import db
from ..pipeline.heartbeat import heartbeat_interval
from ..pipeline.runs import lock_ttl
from .freshness import is_stale, source_age

FAILING_AFTER = 3
MISSED_BEATS = 4                  # a running run is dead after this many heartbeat intervals without one
ORPHAN_LOCK_SECONDS = 60          # a lock naming no recorded run for longer than this blocks the source
ERROR_EXCERPT = 300
TERMINAL = ("succeeded", "partial", "failed")

SOURCES_SQL = text(f"""
    SELECT s.source, ok.finished_at AS last_success, extract(epoch FROM now() - ok.finished_at) AS age,
           last.status AS last_status, last.created_at AS last_run_at, last.error AS last_error,
           extract(epoch FROM now() - first.created_at) AS first_age, recent.statuses AS recent_statuses,
           h.id::text AS holder_run, h.status AS holder_status,
           extract(epoch FROM now() - coalesce(h.heartbeat_at, h.started_at, h.created_at)) AS holder_silence
    FROM unnest(CAST(:sources AS text[]), CAST(:holders AS uuid[])) AS s(source, holder)
    LEFT JOIN LATERAL (SELECT finished_at FROM etl_runs r WHERE r.source = s.source
                       AND r.status IN ('succeeded', 'partial') ORDER BY r.created_at DESC LIMIT 1) ok ON true
    LEFT JOIN LATERAL (SELECT status, created_at, error FROM etl_runs r WHERE r.source = s.source
                       ORDER BY r.created_at DESC LIMIT 1) last ON true
    LEFT JOIN LATERAL (SELECT created_at FROM etl_runs r WHERE r.source = s.source
                       ORDER BY r.created_at LIMIT 1) first ON true
    LEFT JOIN LATERAL (SELECT array_agg(status) AS statuses FROM (
                           SELECT status FROM etl_runs r WHERE r.source = s.source
                           AND r.status IN ('succeeded', 'partial', 'failed')
                           ORDER BY r.created_at DESC LIMIT {FAILING_AFTER}) x) recent ON true
    LEFT JOIN etl_runs h ON h.id = s.holder
""").bindparams(bindparam("sources", type_=db.ARRAY(db.Text)), bindparam("holders", type_=db.ARRAY(db.Text)))


def _as_uuid(value: str | None) -> str | None:
    try:
        return str(uuid.UUID(value)) if value else None
    except ValueError:
        return None


def read_sources(settings, locks: dict[str, tuple[str | None, int | None]]) -> list:
    """Rows of SOURCES_SQL for the enabled sources; `locks` maps a source to (holder, lock ms left)."""
    sources = list(settings.enabled_sources)
    holders = [_as_uuid((locks.get(name) or (None, None))[0]) for name in sources]
    return db.session.execute(SOURCES_SQL, {"sources": sources, "holders": holders}).mappings().all()


def assess(settings, rows, locks: dict[str, tuple[str | None, int | None]]) -> tuple[dict, list[str]]:
    """({source: its health}, reasons the system is degraded because of its sources)."""
    sources, reasons = {}, []
    for row in rows:
        name = row["source"]
        schedule = settings.sources[name].schedule_seconds
        age, since = source_age(row["age"], row["first_age"])
        stale = is_stale(age, schedule)
        holder, ms_left = locks.get(name) or (None, None)
        blocked = _blocked(settings, name, row, holder, ms_left)
        recent = row["recent_statuses"] or []
        failing = len(recent) >= FAILING_AFTER and all(status == "failed" for status in recent)
        error = (row["last_error"] or "")[:ERROR_EXCERPT] or None
        sources[name] = {
            "last_success": row["last_success"], "age_seconds": round(age, 1), "age_since": since,
            "schedule_seconds": schedule, "stale": stale, "last_status": row["last_status"],
            "last_run_at": row["last_run_at"], "last_error": error if row["last_status"] == "failed" else None,
            "lock_holder": holder, "blocked": blocked,
            "failing": failing,
        }
        if stale:
            reasons.append(f"source {name} is stale")
        if blocked:
            reasons.append(f"source {name} is blocked: {blocked}")
        if failing:
            reasons.append(f"source {name} is failing: its last {FAILING_AFTER} runs failed"
                           + (f" (latest: {error})" if error else ""))
    return sources, reasons


def _blocked(settings, name: str, row, holder: str | None, ms_left: int | None) -> str | None:
    if not holder:
        return None
    expires = f"; the lock expires in {round(ms_left / 1000)} s" if ms_left and ms_left > 0 else ""
    ttl = lock_ttl(settings)
    if row["holder_run"] is None:
        held_for = ttl - (ms_left or 0) / 1000
        if held_for > ORPHAN_LOCK_SECONDS:
            return f"its lock is held by {holder!r}, which is not a recorded run{expires}"
        return None
    status = row["holder_status"]
    if status in TERMINAL:
        return f"its lock is held by run {holder}, which already ended ({status}){expires}"
    silence = row["holder_silence"]
    dead_after = MISSED_BEATS * heartbeat_interval(ttl)
    if status == "running" and silence is not None and float(silence) > dead_after:
        return (f"run {holder} holds its lock but its last heartbeat is {round(float(silence))} s old "
                f"(its worker is gone or stuck){expires}")
    return None
