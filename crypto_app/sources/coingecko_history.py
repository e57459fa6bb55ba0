"""CoinGecko history: one coin's prices, market caps and volumes over a time range.

Endpoint  GET {COINGECKO_BASE_URL}/coins/{id}/market_chart/range?vs_currency=usd&from={unix s}&to={unix s}
Auth      as crypto_app.sources.coingecko (header only).
Shape     {"prices": [[unix_ms, v], ...], "market_caps": [...], "total_volumes": [...]}. Granularity is
          chosen by the span: <= 1 day 5-minute, <= 90 days hourly, beyond daily at 00:00 UTC. The last
          point of a range reaching today is "now", not a bucket.
Windows   daily: the request always spans more than 90 days (`from` is moved back, within the plan's reach)
          so the answer is daily; hourly: at most 90 days and more than 1 day (not 5-minute points). Only points inside [start, end) and on the
          interval's grid are kept (the "now" point is not a candle); a point in the raw payload that is
          not kept is not lost: the payload is stored whole.
Points    the three series are joined by timestamp; points may arrive out of order and with duplicated
          timestamps (the last one wins); a null value stays null (validation rejects a null price with
          its reason; a null market cap or volume is stored as unknown).
Reach     public/demo plans serve the past 365 days (COINGECKO_HISTORY_DAYS); see sources/history.py.
Dataset   coingecko:market_chart:<interval> (1d and 1h points never share a dataset)
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterator

from .base import Batch, PermanentSourceError, Source, content_hash
from .coingecko import auth_headers
from .history import INTERVALS, Unavailable, aligned, beyond_plan, utc
from .http import HttpClient

PATH = "/coins/{id}/market_chart/range"
DAILY_MIN_SPAN = timedelta(days=91)      # > 90 days: CoinGecko answers daily points
HOURLY_MAX_SPAN = timedelta(days=90)
HOURLY_MIN_SPAN = timedelta(days=1, hours=1)   # > 1 day: hourly, not 5-minute points
SERIES = {"prices": "price", "market_caps": "market_cap", "total_volumes": "total_volume"}
PLAN_REACH_DAYS = {"public": 365, "demo": 365, "pro": None}
FINALITY_DELAY = timedelta(minutes=10)   # a point is final 10 min after its time (the previous UTC day at 00:10)

FIELD_MAP = {"external_id": "id", "symbol": "symbol", "name": "name", "slug_hint": "id",
             "price_usd": "price", "market_cap_usd": "market_cap", "volume_24h_usd": "total_volume",
             "observed_at": "t"}


def reach_start(plan: str, now: datetime) -> datetime | None:
    days = PLAN_REACH_DAYS.get(plan)
    return None if days is None else now - timedelta(days=days)


def window_size(interval: str) -> timedelta:
    return timedelta(days=365) if interval == "1d" else HOURLY_MAX_SPAN


def merge_points(body: dict) -> list[dict]:
    """{t_ms: {"t", "price", "market_cap", "total_volume"}} from the three series, ordered by time."""
    points: dict = {}
    for series, key in SERIES.items():
        for item in body.get(series) or []:
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], (int, float)):
                continue
            points.setdefault(int(item[0]), {"t": int(item[0])})[key] = item[1]
    return [points[t] for t in sorted(points)]


class CoinGeckoHistorySource(Source):
    name = "coingecko"
    endpoint = "market_chart"
    dataset_per_interval = True

    def client(self) -> HttpClient:
        s = self.settings
        return HttpClient(s.http_timeout_seconds, auth_headers(s.coingecko_api_plan, s.coingecko_api_key),
                          throttle=self.throttle, on_http_status=self.on_http_status, name=self.name)

    def fetch_window(self, external_id: str, start: datetime, end: datetime, interval: str,
                     identity: dict | None = None, now: datetime | None = None, provisional: bool = False) -> Batch:
        """`provisional`: also keep the answer's last point when it is "now" (off the daily grid): the
        caller stores it flagged provisional, until the final point replaces it."""
        start, end, step = utc(start), utc(end), INTERVALS[interval]
        now = now or datetime.now(timezone.utc)
        frm = start
        min_span = DAILY_MIN_SPAN if interval == "1d" else HOURLY_MIN_SPAN
        if end - frm < min_span:        # a shorter span would answer a finer granularity
            frm = end - min_span
            floor = reach_start(self.settings.coingecko_api_plan, now)
            if floor is not None and frm < floor:
                frm = max(start, floor + timedelta(minutes=5))
        path = PATH.format(id=external_id)
        params = {"vs_currency": "usd", "from": int(frm.timestamp()), "to": int(end.timestamp())}
        http = self.client()
        try:
            body, raw = http.get_json(self.settings.coingecko_base_url + path, params)
        except PermanentSourceError as exc:
            if beyond_plan(exc):
                raise Unavailable(str(exc), status=exc.status) from None
            raise
        finally:
            http.close()
        if not isinstance(body, dict) or "prices" not in body:
            raise PermanentSourceError(f"coingecko sent no prices on {path}: {http.mask(repr(body)[:200])}")
        records = []
        points = merge_points(body)
        for point in points:
            moment = datetime.fromtimestamp(point["t"] / 1000, timezone.utc)
            now_point = provisional and point is points[-1]
            if start <= moment < end and (interval != "1d" or aligned(moment, step) or now_point):
                records.append({"id": external_id, **(identity or {}), **point})
        locator = {"path": path, "from": params["from"], "to": params["to"], "interval": interval}
        return Batch(records=records, raw=body, locator=locator, next_cursor={}, content_hash=content_hash(raw),
                     done=True)

    def batches(self, cursor: dict) -> Iterator[Batch]:
        o = self.options
        yield self.fetch_window(o["external_id"], o["start"], o["end"], o.get("interval", "1d"), o.get("identity"))

    def normalize(self, record: dict) -> dict:
        out = {field: record.get(key) for field, key in FIELD_MAP.items()}
        out["observed_at"] = record["t"] / 1000 if isinstance(record.get("t"), (int, float)) else record.get("t")
        return out
