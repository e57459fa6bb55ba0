"""While a run works, a background thread keeps its lock alive and its heartbeat fresh.

The lock expires `ttl` seconds after the last renewal, so a run whose worker dies frees its source
by itself; the reaper fails a run whose heartbeat stopped (crypto_app.pipeline.reaper). Each beat also
refreshes the lock's liveness key (who holds it, where), which expires after `grace` seconds of silence:
that is how the CLI and /health tell a dead holder from a live one long before the lock expires.
`lost` turns true when the lock is no longer ours; the run reads it at its next batch boundary.
"""
from __future__ import annotations

import logging
import threading

import psycopg2
import redis as redis_lib

from ..coordination import SourceLock

log = logging.getLogger(__name__)


def heartbeat_interval(ttl: float) -> float:
    """Seconds between two beats of a run that holds its lock for `ttl` seconds (1 to 15)."""
    return max(1.0, min(15.0, ttl / 4))


class Heartbeat:
    def __init__(self, dsn: str, lock: SourceLock, run_id: str, ttl: float, interval: float | None = None,
                 extra_locks: tuple[tuple[SourceLock, str], ...] = (), kind: str = "worker"):
        self.dsn = dsn
        self.lock = lock
        self.extra_locks = extra_locks      # (lock, holder) pairs renewed alongside, e.g. a segment's claim
        self.run_id = str(run_id)
        self.ttl = ttl
        self.interval = interval or heartbeat_interval(ttl)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{self.run_id[:8]}", daemon=True)
        self.kind = kind
        self.grace = self.interval * 3 + 5
        self.lost = False

    def lost_reason(self) -> str | None:
        """For IngestionRun(should_stop=...): why the run must stop, or None."""
        if not self.lost:
            return None
        return f"superseded: lost its lock on {self.lock.source} (now held by {self.lost_to or 'nobody'})"

    def __enter__(self):
        self.lost_to = None
        try:
            self.lock.beat(self.run_id, self.grace, self.kind)
        except redis_lib.RedisError as exc:
            log.warning("lock liveness write failed", extra={"run_id": self.run_id, "error": str(exc)})
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                for lock, holder in self.extra_locks:
                    lock.renew(holder, self.ttl)
                if self.lock.renew(self.run_id, self.ttl):
                    self.lock.beat(self.run_id, self.grace, self.kind)
                else:
                    if not self.lost:
                        self.lost_to = self.lock.holder()
                        log.error("run lost its lock", extra={"run_id": self.run_id, "source": self.lock.source,
                                                              "holder": self.lost_to})
                    self.lost = True
            except redis_lib.RedisError as exc:
                log.warning("lock renewal failed", extra={"run_id": self.run_id, "error": str(exc)})
            try:
                with psycopg2.connect(self.dsn, connect_timeout=5) as conn, conn.cursor() as cur:
                    cur.execute("UPDATE etl_runs SET heartbeat_at = now() WHERE id = %s AND status = 'running'",
                                (self.run_id,))
                conn.close()
            except psycopg2.Error as exc:
                log.warning("heartbeat write failed", extra={"run_id": self.run_id, "error": str(exc)})
