"""The soak's database (soak.py): created and migrated, its partitions laid out for a system started at
the simulated start, the assets and datasets, the span recorded (table soak_run), the sizes measured."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
from psycopg2 import sql

from crypto_app.config import load_settings
from crypto_app.pipeline import partitions

ROOT = Path(__file__).resolve().parents[2]
PAPRIKA, GECKO, GECKO_PAGE = 2000, 1000, 250


def soak_url(url: str) -> str:
    """The soak's own database on DATABASE_URL's server: `<its name>_soak`."""
    parts = urlsplit(url)
    return parts._replace(path="/" + (parts.path.lstrip("/") or "cryptoflow") + "_soak").geturl()


def fresh_database(url: str) -> str:
    target = soak_url(url)
    name = urlsplit(target).path.lstrip("/")
    admin = psycopg2.connect(urlsplit(url)._replace(path="/postgres").geturl())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')   # noqa: S608 (our own name)
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi:app", "db", "upgrade"], cwd=ROOT, check=True,
                   env={**os.environ, "DATABASE_URL": target}, capture_output=True)
    return target


def span_start(days: int) -> datetime:
    """The simulated clock's start: `days` before now, on the hour (the fast mode writes and maintenance runs
    per simulated hour), so the span ends within the hour before the soak started."""
    return (datetime.now(timezone.utc) - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)


def partitions_from(conn, start: datetime) -> list[str]:
    """Replace the migration's dated partitions (around the real now; all empty) by those of a system first
    migrated at `start`: daily from start's day on, DAYS_AHEAD ahead. Returns the partitions created."""
    with conn.cursor() as cur:
        for part in partitions.partitions(conn):
            if part.dated:
                cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(part.name)))
        cur.execute("UPDATE quote_partitioning SET weekly_from = %s", (partitions.day_start(start),))
    conn.commit()
    return partitions.ensure_ahead(conn, start)


def storage_env(retention_days: int) -> dict:
    """The storage settings the soak runs with, as environment variables (the API's gunicorn gets the same)."""
    storage = load_settings({**os.environ, "RETENTION_RAW_DAYS": str(retention_days),
                             "RAW_PAYLOAD_RETENTION_DAYS": str(retention_days)}).storage
    return {"RETENTION_RAW_DAYS": str(storage.retention_raw_days),
            "RAW_PAYLOAD_RETENTION_DAYS": str(storage.raw_payload_retention_days),
            "CANDLE_HOURLY_RETENTION_DAYS": str(storage.candle_hourly_retention_days),
            "REJECTED_RETENTION_DAYS": str(storage.rejected_retention_days),
            "MAINTENANCE_CHUNK_HOURS": str(storage.maintenance_chunk_hours)}


def prepare(mode: str, days: int, retention_days: int):
    """A fresh soak database with the partitions of a system started `days` ago, the assets and datasets,
    and the span recorded in `soak_run`. Returns (connection, settings, world, start, report)."""
    start = span_start(days)
    env = storage_env(retention_days)
    url = fresh_database(os.environ["DATABASE_URL"])
    settings = load_settings({**os.environ, "DATABASE_URL": url, **env})
    conn = psycopg2.connect(settings.libpq_url)
    created = partitions_from(conn, start)
    world = setup(conn)
    report = {"mode": mode, "days": days, "retention_raw_days": retention_days, "start": start.isoformat(),
              "end": (start + timedelta(days=days)).isoformat(), "storage_env": env,
              "partitions_at_start": created, "per_day": []}
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE soak_run (id smallint PRIMARY KEY DEFAULT 1, params jsonb NOT NULL, "
                    "finished_at timestamptz)")
        cur.execute("INSERT INTO soak_run (params) VALUES (%s)",
                    (json.dumps({k: v for k, v in report.items() if k != "per_day"}),))
    conn.commit()
    return conn, settings, world, start, report


def finish(conn, report: dict, at: datetime) -> None:
    """The span is complete: the simulated clock stopped at `at`."""
    report["end"] = at.isoformat()
    with conn.cursor() as cur:
        cur.execute("UPDATE soak_run SET finished_at = now(), params = params || %s",
                    (json.dumps({"end": report["end"]}),))
    conn.commit()
    conn.close()


def setup(conn) -> dict:
    """Assets and identifiers for coin-1..coin-2000, the two API datasets; returns {source: dataset id}."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO assets (slug, symbol, name) SELECT 'coin-' || i, 'C' || i, 'Coin ' || i "
                    "FROM generate_series(1, %s) i", (PAPRIKA,))
        cur.execute("INSERT INTO datasets (name, source, endpoint) VALUES ('coinpaprika:tickers', 'coinpaprika', "
                    "'tickers'), ('coingecko:markets', 'coingecko', 'markets') RETURNING source, id")
        datasets = dict(cur.fetchall())
        cur.execute("SELECT slug, id FROM assets")
        ids = dict(cur.fetchall())
    conn.commit()
    return {"datasets": datasets, "assets": [ids[f"coin-{i}"] for i in range(1, PAPRIKA + 1)]}


def sizes(conn) -> dict:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        db_bytes = cur.fetchone()[0]
        out = {"database": db_bytes}
        for table in ("quotes", "candles", "raw_pages", "raw_payloads", "latest_quotes", "dataset_assets"):
            cur.execute("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                        "WHERE c.oid = %s::regclass OR c.oid IN (SELECT inhrelid FROM pg_inherits "
                        "WHERE inhparent = %s::regclass)", (table, table))
            out[table] = int(cur.fetchone()[0])
        cur.execute("SELECT (SELECT count(*) FROM quotes), (SELECT count(*) FROM candles WHERE resolution = '1h'), "
                    "(SELECT count(*) FROM candles WHERE resolution = '1d'), "
                    "(SELECT count(*) FROM raw_pages WHERE body IS NOT NULL)")
        out["rows"] = dict(zip(("quotes", "candles_1h", "candles_1d", "raw_pages_with_body"), cur.fetchone()))
    conn.commit()
    return out
