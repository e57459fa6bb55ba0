"""Taking a source's lock from a holder that is dead (or told to go): for `flask etl run|import`.

A CLI run killed with SIGKILL leaves its lock for up to RUN_STALE_AFTER_SECONDS. The lock's liveness key
records the holder's host, pid and kind, so a CLI on the same host can tell for sure that a CLI holder's
process is gone and take over at once. Anything else (a worker's run, a holder on another host, a holder
that is only silent) is taken over only when asked (`--take-over`). Either way the old run is marked
failed as superseded, and if it is in fact alive it stops at its next batch (its committed batches stay;
the PostgreSQL guard in load.py refuses anything more from it).
"""
from __future__ import annotations

import psycopg2

from ..coordination import SourceLock
from . import lifecycle
from .runs import lock_ttl


def holder_is_dead(state: dict | None) -> bool:
    """True only when certain: a CLI holder on this host whose process no longer exists."""
    return bool(state) and state.get("kind") == "cli" and state.get("pid_alive") is False


def take_over(settings, redis, source: str, run_id: str, forced: bool) -> dict | None:
    """Give `source`'s lock to `run_id` if its holder is dead, or whoever holds it when `forced`.

    Returns {"run_id": old holder, "reason": ...} when it took over, else None."""
    lock = SourceLock(redis, source)
    state = lock.state()
    if state is None or not (forced or holder_is_dead(state)):
        return None
    if holder_is_dead(state):
        reason = f"its process {state['pid']} on {state['host']} is gone"
    elif state.get("silent"):
        reason = "taken over with --take-over; it had sent no heartbeat within its grace"
    else:
        reason = (f"taken over with --take-over; its last heartbeat was {state.get('heartbeat_age_seconds')}s "
                  f"ago from {state.get('host')} pid {state.get('pid')}")
    if not lock.take_over(state["run_id"], run_id, lock_ttl(settings)):
        return None                      # it changed hands meanwhile: the caller's normal path decides
    conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    try:
        lifecycle.finish_run(conn, state["run_id"], "failed",
                             error=f"superseded: lost its lock; CLI run {run_id} took {source} ({reason})")
    finally:
        conn.close()
    return {"run_id": state["run_id"], "reason": reason}


def busy_message(source: str, state: dict | None, holder: str | None) -> str:
    """Why a CLI run cannot start now, how long that lasts, and how to force it."""
    lines = [f"a {source} run is already going: {holder or (state or {}).get('run_id')}"]
    if state:
        if state.get("silent"):
            lines.append(f"its holder has sent no heartbeat within its grace (probably dead); the lock expires "
                         f"by itself in {state['ttl_seconds']:.0f}s")
        else:
            lines.append(f"it is alive: last heartbeat {state.get('heartbeat_age_seconds')}s ago from "
                         f"{state.get('host')} pid {state.get('pid')} ({state.get('kind')}); if it dies, the "
                         f"lock expires by itself within {state['ttl_seconds']:.0f}s")
    lines.append("--take-over takes the source now: that run is marked failed (superseded) and, if still "
                 "alive, stops at its next batch; what it committed is kept")
    return "\n".join(lines)
