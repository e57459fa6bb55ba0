"""The CSV source on its own: formats, streaming, byte offsets, cursor resume. No database needed."""
from __future__ import annotations

import hashlib
import os
import shutil
import tracemalloc
from decimal import Decimal
from pathlib import Path

import pytest

from crypto_app.config import load_settings
from crypto_app.pipeline.validate import validate_record
from crypto_app.sources.base import PermanentSourceError
from crypto_app.sources.csv_files import CsvSource
from crypto_app.sources.csv_formats import describe, identity_from_filename, slugify

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent
HEADER = b"symbol,name,price_usd,observed_at\n"


def source(data_dir, chunk=1000, **options) -> CsvSource:
    settings = load_settings({"CSV_DATA_DIR": str(data_dir), "CSV_CHUNK_ROWS": str(chunk)})
    return CsvSource(settings, **options)


def run(data_dir, cursor=None, chunk=1000, **options) -> list:
    return list(source(data_dir, chunk, **options).batches(cursor or {}))


def records(batches) -> list[dict]:
    """The records of the batches, also of chunks read column-wise (Batch.block)."""
    return [r for b in batches for r in (b.block.records(b.locator["file"]) if b.block is not None else b.records)]


def normalized(data_dir, batches) -> list[dict]:
    src = source(data_dir)
    return [src.normalize(r) for r in records(batches)]


def rows(n, start=0) -> bytes:
    return b"".join(b"C%d,Coin %d,%d.5,2024-01-01T00:00:00Z\n" % (i, i, i) for i in range(start, start + n))


def copy_fixture(tmp_path, fixture, name) -> Path:
    target = tmp_path / name
    shutil.copy(FIXTURES / fixture, target)
    return target


def clean(record):
    data, errors = validate_record(record)
    assert errors is None, (record, errors)
    return data


# -- the three real formats ---------------------------------------------------------------------------

def test_cryptodatadownload_banner_unix_ms_and_pair_symbol(tmp_path):
    copy_fixture(tmp_path, "csv_cryptodatadownload_Binance_BTCUSDT_d.csv", "Binance_BTCUSDT_d.csv")
    batches = run(tmp_path)
    recs = records(batches)
    assert len(recs) == 2052 and not any(b.invalid for b in batches)
    assert recs[0]["_line"] == 3 and recs[0]["Close"] == "28028.53"   # line 1 banner, line 2 header
    first = source(tmp_path).normalize(recs[0])
    assert first["price_usd"] == "28028.53" and first["open_usd"] == "28348.6"
    assert first["observed_at"] == "1680134400000"              # Unix (ms) preferred over the bare Date
    assert first["volume_usd"] == "2808471938.6424427"          # the day's USDT (quote) volume, not BTC
    assert first["volume_24h_usd"] is None                      # a candle's volume is not a rolling 24h volume
    assert (first["symbol"], first["name"], first["external_id"]) == ("BTC", None, None)
    data = clean(first)
    assert data["observed_at"].isoformat() == "2023-03-30T00:00:00+00:00"
    last = clean(source(tmp_path).normalize(recs[-1]))
    assert last["observed_at"].date().isoformat() == "2017-08-17"


def test_kaggle_cmc_name_from_file_thousands_and_crlf(tmp_path):
    copy_fixture(tmp_path, "csv_kaggle_cmc_bitcoin_cash_price.csv", "bitcoin_cash_price.csv")
    batches = run(tmp_path)
    out = normalized(tmp_path, batches)
    assert len(out) == 213
    first = out[0]
    assert first["observed_at"] == "Feb 20, 2018" and first["price_usd"] == "1418.73"
    assert first["market_cap_usd"] == "26,199,800,000"          # raw: validation parses it
    assert (first["name"], first["slug_hint"], first["symbol"]) == ("Bitcoin Cash", "bitcoin-cash", None)
    data = clean(first)
    assert data["market_cap_usd"] == Decimal("26199800000") and data["volume_usd"] == Decimal("820947000")
    assert all("\r" not in v for r in records(batches) for v in r.values() if isinstance(v, str))
    assert clean(out[-1])["market_cap_usd"] is None             # "-" on the first listed days


def test_kaggle_coin_file_columns_in_its_own_order(tmp_path):
    copy_fixture(tmp_path, "csv_kaggle_coin_Tether.csv", "coin_Tether.csv")
    out = normalized(tmp_path, run(tmp_path))
    assert len(out) == 2318
    first = out[0]
    assert (first["symbol"], first["name"], first["slug_hint"]) == ("USDT", "Tether", "tether")
    assert first["observed_at"] == "2015-02-26 23:59:59"
    assert (first["open_usd"], first["high_usd"], first["price_usd"]) == (
        "1.21042001247406", "1.2123199701309204", "1.205739974975586")
    assert first["market_cap_usd"] == "303364.184" and first["volume_usd"] == "5.955460071563721"
    assert all(validate_record(r)[1] is None for r in out)


def test_generic_api_export_with_id_column(tmp_path):
    (tmp_path / "markets.csv").write_text(
        "id,symbol,name,current_price,market_cap,total_volume,market_cap_rank,price_change_percentage_24h,"
        "circulating_supply,max_supply,last_updated,extra\n"
        "bitcoin-cash,bch,Bitcoin Cash,497.8,9850000000,1900000000,17,-2.5,19790000,21000000,"
        "2024-11-22T12:00:00Z,ignored\n")
    out = normalized(tmp_path, run(tmp_path))[0]
    assert out["external_id"] == "bitcoin-cash" and out["slug_hint"] == "bitcoin-cash"
    assert (out["price_usd"], out["market_cap_rank"], out["change_24h_pct"], out["max_supply"]) == (
        "497.8", "17", "-2.5", "21000000")
    assert "extra" not in out and clean(out)["change_24h_pct"] == Decimal("-2.5")
    assert (out["volume_24h_usd"], out["volume_usd"]) == ("1900000000", None)   # total_volume: a rolling 24h


@pytest.mark.parametrize("header, field", [
    ("Volume USDT", "volume_usd"), ("Volume USDC", "volume_usd"), ("Volume BUSD", "volume_usd"),
    ("Volume", "volume_usd"), ("Volume (USD)", "volume_usd"), ("volume_usd", "volume_usd"),
    ("Volume USD", "volume_usd"), ("Volume To", "volume_usd"),
    ("volume_24h_usd", "volume_24h_usd"), ("volume_24h", "volume_24h_usd"), ("24h Volume", "volume_24h_usd"),
    ("total_volume", "volume_24h_usd"),
])
def test_a_candle_volume_is_the_intervals_and_only_a_24h_header_is_a_24h_volume(header, field):
    fmt = describe(("Date", "Symbol", "Close", header), "prices.csv")
    assert {f: c for f, c in fmt.fields.items() if f.startswith("volume")} == {field: header}


def test_the_base_currency_volume_is_not_a_usd_volume():
    fmt = describe(("Unix", "Date", "Symbol", "Close", "Volume BTC", "Volume USDT"), "Binance_BTCUSDT_1h.csv")
    assert fmt.fields["volume_usd"] == "Volume USDT" and "volume_24h_usd" not in fmt.fields
    assert (fmt.file_symbol, fmt.quote) == ("BTC", "USDT")
    only_base = describe(("Date", "Symbol", "Close", "Volume BTC"), "Binance_BTCUSDT_d.csv")
    assert not any(f.startswith("volume") for f in only_base.fields)


def test_identity_from_file_name_table():
    assert identity_from_filename("sub/bitcoin_cash_price.csv")["name"] == "Bitcoin Cash"
    assert identity_from_filename("coin_Tether.csv")["name"] == "Tether"
    assert identity_from_filename("Binance_BTCUSDT_d.csv") == {"name": None, "symbol": "BTC", "quote": "USDT"}
    assert identity_from_filename("Bitstamp_ETHUSD_1h.csv")["symbol"] == "ETH"
    assert identity_from_filename("prices.csv") == {"name": None, "symbol": None, "quote": None}
    assert slugify("Bitcoin Cash") == "bitcoin-cash" and slugify(None) is None


def test_pair_quoted_in_another_currency_is_quarantined(tmp_path):
    (tmp_path / "Binance_ETHBTC_d.csv").write_text(
        "https://www.CryptoDataDownload.com\nUnix,Date,Symbol,Open,High,Low,Close,Volume ETH,Volume BTC\n"
        "1680134400000,2023-03-30,ETHBTC,0.064,0.065,0.063,0.0641,1000,64\n")
    [batch] = run(tmp_path)
    assert batch.records == [] and "quoted in BTC" in batch.invalid[0][1]


def test_sample_markets_ships_and_has_a_symbol_collision():
    out = normalized(ROOT / "data", run(ROOT / "data", files=["sample_markets.csv"]))
    assert len(out) >= 20
    cleaned = [clean(r) for r in out]
    assert {"BTC", "ETH", "USDT", "SOL", "XRP"} <= {r["symbol"] for r in cleaned}
    uni = sorted(r["name"] for r in cleaned if r["symbol"] == "UNI")
    assert len(uni) == 2 and uni[0] != uni[1]
    assert all(r["observed_at"].utcoffset().total_seconds() == 0 for r in cleaned)


# -- CSV dialect details ------------------------------------------------------------------------------

def test_bom_and_crlf(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbfsymbol,price_usd,observed_at\r\nBTC,1.5,2024-01-01\r\nETH,2.5,2024-01-01\r\n")
    recs = records(run(tmp_path))
    assert [r["symbol"] for r in recs] == ["BTC", "ETH"] and recs[1]["observed_at"] == "2024-01-01"
    assert recs[1]["_line"] == 3


def test_quoted_commas_newlines_and_blank_lines(tmp_path):
    (tmp_path / "a.csv").write_bytes(
        HEADER + b'X,"Foo, Inc",1.0,2024-01-01\n\n\nY,"multi\nline\r\nname",2.0,2024-01-01\n  \nZ,Zed,3.0,2024-01-01\n')
    recs = records(run(tmp_path))
    assert [r["name"] for r in recs] == ["Foo, Inc", "multi\nline\r\nname", "Zed"]
    assert [r["_line"] for r in recs] == [2, 5, 9]


@pytest.mark.parametrize("delimiter", [b";", b"\t", b"|"])
def test_other_delimiters_are_detected(tmp_path, delimiter):
    (tmp_path / "a.csv").write_bytes(delimiter.join([b"Date", b"Name", b"Close", b"Volume"]) + b"\n" +
                                     delimiter.join([b"2024-01-01", b"Bitcoin", b"1,5", b"10"]) + b"\n")
    out = normalized(tmp_path, run(tmp_path))[0]
    assert (out["name"], out["price_usd"], out["volume_usd"]) == ("Bitcoin", "1,5", "10")


def test_extra_and_missing_cells(tmp_path):
    (tmp_path / "a.csv").write_bytes(HEADER + b"A,Aa,1.0,2024-01-01,surplus,more\nB,Bb,2.0\n")
    batches = run(tmp_path)
    a, b = records(batches)
    assert set(a) == {"symbol", "name", "price_usd", "observed_at", "_line", "_file"} and a["observed_at"] == "2024-01-01"
    assert b["price_usd"] == "2.0" and b["observed_at"] is None
    assert not batches[0].invalid


def test_cp1252_and_latin1_fallback(tmp_path):
    (tmp_path / "a.csv").write_bytes(HEADER + "E,Café €,1.0,2024-01-01\n".encode("cp1252") + b"F,x\x81y,2.0,2024-01-01\n"
                                     + "G,Ünïcode,3.0,2024-01-01\n".encode())
    [batch] = run(tmp_path)
    assert [r["name"] for r in batch.records] == ["Café €", "x\x81y", "Ünïcode"]
    assert "cp1252" in batch.locator["encoding"] and "latin-1" in batch.locator["encoding"]


def test_garbage_rows_are_quarantined_and_good_rows_load(tmp_path):
    long_line = b"L," + b"9" * (3 << 20) + b"\n"
    wide = b",".join([b"W"] * 10_000) + b"\n"
    (tmp_path / "a.csv").write_bytes(HEADER + rows(1) + b"bad\x00\x00\x01\xff,row\n" + rows(1, 1) + wide + long_line
                                     + rows(1, 2))
    [batch] = run(tmp_path)
    assert [r["symbol"] for r in batch.records] == ["C0", "C1", "C2"]
    assert [r["_line"] for r in batch.records] == [2, 4, 7]
    reasons = {entry["_line"]: reason for entry, reason in batch.invalid}
    assert set(reasons) == {3, 5, 6}
    assert "binary" in reasons[3] and "10000 cells" in reasons[5] and "longer than" in reasons[6]
    assert all(len(entry["raw"]) <= 500 for entry, _ in batch.invalid)
    assert batch.locator["end"] == (tmp_path / "a.csv").stat().st_size


def test_file_without_a_header_is_quarantined_once(tmp_path):
    (tmp_path / "notes.csv").write_text("just,some\nwords,here\n")
    [batch] = run(tmp_path)
    assert batch.records == [] and "no header" in batch.invalid[0][1] and batch.next_cursor["files"]["notes.csv"]["done"]
    assert run(tmp_path, batch.next_cursor) == []


# -- chunks, offsets, cursor ---------------------------------------------------------------------------

def test_chunks_cover_the_file_exactly(tmp_path):
    body = HEADER + b"".join(b'S%d,"name\n%d",%d,2024-01-01\r\n' % (i, i, i) if i % 7 == 0 else rows(1, i)
                             for i in range(100))
    path = tmp_path / "a.csv"
    path.write_bytes(b"banner line\n" + body)
    data = path.read_bytes()
    batches = run(tmp_path, chunk=9)
    assert len(batches) == 12 and [b.done for b in batches] == [False] * 11 + [True]
    position = 0
    for batch in batches:
        loc = batch.locator
        assert loc["start"] == position and loc["end"] > loc["start"]
        assert batch.content_hash == hashlib.sha256(data[loc["start"]:loc["end"]]).hexdigest()
        assert loc["first_line"] == data[:loc["start"]].count(b"\n") + 1
        entry = batch.next_cursor["files"]["a.csv"]
        assert entry["offset"] == loc["end"] and entry["prefix_sha256"] == hashlib.sha256(data[:loc["end"]]).hexdigest()
        position = loc["end"]
    assert position == len(data)
    assert [r["symbol"] for r in records(batches)] == [f"S{i}" if i % 7 == 0 else f"C{i}" for i in range(100)]
    assert batches[-1].next_cursor["files"]["a.csv"] == {
        "size": len(data), "offset": len(data), "prefix_sha256": hashlib.sha256(data).hexdigest(), "rows": 100, "done": True}


def test_files_are_found_recursively_in_path_order(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("sub/a.csv", "b.csv", "a.csv"):
        (tmp_path / name).write_bytes(HEADER + rows(1))
    (tmp_path / "readme.txt").write_text("not data")
    batches = run(tmp_path)
    assert [b.locator["file"] for b in batches] == ["a.csv", "b.csv", "sub/a.csv"]
    assert [b.done for b in batches] == [False, False, True]


def test_unchanged_file_is_skipped_and_changed_file_reread(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(HEADER + rows(5))
    cursor = run(tmp_path)[-1].next_cursor
    assert run(tmp_path, cursor) == []
    path.write_bytes(HEADER + rows(5).replace(b"C0,", b"D0,"))      # same size, other content
    again = run(tmp_path, cursor)
    assert again[0].locator["start"] == 0 and records(again)[0]["symbol"] == "D0" and len(records(again)) == 5


def test_grown_file_resumes_with_only_new_rows(tmp_path):
    (tmp_path / "a.csv").write_bytes(HEADER + rows(5))
    (tmp_path / "b.csv").write_bytes(HEADER + rows(3))
    cursor = run(tmp_path)[-1].next_cursor
    old_size = (tmp_path / "a.csv").stat().st_size
    with open(tmp_path / "a.csv", "ab") as fh:
        fh.write(rows(2, 5))
    batches = run(tmp_path, cursor)
    assert [b.locator["file"] for b in batches] == ["a.csv"] and batches[0].locator["start"] == old_size
    assert [(r["symbol"], r["_line"]) for r in records(batches)] == [("C5", 7), ("C6", 8)]
    entry = batches[-1].next_cursor["files"]["a.csv"]
    assert entry["rows"] == 7 and entry["done"] and batches[-1].next_cursor["files"]["b.csv"] == cursor["files"]["b.csv"]


def test_interrupted_run_resumes_without_duplicates(tmp_path):
    (tmp_path / "a.csv").write_bytes(HEADER + rows(95))
    (tmp_path / "b.csv").write_bytes(HEADER + rows(12, 100))
    full = [(r["_file"], r["_line"], r["symbol"]) for r in records(run(tmp_path, chunk=10))]
    first = next(iter(source(tmp_path, chunk=10).batches({})))      # stop after one chunk
    rest = run(tmp_path, first.next_cursor, chunk=10)
    resumed = [(r["_file"], r["_line"], r["symbol"]) for r in records([first]) + records(rest)]
    assert len(full) == 107 and resumed == full
    assert rest[0].locator["start"] == first.locator["end"]


def test_files_option_and_path_safety(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_bytes(HEADER + rows(1))
    (data / "b.csv").write_bytes(HEADER + rows(2))
    (tmp_path / "outside.csv").write_bytes(HEADER + rows(1))
    os.symlink(tmp_path / "outside.csv", data / "escape.csv")
    only_b = run(data, files=["b.csv"])
    assert [b.locator["file"] for b in only_b] == ["b.csv"] and len(records(only_b)) == 2
    assert [b.locator["file"] for b in run(data, files=[str(data / "a.csv")])] == ["a.csv"]
    for bad in ("../outside.csv", str(tmp_path / "outside.csv"), "escape.csv", "sub/../../outside.csv"):
        with pytest.raises(PermanentSourceError, match="outside"):
            run(data, files=[bad])
    with pytest.raises(PermanentSourceError, match="no such file"):
        run(data, files=["missing.csv"])
    assert [b.locator["file"] for b in run(data)] == ["a.csv", "b.csv"]    # the escaping link is not followed


# -- scale ---------------------------------------------------------------------------------------------

def test_a_large_file_streams_with_flat_memory(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "wb") as fh:
        fh.write(b"symbol,name,price_usd,observed_at\n")
        line = b"BTC,Bitcoin,%d.5,2024-01-01T00:00:00.000000+00:00\n"
        for block in range(500):
            fh.write(b"".join(line % i for i in range(block * 1000, block * 1000 + 1000)))
    size = path.stat().st_size
    assert size > 26_000_000      # bigger than the memory budget: reading it whole would fail the test
    tracemalloc.start()
    try:
        count, end = 0, 0
        for batch in source(tmp_path, chunk=5000).batches({}):
            count += batch.size
            end = batch.locator["end"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 500_000 and end == size
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
