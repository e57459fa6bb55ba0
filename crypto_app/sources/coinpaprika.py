"""CoinPaprika: every ticker from `/tickers`, in one response.

Endpoint  GET {COINPAPRIKA_BASE_URL}/tickers?quotes=USD (never a trailing slash: that answers 301 HTML)
Auth      header `Authorization: <COINPAPRIKA_API_KEY>` (no "Bearer") when a key is set; none on the free API.
Paging    none upstream: the whole list comes in one array (the free plan caps it at 2000). It is handed
          out as Batches of at most CHUNK records; the last one has done=True (an empty list, or a cursor
          already past the end, yields one empty Batch with done=True).
Cursor    {"offset": k}: records already handed out; {} starts at 0. A resumed run fetches the list again
          and skips the first k (the ranking may have moved meanwhile: identity is by id, so at worst a
          coin is seen twice or missed once). next_cursor is {"offset": k + len(chunk)}; {} on the last.
Locator   {"path": "/tickers", "offset": k, "end": k + len(chunk), "total": len(list)}.
          content_hash is the sha256 of the chunk's canonical JSON (one response feeds several batches).
Mapping   FIELD_MAP below: canonical field <- path into the ticker. Then: slug_hint is the id without its
          "<symbol>-" prefix ("btc-bitcoin" -> "bitcoin"), and max_supply 0 ("no cap") becomes None.
          Missing `quotes.USD` leaves price_usd None, which validation rejects with a reason.
"""
from __future__ import annotations

from typing import Iterator

from .base import Batch, PermanentSourceError, Source, json_hash
from .http import HttpClient

PATH = "/tickers"
CHUNK = 500

FIELD_MAP = {
    "external_id": ("id",),
    "symbol": ("symbol",),
    "name": ("name",),
    "price_usd": ("quotes", "USD", "price"),
    "market_cap_usd": ("quotes", "USD", "market_cap"),
    "volume_24h_usd": ("quotes", "USD", "volume_24h"),
    "change_24h_pct": ("quotes", "USD", "percent_change_24h"),
    "circulating_supply": ("circulating_supply",),
    "total_supply": ("total_supply",),
    "max_supply": ("max_supply",),
    "market_cap_rank": ("rank",),
    "observed_at": ("last_updated",),
}


def pluck(record, path: tuple):
    value = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def slug_hint(external_id, symbol):
    if not isinstance(external_id, str):
        return external_id
    prefix = f"{str(symbol or '').strip().lower()}-"
    if prefix != "-" and external_id.lower().startswith(prefix) and len(external_id) > len(prefix):
        return external_id[len(prefix):]
    return external_id


class CoinPaprikaSource(Source):
    name = "coinpaprika"
    endpoint = "tickers"            # its rows form the dataset coinpaprika:tickers

    def client(self) -> HttpClient:
        key = self.settings.coinpaprika_api_key
        return HttpClient(self.settings.http_timeout_seconds, {"Authorization": key} if key else {},
                          throttle=self.throttle, on_http_status=self.on_http_status, name=self.name)

    def batches(self, cursor: dict) -> Iterator[Batch]:
        offset = int((cursor or {}).get("offset") or 0)
        http = self.client()
        try:
            body, _raw = http.get_json(self.settings.coinpaprika_base_url + PATH, {"quotes": "USD"})
        finally:
            http.close()
        if not isinstance(body, list):
            raise PermanentSourceError(f"coinpaprika sent a {type(body).__name__} instead of a list on {PATH}: "
                                       f"{http.mask(repr(body)[:200])}", kind="invalid_payload")
        total = len(body)
        while True:
            chunk = body[offset:offset + CHUNK]
            end = offset + len(chunk)
            done = end >= total
            records = [item for item in chunk if isinstance(item, dict)]
            invalid = [({"value": item}, "not a JSON object") for item in chunk if not isinstance(item, dict)]
            yield Batch(records=records, raw=chunk, content_hash=json_hash(chunk),
                        locator={"path": PATH, "offset": offset, "end": end, "total": total},
                        next_cursor={} if done else {"offset": end}, done=done, invalid=invalid)
            if done:
                return
            offset = end

    def normalize(self, record: dict) -> dict:
        out = {field: pluck(record, path) for field, path in FIELD_MAP.items()}
        out["slug_hint"] = slug_hint(out["external_id"], out["symbol"])
        if out["max_supply"] == 0 or out["max_supply"] == "0":
            out["max_supply"] = None
        return out
