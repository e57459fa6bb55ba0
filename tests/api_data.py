"""Test data for the API tests, written with plain SQL (independent of the loader).

Every helper takes a psycopg2 connection in autocommit mode (the `db_conn` fixture).
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from psycopg2 import sql
from psycopg2.extras import execute_values

NOW = datetime.now(timezone.utc).replace(microsecond=0)
# the columns of migration 0001 (the migration tests insert with them at 0001); volume_usd (0007) is left NULL
QUOTE_COLUMNS = ("price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd",
                 "circulating_supply", "total_supply", "max_supply", "market_cap_rank", "change_24h_pct")


def asset(conn, slug: str, symbol: str, name: str, identifiers: dict | None = None) -> int:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO assets (slug, symbol, name) VALUES (%s, %s, %s) RETURNING id", (slug, symbol, name))
        asset_id = cur.fetchone()[0]
        for source, external_id in (identifiers or {}).items():
            cur.execute("INSERT INTO asset_identifiers (source, external_id, asset_id, symbol, name) "
                        "VALUES (%s, %s, %s, %s, %s)", (source, external_id, asset_id, symbol, name))
    return asset_id


def run(conn, source: str, status: str = "succeeded", *, fetched: int = 0, loaded: int = 0, rejected: int = 0,
        pages: int = 1, duration: float | None = 1.0, stats: dict | None = None, error: str | None = None,
        trigger: str = "schedule", created_at: datetime | None = None, finished_at: datetime | None = None) -> str:
    run_id = str(uuid.uuid4())
    created = created_at or NOW - timedelta(minutes=1)
    terminal = status in ("succeeded", "partial", "failed")
    finished = finished_at or (created + timedelta(seconds=duration or 0) if terminal else None)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO etl_runs (id, source, trigger, status, created_at, started_at, finished_at, "
            "duration_seconds, fetched, loaded, rejected, pages, deliveries, error, stats) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, %s, %s)",
            (run_id, source, trigger, status, created, created if status != "queued" else None, finished,
             duration if terminal else None, fetched, loaded, rejected, pages, error, json.dumps(stats or {})))
    return run_id


def latest(conn, asset_id: int, source: str, price, run_id: str, *, market_cap=None, volume=None,
           observed_at: datetime | None = None, **values) -> None:
    row = _values(price, market_cap, volume, values)
    observed = observed_at or NOW - timedelta(minutes=2)
    with conn.cursor() as cur:
        cur.execute(_insert("latest_quotes"), (asset_id, source, *row, observed, observed + timedelta(seconds=5), run_id))


def quote(conn, asset_id: int, source: str, price, run_id: str, observed_at: datetime, *, market_cap=None,
          volume=None, **values) -> None:
    row = _values(price, market_cap, volume, values)
    with conn.cursor() as cur:
        cur.execute(_insert("quotes"), (asset_id, source, *row, observed_at, observed_at + timedelta(seconds=5), run_id))


def rejected(conn, run_id: str, source: str, reason: str, errors: dict, record: dict | None = None) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO rejected_records (run_id, source, reason, errors, record) VALUES (%s, %s, %s, %s, %s)",
                    (run_id, source, reason, json.dumps(errors), json.dumps(record)))


def market(conn, n_assets: int, sources=("coingecko", "coinpaprika"), null_caps_every: int = 4) -> str:
    """`n_assets` assets quoted by every source; some market caps unknown and many ties, to stress the order."""
    run_id = run(conn, sources[0], loaded=n_assets)
    with conn.cursor() as cur:
        execute_values(cur, "INSERT INTO assets (slug, symbol, name) VALUES %s",
                       [(f"coin-{i}", f"C{i % 7}", f"Coin {i}") for i in range(n_assets)])
        cur.execute("SELECT id FROM assets WHERE slug LIKE 'coin-%%' ORDER BY id")
        ids = [r[0] for r in cur.fetchall()]
        rows = []
        for i, asset_id in enumerate(ids):
            for source in sources:
                cap = None if i % null_caps_every == 0 else Decimal(1000 * (i % 10))  # ties on purpose
                rows.append((asset_id, source, Decimal(i) + Decimal("0.5"), cap, NOW - timedelta(minutes=3),
                             NOW - timedelta(minutes=2), run_id, "h"))
        execute_values(cur, "INSERT INTO latest_quotes (asset_id, source, price_usd, market_cap_usd, observed_at, "
                            "fetched_at, run_id, payload_hash) VALUES %s", rows)
    return run_id


def _insert(table: str) -> sql.Composed:
    columns = ("asset_id", "source", *QUOTE_COLUMNS, "observed_at", "fetched_at", "run_id")
    return sql.SQL("INSERT INTO {} ({}, payload_hash) VALUES ({}, 'h')").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)))


def _values(price, market_cap, volume, values: dict) -> list:
    merged = {"price_usd": price, "market_cap_usd": market_cap, "volume_24h_usd": volume, **values}
    unknown = set(merged) - set(QUOTE_COLUMNS)
    if unknown:
        raise TypeError(f"unknown quote columns {unknown}")
    return [None if merged.get(c) is None else (merged[c] if isinstance(merged[c], int) and c == "market_cap_rank"
                                                else Decimal(str(merged[c]))) for c in QUOTE_COLUMNS]


@pytest.fixture
def app_with(test_env):
    """Build an app whose settings differ from the test ones (`app_with(REDIS_URL=...)`); its pool is
    disposed afterwards so that extra apps do not pile up idle connections."""
    from crypto_app import create_app
    from crypto_app.config import load_settings
    from crypto_app.extensions import db

    built = []

    def build(**env):
        application = create_app({"TESTING": True}, settings=load_settings({**test_env, **env}))
        built.append(application)
        return application

    yield build
    for application in built:
        with application.app_context():
            db.engine.dispose()
