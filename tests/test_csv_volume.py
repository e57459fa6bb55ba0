"""The volume of a CSV candle file is the volume of its row's own interval, never a 24-hour volume.

CryptoDataDownload's Binance_BTCUSDT_1h.csv carries in "Volume USDT" the USD volume traded within that
hour. It is stored as `volume_usd` (the volume of the row's interval; the interval is the dataset's
native_interval, listed at /api/v1/datasets) and served as such; `volume_24h_usd` stays for columns that
say they are a 24-hour volume (and for the APIs' rolling 24h volumes). Before this, the hour's volume was
stored and served as `volume_24h_usd`: about 1/24 of what that name promises.
"""
from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline_helpers import run_inline, settings_for, table

ROOT = Path(__file__).resolve().parent.parent
HOURLY = "Binance_BTCUSDT_1h.csv"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)          # a Monday: 4h and 1d buckets start on it
HOURS = 8


def _hourly_rows() -> list[dict]:
    rows = []
    for h in range(HOURS):
        at = T0 + timedelta(hours=h)
        close = Decimal("42000.5") + 10 * h
        rows.append({"Unix": str(int(at.timestamp() * 1000)), "Date": at.strftime("%Y-%m-%d %H:%M:%S"),
                     "Symbol": "BTCUSDT", "Open": str(close - 5), "High": str(close + 20), "Low": str(close - 30),
                     "Close": str(close), "Volume BTC": f"{100 + h}.25",
                     "Volume USDT": str((Decimal(f"{100 + h}.25") * close).quantize(Decimal("0.01")))})
    return rows


def _write(path: Path, header: list[str], rows: list[dict], banner: bool = True) -> None:
    lines = ["https://www.CryptoDataDownload.com"] if banner else []
    lines.append(",".join(header))
    lines += [",".join(row[c] for c in header) for row in reversed(rows)]    # CDD files are newest first
    path.write_text("\n".join(lines) + "\n")


CDD_HEADER = ["Unix", "Date", "Symbol", "Open", "High", "Low", "Close", "Volume BTC", "Volume USDT"]
WINDOW = "since=2024-01-01T00:00:00Z&until=2024-01-01T07:59:59Z"


@pytest.fixture
def data_dir(tmp_path):
    shutil.copy(ROOT / "data" / "asset_overrides.json", tmp_path / "asset_overrides.json")
    return tmp_path


@pytest.fixture
def hourly(test_env, data_dir):
    _write(data_dir / HOURLY, CDD_HEADER, _hourly_rows())
    settings = settings_for(test_env, CSV_DATA_DIR=data_dir)
    _, outcome = run_inline(settings, "csv")
    assert (outcome.status, outcome.loaded, outcome.rejected) == ("succeeded", HOURS, 0)
    return settings


def test_an_hourly_files_volume_is_served_as_the_hours_volume_not_a_24h_volume(client, hourly):
    rows = _hourly_rows()
    dataset = f"csv:{HOURLY}"
    listed = {d["name"]: d for d in client.get("/api/v1/datasets?source=csv").get_json()["data"]}
    assert listed[dataset]["native_interval"] == "1h"

    [latest] = client.get(f"/api/v1/data?dataset={dataset}").get_json()["data"]
    assert latest["volume_usd"] == rows[-1]["Volume USDT"]
    assert latest["volume_24h_usd"] is None

    detail = client.get("/api/v1/assets/bitcoin").get_json()
    [quote] = [q for q in detail["quotes"] if q["dataset"] == dataset]
    assert (quote["volume_usd"], quote["volume_24h_usd"]) == (rows[-1]["Volume USDT"], None)

    points = client.get(f"/api/v1/assets/bitcoin/history?{WINDOW}&dataset={dataset}").get_json()["points"]
    assert [(p["volume_usd"], p["volume_24h_usd"]) for p in points] == [(r["Volume USDT"], None) for r in rows]

    hourly_candles = client.get(f"/api/v1/assets/bitcoin/history?{WINDOW}&interval=1h").get_json()["candles"]
    assert [(c["from"], c["volume_usd"], c["volume_24h_usd"]) for c in hourly_candles] == [
        ("source", r["Volume USDT"], None) for r in rows]

    # a 4h candle: the sum of its four hours; a whole day: the sum of the hours the file has
    four = client.get(f"/api/v1/assets/bitcoin/history?{WINDOW}&interval=4h").get_json()["candles"]
    assert [(c["bucket"][:16], c["samples"], Decimal(c["volume_usd"]), c["volume_24h_usd"]) for c in four] == [
        ("2024-01-01T00:00", 4, sum(Decimal(r["Volume USDT"]) for r in rows[:4]), None),
        ("2024-01-01T04:00", 4, sum(Decimal(r["Volume USDT"]) for r in rows[4:]), None)]
    [day] = client.get(f"/api/v1/assets/bitcoin/history?{WINDOW}&interval=1d").get_json()["candles"]
    assert Decimal(day["volume_usd"]) == sum(Decimal(r["Volume USDT"]) for r in rows) and day["samples"] == HOURS

    # a 15-minute candle of an hourly file would show an hour's volume as a quarter's: none is given
    quarters = client.get(f"/api/v1/assets/bitcoin/history?{WINDOW}&interval=15m").get_json()["candles"]
    assert len(quarters) == HOURS and {(c["volume_usd"], c["volume_24h_usd"]) for c in quarters} == {(None, None)}


def test_a_column_that_says_24h_stays_a_24h_volume(client, test_env, data_dir):
    (data_dir / "markets.csv").write_text(
        "symbol,name,price_usd,24h volume,observed_at\n"
        "BTC,Bitcoin,42000.5,35000000000.5,2024-01-01T12:00:00Z\n")
    _, outcome = run_inline(settings_for(test_env, CSV_DATA_DIR=data_dir), "csv")
    assert outcome.loaded == 1
    [row] = client.get("/api/v1/data?dataset=csv:markets.csv").get_json()["data"]
    assert (row["volume_24h_usd"], row["volume_usd"]) == ("35000000000.5", None)


def test_a_file_whose_columns_change_meaning_is_stored_anew(client, test_env, data_dir, db_conn):
    """Proportional re-ingest skips records whose bytes it has stored before; the bytes of a record mean what
    the header says, so a changed column mapping re-reads every record. Here two columns swap their names
    and the data lines stay byte for byte the same (the same fields, the same decimal marks)."""
    path = data_dir / "bitcoin_price.csv"
    lines = ["2024-01-0{d},BTC,4200{d}.5,1{d}00.25,8{d}0000.75".format(d=d) for d in range(1, 6)]
    path.write_text("Date,Symbol,Close,Volume,Market Cap\n" + "\n".join(lines) + "\n")
    settings = settings_for(test_env, CSV_DATA_DIR=data_dir, PLAUSIBILITY_CSV="market_cap_consistency:off")
    run_inline(settings, "csv")
    assert table(db_conn, "SELECT volume_usd::text, market_cap_usd::text FROM quotes ORDER BY observed_at")[0] == (
        "1100.25", "810000.75")
    path.write_text("Date,Symbol,Close,Market Cap,Volume\n" + "\n".join(lines) + "\n")
    _, outcome = run_inline(settings, "csv")
    assert (outcome.status, outcome.stats.get("updated")) == ("succeeded", 5)
    stored = table(db_conn, "SELECT volume_usd::text, market_cap_usd::text FROM quotes ORDER BY observed_at")
    assert stored == [(f"8{d}0000.75", f"1{d}00.25") for d in range(1, 6)]


def test_force_reimport_moves_an_old_import_to_the_right_column(client, hourly, db_conn):
    """Before migration 0007 the hour's volume sat in volume_24h_usd. `flask etl import --force FILE` (the
    options below are the CLI's) reads the file again and rewrites those rows. The row hashes that import
    stored were keyed by the decimal marks of the field volume_24h_usd (and without the column mapping), so
    none of them matches a record now: emptied here, as the new code's own hashes would match."""
    with db_conn.cursor() as cur:
        for name in ("quotes", "latest_quotes"):
            cur.execute(f"UPDATE {name} SET volume_24h_usd = volume_usd, volume_usd = NULL")
        cur.execute("DELETE FROM csv_row_hashes")
    _, skipped = run_inline(hourly, "csv", {"files": [HOURLY]})
    assert skipped.loaded == 0                  # unchanged since its import: not read without --force
    _, forced = run_inline(hourly, "csv", {"files": [HOURLY], "force": True})
    assert forced.status == "succeeded"
    rows = _hourly_rows()
    assert table(db_conn, "SELECT volume_usd::text, volume_24h_usd FROM quotes ORDER BY observed_at") == [
        (r["Volume USDT"], None) for r in rows]
    assert table(db_conn, "SELECT volume_usd::text, volume_24h_usd FROM latest_quotes") == [
        (rows[-1]["Volume USDT"], None)]
    assert forced.stats.get("inserted", 0) == 0 and forced.stats.get("updated") == HOURS


def test_rollups_of_a_minute_file_keep_its_interval_volumes_and_never_sum_24h_volumes(client, test_env, data_dir,
                                                                                     db_conn):
    """Maintenance rolls up datasets with no native interval or one under an hour: API tickers, and CSV files
    of minute candles. A candle keeps the sum of the rows' volume_usd, so the history answers the same after
    the rows are gone; the API's rolling 24h volumes are never summed."""
    import api_data as d
    from crypto_app.pipeline.maintenance import deliver_maintenance
    from storage_data import assets, now, write_snapshots

    start = (now() - timedelta(days=40)).replace(hour=0, minute=0, second=0, microsecond=0)
    header = ["Unix", "Date", "Symbol", "Open", "High", "Low", "Close", "Volume USDT"]
    rows = []
    for i in range(24):                                          # two hours of 5-minute candles
        at = start + timedelta(minutes=5 * i)
        rows.append({"Unix": str(int(at.timestamp() * 1000)), "Date": at.strftime("%Y-%m-%d %H:%M:%S"),
                     "Symbol": "BTCUSDT", "Open": "100", "High": "101", "Low": "99", "Close": "100.5",
                     "Volume USDT": f"{1000 + i}.5"})
    _write(data_dir / "Binance_BTCUSDT_5m.csv", header, rows)
    settings = settings_for(test_env, CSV_DATA_DIR=data_dir)
    assert run_inline(settings, "csv")[1].loaded == 24
    [coin] = assets(db_conn, 1)
    write_snapshots(test_env["DATABASE_URL"], d.run(db_conn, "coingecko"), [coin], start, count=24)

    window = f"since={start.isoformat()}&until={(start + timedelta(hours=2)).isoformat()}".replace("+", "%2B")

    def hourly(slug):
        return [(c["from"], c["samples"], c["volume_usd"], c["volume_24h_usd"]) for c in
                client.get(f"/api/v1/assets/{slug}/history?interval=1h&{window}").get_json()["candles"]]

    sums = [str(sum(Decimal(r["Volume USDT"]) for r in rows[h * 12:(h + 1) * 12])) for h in range(2)]
    before = hourly("bitcoin")
    assert before == [("source", 12, sums[0], None), ("source", 12, sums[1], None)]
    assert [c[2] for c in hourly("coin-1")] == [None, None]      # 24h volumes: never a candle's volume

    assert deliver_maintenance(settings, trigger="cli", kind="cli").status == "succeeded"
    assert table(db_conn, "SELECT count(*) FROM quotes") == [(0,)]
    assert hourly("bitcoin") == before
    after = hourly("coin-1")
    assert [c[2] for c in after] == [None, None] and all(c[3] is not None for c in after)
    assert table(db_conn, "SELECT d.source, sum(c.volumes), bool_and(c.volume_sum IS NULL) FROM candles c "
                          "JOIN datasets d ON d.id = c.dataset_id GROUP BY 1 ORDER BY 1") == [
        ("coingecko", 0, True), ("csv", 2 * 24, False)]

    # the file imported again (--force, e.g. the upgrade note's repair): its rows are already in the rollups
    # and are not stored again, so neither the history nor the next rollup counts them twice
    again_id, again = run_inline(settings, "csv", {"files": ["Binance_BTCUSDT_5m.csv"], "force": True})
    assert again.status == "succeeded"
    assert table(db_conn, "SELECT count(*) FROM quotes") == [(0,)]
    assert table(db_conn, "SELECT (stats->>'already_rolled_up')::int FROM etl_runs WHERE id = %s",
                 (again_id,)) == [(24,)]
    assert hourly("bitcoin") == before
    assert deliver_maintenance(settings, trigger="cli", kind="cli").status == "succeeded"
    assert hourly("bitcoin") == before


def test_migration_0007_adds_the_column_moves_nothing_and_clears_only_api_volume_sums(test_env):
    """Old CSV rows keep their volume_24h_usd (which header it came from is not recorded: nothing is guessed);
    rollup sums of API datasets (sums of rolling 24h volumes) are cleared; the models match (flask db check)."""
    import subprocess
    import sys
    from urllib.parse import urlsplit

    import psycopg2

    name = urlsplit(test_env["DATABASE_URL"]).path.lstrip("/") + "_m7"
    admin = psycopg2.connect(urlsplit(test_env["DATABASE_URL"])._replace(path="/postgres").geturl())
    admin.autocommit = True
    url = urlsplit(test_env["DATABASE_URL"])._replace(path=f"/{name}").geturl()

    def flask_db(*args):
        out = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi:app", "db", *args], cwd=ROOT,
                             env={**test_env, "DATABASE_URL": url}, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout + out.stderr

    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        flask_db("upgrade", "0006_csv_row_hashes")
        conn = psycopg2.connect(url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO assets (slug, symbol, name) VALUES ('bitcoin', 'BTC', 'Bitcoin') RETURNING id")
                asset = cur.fetchone()[0]
                cur.execute("INSERT INTO etl_runs (id, source, trigger, status) VALUES (%s, 'csv', 'cli', 'succeeded')",
                            (run_id := "00000000-0000-0000-0000-000000000007",))
                cur.execute("INSERT INTO datasets (name, source) VALUES ('csv:Binance_BTCUSDT_1m.csv', 'csv'), "
                            "('coingecko:markets', 'coingecko') ON CONFLICT (name) DO NOTHING")
                cur.execute("SELECT name, id FROM datasets")
                ids = dict(cur.fetchall())
                cur.execute("INSERT INTO quotes (asset_id, source, dataset_id, price_usd, volume_24h_usd, observed_at, "
                            "fetched_at, run_id, payload_hash) VALUES (%s, 'csv', %s, 42, 1234.5, '2024-01-01', now(), "
                            "%s, 'h')", (asset, ids["csv:Binance_BTCUSDT_1m.csv"], run_id))
                for dataset in ("csv:Binance_BTCUSDT_1m.csv", "coingecko:markets"):
                    cur.execute("INSERT INTO candles (dataset_id, asset_id, resolution, bucket, o_open, o_high, o_low, "
                                "close, ohlc, volume_24h_usd, volume_sum, volumes, samples, first_observed_at, "
                                "last_observed_at) VALUES (%s, %s, '1h', '2024-01-01', 1, 1, 1, 1, false, 7, 70, 10, "
                                "10, '2024-01-01', '2024-01-01 00:50')", (ids[dataset], asset))
            flask_db("upgrade")
            assert "No new upgrade operations detected" in flask_db("check")
            with conn.cursor() as cur:
                cur.execute("SELECT volume_24h_usd, volume_usd FROM quotes")
                assert cur.fetchall() == [(Decimal("1234.5"), None)]
                cur.execute("SELECT d.name, c.volume_24h_usd, c.volume_sum, c.volumes FROM candles c "
                            "JOIN datasets d ON d.id = c.dataset_id ORDER BY 1")
                assert cur.fetchall() == [("coingecko:markets", 7, None, 0), ("csv:Binance_BTCUSDT_1m.csv", 7, 70, 10)]
            flask_db("downgrade", "0006_csv_row_hashes")
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM information_schema.columns WHERE column_name = 'volume_usd'")
                assert cur.fetchone() == (0,)
        finally:
            conn.close()
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
