"""Helpers for pipeline tests: settings pointing at the fake upstream, inline runs, table snapshots."""
from __future__ import annotations

import contextlib

import uuid

import psycopg2

from crypto_app.config import load_settings
from crypto_app.coordination import redis_client
from crypto_app.pipeline import lifecycle
from crypto_app.pipeline.ingest import IngestionRun


def settings_for(test_env: dict, **overrides):
    return load_settings({**test_env, **{k: str(v) for k, v in overrides.items()}})


def run_inline(settings, source: str, options: dict | None = None, max_sleep: float = 60.0):
    """Create a run row and execute it in this process; return (run_id, outcome)."""
    run_id = str(uuid.uuid4())
    conn = psycopg2.connect(settings.libpq_url)
    identity = psycopg2.connect(settings.libpq_url)
    identity.autocommit = True
    try:
        lifecycle.create_run(conn, run_id, source, "cli")
        lifecycle.start_delivery(conn, run_id, source)
        outcome = IngestionRun(run_id, source, settings, conn, identity, redis=redis_client(settings.redis_url),
                               max_sleep=max_sleep, options=options).execute()
        lifecycle.finish_run(conn, run_id, outcome.status, outcome=outcome)
        return run_id, outcome
    finally:
        conn.close()
        identity.close()


def table(db_conn, query: str, params=()) -> list[tuple]:
    with db_conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def quotes_snapshot(db_conn) -> list[tuple]:
    """Every stored quote's identity and values (not run ids or fetch times), sorted."""
    return table(db_conn, "SELECT a.slug, q.source, q.observed_at, q.price_usd, q.market_cap_usd, q.volume_24h_usd, q.volume_usd "
                          "FROM quotes q JOIN assets a ON a.id = q.asset_id ORDER BY 1, 2, 3")


@contextlib.contextmanager
def scratch_database(test_env: dict, suffix: str):
    """A database of its own beside the test database, dropped afterwards: yields (url, flask_db), where
    flask_db(*args) runs `flask db <args>` against it and returns its output."""
    import subprocess
    import sys
    from pathlib import Path
    from urllib.parse import urlsplit

    name = urlsplit(test_env["DATABASE_URL"]).path.lstrip("/") + suffix
    admin = psycopg2.connect(urlsplit(test_env["DATABASE_URL"])._replace(path="/postgres").geturl())
    admin.autocommit = True
    url = urlsplit(test_env["DATABASE_URL"])._replace(path=f"/{name}").geturl()

    def flask_db(*args):
        out = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi:app", "db", *args],
                             cwd=Path(__file__).resolve().parents[1], env={**test_env, "DATABASE_URL": url},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout + out.stderr

    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url, flask_db
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
