"""The data version, read per request on a connection of the calling thread; and the same connection for
the one statement of an uncached read (readcache.query).

The connection is psycopg2's own (no pool), in autocommit (no transaction around a read), created on first
use per thread, with the version lookup prepared once; a connection the server closed is replaced once.
"""
from __future__ import annotations

import logging
import threading
import time

import psycopg2

log = logging.getLogger("crypto_app.api.readcache")
RETRY_CONNECT_AFTER = 1.0  # seconds without trying to connect again after a failure

VERSION_SQL = "SELECT version FROM data_version WHERE id = 1"
# Prepared once per connection: parsing and planning would otherwise cost more than the lookup itself.
PREPARE_SQL = "PREPARE cryptoflow_data_version AS " + VERSION_SQL
EXECUTE_SQL = "EXECUTE cryptoflow_data_version"
# The API's statements take milliseconds, but some (history: datasets x a lateral range scan) are costed
# above jit_above_cost, and compiling them took 50-140 ms for a 17 ms query. No JIT for API sessions.
NO_JIT = "-c jit=off"


# --- the version --------------------------------------------------------------------------------

class VersionReader:
    """Reads data_version on a connection of the calling thread (autocommit, created on first use)."""

    def __init__(self, dsn: str | None):
        self.dsn = dsn
        self._local = threading.local()
        self._failed_at = 0.0
        self._lock = threading.Lock()
        self._connections: list = []

    def read(self) -> int | None:
        """The current version, or None when it cannot be read (then nothing is cached)."""
        if not self.dsn:
            return None
        for attempt in (1, 2):  # a connection the server closed since: once more on a new one
            conn = getattr(self._local, "conn", None)
            if conn is None or conn.closed:
                if time.monotonic() - self._failed_at < RETRY_CONNECT_AFTER:
                    return None
                conn = None
                try:
                    conn = psycopg2.connect(self.dsn, connect_timeout=5, application_name="cryptoflow-read-version",
                                            options=NO_JIT)
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute(PREPARE_SQL)
                except psycopg2.Error as exc:  # server unreachable, or no data_version (not migrated)
                    if conn is not None:
                        conn.close()
                    self._failed_at = time.monotonic()
                    log.warning("data version unavailable", extra={"error": exc.__class__.__name__})
                    return None
                self._local.conn = conn
                with self._lock:
                    self._connections = [c for c in self._connections if not c.closed] + [conn]
            try:
                with conn.cursor() as cur:
                    cur.execute(EXECUTE_SQL)
                    row = cur.fetchone()
                return row[0] if row else None
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    self._failed_at = time.monotonic()
                    return None
            except psycopg2.Error as exc:  # e.g. the table was dropped (migrated down)
                log.warning("data version unreadable", extra={"error": exc.__class__.__name__})
                conn.close()
                self._local.conn = None
                self._failed_at = time.monotonic()
                return None
        return None

    def query(self, sql: str, params: dict) -> list[dict] | None:
        """The rows (as dicts) of one read-only statement on the connection this thread just read the
        version on: no pool checkout, ping, BEGIN nor ROLLBACK around it. None when this thread has no
        such connection or the statement fails: the caller then runs it through SQLAlchemy, whose errors
        the API answers as it always did."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                names = [column.name for column in cur.description]
                return [dict(zip(names, row)) for row in cur.fetchall()]
        except psycopg2.Error as exc:
            log.info("read connection query failed; retried through SQLAlchemy",
                     extra={"error": exc.__class__.__name__})
            if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
                conn.close()
                self._local.conn = None
            return None

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
