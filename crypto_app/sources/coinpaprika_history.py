"""CoinPaprika history: one coin's price, 24 h volume and market cap over a time range.

Endpoint  GET {COINPAPRIKA_BASE_URL}/tickers/{id}/historical?start={RFC3339}&end={RFC3339}&interval=1d|1h
          &limit={n}&quote=usd. `interval` is always sent: the default (5m) fails on the free plan with 402.
Auth      as crypto_app.sources.coinpaprika.
Shape     [{"timestamp": "2018-03-01T00:00:00Z", "price", "volume_24h", "market_cap"}, ...].
Windows   at most LIMIT (5000) points per request, and at most 365 days (one request per coin and year).
          Only points inside [start, end) are kept.
Reach     the free plan serves daily data for the last year and hourly data for the last day; anything
          beyond answers 402, and the window is marked `unavailable` with CoinPaprika's message.
Dataset   coinpaprika:historical:<interval> (1d and 1h points never share a dataset)
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterator

from .base import Batch, PermanentSourceError, Source, content_hash
from .history import INTERVALS, Unavailable, beyond_plan, utc
from .http import HttpClient
from .coinpaprika import slug_hint

PATH = "/tickers/{id}/historical"
LIMIT = 5000
FINALITY_DELAY = timedelta(minutes=10)   # assumed like CoinGecko's (tickers refresh every 5 min on the free plan)
FREE_REACH = {"1d": timedelta(days=365), "1h": timedelta(days=1)}     # the free plan (no key)
FIELD_MAP = {"external_id": "id", "symbol": "symbol", "name": "name", "price_usd": "price",
             "market_cap_usd": "market_cap", "volume_24h_usd": "volume_24h", "observed_at": "timestamp"}


def window_size(interval: str) -> timedelta:
    return min(timedelta(days=365), INTERVALS[interval] * LIMIT)


def rfc3339(moment: datetime) -> str:
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


class CoinPaprikaHistorySource(Source):
    name = "coinpaprika"
    endpoint = "historical"
    dataset_per_interval = True

    def client(self) -> HttpClient:
        key = self.settings.coinpaprika_api_key
        return HttpClient(self.settings.http_timeout_seconds, {"Authorization": key} if key else {},
                          throttle=self.throttle, on_http_status=self.on_http_status, name=self.name)

    def fetch_window(self, external_id: str, start: datetime, end: datetime, interval: str,
                     identity: dict | None = None, now: datetime | None = None, provisional: bool = False) -> Batch:
        """`provisional` changes nothing here: CoinPaprika answers grid points only (the caller flags
        those younger than the finality delay)."""
        start, end = utc(start), utc(end)
        path = PATH.format(id=external_id)
        # `end` is inclusive upstream: ask up to the last second before the window's end
        params = {"start": rfc3339(start), "end": rfc3339(end - timedelta(seconds=1)),
                  "interval": interval, "limit": LIMIT, "quote": "usd"}
        http = self.client()
        try:
            body, raw = http.get_json(self.settings.coinpaprika_base_url + path, params)
        except PermanentSourceError as exc:
            if beyond_plan(exc):
                raise Unavailable(str(exc), status=exc.status) from None
            raise
        finally:
            http.close()
        if not isinstance(body, list):
            raise PermanentSourceError(f"coinpaprika sent a {type(body).__name__} instead of a list on {path}: "
                                       f"{http.mask(repr(body)[:200])}")
        records, invalid = [], []
        for item in body:
            if not isinstance(item, dict):
                invalid.append(({"value": item}, "not a JSON object"))
                continue
            records.append({"id": external_id, **(identity or {}), **item})
        locator = {"path": path, "start": params["start"], "end": params["end"], "interval": interval}
        batch = Batch(records=records, raw=body, locator=locator, next_cursor={}, content_hash=content_hash(raw),
                      done=True, invalid=invalid)
        batch.records = [r for r in records if _inside(r.get("timestamp"), start, end)]
        return batch

    def batches(self, cursor: dict) -> Iterator[Batch]:
        o = self.options
        yield self.fetch_window(o["external_id"], o["start"], o["end"], o.get("interval", "1d"), o.get("identity"))

    def normalize(self, record: dict) -> dict:
        out = {field: record.get(key) for field, key in FIELD_MAP.items()}
        out["slug_hint"] = slug_hint(out["external_id"], out["symbol"])
        return out


def _inside(timestamp, start: datetime, end: datetime) -> bool:
    """Points outside the window are left to their own window; an unparseable one goes to validation."""
    if not isinstance(timestamp, str):
        return True
    try:
        moment = utc(datetime.fromisoformat(timestamp.replace("Z", "+00:00")))
    except ValueError:
        return True
    return start <= moment < end
