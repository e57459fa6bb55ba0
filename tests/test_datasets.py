"""Datasets: two CSV files of the same coin and days coexist; the source's OHLC candles are served as they
are (and aggregated correctly); flags; the previous-price lookup; migration 0003 carries 0002 rows over.

The CMC file below is built in the Kaggle CoinMarketCap layout (bitcoin_price.csv, see
fixtures/csv_kaggle_cmc_bitcoin_cash_price.csv) with real-looking values for days the CryptoDataDownload
Binance file also covers. Before datasets, importing the Binance file after it replaced these days.
"""
import csv
import shutil
import subprocess
import sys
from collections import OrderedDict
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest

import api_data as d
from crypto_app.sources.base import PermanentSourceError
from pipeline_helpers import run_inline, settings_for, table

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
BINANCE = FIXTURES / "csv_cryptodatadownload_Binance_BTCUSDT_d.csv"
CMC_ROWS = [  # Date, Open, High, Low, Close, Volume, Market Cap (CoinMarketCap, Feb 2018)
    ("Feb 20, 2018", "11231.80", "11958.50", "11231.80", "11403.70", "9,926,540,000", "189,536,000,000"),
    ("Feb 19, 2018", "10552.60", "11273.80", "10513.20", "11225.30", "7,652,090,000", "178,055,000,000"),
    ("Feb 18, 2018", "11123.40", "11349.80", "10326.00", "10551.80", "8,744,010,000", "187,663,000,000"),
    ("Feb 17, 2018", "10207.50", "11139.50", "10149.40", "11112.70", "8,660,880,000", "172,191,000,000"),
    ("Feb 16, 2018", "10135.70", "10324.10", "9824.82", "10233.90", "7,296,160,000", "170,960,000,000"),
]
WINDOW = "since=2018-02-16T00:00:00Z&until=2018-02-20T00:00:00Z"


def _cmc_file(path: Path) -> None:
    lines = ["Date,Open,High,Low,Close,Volume,Market Cap"]
    lines += [",".join(f'"{v}"' if "," in v else v for v in row) for row in CMC_ROWS]
    path.write_text("\n".join(lines) + "\n")


def _binance_rows() -> dict[date, dict]:
    with open(BINANCE, newline="") as fh:
        fh.readline()   # the CryptoDataDownload banner line
        return {date.fromisoformat(r["Date"][:10]): r for r in csv.DictReader(fh)}


@pytest.fixture
def two_files(test_env, tmp_path):
    """bitcoin_price.csv (CMC) imported first, then Binance_BTCUSDT_d.csv, as the issue reports."""
    shutil.copy(ROOT / "data" / "asset_overrides.json", tmp_path / "asset_overrides.json")
    _cmc_file(tmp_path / "bitcoin_price.csv")
    settings = settings_for(test_env, CSV_DATA_DIR=tmp_path)
    _, first = run_inline(settings, "csv")
    shutil.copy(BINANCE, tmp_path / "Binance_BTCUSDT_d.csv")
    _, second = run_inline(settings, "csv")
    assert (first.status, first.loaded, second.status) == ("succeeded", 5, "succeeded")
    return settings


def test_two_csv_datasets_of_the_same_coin_and_days_both_come_back(client, two_files, db_conn):
    points = client.get(f"/api/v1/assets/bitcoin/history?{WINDOW}").get_json()["points"]
    by_dataset = {}
    for p in points:
        by_dataset.setdefault(p["dataset"], []).append((p["observed_at"][:10], p["price_usd"]))
    assert sorted(by_dataset) == ["csv:Binance_BTCUSDT_d.csv", "csv:bitcoin_price.csv"]
    assert by_dataset["csv:bitcoin_price.csv"] == sorted(
        (datetime.strptime(r[0], "%b %d, %Y").date().isoformat(), r[4]) for r in CMC_ROWS)
    binance = _binance_rows()
    assert by_dataset["csv:Binance_BTCUSDT_d.csv"] == [
        (day.isoformat(), binance[day]["Close"]) for day in sorted(binance) if date(2018, 2, 16) <= day <= date(2018, 2, 20)]
    assert all(p["source"] == "csv" and p["flags"] == [] for p in points)

    only = client.get(f"/api/v1/assets/bitcoin/history?{WINDOW}&dataset=csv:bitcoin_price.csv").get_json()
    assert {p["dataset"] for p in only["points"]} == {"csv:bitcoin_price.csv"} and len(only["points"]) == 5

    rows = client.get("/api/v1/data?asset=bitcoin").get_json()["data"]
    assert sorted((r["source"], r["dataset"]) for r in rows) == [
        ("csv", "csv:Binance_BTCUSDT_d.csv"), ("csv", "csv:bitcoin_price.csv")]
    assert len(client.get("/api/v1/data?source=csv").get_json()["data"]) == 2   # csv: every CSV dataset
    one = client.get("/api/v1/data?dataset=csv:bitcoin_price.csv").get_json()
    assert [r["price_usd"] for r in one["data"]] == ["11403.70"] and one["metadata"]["total_count"] == 1

    detail = client.get("/api/v1/assets/bitcoin").get_json()
    datasets = {x["name"]: x for x in detail["datasets"]}
    assert datasets["csv:bitcoin_price.csv"]["rows"] == 5
    assert datasets["csv:bitcoin_price.csv"]["files"] == ["bitcoin_price.csv"]
    assert datasets["csv:bitcoin_price.csv"]["native_interval"] == "1d"
    assert datasets["csv:bitcoin_price.csv"]["first_observed_at"].startswith("2018-02-16")
    assert datasets["csv:Binance_BTCUSDT_d.csv"]["rows"] == len(_binance_rows())
    assert datasets["csv:Binance_BTCUSDT_d.csv"]["last_import_at"] is not None
    # the CMC file ends in 2018: it does not vote on the price next to the Binance file's 2023 close
    assert detail["consensus"]["datasets"] == 1 and detail["consensus"]["stale_excluded"] == 1

    listed = client.get("/api/v1/datasets?source=csv").get_json()["data"]
    assert [(x["name"], x["rows"], x["assets"]) for x in listed] == [
        ("csv:Binance_BTCUSDT_d.csv", len(_binance_rows()), 1), ("csv:bitcoin_price.csv", 5, 1)]
    stored = table(db_conn, "SELECT count(*) FROM quotes WHERE observed_at BETWEEN '2018-02-16' AND '2018-02-20'")
    assert stored == [(10,)]


def test_daily_candles_of_an_ohlc_file_are_the_files_rows(client, two_files):
    binance = _binance_rows()
    url = ("/api/v1/assets/bitcoin/history?interval=1d&dataset=csv:Binance_BTCUSDT_d.csv"
           "&since=2023-01-01T00:00:00Z&until=2023-03-30T00:00:00Z&limit=1000")
    candles = client.get(url).get_json()["candles"]
    expected = [day for day in sorted(binance) if date(2023, 1, 1) <= day <= date(2023, 3, 30)]
    assert len(candles) == len(expected) == 89
    for candle, day in zip(candles, expected):
        row = binance[day]
        assert candle["bucket"][:10] == day.isoformat() and candle["from"] == "source"
        assert (candle["open"], candle["high"], candle["low"], candle["close"], candle["volume_usd"]) == (
            row["Open"], row["High"], row["Low"], row["Close"], row["Volume USDT"])
        assert candle["samples"] == 1 and candle["dataset"] == "csv:Binance_BTCUSDT_d.csv"
    # the symptom: open = high = low = close
    assert all(len({c["open"], c["high"], c["low"], c["close"]}) > 1 for c in candles)


def test_weekly_candles_aggregate_the_source_candles(client, two_files):
    binance = _binance_rows()
    weeks: OrderedDict = OrderedDict()
    for day in sorted(binance):
        if date(2023, 1, 2) <= day <= date(2023, 3, 26):                 # Monday .. Sunday, 12 whole weeks
            weeks.setdefault(day - timedelta(days=day.weekday()), []).append(binance[day])
    url = ("/api/v1/assets/bitcoin/history?interval=1w&dataset=csv:Binance_BTCUSDT_d.csv"
           "&since=2023-01-02T00:00:00Z&until=2023-03-26T23:59:59Z")
    candles = client.get(url).get_json()["candles"]
    assert [c["bucket"][:10] for c in candles] == [w.isoformat() for w in weeks]
    for candle, rows in zip(candles, weeks.values()):
        assert candle["from"] == "source" and candle["samples"] == 7
        assert Decimal(candle["open"]) == Decimal(rows[0]["Open"])
        assert Decimal(candle["close"]) == Decimal(rows[-1]["Close"])
        assert Decimal(candle["high"]) == max(Decimal(r["High"]) for r in rows)
        assert Decimal(candle["low"]) == min(Decimal(r["Low"]) for r in rows)
        assert Decimal(candle["volume_usd"]) == sum(Decimal(r["Volume USDT"]) for r in rows)   # summed
        assert candle["volume_24h_usd"] is None          # a day's volume is no rolling 24h volume, and never summed


def test_snapshot_candles_are_observed_and_never_sum_a_rolling_volume(client, db_conn):
    run_id = d.run(db_conn, "coingecko")
    btc = d.asset(db_conn, "bitcoin", "BTC", "Bitcoin")
    t0 = datetime(2030, 1, 7, 10, 0, tzinfo=timezone.utc)
    for minutes, price in ((0, "100"), (30, "110")):
        # CoinGecko's high_24h lands in high_usd: a rolling high, not this bucket's
        d.quote(db_conn, btc, "coingecko", price, run_id, t0 + timedelta(minutes=minutes), volume="5", high_usd="999")
    candle = client.get("/api/v1/assets/bitcoin/history?interval=1h&since=2030-01-07T00:00:00Z"
                        "&until=2030-01-08T00:00:00Z").get_json()["candles"][0]
    assert (candle["from"], candle["dataset"], candle["high"], candle["volume_usd"], candle["volume_24h_usd"]) == (
        "observed", "coingecko:markets", "110", None, "5")


def test_flags_are_stored_and_shown(client, db_conn, settings):
    from crypto_app.pipeline.load import LoadBatch, load_batch

    run_id = d.run(db_conn, "coingecko")
    btc = d.asset(db_conn, "bitcoin", "BTC", "Bitcoin")
    t0 = datetime(2030, 1, 7, tzinfo=timezone.utc)
    conn = psycopg2.connect(settings.libpq_url)
    try:
        load_batch(conn, LoadBatch(run_id=run_id, source="coingecko", content_hash="h", locator={"page": 1},
                                   fetched_at=t0, rows=[
                                       {"asset_id": btc, "price_usd": Decimal("1"), "observed_at": t0},
                                       {"asset_id": btc, "price_usd": Decimal("30"), "observed_at": t0 + timedelta(hours=1),
                                        "flags": ["price_jump"]}]))
    finally:
        conn.close()
    assert table(db_conn, "SELECT flags FROM quotes ORDER BY observed_at") == [(None,), (["price_jump"],)]
    row = client.get("/api/v1/data").get_json()["data"][0]
    assert (row["flags"], row["dataset"]) == (["price_jump"], "coingecko:markets")
    points = client.get("/api/v1/assets/bitcoin/history?since=2030-01-07T00:00:00Z&until=2030-01-08T00:00:00Z"
                        ).get_json()["points"]
    assert [p["flags"] for p in points] == [[], ["price_jump"]]
    assert client.get("/api/v1/assets/bitcoin").get_json()["quotes"][0]["flags"] == ["price_jump"]


def test_newest_prices_before_a_time_per_asset_and_dataset(two_files, settings, db_conn):
    from crypto_app.pipeline.previous import newest_prices_before

    ids = dict(table(db_conn, "SELECT name, id FROM datasets"))
    btc = table(db_conn, "SELECT id FROM assets WHERE slug = 'bitcoin'")[0][0]
    t = datetime(2018, 2, 19, tzinfo=timezone.utc)
    conn = psycopg2.connect(settings.libpq_url)
    try:
        found = newest_prices_before(conn, [(btc, ids["csv:bitcoin_price.csv"], t),
                                            (btc, ids["csv:Binance_BTCUSDT_d.csv"], t),
                                            (btc, ids["csv:bitcoin_price.csv"], datetime(2018, 2, 16, tzinfo=timezone.utc))])
    finally:
        conn.close()
    assert found == {(btc, ids["csv:bitcoin_price.csv"], t): (datetime(2018, 2, 18, tzinfo=timezone.utc), Decimal("10551.80")),
                     (btc, ids["csv:Binance_BTCUSDT_d.csv"], t): (datetime(2018, 2, 18, tzinfo=timezone.utc),
                                                                  Decimal(_binance_rows()[date(2018, 2, 18)]["Close"]))}


def test_a_dataset_name_and_publisher_from_datasets_json(client, test_env, tmp_path):
    shutil.copy(ROOT / "data" / "asset_overrides.json", tmp_path / "asset_overrides.json")
    _cmc_file(tmp_path / "bitcoin_price.csv")
    (tmp_path / "datasets.json").write_text('{"bitcoin_price.csv": {"name": "kaggle-cmc-bitcoin", '
                                            '"publisher": "CoinMarketCap via Kaggle", "interval": "1d"}}')
    run_inline(settings_for(test_env, CSV_DATA_DIR=tmp_path), "csv")
    listed = client.get("/api/v1/datasets").get_json()["data"]
    assert [(x["name"], x["publisher"], x["native_interval"], x["interval_declared"], x["rows"]) for x in listed] == [
        ("kaggle-cmc-bitcoin", "CoinMarketCap via Kaggle", "1d", True, 5)]
    (tmp_path / "datasets.json").write_text('{"bitcoin_price.csv": {"name": "has:colon"}}')
    (tmp_path / "bitcoin_price.csv").write_text((tmp_path / "bitcoin_price.csv").read_text() + '"Feb 15, 2018",1,2,1,2,"1","1"\n')
    with pytest.raises(PermanentSourceError, match="has:colon"):
        run_inline(settings_for(test_env, CSV_DATA_DIR=tmp_path), "csv")


# --- migration 0003 over 0002-shaped data ------------------------------------------------------------------

def test_migration_0003_carries_rows_into_datasets(test_env):
    name = urlsplit(test_env["DATABASE_URL"]).path.lstrip("/") + "_mig3"
    admin = psycopg2.connect(urlsplit(test_env["DATABASE_URL"])._replace(path="/postgres").geturl())
    admin.autocommit = True
    url = urlsplit(test_env["DATABASE_URL"])._replace(path=f"/{name}").geturl()
    env = {**test_env, "DATABASE_URL": url}

    def flask_db(*args):
        out = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi:app", "db", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]

    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        flask_db("upgrade", "0002")
        conn = psycopg2.connect(url)
        conn.autocommit = True
        try:
            _old_shape_rows(conn)
            flask_db("upgrade")
            rows = d_rows(conn, "SELECT d.name, q.observed_at::date::text, q.price_usd::text FROM quotes q "
                                "JOIN datasets d ON d.id = q.dataset_id ORDER BY 1, 2")
            assert rows == [("coingecko:markets", "2024-01-01", "42000"),
                            ("csv:a/cmc.csv", "2018-01-01", "13000"), ("csv:a/cmc.csv", "2018-01-02", "14000"),
                            ("csv:binance.csv", "2018-01-03", "15000"), ("csv:binance.csv", "2018-01-04", "16000"),
                            ("csv:unknown-file", "2018-01-05", "17000")]
            latest = d_rows(conn, "SELECT d.name, l.observed_at::date::text FROM latest_quotes l "
                                  "JOIN datasets d ON d.id = l.dataset_id ORDER BY 1")
            assert latest == [("coingecko:markets", "2024-01-01"), ("csv:a/cmc.csv", "2018-01-02"),
                              ("csv:binance.csv", "2018-01-04"), ("csv:unknown-file", "2018-01-05")]
            provenance = d_rows(conn, "SELECT name, source, files, native_interval::text FROM datasets ORDER BY name")
            assert provenance == [("coingecko:markets", "coingecko", None, None),
                                  ("csv:a/cmc.csv", "csv", ["a/cmc.csv"], "1 day"),
                                  ("csv:binance.csv", "csv", ["binance.csv"], "1 day"),
                                  ("csv:unknown-file", "csv", None, None)]
            assert d_rows(conn, "SELECT d.name, da.rows FROM dataset_assets da JOIN datasets d ON d.id = da.dataset_id "
                                "ORDER BY 1") == [("coingecko:markets", 1), ("csv:a/cmc.csv", 2), ("csv:binance.csv", 2),
                                                  ("csv:unknown-file", 1)]
            assert d_rows(conn, "SELECT source, latest_quotes FROM source_quote_stats ORDER BY 1") == [
                ("coingecko", 1), ("csv", 3)]
            # the same day from two files now coexists
            with conn.cursor() as cur:
                cur.execute("INSERT INTO quotes (asset_id, source, dataset_id, price_usd, observed_at, fetched_at, "
                            "run_id, payload_hash) SELECT asset_id, source, (SELECT id FROM datasets WHERE "
                            "name = 'csv:binance.csv'), 1, observed_at, now(), run_id, 'x' FROM quotes "
                            "WHERE observed_at = '2018-01-01'")
            assert d_rows(conn, "SELECT count(*) FROM quotes WHERE observed_at = '2018-01-01'") == [(2,)]
            flask_db("downgrade", "0002")
            assert d_rows(conn, "SELECT count(*) FROM quotes WHERE observed_at = '2018-01-01'") == [(1,)]
        finally:
            conn.close()
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def _old_shape_rows(conn) -> None:
    """0002-shaped data: quotes unique on (asset, source, observed_at); CSV rows know their file only
    through the raw payload of their chunk (run_id + payload_hash)."""
    run_csv, run_cg = d.run(conn, "csv"), d.run(conn, "coingecko")
    btc = d.asset(conn, "bitcoin", "BTC", "Bitcoin")
    t = datetime(2018, 1, 1, tzinfo=timezone.utc)
    with conn.cursor() as cur:
        for file, chunk in (("a/cmc.csv", "h1"), ("binance.csv", "h2")):
            cur.execute("INSERT INTO raw_payloads (run_id, source, locator, content_hash, record_count) "
                        "VALUES (%s, 'csv', %s, %s, 2)", (run_csv, f'{{"file": "{file}", "start": 0}}', chunk))
        rows = [("csv", 0, "13000", run_csv, "h1"), ("csv", 1, "14000", run_csv, "h1"),
                ("csv", 2, "15000", run_csv, "h2"), ("csv", 3, "16000", run_csv, "h2"),
                ("csv", 4, "17000", run_csv, "gone"), ("coingecko", 2191, "42000", run_cg, "p")]
        for source, day, price, run_id, chunk in rows:
            cur.execute("INSERT INTO quotes (asset_id, source, price_usd, observed_at, fetched_at, run_id, payload_hash) "
                        "VALUES (%s, %s, %s, %s, now(), %s, %s)", (btc, source, price, t + timedelta(days=day), run_id, chunk))
        # old latest: one row per (asset, source); each dataset gets its own newest row after the upgrade
        cur.execute("INSERT INTO latest_quotes (asset_id, source, price_usd, observed_at, fetched_at, run_id, payload_hash) "
                    "VALUES (%s, 'csv', 16000, %s, now(), %s, 'h2'), (%s, 'coingecko', 42000, %s, now(), %s, 'p')",
                    (btc, t + timedelta(days=3), run_csv, btc, t + timedelta(days=2191), run_cg))


def d_rows(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()
