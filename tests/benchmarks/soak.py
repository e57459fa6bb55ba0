"""Soak: the default schedules' load for simulated days, through the real load path, with maintenance.

    make soak ARGS="--days 12 --retention-days 3"
    make soak ARGS="--days 90 --retention-days 30 --fast --reads"     # then the read lines at that size
    make soak ARGS="--reads-only"                                      # the reads again, no new soak
    python -m tests.benchmarks.soak --help

Every simulated 5 minutes: CoinPaprika's 2,000 tickers (one batch, as its run stores them) and CoinGecko's
1,000 coins (4 batches of 250), each coin with a new price and observation time and the batch's raw JSON
page in real shape (tests/fake_upstream.py), written with crypto_app.pipeline.load.load_batch (COPY,
upsert, latest quotes, dataset stats, raw page, run counters). Every simulated hour the maintenance run
(crypto_app.pipeline.maintenance.maintain, with the simulated clock) creates partitions ahead, rolls up
and drops expired days, and applies the retentions.

The simulated clock runs from `--days` before the start of the soak (on the hour) to within the hour
before that start, so that afterwards the database looks to the API (whose windows end at the real now)
like a system that ran that many days (and then stopped ingesting while the soak ran). The migration
creates dated partitions around the real now; the soak replaces them (the tables are still empty) by
the layout of a system first migrated at the simulated start: daily partitions from the start's day
(`quote_partitioning.weekly_from`), DAYS_AHEAD ahead, and from there the maintenance run creates the
next ones as the clock moves, as in production.

It runs in its own database (`<DATABASE_URL's name>_soak`, dropped and migrated first) and writes
bench-results/soak-<time>.json: per simulated day the rows and bytes written, the database size,
the time spent loading and in maintenance. RETENTION_RAW_DAYS and RAW_PAYLOAD_RETENTION_DAYS are
--retention-days (short, so that a short span reaches the steady state; 30 is the default of both);
the other storage settings are the environment's. The soak records its span and settings in the table
`soak_run` of that database, which --reads-only reads back.

--reads: afterwards, the read lines of `make bench` at the soak's size, against gunicorn started on the
soak database with the soak's storage settings (soak_reads.py); --reads-only measures them again on the
database of the last soak, without simulating anything.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import uuid
import warnings
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from crypto_app.pipeline import lifecycle  # noqa: E402
from crypto_app.pipeline.load import ROW_COLUMNS, STORED_COLUMNS, LoadBatch, load_batch  # noqa: E402
from crypto_app.pipeline.maintenance import maintain  # noqa: E402
from fake_upstream import gecko_coin, paprika_ticker  # noqa: E402
from tests.benchmarks.soak_db import GECKO, GECKO_PAGE, PAPRIKA, finish, prepare, sizes, soak_url  # noqa: E402

TICK = timedelta(minutes=5)


def batches(world: dict, templates: dict, at: datetime, tick: int, run_ids: dict):
    """The tick's batches: prices move a little every tick; bodies in the upstream's shape."""
    def price(i: int) -> Decimal:
        return (Decimal(1000) / i * (1 + Decimal((tick * 7 + i * 13) % 101 - 50) / 1000)).quantize(Decimal("1e-8"))

    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    body, rows = [], []
    for i in range(1, PAPRIKA + 1):
        p = price(i)
        rec = templates["paprika"][i - 1]
        rec["last_updated"] = stamp
        rec["quotes"]["USD"]["price"] = float(p)
        body.append(copy.copy(rec))
        rows.append({"asset_id": world["assets"][i - 1], "price_usd": p, "market_cap_usd": p * 10**9 // i,
                     "volume_24h_usd": p * 10**7, "market_cap_rank": i, "observed_at": at})
    yield "coinpaprika", rows, body, {"path": "/v1/tickers"}, run_ids["coinpaprika"]
    for page in range(GECKO // GECKO_PAGE):
        body, rows = [], []
        for i in range(page * GECKO_PAGE + 1, (page + 1) * GECKO_PAGE + 1):
            p = price(i)
            rec = templates["gecko"][i - 1]
            rec["last_updated"], rec["current_price"] = stamp, float(p)
            body.append(copy.copy(rec))
            rows.append({"asset_id": world["assets"][i - 1], "price_usd": p, "high_usd": p * Decimal("1.02"),
                         "low_usd": p * Decimal("0.97"), "market_cap_usd": p * 10**9 // i,
                         "volume_24h_usd": p * 10**7, "market_cap_rank": i, "observed_at": at})
        yield "coingecko", rows, body, {"page": page + 1}, run_ids["coingecko"]


def run(days: int, retention_days: int) -> dict:
    conn, settings, world, start, report = prepare("load_batch", days, retention_days)
    templates = {"paprika": [paprika_ticker(i) for i in range(1, PAPRIKA + 1)],
                 "gecko": [gecko_coin(i) for i in range(1, GECKO + 1)]}
    at, tick = start, 0
    for day in range(days):
        load_s = maint_s = 0.0
        rows_written = 0
        day_runs = {}
        for hour in range(24):
            run_ids = {}
            for source in ("coinpaprika", "coingecko"):
                run_ids[source] = str(uuid.uuid4())
                lifecycle.create_run(conn, run_ids[source], source, "schedule")
            for _ in range(12):
                t0 = time.perf_counter()
                for source, rows, body, locator, run_id in batches(world, templates, at, tick, run_ids):
                    digest = f"{source}:{at.isoformat()}:{locator}"
                    result = load_batch(conn, LoadBatch(
                        run_id=run_id, source=source, rows=rows, content_hash=digest, locator=locator,
                        fetched_at=at, dataset_id=world["datasets"][source], raw_body=body, record_count=len(rows)))
                    rows_written += result.inserted
                load_s += time.perf_counter() - t0
                at += TICK
                tick += 1
            for run_id in run_ids.values():
                lifecycle.finish_run(conn, run_id, "succeeded")
            maint_s += maintenance_tick(conn, settings, at, day_runs)   # hourly, on the simulated clock
        entry = {"day": day + 1, "rows_written": rows_written, "load_seconds": round(load_s, 1),
                 "maintenance_seconds": round(maint_s, 1), "maintenance": day_runs, "sizes": sizes(conn)}
        report["per_day"].append(entry)
        print(json.dumps(entry), flush=True)
    finish(conn, report, at)
    return report


FAST_QUOTES = """
INSERT INTO quotes (asset_id, source, dataset_id, price_usd, high_usd, low_usd, market_cap_usd, volume_24h_usd,
                    market_cap_rank, observed_at, fetched_at, run_id, payload_hash)
SELECT a.id, s.source, s.dataset_id, x.p, CASE WHEN s.ohlc THEN x.p * 1.02 END, CASE WHEN s.ohlc THEN x.p * 0.97 END,
       round(x.p * 1000000000 / a.i), round(x.p * 10000000), a.i, t, t, %(run)s, s.source || ':' || t::text
FROM generate_series(%(since)s::timestamptz, %(until)s::timestamptz - interval '1 second', interval '5 minutes') t
CROSS JOIN (VALUES ('coinpaprika', %(paprika)s, 2000, false), ('coingecko', %(gecko)s, 1000, true))
    AS s(source, dataset_id, n, ohlc)
JOIN soak_assets a ON a.i <= s.n
CROSS JOIN LATERAL (SELECT round((1000.0 / a.i * (0.95 + random() * 0.1))::numeric, 8) AS p) x
"""
FAST_PAGES = """
WITH pages AS (
    INSERT INTO raw_pages (content_hash, source, record_count, body, first_seen_at, last_seen_at)
    SELECT b.source || ':' || b.page || ':' || t::text, b.source, b.records,
           jsonb_set(b.body, '{0,last_updated}', to_jsonb(t::text)), t, t
    FROM generate_series(%(since)s::timestamptz, %(until)s::timestamptz - interval '1 second',
                         interval '5 minutes') t CROSS JOIN soak_bodies b
    RETURNING content_hash, source, record_count, first_seen_at
)
INSERT INTO raw_payloads (run_id, source, locator, content_hash, fetched_at, record_count)
SELECT %(run)s, source, '{}'::jsonb, content_hash, first_seen_at, record_count FROM pages
"""
# the hour's last tick (every coin has a row at every tick) into latest_quotes, as load_batch upserts each tick
FAST_LATEST = f"""
INSERT INTO latest_quotes (source, dataset_id, {", ".join(ROW_COLUMNS)})
SELECT source, dataset_id, {", ".join(ROW_COLUMNS)} FROM quotes
WHERE observed_at = %(until)s::timestamptz - interval '5 minutes'
ON CONFLICT (asset_id, dataset_id) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in STORED_COLUMNS + ("observed_at", "fetched_at", "run_id", "payload_hash"))}
"""


def maintenance_tick(conn, settings, at: datetime, day_runs: dict) -> float:
    """The hourly maintenance run at simulated time `at`, recorded as beat records it; adds its counts to
    `day_runs` and returns its seconds."""
    run_id = str(uuid.uuid4())
    lifecycle.create_run(conn, run_id, "maintenance", "schedule")
    t0 = time.perf_counter()
    counts = maintain(conn, run_id, settings.storage, now=at, dsn=settings.libpq_url)
    seconds = time.perf_counter() - t0
    lifecycle.finish_run(conn, run_id, "succeeded")
    for k, v in counts.items():
        if isinstance(v, int):
            day_runs[k] = day_runs.get(k, 0) + v
    return seconds


def run_fast(days: int, retention_days: int) -> dict:
    """--fast: the same rows (3,000 every 5 minutes) and raw pages (one real-shaped body per page, its
    time changed) written set-based per simulated hour instead of through load_batch, so that weeks of
    data fit in minutes, and latest_quotes upserted once per simulated hour (load_batch: every tick);
    maintenance runs hourly on the simulated clock exactly as in the real mode."""
    conn, settings, world, start, report = prepare("fast", days, retention_days)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE soak_assets AS SELECT a.id, substr(a.slug, 6)::int AS i FROM assets a")
        cur.execute("CREATE TABLE soak_bodies (source text, page int, records int, body jsonb)")
        paprika = [paprika_ticker(i) for i in range(1, PAPRIKA + 1)]
        gecko = [gecko_coin(i) for i in range(1, GECKO + 1)]
        cur.execute("INSERT INTO soak_bodies VALUES ('coinpaprika', 1, %s, %s)", (PAPRIKA, json.dumps(paprika)))
        for page in range(GECKO // GECKO_PAGE):
            cur.execute("INSERT INTO soak_bodies VALUES ('coingecko', %s, %s, %s)",
                        (page + 1, GECKO_PAGE, json.dumps(gecko[page * GECKO_PAGE:(page + 1) * GECKO_PAGE])))
        cur.execute("INSERT INTO dataset_assets (dataset_id, asset_id, rows) SELECT d.id, a.id, 0 FROM soak_assets a "
                    "JOIN datasets d ON a.i <= CASE d.source WHEN 'coinpaprika' THEN 2000 ELSE 1000 END")
    conn.commit()
    at = start
    for day in range(days):
        load_s = maint_s = 0.0
        day_runs = {}
        for hour in range(24):
            run_id = str(uuid.uuid4())
            lifecycle.create_run(conn, run_id, "coinpaprika", "schedule")
            t0 = time.perf_counter()
            params = {"since": at, "until": at + timedelta(hours=1), "run": run_id,
                      "paprika": world["datasets"]["coinpaprika"], "gecko": world["datasets"]["coingecko"]}
            with conn.cursor() as cur:
                cur.execute(FAST_QUOTES, params)
                cur.execute(FAST_PAGES, params)
                cur.execute(FAST_LATEST, params)
                cur.execute("UPDATE dataset_assets SET rows = rows + 12, "
                            "first_observed_at = coalesce(first_observed_at, %(since)s), "
                            "last_observed_at = %(until)s - interval '5 minutes'", params)
            conn.commit()
            lifecycle.finish_run(conn, run_id, "succeeded")
            load_s += time.perf_counter() - t0
            at += timedelta(hours=1)
            maint_s += maintenance_tick(conn, settings, at, day_runs)
        entry = {"day": day + 1, "load_seconds": round(load_s, 1), "maintenance_seconds": round(maint_s, 1),
                 "maintenance": day_runs, "sizes": sizes(conn)}
        report["per_day"].append(entry)
        print(json.dumps(entry), flush=True)
    finish(conn, report, at)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=12)
    parser.add_argument("--retention-days", type=int, default=3, help="RETENTION_RAW_DAYS and "
                        "RAW_PAYLOAD_RETENTION_DAYS (default 3; the product's default is 30)")
    parser.add_argument("--fast", action="store_true", help="set-based writes instead of load_batch (see run_fast)")
    parser.add_argument("--reads", action="store_true", help="after the span: the read lines of make bench "
                        "against gunicorn on the soak database (soak_reads.py)")
    parser.add_argument("--reads-only", action="store_true", help="no soak: the read lines on the database of the "
                        "last soak (<name>_soak), with the settings it recorded")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per read line (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    parser.add_argument("--sql-duration", type=float, default=3.0, help="seconds of pgbench per floor (0: skip)")
    parser.add_argument("--sql-runs", type=int, default=50, help="runs of each floor statement for its median")
    parser.add_argument("--redis-db", type=int, help="Redis database for the reads' gunicorn (default: an empty "
                        "one no client uses, as make bench picks it; it is flushed)")
    parser.add_argument("--api-log-level", default="INFO", help="LOG_LEVEL of gunicorn (default INFO, as production)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    ok, started = True, time.monotonic()
    if args.reads_only:
        report = {"reads_only": True}
    else:
        report = (run_fast if args.fast else run)(args.days, args.retention_days)
        report["soak_seconds"] = round(time.monotonic() - started, 1)
    if args.reads or args.reads_only:
        from tests.benchmarks import soak_reads

        report["reads"] = soak_reads.measure(soak_url(os.environ["DATABASE_URL"]), args)
        ok = report["reads"]["status"] == "ok"
    out = ROOT / "bench-results" / f"soak-{datetime.now():%Y%m%d-%H%M%S}{'-reads' if args.reads_only else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    if "reads" in report:
        print(soak_reads.summary(report["reads"]))
    print(f"report: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
