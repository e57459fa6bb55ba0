"""Storage (issue 11): raw pages stored once per content hash, rollups before retention, the history API
reading rollups, retention of raw bodies and rejected records, maintenance runs recorded like ingestion."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import api_data as d
from crypto_app.pipeline.maintenance import deliver_maintenance
from pipeline_helpers import run_inline, settings_for, table
from storage_data import assets, expected_candles, now, write_snapshots

FAST = dict(COINGECKO_RATE_PER_MINUTE=6000, COINGECKO_RATE_BURST=10, COINGECKO_PER_PAGE=100, COINGECKO_MAX_PAGES=3)


def candles(db_conn, resolution: str) -> dict:
    rows = table(db_conn, "SELECT asset_id, bucket, o_open, o_high, o_low, close, samples FROM candles "
                          "WHERE resolution = %s", (resolution,))
    return {(a, b): (o, h, lo, c, n) for a, b, o, h, lo, c, n in rows}


def analyze_count(db_conn, table: str) -> int:
    with db_conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = %s", (table,))
        return cur.fetchone()[0]


def test_an_unchanged_page_is_stored_once_and_named_by_every_run(fake_upstream, test_env, db_conn):
    fake_upstream.set_coins(300)
    settings = settings_for(test_env, **fake_upstream.env(**FAST))
    first, _ = run_inline(settings, "coingecko")
    second, _ = run_inline(settings, "coingecko")
    refs = table(db_conn, "SELECT run_id::text, content_hash FROM raw_payloads ORDER BY id")
    assert len(refs) == 6 and {r[0] for r in refs} == {first, second}
    pages = table(db_conn, "SELECT content_hash, body IS NOT NULL, record_count FROM raw_pages")
    assert len(pages) == 3                                  # stored once, referenced twice
    assert {h for _, h in refs} == {h for h, _, _ in pages}
    assert all(has_body and count == 100 for _, has_body, count in pages)
    orphans = table(db_conn, "SELECT count(*) FROM quotes q WHERE NOT EXISTS "
                             "(SELECT 1 FROM raw_pages p WHERE p.content_hash = q.payload_hash)")
    assert orphans == [(0,)]


def test_maintenance_rolls_up_rows_before_it_deletes_them_once(db_conn, test_env, settings):
    ids = assets(db_conn, 3)
    run_id = d.run(db_conn, "coingecko")
    start = (now() - timedelta(days=45)).replace(hour=22, minute=0, second=0, microsecond=0)
    old = write_snapshots(test_env["DATABASE_URL"], run_id, ids, start, count=26 * 12)    # 26 h, every 5 min
    recent = write_snapshots(test_env["DATABASE_URL"], run_id, ids, now() - timedelta(days=1), count=6, seed=2)
    d.rejected(db_conn, run_id, "coingecko", "price_usd: must be positive", {"price_usd": ["bad"]})
    d.rejected(db_conn, run_id, "coingecko", "price_usd: must be positive", {"price_usd": ["bad"]})
    with db_conn.cursor() as cur:
        cur.execute("UPDATE rejected_records SET created_at = now() - interval '91 days' "
                    "WHERE id = (SELECT min(id) FROM rejected_records)")

    step = deliver_maintenance(settings, trigger="cli", kind="cli")
    assert step.status == "succeeded", step

    cutoff = now()
    assert table(db_conn, "SELECT count(*) FROM quotes") == [(len(recent),)]
    assert candles(db_conn, "1h") == expected_candles(old, cutoff, timedelta(hours=1))
    assert candles(db_conn, "1d") == expected_candles(old, cutoff, timedelta(days=1))
    assert sum(c[4] for c in candles(db_conn, "1d").values()) == len(old)
    # dataset_assets: the raw rows left, and their span
    assert sorted(table(db_conn, "SELECT asset_id, rows FROM dataset_assets")) == [(a, 6) for a in ids]
    assert table(db_conn, "SELECT count(*) FROM dataset_assets WHERE first_observed_at < now() - interval '2 days'"
                 ) == [(0,)]
    # old page bodies pruned, their hashes kept; the old rejection gone, the new one kept
    assert table(db_conn, "SELECT count(*) FILTER (WHERE body IS NULL), count(*) FROM raw_pages") == [
        (26 * 12, 26 * 12 + 6)]
    assert table(db_conn, "SELECT count(*) FROM rejected_records") == [(1,)]
    run = table(db_conn, "SELECT source, trigger, status, fetched, loaded - (stats->>'daily_candles')::int, "
                         "stats->>'hourly_candles', stats->>'raw_pages_pruned' FROM etl_runs WHERE id = %s",
                (step.run_id,))
    hours = len(expected_candles(old, cutoff, timedelta(hours=1)))
    assert run == [("maintenance", "cli", "succeeded", len(old), hours, str(hours), str(26 * 12))]

    before = (candles(db_conn, "1h"), candles(db_conn, "1d"))
    again = deliver_maintenance(settings, trigger="cli", kind="cli")
    assert again.status == "succeeded" and again.summary["quotes_rolled_up"] == 0
    assert (candles(db_conn, "1h"), candles(db_conn, "1d")) == before      # idempotent
    # Unchanged candles are not vacuumed and analyzed every hour (the run after a change may still be: the
    # writes' statistics can reach the server after that change's own ANALYZE).
    analyzed = analyze_count(db_conn, "candles")
    assert deliver_maintenance(settings, trigger="cli", kind="cli").status == "succeeded"
    assert analyze_count(db_conn, "candles") == analyzed

    # a row that arrives late for a rolled-up hour merges in: a new extreme and the count, nothing else
    late_at = start + timedelta(hours=3, minutes=2)
    d.quote(db_conn, ids[0], "coingecko", "99999", run_id, late_at)
    deliver_maintenance(settings, trigger="cli", kind="cli")
    bucket = start + timedelta(hours=3)
    o, h, lo, c, n = before[0][(ids[0], bucket)]
    assert candles(db_conn, "1h")[(ids[0], bucket)] == (o, Decimal("99999"), lo, c, n + 1)
    assert analyze_count(db_conn, "candles") == analyzed + 1   # changed: analyzed, so its estimates are current


def test_history_answers_from_rollups_and_says_so(client, db_conn, test_env, settings):
    ids = assets(db_conn, 1)
    run_id = d.run(db_conn, "coingecko")
    start = (now() - timedelta(days=40)).replace(hour=0, minute=0, second=0, microsecond=0)
    old = write_snapshots(test_env["DATABASE_URL"], run_id, ids, start, count=48 * 12)
    window = f"since={start.isoformat()}&until={(start + timedelta(days=2)).isoformat()}".replace("+", "%2B")
    before = client.get(f"/api/v1/assets/coin-1/history?interval=4h&{window}").get_json()
    assert before["resolution"] == "1h"         # the window reaches past raw_since (not yet rolled up here)

    assert deliver_maintenance(settings, trigger="cli", kind="cli").status == "succeeded"
    assert table(db_conn, "SELECT count(*) FROM quotes") == [(0,)]
    after = client.get(f"/api/v1/assets/coin-1/history?interval=4h&{window}").get_json()
    assert after["resolution"] == "1h" and after["candles"] == before["candles"]      # the same answer
    assert len(after["candles"]) == 12 and sum(c["samples"] for c in after["candles"]) == len(old)
    day = client.get(f"/api/v1/assets/coin-1/history?interval=1d&{window}").get_json()
    expected = expected_candles(old, now(), timedelta(days=1))
    assert [(c["open"], c["high"], c["low"], c["close"]) for c in day["candles"]] == [
        tuple(str(v) for v in expected[(ids[0], b)][:4]) for b in sorted(b for _, b in expected)]
    recent = client.get("/api/v1/assets/coin-1/history?interval=1h").get_json()
    assert recent["resolution"] == "raw"


def test_a_year_of_history_answers_from_daily_rollups_exactly(client, db_conn, test_env, settings):
    """Issue 11: a history query over a year is answered from the rollups (daily candles, the coarsest that
    divides the step) merged with the raw rows still kept, and gives the same candles the raw rows gave."""
    ids = assets(db_conn, 1)
    run_id = d.run(db_conn, "coingecko")
    start = (now() - timedelta(days=366)).replace(hour=0, minute=0, second=0, microsecond=0)
    written = write_snapshots(test_env["DATABASE_URL"], run_id, ids, start, count=366 * 3,
                              step=timedelta(hours=8))
    since = start + timedelta(days=1)
    url = f"/api/v1/assets/coin-1/history?interval=1d&since={since.isoformat()}".replace("+", "%2B")
    before = client.get(url).get_json()
    assert before["resolution"] == "1d" and len(before["candles"]) == 365      # no rollups yet: raw rows only

    assert deliver_maintenance(settings, trigger="cli", kind="cli").status == "succeeded"
    oldest_raw = table(db_conn, "SELECT min(observed_at) FROM quotes")[0][0]
    assert oldest_raw >= now() - timedelta(days=settings.storage.retention_raw_days + 7)   # the rest rolled up
    rolled = table(db_conn, "SELECT count(*), sum(samples) FROM candles WHERE resolution = '1d'")[0]
    assert rolled[0] > 320 and rolled[1] == sum(1 for (_, at) in written if at < oldest_raw)

    after = client.get(url).get_json()
    assert after["resolution"] == "1d" and after["candles"] == before["candles"]      # the same answer
    expected = expected_candles(written, now(), timedelta(days=1))
    assert [(c["bucket"], c["open"], c["high"], c["low"], c["close"], c["samples"]) for c in after["candles"]] == [
        (b.isoformat(), *(str(v) for v in expected[(ids[0], b)][:4]), expected[(ids[0], b)][4])
        for b in sorted(b for _, b in expected if b >= since)]


def weekly_partition(db_conn, week) -> None:
    """The weekly partition of `week` as migration 0005 made it, in place of any daily ones there (empty:
    the tables are emptied between tests)."""
    from crypto_app.pipeline import partitions
    from psycopg2 import sql

    parts = partitions.partitions(db_conn)
    if f"quotes_w{week:%Y%m%d}" in {p.name for p in parts}:
        return
    with db_conn.cursor() as cur:
        cur.execute("BEGIN")
        for p in parts:
            if week <= p.lo < week + timedelta(weeks=1):
                cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(p.name)))
        partitions._create(cur, f"quotes_w{week:%Y%m%d}", week, week + timedelta(weeks=1))
        cur.execute("COMMIT")


def test_expired_weeks_are_dropped_whole_unless_they_hold_rows_to_keep(db_conn, test_env, settings):
    from crypto_app.pipeline import partitions

    ids = assets(db_conn, 2)
    run_id = d.run(db_conn, "coingecko")
    pure = partitions.week_start(now() - timedelta(days=50))
    mixed = pure + timedelta(weeks=1)
    for week in (pure, mixed):     # the migration's weekly partitions (an earlier test may have expired one)
        weekly_partition(db_conn, week)
    write_snapshots(test_env["DATABASE_URL"], run_id, ids, pure + timedelta(hours=1), count=12)
    write_snapshots(test_env["DATABASE_URL"], run_id, ids, mixed + timedelta(hours=1), count=12, seed=3)
    with db_conn.cursor() as cur:    # a daily candle dataset (a CSV file) in the second week: it is history
        cur.execute("INSERT INTO datasets (name, source, native_interval) VALUES ('csv:daily.csv', 'csv', "
                    "interval '1 day') RETURNING id")
        daily = cur.fetchone()[0]
        cur.execute("INSERT INTO quotes (asset_id, source, dataset_id, price_usd, observed_at, fetched_at, run_id, "
                    "payload_hash) VALUES (%s, 'csv', %s, 42, %s, now(), %s, 'h')",
                    (ids[0], daily, mixed + timedelta(days=2), run_id))
    assert deliver_maintenance(settings, trigger="cli", kind="cli").status == "succeeded"

    names = {p.name for p in partitions.partitions(db_conn)}
    assert f"quotes_w{pure:%Y%m%d}" not in names                  # dropped: no DELETE
    assert f"quotes_w{mixed:%Y%m%d}" in names                     # kept for the CSV row; snapshots deleted
    assert table(db_conn, "SELECT source, price_usd FROM quotes") == [("csv", Decimal("42"))]
    assert table(db_conn, "SELECT count(*), sum(samples) FROM candles WHERE resolution = '1h'") == [(4, 48)]
    ahead = partitions.day_start(now() + timedelta(days=partitions.DAYS_AHEAD))
    assert f"quotes_d{ahead:%Y%m%d}" in names                     # created ahead, a day each


def test_expired_days_are_dropped_whole_so_raw_rows_stay_30_to_31_days(db_conn, test_env, settings):
    """Daily partitions (migration 0008): the weekly ones ahead were replaced by days, and an expired day
    goes as soon as its end is past the retention, instead of waiting for the end of its week."""
    from crypto_app.pipeline import partitions

    parts = partitions.partitions(db_conn)
    assert not [p for p in parts if p.name.startswith("quotes_w") and p.lo > now()]    # 0008: no week ahead
    day = partitions.day_start(now() + timedelta(days=10))       # a day ahead: a daily partition (0008)
    assert f"quotes_d{day:%Y%m%d}" in {p.name for p in parts}
    ids = assets(db_conn, 2)
    run_id = d.run(db_conn, "coingecko")
    first = write_snapshots(test_env["DATABASE_URL"], run_id, ids, day + timedelta(hours=23), count=12)
    second = write_snapshots(test_env["DATABASE_URL"], run_id, ids, day + timedelta(days=1, hours=1), count=12,
                             seed=3)
    later = day + timedelta(days=31, hours=3)                    # the clock 31 days on: cutoff = day + 1 d 3 h

    step = deliver_maintenance(settings, trigger="cli", kind="cli", now=later)
    assert step.status == "succeeded", step
    names = {p.name for p in partitions.partitions(db_conn)}
    assert f"quotes_d{day:%Y%m%d}" not in names                   # past the retention: dropped whole
    assert f"quotes_d{day + timedelta(days=1):%Y%m%d}" in names   # ends after the cutoff: kept (30-31 days)
    assert table(db_conn, "SELECT count(*) FROM quotes") == [(len(second),)]
    assert candles(db_conn, "1h") == expected_candles(first, later, timedelta(hours=1))
    assert table(db_conn, "SELECT fetched FROM etl_runs WHERE id = %s", (step.run_id,)) == [(len(first),)]
    ahead = partitions.day_start(later + timedelta(days=partitions.DAYS_AHEAD))
    assert f"quotes_d{ahead:%Y%m%d}" in names                     # created ahead of the (simulated) clock


def test_storage_is_reported_in_stats_metrics_and_health(client, db_conn, test_env, settings):
    ids = assets(db_conn, 2)
    run_id = d.run(db_conn, "coingecko")
    write_snapshots(test_env["DATABASE_URL"], run_id, ids, now() - timedelta(days=45), count=24)
    write_snapshots(test_env["DATABASE_URL"], run_id, ids, now() - timedelta(hours=2), count=3, seed=4)
    assert deliver_maintenance(settings, trigger="cli", kind="cli").status == "succeeded"
    with db_conn.cursor() as cur:
        cur.execute("ANALYZE quotes; ANALYZE candles")

    body = client.get("/api/v1/stats").get_json()
    storage = body["storage"]
    assert storage["tables"]["quotes"]["bytes"] > 0 and storage["tables"]["quotes"]["partitions"] > 4
    assert set(storage["rows_by_resolution"]) == {"raw", "1h", "1d"} and storage["rows_by_resolution"]["1h"] >= 4
    assert storage["oldest"]["1h"] is not None and storage["oldest"]["raw"] is not None
    assert storage["oldest"]["1h"] < storage["oldest"]["raw"]
    assert body["by_source"]["maintenance"]["total_runs"] == 1
    assert body["total_runs"] == 1                           # the coingecko run; maintenance kept apart
    runs = client.get("/api/v1/runs?source=maintenance").get_json()
    assert [(r["source"], r["status"]) for r in runs["data"]] == [("maintenance", "succeeded")], runs

    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'cryptoflow_storage_bytes{table="quotes"}' in metrics
    assert 'cryptoflow_storage_oldest_seconds{resolution="1h"}' in metrics
    assert "cryptoflow_maintenance_last_success_age_seconds" in metrics
    assert 'cryptoflow_etl_runs_total{source="maintenance",status="succeeded"} 1.0' in metrics

    assert client.get("/health").get_json()["maintenance"]["status"] == "ok"
    with db_conn.cursor() as cur:
        cur.execute("UPDATE etl_runs SET finished_at = now() - interval '5 hours' WHERE source = 'maintenance'")
    health = client.get("/health").get_json()
    assert health["status"] == "degraded" and health["maintenance"]["status"] == "degraded"
    assert any(reason.startswith("maintenance (rollups, retention, partitions) has not succeeded")
               for reason in health["reasons"])


def test_a_complete_day_is_rewritten_in_asset_order_once_and_answers_the_same(client, db_conn, test_env, settings):
    """Compaction: rows arrive time-ordered, every coin of a batch together, so one coin's rows of a day lie
    on as many heap pages as it has rows; once the day is complete its partition is rewritten in (asset,
    dataset, time) order, with the same rows, bounds, name and constraints, and the same history answers."""
    import psycopg2
    import pytest

    from crypto_app.pipeline import partitions
    from pipeline_helpers import quotes_snapshot

    day = partitions.day_start(now() + timedelta(days=12))            # a daily partition (0008)
    name = f"quotes_d{day:%Y%m%d}"
    ids = assets(db_conn, 3)
    run_id = d.run(db_conn, "coingecko")
    write_snapshots(test_env["DATABASE_URL"], run_id, ids, day + timedelta(hours=1), count=12)
    physical = f"SELECT asset_id, observed_at FROM ONLY {name} ORDER BY ctid"
    assert table(db_conn, physical) != sorted(table(db_conn, physical))   # as written: by time, coins interleaved
    window = f"since={day.isoformat()}&until={(day + timedelta(days=1)).isoformat()}".replace("+", "%2B")

    def answer():      # raw_since moves with the real clock
        return {k: v for k, v in client.get(f"/api/v1/assets/coin-2/history?interval=raw&{window}").get_json().items()
                if k != "raw_since"}

    before = (quotes_snapshot(db_conn), answer())
    oid = table(db_conn, "SELECT %s::regclass::oid", (name,))

    later = day + timedelta(days=1, hours=3)
    step = deliver_maintenance(settings, trigger="cli", kind="cli", now=later)
    assert step.status == "succeeded", step
    assert table(db_conn, physical) == sorted(table(db_conn, physical))   # one coin's rows together
    assert (quotes_snapshot(db_conn), answer()) == before and len(before[1]["points"]) == 12
    assert [(p.lo, p.hi) for p in partitions.partitions(db_conn) if p.name == name] == [(day, day + timedelta(days=1))]
    assert table(db_conn, "SELECT (stats->>'partitions_compacted')::int >= 1, (stats->>'quotes_compacted')::int >= 36 "
                          "FROM etl_runs WHERE id = %s", (step.run_id,)) == [(True, True)]
    with db_conn.cursor() as cur, pytest.raises(psycopg2.errors.UniqueViolation):   # the key still holds
        cur.execute(f"INSERT INTO quotes SELECT * FROM {name} LIMIT 1")
    compacted = table(db_conn, "SELECT %s::regclass::oid", (name,))
    assert compacted != oid

    assert deliver_maintenance(settings, trigger="cli", kind="cli", now=later).status == "succeeded"
    assert table(db_conn, "SELECT %s::regclass::oid", (name,)) == compacted   # compacted once


def test_migration_0008_turns_the_empty_weeks_ahead_into_days_and_back(test_env):
    """An existing database (0007): the current week and a week ahead that already holds a row stay weekly,
    the empty weeks ahead become days; every row stays where it was, and the downgrade folds the days back
    into weeks with their rows."""
    import psycopg2

    from crypto_app.pipeline import partitions
    from pipeline_helpers import scratch_database

    def layout(conn):
        parts = partitions.partitions(conn)
        conn.commit()
        return {p.name[:8] for p in parts if p.lo > now()}, {p.name for p in parts}

    with scratch_database(test_env, "_m8") as (url, flask_db):
        flask_db("upgrade", "0007_volume_usd")
        conn = psycopg2.connect(url)
        conn.autocommit = True           # no transaction left open across the migrations' DDL
        try:
            this_week = partitions.week_start(now())
            held = this_week + timedelta(weeks=2)                  # a week ahead that holds a row (clock skew)
            with conn.cursor() as cur:
                cur.execute("INSERT INTO assets (slug, symbol, name) VALUES ('bitcoin', 'BTC', 'Bitcoin') RETURNING id")
                asset = cur.fetchone()[0]
                cur.execute("INSERT INTO etl_runs (id, source, trigger, status) VALUES (%s, 'coingecko', 'cli', "
                            "'succeeded')", (run_id := "00000000-0000-0000-0000-000000000008",))
                for at in (now(), held + timedelta(hours=5)):
                    cur.execute("INSERT INTO quotes (asset_id, source, price_usd, observed_at, fetched_at, run_id, "
                                "payload_hash) VALUES (%s, 'coingecko', 42, %s, now(), %s, 'h')", (asset, at, run_id))
            conn.commit()
            assert layout(conn)[0] == {"quotes_w"}

            flask_db("upgrade")
            ahead, names = layout(conn)
            assert ahead == {"quotes_w", "quotes_d"}
            assert f"quotes_w{this_week:%Y%m%d}" in names and f"quotes_w{held:%Y%m%d}" in names
            week_after = this_week + timedelta(weeks=1)             # empty: now seven days
            assert f"quotes_w{week_after:%Y%m%d}" not in names
            assert {f"quotes_d{week_after + timedelta(days=i):%Y%m%d}" for i in range(7)} <= names
            assert table(conn, "SELECT tableoid::regclass::text FROM quotes ORDER BY observed_at") == [
                (f"quotes_w{this_week:%Y%m%d}",), (f"quotes_w{held:%Y%m%d}",)]
            assert "No new upgrade operations detected" in flask_db("check")
            with conn.cursor() as cur:                             # a row in a day, for the downgrade to keep
                cur.execute("INSERT INTO quotes (asset_id, source, price_usd, observed_at, fetched_at, run_id, "
                            "payload_hash) VALUES (%s, 'coingecko', 43, %s, now(), %s, 'h')",
                            (asset, week_after + timedelta(days=3), run_id))
            conn.commit()

            flask_db("downgrade", "0007_volume_usd")
            ahead, names = layout(conn)
            assert ahead == {"quotes_w"} and f"quotes_w{week_after:%Y%m%d}" in names
            assert table(conn, "SELECT price_usd, tableoid::regclass::text FROM quotes ORDER BY observed_at") == [
                (Decimal(42), f"quotes_w{this_week:%Y%m%d}"), (Decimal(43), f"quotes_w{week_after:%Y%m%d}"),
                (Decimal(42), f"quotes_w{held:%Y%m%d}")]
        finally:
            conn.close()
