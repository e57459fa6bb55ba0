"""The columnar CSV path (CSV_COLUMNAR=1) and the row path (CSV_COLUMNAR=0) agree on every record of randomly
generated files: the same accept/reject decision, the same reasons, the same quality counts and the same
values as PostgreSQL stores them (a NUMERIC keeps the value and the scale of its text).

Files mix layouts (Kaggle, CoinMarketCap by file name, ';' with decimal commas, CryptoDataDownload pairs),
number forms (plain, grouped, decimal comma, ambiguous "1.234", spreadsheet multi-dot, scientific, signs),
missing tokens, bad dates, future dates, OHLC out of order, price jumps, unknown symbols, and rows the
columnar reader hands to the row reader (quoted fields, ragged rows, cp1252 bytes, blank lines)."""
from __future__ import annotations

import random
import shutil
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest

from crypto_app.pipeline.columnar import ColumnRows
from crypto_app.pipeline.identity import IdentityResolver, load_overrides
from crypto_app.pipeline.ingest import transform
from crypto_app.pipeline.plausibility import PlausibilityCheck
from crypto_app.sources.csv_files import CsvSource
from pipeline_helpers import settings_for

DATA = Path(__file__).parent.parent / "data"
NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)
COINS = [("BTC", "Bitcoin"), ("ETH", "Ethereum"), ("UNI", "Uniswap"), ("UNI", "Universe"), ("ZZQ", "")]
LAYOUTS = {
    "kaggle": ("coins_{n}.csv", ",", ["Date", "Symbol", "Name", "Open", "High", "Low", "Close", "Volume", "Marketcap"]),
    "cmc": ("bitcoin_price.csv", ",", ["Date", "Open", "High", "Low", "Close", "Volume",
                                                               "Market Cap"]),
    "semicolon": ("euro_{n}.csv", ";", ["Date", "Symbol", "Name", "Close", "Volume", "Marketcap"]),
    "pair": ("Binance_ETHUSDT_d.csv", ",", ["Unix", "Date", "Symbol", "Open", "High", "Low", "Close", "Volume ETH",
                                           "Volume USDT"]),
}


def _number(rng: random.Random, comma: bool, dirt: float) -> str:
    value = Decimal(rng.randint(0, 10 ** rng.randint(1, 12))) / Decimal(10) ** rng.randint(0, 9)
    roll = rng.random() if rng.random() < dirt else 0.0
    if roll < 0.55:
        text = f"{value:f}"
        return text.replace(".", ",") if comma else text
    if roll < 0.62:
        return f"{value:,.2f}" if not comma else f"{value:,.2f}".replace(",", " ").replace(".", ",")
    if roll < 0.68:
        return f"{value:.5E}"
    if roll < 0.74:
        return rng.choice(["1.234", "1,234", "12.500", "999,999"])
    if roll < 0.78:
        return rng.choice(["1.445.399.932.861.320", "9,92,65,40,000", "1.234,56", "1,234.56"])
    if roll < 0.86:
        return rng.choice(["", "-", "N/A", "null", " - ", "--"])
    if roll < 0.90:
        return rng.choice(["abc", "-5", "+7", "NaN", "inf", "1e999999", "0x10", " 42 ", "1_000", "$12.5"])
    return str(rng.randint(0, 999))


def _date(rng: random.Random, day: datetime, layout: str, dirt: float) -> str:
    roll = rng.random() if rng.random() < dirt else 0.5
    if roll < 0.04:
        return rng.choice(["", "not a date", "2023-02-30", "31/31/2020"])
    if roll < 0.06:
        return (NOW + timedelta(days=400)).strftime("%Y-%m-%d")
    if layout == "cmc":
        return day.strftime("%b %d, %Y")
    return day.strftime(rng.choice(["%Y-%m-%d", "%Y-%m-%d %H:%M:%S"]) if roll < 0.5 else "%Y-%m-%d")


def _file(rng: random.Random, layout: str, rows: int, dirt: float) -> tuple[str, bytes]:
    name, delimiter, header = LAYOUTS[layout]
    comma = layout == "semicolon"
    lines = [delimiter.join(header)]
    day = datetime(2021, 1, 1, tzinfo=timezone.utc)
    price = Decimal("100")
    for i in range(rows):
        day += timedelta(days=rng.choice([0, 1, 1, 1]))
        symbol, coin = rng.choice(COINS)
        if rng.random() < 0.05:
            price *= 50
        cells = {"Date": _date(rng, day, layout, dirt), "Symbol": symbol, "Name": coin,
                 "Unix": str(int(day.timestamp() * 1000)), "Close": _number(rng, comma, dirt)}
        if rng.random() < 0.5:
            cells["Close"] = f"{price:f}".replace(".", "," if comma else ".")
        for column in ("Open", "High", "Low", "Volume", "Marketcap", "Market Cap", "Volume ETH", "Volume USDT"):
            cells[column] = _number(rng, comma, dirt)
        if rng.random() < 0.3:           # an ordered candle
            lo, hi = sorted([Decimal(rng.randint(1, 10 ** 6)) / 100, Decimal(rng.randint(1, 10 ** 6)) / 100])
            cells.update({"Low": f"{lo:f}", "High": f"{hi:f}", "Open": f"{lo:f}", "Close": f"{hi:f}"})
            if comma:
                cells.update({k: cells[k].replace(".", ",") for k in ("Low", "High", "Open", "Close")})
        if layout == "pair":
            cells["Symbol"] = "ETH/USDT"
        line = delimiter.join(_cell(cells.get(column, ""), delimiter) for column in header)
        roll = rng.random() if rng.random() < dirt else 1.0
        if roll < 0.01:
            line = line.replace(cells["Date"], f'"{cells["Date"]}"', 1) if cells["Date"] else line
        elif roll < 0.015:
            line += delimiter + "extra"
        elif roll < 0.02:
            line = delimiter.join(line.split(delimiter)[:-2])
        elif roll < 0.025:
            lines.append("")
        elif roll < 0.03:
            lines.append(delimiter * (len(header) - 1))
        lines.append(line)
    body = "\n".join(lines) + "\n"
    data = body.encode("utf-8")
    if rng.random() < 0.2:
        data = data.replace(b"Universe", "Univ\u00e9rse".encode("cp1252"), 1)
    return name.format(n=rng.randint(0, 9)), data


def _cell(text: str, delimiter: str) -> str:
    """As a CSV writer writes a cell: quoted when it holds the delimiter ("Feb 20, 2018", "1,234.5")."""
    return f'"{text}"' if delimiter in text else text


def _stored_number(value) -> tuple | None:
    """What a NUMERIC column keeps of a value: the number and the scale of its text."""
    if value is None:
        return None
    number = Decimal(str(value))
    return number, max(0, -number.as_tuple().exponent)


def _outcome(settings, data_dir: Path, conn) -> dict:
    source = CsvSource(settings)
    resolver = IdentityResolver(conn, "csv", load_overrides(data_dir))
    checks = PlausibilityCheck(settings.plausibility, "csv", None, clock=lambda: NOW)
    stored, rejected, quality, columnar = [], [], Counter(), 0
    for batch in source.batches({}):
        columnar += batch.block is not None
        rows, rejections, counts = transform(source, resolver, batch, checks, dataset_id=1)
        quality.update(counts)
        if isinstance(rows, ColumnRows):
            table = rows.table.to_pylist()
            rows = [{**r, "asset_id": int(r["asset_id"]), "observed_at": datetime.fromisoformat(r["observed_at"]),
                     "flags": r["flags"][1:-1].split(",") if r["flags"] else []} for r in table]
        for row in rows:
            stored.append((row["asset_id"], row["observed_at"], tuple(sorted(row.get("flags") or [])),
                           tuple(_stored_number(row.get(c)) for c in ("price_usd", "open_usd", "high_usd", "low_usd",
                                                                      "market_cap_usd", "volume_24h_usd",
                                                                      "volume_usd"))))
        for reason, errors, record, _ in rejections:
            rejected.append((record.get("_line"), reason, repr(sorted(errors.items()))))
    return {"stored": stored, "rejected": sorted(rejected, key=repr), "quality": dict(quality), "columnar": columnar}


@pytest.mark.parametrize("seed", range(16))
def test_columnar_and_row_paths_agree(test_env, db_conn, tmp_path, seed):
    rng = random.Random(seed)
    layout = list(LAYOUTS)[seed % len(LAYOUTS)]
    dirt = 1.0 if seed < 8 else 0.05          # dirty files, and mostly clean ones (most chunks column-wise)
    name, data = _file(rng, layout, rng.randint(150, 600), dirt)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / name).write_bytes(data)
    shutil.copy(DATA / "asset_overrides.json", data_dir / "asset_overrides.json")
    chunk = rng.choice([7, 23, 61])       # small chunks: columnar ones and row-read ones in every file
    conn = psycopg2.connect(settings_for(test_env).libpq_url)
    conn.autocommit = True
    try:
        outcomes = [_outcome(settings_for(test_env, CSV_DATA_DIR=data_dir, CSV_CHUNK_ROWS=chunk, CSV_COLUMNAR=flag),
                             data_dir, conn) for flag in (0, 1)]
    finally:
        conn.close()
    rows, columns = outcomes
    assert rows["columnar"] == 0 and columns["columnar"] > 0, "both paths ran"
    assert columns["stored"] == rows["stored"]
    assert columns["rejected"] == rows["rejected"]
    assert columns["quality"] == rows["quality"]
    assert rows["stored"] and (rows["rejected"] or dirt < 1)


def test_both_paths_store_the_same_rows_in_postgresql(test_env, db_conn, tmp_path):
    """The same comparison through the whole pipeline: what lands in quotes and rejected_records."""
    from pipeline_helpers import run_inline, table

    rng = random.Random(99)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(DATA / "asset_overrides.json", data_dir / "asset_overrides.json")
    for layout, dirt in (("kaggle", 0.05), ("cmc", 1.0), ("semicolon", 0.05)):
        name, data = _file(rng, layout, 400, dirt)
        (data_dir / f"{layout}_{name}" if layout != "cmc" else data_dir / name).write_bytes(data)
    stored = ("SELECT a.slug, d.name, q.observed_at, q.price_usd::text, q.open_usd::text, q.high_usd::text, "
              "q.low_usd::text, q.volume_24h_usd::text, q.volume_usd::text, q.market_cap_usd::text, q.flags FROM quotes q "
              "JOIN assets a ON a.id = q.asset_id JOIN datasets d ON d.id = q.dataset_id ORDER BY 1, 2, 3")
    rejected = "SELECT reason, errors::text, record::text FROM rejected_records ORDER BY 1, 2, 3"
    outcomes = []
    for flag in (0, 1):
        settings = settings_for(test_env, CSV_DATA_DIR=data_dir, CSV_CHUNK_ROWS=50, CSV_COLUMNAR=flag,
                                PLAUSIBILITY_CSV="future_time:soft")
        _, outcome = run_inline(settings, "csv")
        outcomes.append((table(db_conn, stored), table(db_conn, rejected), outcome.fetched, outcome.loaded))
        with db_conn.cursor() as cur:
            cur.execute("TRUNCATE rejected_records, raw_payloads, quotes, latest_quotes, dataset_assets, datasets, "
                        "asset_identifiers, assets, checkpoints, etl_runs, csv_row_hashes RESTART IDENTITY CASCADE")
        db_conn.commit()
    assert outcomes[0][0] and outcomes[0][1]
    rows, columns = outcomes
    assert columns[2:] == rows[2:]
    assert [r for r in columns[0] if r not in rows[0]] == [] and [r for r in rows[0] if r not in columns[0]] == []
    assert [r for r in columns[1] if r not in rows[1]] == [] and [r for r in rows[1] if r not in columns[1]] == []
