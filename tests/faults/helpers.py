"""Assertions shared by the faults tests: run rows, table snapshots to compare runs row for row."""
from __future__ import annotations

from pipeline_helpers import run_inline, settings_for, table

from crypto_app.models.quotes import QUOTE_VALUE_COLUMNS

TERMINAL = ("succeeded", "partial", "failed")
_VALUES = ", ".join(f"q.{c}" for c in QUOTE_VALUE_COLUMNS)


def runs(conn, source: str | None = None) -> list[dict]:
    where, params = ("WHERE source = %s", (source,)) if source else ("", ())
    with conn.cursor() as cur:
        cur.execute("SELECT id::text, source, trigger, status, fetched, loaded, rejected, pages, deliveries, error, "
                    f"stats, heartbeat_at, created_at FROM etl_runs {where} ORDER BY created_at", params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def finished(conn, source: str | None = None, count: int = 1):
    """A wait_for predicate: the finished runs once at least `count` have finished."""
    def check():
        done = [r for r in runs(conn, source) if r["status"] in TERMINAL]
        return done if len(done) >= count else None
    return check


def progress(conn, source: str | None = None) -> int:
    """Pages committed by the newest run (0 before it exists)."""
    rows = runs(conn, source)
    return rows[-1]["pages"] if rows else 0


def snapshot(conn) -> dict:
    """Everything a run leaves that must not depend on how it got there: quotes, latest quotes and
    identities, by asset slug (not ids, run ids or fetch times), sorted."""
    return {
        "quotes": table(conn, f"SELECT a.slug, a.symbol, a.name, q.source, {_VALUES}, q.observed_at FROM quotes q "
                              "JOIN assets a ON a.id = q.asset_id ORDER BY a.slug, q.source, q.observed_at"),
        "latest": table(conn, f"SELECT a.slug, q.source, {_VALUES}, q.observed_at FROM latest_quotes q "
                              "JOIN assets a ON a.id = q.asset_id ORDER BY a.slug, q.source"),
        "identifiers": table(conn, "SELECT i.source, i.external_id, a.slug FROM asset_identifiers i "
                                   "JOIN assets a ON a.id = i.asset_id ORDER BY 1, 2"),
    }


def truncate_all(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("TRUNCATE backfill_windows, backfills, rejected_records, raw_payloads, raw_pages, candles, quotes, latest_quotes, dataset_assets, datasets, "
                    "asset_identifiers, assets, "
                    "checkpoints, etl_runs, csv_row_hashes RESTART IDENTITY CASCADE")


def terminate_other_backends(conn) -> int:
    """pg_terminate_backend every other session of this database (the worker's); how many were killed."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        return cur.fetchone()[0]


def undisturbed_snapshot(test_env, fake_upstream, conn, sources=("coingecko",), **settings) -> dict:
    """Empty the test database, run the same crawl(s) inline with no fault injected, and snapshot it."""
    fake_upstream.latency = 0.0
    truncate_all(conn)
    for source in sources:
        _, outcome = run_inline(settings_for(test_env, **fake_upstream.env(**settings)), source)
        assert outcome.status == "succeeded", (source, outcome)
    return snapshot(conn)
