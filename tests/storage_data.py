"""Helpers for the storage tests: snapshot quotes written through the real load path at chosen times."""
from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg2

import api_data as d
from crypto_app.pipeline.load import LoadBatch, load_batch


def now() -> datetime:
    return datetime.now(timezone.utc)


def price(rng: random.Random) -> Decimal:
    return Decimal(rng.randint(1_000_000, 9_000_000)) / Decimal(10_000)


def write_snapshots(dsn: str, run_id: str, asset_ids: list[int], start: datetime, count: int,
                    step: timedelta = timedelta(minutes=5), seed: int = 1, source: str = "coingecko") -> dict:
    """`count` snapshots (one batch each) of every asset, `step` apart from `start`, through load_batch.
    Returns {(asset_id, observed_at): price} of what was written."""
    rng = random.Random(seed)
    written = {}
    conn = psycopg2.connect(dsn)
    try:
        for i in range(count):
            at = start + i * step
            rows = []
            for asset_id in asset_ids:
                p = price(rng)
                written[(asset_id, at)] = p
                rows.append({"asset_id": asset_id, "price_usd": p, "market_cap_usd": p * 1000,
                             "volume_24h_usd": p * 10, "observed_at": at})
            body = [{"id": a, "p": str(written[(a, at)])} for a in asset_ids]
            load_batch(conn, LoadBatch(run_id=run_id, source=source, rows=rows,
                                       content_hash=hashlib.sha256(repr(body).encode()).hexdigest(),
                                       locator={"page": i}, fetched_at=at, raw_body=body,
                                       record_count=len(rows)))
    finally:
        conn.close()
    return written


def assets(conn, n: int) -> list[int]:
    return [d.asset(conn, f"coin-{i}", f"C{i}", f"Coin {i}") for i in range(1, n + 1)]


def expected_candles(written: dict, before: datetime, width: timedelta) -> dict:
    """{(asset_id, bucket): (open, high, low, close, samples)} of the rows observed before `before`."""
    origin = datetime(2000, 1, 3, tzinfo=timezone.utc)
    out = {}
    for (asset_id, at), p in sorted(written.items(), key=lambda kv: kv[0][1]):
        if at >= before:
            continue
        bucket = origin + ((at - origin) // width) * width
        o, h, lo, c, n = out.get((asset_id, bucket), (p, p, p, p, 0))
        out[(asset_id, bucket)] = (o, max(h, p), min(lo, p), p, n + 1)
    return out
