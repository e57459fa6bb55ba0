"""Storage measurements (README "Storage"): what one run of each API source writes, at full size.

    python -m tests.benchmarks.storage measure        # DATABASE_URL / REDIS_URL from the environment

One real run of CoinPaprika (2,000 tickers: the free plan's whole list) and one of CoinGecko (1,000 coins:
4 pages of 250) against the local fake upstream (tests/fake_upstream.py), through the real pipeline
(IngestionRun: validation, identity, COPY + upsert, raw payload, run bookkeeping), on emptied data tables.
Bytes are pg_total_relation_size deltas (heap + TOAST + every index) of each table the runs write; then
each source runs a second time with the same upstream content (an unchanged page) to show what a repeat
costs. The projection assumes every 5-minute run moves every coin's observation time (the worst case).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from crypto_app.config import load_settings  # noqa: E402
from crypto_app.coordination import redis_client  # noqa: E402
from crypto_app.pipeline import lifecycle  # noqa: E402
from crypto_app.pipeline.ingest import IngestionRun  # noqa: E402

TABLES = ("quotes", "latest_quotes", "raw_payloads", "raw_pages", "rejected_records", "dataset_assets",
          "assets", "asset_identifiers", "etl_runs")
DATA_TABLES = ("rejected_records", "raw_payloads", "raw_pages", "candles", "quotes", "latest_quotes", "dataset_assets", "datasets",
               "asset_identifiers", "assets", "checkpoints", "etl_runs")
COINS = {"coinpaprika": 2000, "coingecko": 1000}
RUNS_PER_DAY = 24 * 3600 // 300


def existing(conn, names) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relname = ANY(%s)", (list(names),))
        return [r[0] for r in cur.fetchall()]


def sizes(conn) -> dict:
    """Bytes (heap + TOAST + indexes, partitions included) and rows of each table the runs write."""
    out = {}
    with conn.cursor() as cur:
        for name in existing(conn, TABLES):
            cur.execute("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                        "WHERE c.oid = %s::regclass OR c.oid IN (SELECT inhrelid FROM pg_inherits "
                        "WHERE inhparent = %s::regclass)", (name, name))
            size = int(cur.fetchone()[0])
            cur.execute(f"SELECT count(*) FROM {name}")  # noqa: S608 (names from the fixed list above)
            out[name] = {"bytes": size, "rows": cur.fetchone()[0]}
    return out


def delta(before: dict, after: dict) -> dict:
    return {t: {"bytes": after[t]["bytes"] - before[t]["bytes"], "rows": after[t]["rows"] - before[t]["rows"]}
            for t in after}


def run_once(settings, source: str) -> str:
    run_id = str(uuid.uuid4())
    conn = psycopg2.connect(settings.libpq_url)
    identity = psycopg2.connect(settings.libpq_url)
    identity.autocommit = True
    try:
        lifecycle.create_run(conn, run_id, source, "cli")
        lifecycle.start_delivery(conn, run_id, source)
        outcome = IngestionRun(run_id, source, settings, conn, identity, redis=redis_client(settings.redis_url),
                               max_sleep=5.0).execute()
        lifecycle.finish_run(conn, run_id, outcome.status, outcome=outcome)
        return outcome.status
    finally:
        conn.close()
        identity.close()


def measure(env: dict) -> dict:
    from fake_upstream import FakeUpstream

    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi:app", "db", "upgrade"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    fake = FakeUpstream(coins=2000).start()
    try:
        settings = load_settings({**env, **fake.env(COINGECKO_RATE_PER_MINUTE=6000, COINGECKO_RATE_BURST=10,
                                                     COINPAPRIKA_RATE_PER_MINUTE=6000, COINPAPRIKA_RATE_BURST=10)})
        conn = psycopg2.connect(settings.libpq_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("TRUNCATE {} RESTART IDENTITY CASCADE".format(", ".join(existing(conn, DATA_TABLES))))
        redis_client(settings.redis_url).flushdb()
        report = {}
        for label in ("first", "repeat"):
            for source in COINS:
                before = sizes(conn)
                status = run_once(settings, source)
                report[f"{source} {label}"] = {"status": status, "tables": delta(before, sizes(conn))}
        conn.close()
    finally:
        fake.stop()
    return report


def projection(report: dict) -> dict:
    """Per day and per year if every 5-minute run wrote what the first runs wrote (observations moved)."""
    per_run = {}
    for source in COINS:
        for table, d in report[f"{source} first"]["tables"].items():
            if table in ("quotes", "raw_payloads", "raw_pages", "rejected_records"):
                cur = per_run.setdefault(table, {"bytes": 0, "rows": 0})
                cur["bytes"] += d["bytes"]
                cur["rows"] += d["rows"]
    return {t: {"rows_per_day": v["rows"] * RUNS_PER_DAY, "bytes_per_day": v["bytes"] * RUNS_PER_DAY,
                "gb_per_year": round(v["bytes"] * RUNS_PER_DAY * 365 / 1e9, 1)} for t, v in per_run.items()}


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if not args or args[0] != "measure":
        print(__doc__)
        return 2
    report = measure(dict(os.environ))
    print(json.dumps({"runs": report, "projection": projection(report)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
