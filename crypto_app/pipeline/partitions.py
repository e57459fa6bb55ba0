"""Time partitions of `quotes` (declarative, RANGE on observed_at; migrations 0005_storage, 0008).

Layout: daily partitions `quotes_dYYYYMMDD` (00:00 UTC to the next midnight), created DAYS_AHEAD ahead
by the maintenance task; databases migrated before 0008 also hold weekly partitions `quotes_wYYYYMMDD`
(Monday to Monday, from `weekly_from` on) up to where the daily ones begin, and expire the same way. Both
are "dated" partitions: day-aligned, from `quote_partitioning.weekly_from` (set by migration 0005, it
never moves) on. Older rows (CSV history, rows written before the migration) live in partitions per year
`quotes_yYYYY` that end at `weekly_from` at the latest; `quotes_default` catches a row no partition
covers (a backfill into an uncovered year, a far-future time) and the maintenance task moves such rows
into their partition.

Why daily: expired rows go a partition at a time (a dated partition whose end is older than
RETENTION_RAW_DAYS, holding only snapshot rows, is rolled up and dropped in one transaction;
maintenance.py), so the raw rows kept swing between RETENTION_RAW_DAYS and that plus one partition. With
weeks that was 30.8-36.8 days of rows (a 7-day sawtooth of ~1.3 GB at the default schedules: the 90-day
soak, README "Storage"); with days it is 30-31 days. A day is ~864,000 rows (~230 MB with indexes) at the
default schedules; a month of them is ~31 partitions plus DAYS_AHEAD empty ones, few enough for the
planner's pruning (PostgreSQL handles hundreds).

Locks: a partition is created detached (CREATE TABLE ... LIKE quotes) and attached with ATTACH PARTITION
(SHARE UPDATE EXCLUSIVE on `quotes`: reads and writes go on); dropping takes a brief ACCESS EXCLUSIVE
on `quotes`. Every such statement runs under LOCK_TIMEOUT, so maintenance gives up (and tries again at
its next run) rather than queue behind a long read and stall the writers queued behind it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from psycopg2 import sql

DAYS_AHEAD = 14
LOCK_TIMEOUT = "5s"
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    lo: datetime
    hi: datetime

    @property
    def dated(self) -> bool:
        """A daily or (before migration 0008) weekly partition: expired whole once past the retention."""
        return self.name.startswith(("quotes_d", "quotes_w"))


def week_start(t: datetime) -> datetime:
    t = t.astimezone(timezone.utc)
    return (t - timedelta(days=t.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)


def day_start(t: datetime) -> datetime:
    return t.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def partitions(conn) -> list[Partition]:
    """The bounded partitions of quotes, oldest first (the default partition is not listed)."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL timezone = 'UTC'")
        cur.execute("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'quotes'::regclass")
        rows = cur.fetchall()
    out = []
    for name, bound in rows:
        m = _BOUND.search(bound or "")
        if m:
            out.append(Partition(name, _ts(m.group(1)), _ts(m.group(2))))
    return sorted(out, key=lambda p: p.lo)


def weekly_from(conn) -> datetime:
    """Where dated partitions start (quote_partitioning, set by migration 0005; it never moves)."""
    with conn.cursor() as cur:
        cur.execute("SELECT weekly_from FROM quote_partitioning")
        return cur.fetchone()[0]


def _create(cur, name: str, lo: datetime, hi: datetime) -> None:
    """Create partition `name` for [lo, hi), moving any row of that range out of the default partition,
    in the caller's transaction."""
    ident = sql.Identifier(name)
    cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
    cur.execute(sql.SQL("CREATE TABLE {} (LIKE quotes INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(ident))
    cur.execute("LOCK TABLE quotes_default IN SHARE ROW EXCLUSIVE MODE")
    cur.execute(sql.SQL("WITH moved AS (DELETE FROM quotes_default WHERE observed_at >= %s AND observed_at < %s "
                        "RETURNING *) INSERT INTO {} SELECT * FROM moved").format(ident), (lo, hi))
    cur.execute(sql.SQL("ALTER TABLE quotes ATTACH PARTITION {} FOR VALUES FROM (%s) TO (%s)").format(ident),
                (lo, hi))


def ensure_ahead(conn, now: datetime, days_ahead: int = DAYS_AHEAD) -> list[str]:
    """A daily partition for every day from now's to `days_ahead` days after it that no partition covers
    (every bound is at midnight UTC, so a day is covered whole or not at all); each in its own transaction."""
    created = []
    parts = partitions(conn)
    conn.commit()
    day = max(day_start(now), weekly_from(conn))
    conn.commit()
    while day <= day_start(now) + timedelta(days=days_ahead):
        if not any(p.lo <= day < p.hi for p in parts):
            name = f"quotes_d{day:%Y%m%d}"
            with conn.cursor() as cur:
                _create(cur, name, day, day + timedelta(days=1))
            conn.commit()
            created.append(name)
        day += timedelta(days=1)
    return created


def drain_default(conn) -> list[str]:
    """Move rows of the default partition into partitions of their own (a day from weekly_from on, else
    their year, cut at weekly_from and at the neighbouring partitions). Returns the partitions created."""
    created = []
    while True:
        parts = partitions(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT min(observed_at) FROM quotes_default")
            oldest = cur.fetchone()[0]
        conn.commit()
        if oldest is None:
            return created
        first_week = weekly_from(conn)
        conn.commit()
        if oldest >= first_week:
            lo = day_start(oldest)
            hi, name = lo + timedelta(days=1), f"quotes_d{lo:%Y%m%d}"
        else:
            lo = datetime(oldest.year, 1, 1, tzinfo=timezone.utc)
            hi = datetime(oldest.year + 1, 1, 1, tzinfo=timezone.utc)
            hi = min(hi, first_week)
            lo = max([lo] + [p.hi for p in parts if p.hi <= oldest])
            hi = min([hi] + [p.lo for p in parts if p.lo > oldest])
            name = f"quotes_y{lo:%Y%m%d}"
        with conn.cursor() as cur:
            _create(cur, name, lo, hi)
        conn.commit()
        created.append(name)


def sizes(conn) -> list[tuple[str, int, int]]:
    """(partition, bytes with indexes, estimated rows) of every partition of quotes."""
    with conn.cursor() as cur:
        cur.execute("SELECT c.relname, pg_total_relation_size(c.oid), greatest(c.reltuples, 0)::bigint "
                    "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'quotes'::regclass ORDER BY c.relname")
        return cur.fetchall()
