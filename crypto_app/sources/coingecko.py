"""CoinGecko: the top coins by market cap from `/coins/markets`.

Endpoint  GET {COINGECKO_BASE_URL}/coins/markets?vs_currency=usd&per_page={COINGECKO_PER_PAGE}&page={n}
          &order=market_cap_desc
Auth      COINGECKO_API_PLAN=public: no key; demo: header `x-cg-demo-api-key`; pro: header `x-cg-pro-api-key`
          (config points pro at pro-api.coingecko.com). The key is never put in the query string.
Paging    pages n, n+1, ... up to COINGECKO_MAX_PAGES (an absolute page number). Every response is one Batch.
          The crawl ends on a page shorter than per_page (an empty page included: it yields a Batch with no
          records) or on page COINGECKO_MAX_PAGES; that Batch has done=True.
Cursor    {"page": n}: the next page to fetch; {} starts at page 1. Each Batch's next_cursor is
          {"page": n + 1}; the final (done) Batch's next_cursor is {} so the next run starts afresh.
Locator   {"page": n, "path": "/coins/markets"}.
Records   the list items as sent. A coin already seen earlier in the same crawl (rankings shift between
          pages) is left out of `records` (kept in `raw`); a list item that is not an object goes to
          `invalid`. A body that is not a list (an error object with 200) is a PermanentSourceError.
Mapping   FIELD_MAP below: canonical field <- CoinGecko key; values are passed on unparsed.
"""
from __future__ import annotations

from typing import Iterator

from .base import Batch, PermanentSourceError, Source, content_hash
from .http import HttpClient

PATH = "/coins/markets"
AUTH_HEADERS = {"public": None, "demo": "x-cg-demo-api-key", "pro": "x-cg-pro-api-key"}

FIELD_MAP = {
    "external_id": "id",
    "symbol": "symbol",
    "name": "name",
    "slug_hint": "id",
    "price_usd": "current_price",
    "market_cap_usd": "market_cap",
    "volume_24h_usd": "total_volume",
    "high_usd": "high_24h",
    "low_usd": "low_24h",
    "circulating_supply": "circulating_supply",
    "total_supply": "total_supply",
    "max_supply": "max_supply",
    "market_cap_rank": "market_cap_rank",
    "change_24h_pct": "price_change_percentage_24h",
    "observed_at": "last_updated",
}


def auth_headers(plan: str, api_key: str | None) -> dict:
    header = AUTH_HEADERS[plan]
    if header is None:
        return {}
    if not api_key:
        raise PermanentSourceError(f"COINGECKO_API_PLAN={plan} needs COINGECKO_API_KEY")
    return {header: api_key}


class CoinGeckoSource(Source):
    name = "coingecko"
    endpoint = "markets"            # its rows form the dataset coingecko:markets

    def client(self) -> HttpClient:
        s = self.settings
        return HttpClient(s.http_timeout_seconds, auth_headers(s.coingecko_api_plan, s.coingecko_api_key),
                          throttle=self.throttle, on_http_status=self.on_http_status, name=self.name)

    def batches(self, cursor: dict) -> Iterator[Batch]:
        s = self.settings
        per_page, last_page = s.coingecko_per_page, s.coingecko_max_pages
        page = int((cursor or {}).get("page") or 1)
        if page > last_page:    # resumed past the cap: nothing left to fetch in this crawl
            yield Batch(records=[], raw=[], locator={"page": page, "path": PATH}, next_cursor={},
                        content_hash=content_hash(b"[]"), done=True)
            return
        http = self.client()
        seen: set = set()
        try:
            while True:
                params = {"vs_currency": "usd", "per_page": per_page, "page": page, "order": "market_cap_desc"}
                body, raw = http.get_json(s.coingecko_base_url + PATH, params)
                if not isinstance(body, list):
                    raise PermanentSourceError(f"coingecko sent a {type(body).__name__} instead of a list on "
                                               f"{PATH} page {page}: {http.mask(_describe(body))}",
                                               kind="invalid_payload")
                records, invalid = [], []
                for item in body:
                    if not isinstance(item, dict):
                        invalid.append(({"value": item}, "not a JSON object"))
                    elif item.get("id") is None or item.get("id") not in seen:
                        seen.add(item.get("id"))
                        records.append(item)
                done = len(body) < per_page or page >= last_page
                yield Batch(records=records, raw=body, locator={"page": page, "path": PATH},
                            next_cursor={} if done else {"page": page + 1}, content_hash=content_hash(raw),
                            done=done, invalid=invalid)
                if done:
                    return
                page += 1
        finally:
            http.close()

    def normalize(self, record: dict) -> dict:
        return {field: record.get(key) for field, key in FIELD_MAP.items()}


def _describe(body) -> str:
    if isinstance(body, dict):
        status = body.get("status")
        if isinstance(status, dict) and status.get("error_message"):
            return str(status["error_message"])[:200]
        if body.get("error"):
            return str(body["error"])[:200]
        return "keys " + ", ".join(sorted(map(str, body))[:10])
    return repr(body)[:100]
