"""Compaction of complete days: a daily partition of `quotes` rewritten in (asset, dataset, time) order.

Rows arrive in time order, every coin of a batch together: one asset's 288 rows of a day from one source
lie on ~288 different heap pages among the day's ~864,000 rows. A history query reads every raw row of
its asset for the window (README "Storage": a year of `1d` candles merges the daily rollups with the raw
rows of the last RETENTION_RAW_DAYS), so at 30 days it read ~17,000 heap pages for 17,280 rows: ~125 ms
of SQL, 6-9 uncached requests a second in the 90-day soak. Once a day is complete its partition is copied
in (asset_id, dataset_id, observed_at) order into a new table, which takes the old one's place; the same
rows then lie on a few pages per asset.

One transaction per partition, so a kill anywhere leaves either the old partition or the new one, never
a mix: the old partition is locked SHARE first (writers of that day wait, readers go on), its rows are
copied sorted into a table made LIKE quotes with its indexes and foreign keys and a CHECK of the bounds
(so that ATTACH scans nothing), then the old one is detached, the new one attached under the old name and
the old one dropped: the brief ACCESS EXCLUSIVE lock on `quotes` of a DETACH, under LOCK_TIMEOUT. A writer
that waited on the old partition makes that last step a deadlock, which PostgreSQL resolves by aborting
the compaction (the process that detects it), not the writer: the day is compacted at a later run. A
compacted partition says so in its comment (`COMMENTED`), so it is rewritten once. Rows that arrive for
the day afterwards (late observations) are appended unsorted, as anywhere.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from psycopg2 import errors, sql

from . import partitions

log = logging.getLogger(__name__)

COMPLETE_AFTER = timedelta(hours=2)   # a day is compacted once it ended this long ago
PER_RUN = 4                           # partitions per maintenance run (a month's backlog takes a day of runs)
COMMENTED = "cryptoflow: compacted"


def _uncompacted(conn) -> set[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'quotes'::regclass AND left(c.relname, 8) = 'quotes_d' "
                    "AND NOT starts_with(coalesce(obj_description(c.oid, 'pg_class'), ''), %s)", (COMMENTED,))
        return {name for (name,) in cur.fetchall()}


def due(conn, now: datetime, not_before: datetime) -> list[partitions.Partition]:
    """Daily partitions complete by `now` (ended COMPLETE_AFTER ago), not compacted yet, that end after
    `not_before` (older ones are about to be dropped), newest first."""
    todo = _uncompacted(conn)
    parts = partitions.partitions(conn)
    conn.commit()
    return sorted((p for p in parts if p.name in todo and not_before < p.hi <= now - COMPLETE_AFTER),
                  key=lambda p: p.lo, reverse=True)


def compact(conn, part: partitions.Partition, now: datetime, record=None) -> int:
    """Rewrite `part` sorted by (asset_id, dataset_id, observed_at), in one transaction (with `record(cur,
    counts)`, the run's progress); returns its rows."""
    old, new = sql.Identifier(part.name), sql.Identifier(part.name + "_c")
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(partitions.LOCK_TIMEOUT)))
        cur.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(old))
        cur.execute(sql.SQL("CREATE TABLE {} (LIKE quotes INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                            "INCLUDING INDEXES)").format(new))
        cur.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} ORDER BY asset_id, dataset_id, observed_at")
                    .format(new, old))
        rows = cur.rowcount
        cur.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
                    "AND contype = 'f'", (part.name,))
        for name, definition in cur.fetchall():
            cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(new, sql.Identifier(name))
                        + sql.SQL(definition))
        bounds = sql.Identifier(part.name + "_bounds")
        cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (observed_at IS NOT NULL AND observed_at >= %s "
                            "AND observed_at < %s)").format(new, bounds), (part.lo, part.hi))
        cur.execute(sql.SQL("ANALYZE {}").format(new))
        cur.execute(sql.SQL("ALTER TABLE quotes DETACH PARTITION {}").format(old))
        cur.execute(sql.SQL("ALTER TABLE quotes ATTACH PARTITION {} FOR VALUES FROM (%s) TO (%s)").format(new),
                    (part.lo, part.hi))
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(new, bounds))
        cur.execute(sql.SQL("DROP TABLE {}").format(old))
        cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, old))
        cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
            old, sql.Literal(f"{COMMENTED} at {now.isoformat()} ({rows} rows)")))
        if record:
            record(cur, {"partitions_compacted": 1, "quotes_compacted": rows})
    conn.commit()
    return rows


def compact_days(conn, now: datetime, not_before: datetime, should_stop=None, limit: int = PER_RUN,
                 record=None) -> dict:
    """Compact up to `limit` due days; a day whose locks are busy is left for a later run."""
    counts = {"partitions_compacted": 0, "quotes_compacted": 0, "compactions_busy": 0}
    for part in due(conn, now, not_before)[:limit]:
        if should_stop and should_stop():
            raise InterruptedError(should_stop())
        try:
            counts["quotes_compacted"] += compact(conn, part, now, record)
            counts["partitions_compacted"] += 1
        except (errors.LockNotAvailable, errors.DeadlockDetected):
            conn.rollback()
            counts["compactions_busy"] += 1
            log.warning("partition busy, compaction left for a later maintenance run", extra={"partition": part.name})
    return counts
