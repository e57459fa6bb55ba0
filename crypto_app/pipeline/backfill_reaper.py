"""Backfills whose queue messages were lost (Redis flushed, a broker that dropped them): re-queue or fail.

A running backfill none of whose windows changed state (`touched_at`: claim, retry, done, failed) for
BACKFILL_STALL_SECONDS is stalled: while its tasks are alive, some window moves at least once per
rate-limit period. Its pending and running windows are re-queued (a duplicate delivery is harmless:
the claim and the window's `done` state make a second delivery do nothing); a window re-queued
MAX_REQUEUES times without finishing is `failed` with the reason, so the backfill always ends.
Called by the reaper task (beat, every minute) next to pipeline/reaper.py.
"""
from __future__ import annotations

import logging

from .backfill_window import finish_backfill_if_complete

log = logging.getLogger(__name__)
MAX_REQUEUES = 3

_STALLED = """
SELECT w.id, w.backfill_id::text, w.requeues FROM backfill_windows w JOIN backfills b ON b.id = w.backfill_id
WHERE b.status = 'running' AND w.status IN ('pending', 'running')
  AND NOT EXISTS (SELECT 1 FROM backfill_windows t WHERE t.backfill_id = b.id
                  AND t.touched_at >= now() - make_interval(secs => %(stall)s))
ORDER BY w.backfill_id, w.starts_at DESC, w.id
FOR UPDATE OF w SKIP LOCKED
"""


def requeue_stalled_windows(conn, send, stall_seconds: int, max_requeues: int = MAX_REQUEUES) -> dict:
    """Re-queue (through `send(window_id)`) or fail the windows of stalled backfills; returns the ids."""
    with conn.cursor() as cur:
        cur.execute(_STALLED, {"stall": stall_seconds})
        stalled = cur.fetchall()
        again = [w for w, _b, n in stalled if n < max_requeues]
        given_up = [w for w, _b, n in stalled if n >= max_requeues]
        if again:
            cur.execute("UPDATE backfill_windows SET status = 'pending', requeues = requeues + 1, touched_at = now() "
                        "WHERE id = ANY(%s)", (again,))
        if given_up:
            cur.execute("UPDATE backfill_windows SET status = 'failed', finished_at = now(), touched_at = now(), "
                        "error = %s WHERE id = ANY(%s)",
                        (f"lost: re-queued {max_requeues} times after {stall_seconds}s without progress, never "
                         "finished (is a worker consuming the queue?)", given_up))
    conn.commit()
    sent = []
    for window_id in again:
        try:
            send(window_id)
        except Exception as exc:  # kombu raises several types for an unreachable broker; next pass tries again
            log.warning("stalled backfill window not re-queued", extra={"window_id": window_id, "error": str(exc)})
            break
        sent.append(window_id)
    for backfill_id in sorted({b for _w, b, _n in stalled}):
        finish_backfill_if_complete(conn, backfill_id)
    if stalled:
        log.warning("stalled backfill windows", extra={"requeued": sent, "failed": given_up,
                                                       "backfills": sorted({b for _w, b, _n in stalled})})
    return {"requeued": sent, "failed": given_up}
