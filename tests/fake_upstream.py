"""A local fake of the CoinGecko and CoinPaprika APIs, for every test that would otherwise need the internet.

Use the function-scoped fixture `fake_upstream` (loaded for all tests by `pytest_plugins` in conftest.py):

    def test_something(fake_upstream):
        fake_upstream.set_coins(12)
        settings = load_settings({**fake_upstream.env(), "COINGECKO_PER_PAGE": "5"})
        fake_upstream.script("/api/v3/coins/markets", [fake_upstream.rate_limited(retry_after=7)])
        ...
        assert len(fake_upstream.requests_to("/api/v3/coins/markets")) == 3

Routes (like the real APIs): `/api/v3/ping`; `/api/v3/coins/markets` paged by `per_page` (default 100, at
most 250) and `page` (an empty list past the end; 400 without `vs_currency`); `/v1/tickers` (the whole list);
`/v1/tickers/{id}` (404 `{"error":"id not found"}`); the history endpoints
`/api/v3/coins/{id}/market_chart/range` and `/v1/tickers/{id}/historical` (see `history_*` below); any `/v1/...` path ending in "/" answers 301 with an
HTML body, as CoinPaprika does. Anything else is a 404.

The coins are deterministic, real-shaped records built from the templates in tests/fixtures: coin i (1..n)
has CoinGecko id `coin-i`, symbol `ci` (except `coin-4`, which shares symbol `c3` with `coin-3`), rank i,
price 1000/i, a distinct `last_updated`; every 5th has no max supply (null on CoinGecko, 0 on CoinPaprika),
every 7th no total supply, every 11th no 24 h change or high/low. Its CoinPaprika id is `ci-coin-i`.

Scripted responses (`script`) are dicts: {"status": 200, "headers": {...}, "body": bytes | str | JSON-able,
"delay": seconds to stall before answering, "content_length": a Content-Length other than the body's (to
cut the connection short)}. Every wait is bounded and the server is stopped and joined at teardown.
"""
from __future__ import annotations

import copy
import json
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GECKO_TEMPLATE = json.loads((FIXTURES / "coingecko_markets_single_2024.json").read_text())[0]
PAPRIKA_TEMPLATE = json.loads((FIXTURES / "coinpaprika_ticker_btc-bitcoin.json").read_text())
PING = json.loads((FIXTURES / "coingecko_ping.json").read_text())
RATE_LIMIT_BODY = (FIXTURES / "coingecko_error_429.json").read_bytes()
BASE_TIME = datetime(2024, 4, 7, 16, 49, 31, 736000, tzinfo=timezone.utc)
CLOUDFLARE_PAGE = ("<!DOCTYPE html><html><head><title>{status} | api.coingecko.com | Cloudflare</title></head>"
                   "<body><h1>Error {status}</h1><p>{reason}</p></body></html>")


# ---- the coins -------------------------------------------------------------------------------------------

def _symbol(i: int) -> str:
    return "c3" if i == 4 else f"c{i}"


def gecko_coin(i: int) -> dict:
    price = round(1000.0 / i, 8)
    cap = 10**12 // i
    supply = round(cap / price)
    coin = copy.deepcopy(GECKO_TEMPLATE)
    coin.update({
        "id": f"coin-{i}", "symbol": _symbol(i), "name": f"Coin {i}",
        "image": f"https://coin-images.coingecko.com/coins/images/{i}/large/coin-{i}.png",
        "current_price": price, "market_cap": cap, "market_cap_rank": i,
        "fully_diluted_valuation": None if i % 7 == 0 else cap * 2,
        "total_volume": cap // 50, "high_24h": round(price * 1.02, 8), "low_24h": round(price * 0.97, 8),
        "price_change_24h": round(price * 0.01 * (-1) ** i, 8),
        "price_change_percentage_24h": round(1.25 * (-1) ** i * (i % 9), 5),
        "circulating_supply": supply, "total_supply": None if i % 7 == 0 else supply * 2,
        "max_supply": None if i % 5 == 0 else supply * 3,
        "last_updated": (BASE_TIME - timedelta(seconds=7 * i)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
    })
    if i % 11 == 0:
        coin.update({"price_change_percentage_24h": None, "high_24h": None, "low_24h": None})
    return coin


def paprika_ticker(i: int) -> dict:
    gecko = gecko_coin(i)
    ticker = copy.deepcopy(PAPRIKA_TEMPLATE)
    ticker.update({
        "id": f"{_symbol(i)}-coin-{i}", "name": gecko["name"], "symbol": _symbol(i).upper(), "rank": i,
        "circulating_supply": gecko["circulating_supply"], "total_supply": gecko["total_supply"],
        "max_supply": 0 if i % 5 == 0 else gecko["max_supply"],
        "last_updated": (BASE_TIME - timedelta(seconds=7 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })
    ticker["quotes"]["USD"].update({
        "price": gecko["current_price"], "volume_24h": float(gecko["total_volume"]),
        "market_cap": gecko["market_cap"], "percent_change_24h": gecko["price_change_percentage_24h"],
    })
    return ticker


# ---- history ---------------------------------------------------------------------------------------------
# Real-shaped history answers. Coin i's price at unix second t is 1000/i * (1 + ((t // 3600) % 97) / 1000),
# market cap 10**12/i times the same factor, volume cap/50. CoinGecko's range: granularity by span (<= 1 day
# 5-minute, <= 90 days hourly, else daily at 00:00 UTC), plus a last point at "now" (unaligned) when the range
# reaches it; `from` older than 365 days answers 401 error_code 10012 (public/demo reach). CoinPaprika's
# historical: `interval` missing (the 5m default) or `start` older than 365 days (1d) / 1 day (1h) answers
# 402; at most `limit` points. Quirks (FakeUpstream.history_quirks, a set): "out_of_order" (points
# reversed), "duplicate" (one point sent twice), "null" (the oldest point's market cap null on CoinGecko and
# its price null on CoinPaprika), "gap" (the day 2024-... whose day of year % 50 == 7 is missing).

HISTORY_REACH = timedelta(days=365)
GECKO_RANGE_REFUSED = {"status": {"error_code": 10012, "error_message": (
    "Your request exceeds the allowed time range. Public API users are limited to querying historical data "
    "within the past 365 days. Upgrade to a paid plan to enjoy full historical data access: "
    "https://www.coingecko.com/en/api/pricing. ")}}


def history_values(i: int, t: int) -> tuple[float, float, float]:
    factor = 1 + ((t // 3600) % 97) / 1000
    price = round(1000.0 / i * factor, 8)
    cap = round(10**12 / i * factor, 2)
    return price, cap, round(cap / 50, 2)


def _grid(start: int, end: int, step: int) -> list[int]:
    first = -(-start // step) * step
    return list(range(first, end + 1, step))


def _history_points(i: int, times: list[int], quirks: set) -> list[tuple[int, float, float, float]]:
    if "gap" in quirks:
        times = [t for t in times if datetime.fromtimestamp(t, timezone.utc).timetuple().tm_yday % 50 != 7]
    points = [(t, *history_values(i, t)) for t in times]
    if "duplicate" in quirks and len(points) > 2:
        points.insert(2, points[1])
    if "out_of_order" in quirks:
        points.reverse()
    return points


def _parse_moment(text: str | None) -> int | None:
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp())


# ---- canned failures -------------------------------------------------------------------------------------

def json_response(status: int, body, headers: dict | None = None) -> dict:
    return {"status": status, "headers": {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
            "body": body}


def gecko_error(status: int, message: str, code: int | None = None) -> dict:
    """CoinGecko's error shape: {"status": {"error_code": .., "error_message": ..}}."""
    return json_response(status, {"status": {"error_code": code or status, "error_message": message}})


def paprika_error(status: int, message: str) -> dict:
    """CoinPaprika's (and old CoinGecko's) error shape: {"error": "..."}."""
    return json_response(status, {"error": message})


def html_error(status: int, headers: dict | None = None) -> dict:
    """A Cloudflare-style HTML page with the given status (a 200 one too: an HTML page instead of JSON)."""
    reason = {429: "Too Many Requests", 403: "Access denied", 502: "Bad gateway"}.get(status, "Error")
    return {"status": status, "headers": {"Content-Type": "text/html; charset=UTF-8", "Server": "cloudflare",
                                          **(headers or {})},
            "body": CLOUDFLARE_PAGE.format(status=status, reason=reason)}


def rate_limited(retry_after=None, html: bool = False, reset: str | None = None) -> dict:
    """A 429: CoinGecko's real 187-byte JSON body (or the Cloudflare HTML page), optional Retry-After
    (seconds or an HTTP date, sent as given) and x-ratelimit-reset (e.g. "2025-07-25 14:54:00 +0000")."""
    headers = {"Server": "cloudflare"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if reset is not None:
        headers.update({"x-ratelimit-limit": "30", "x-ratelimit-remaining": "0", "x-ratelimit-reset": reset})
    if html:
        return html_error(429, headers)
    return json_response(429, RATE_LIMIT_BODY, headers)


def truncated_json(cut_connection: bool = False) -> dict:
    """A 200 JSON list cut off mid-record. By default the Content-Length matches what is sent (a complete
    HTTP response whose JSON does not decode); `cut_connection=True` announces the full length and closes."""
    full = json.dumps([gecko_coin(1), gecko_coin(2)]).encode()
    cut = full[: len(full) // 2]
    response = json_response(200, cut)
    if cut_connection:
        response["content_length"] = len(full)
    return response


def redirect(location: str, status: int = 301) -> dict:
    return {"status": status, "headers": {"Location": location, "Content-Type": "text/html"},
            "body": f"<html><body>Moved to <a href=\"{location}\">{location}</a></body></html>"}


def stalled(delay: float, response: dict | None = None) -> dict:
    """`response` (default: a normal 200 list) sent only after `delay` seconds."""
    return {**(response or json_response(200, [])), "delay": delay}


# ---- the server ------------------------------------------------------------------------------------------

class FakeUpstream:
    """State of the fake; thread-safe. See the module docstring."""

    html_error = staticmethod(html_error)
    truncated_json = staticmethod(truncated_json)
    rate_limited = staticmethod(rate_limited)
    gecko_error = staticmethod(gecko_error)
    paprika_error = staticmethod(paprika_error)
    json_response = staticmethod(json_response)
    redirect = staticmethod(redirect)
    stalled = staticmethod(stalled)

    def __init__(self, coins: int = 30):
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests: list[tuple[float, str, dict, dict]] = []
        self._scripts: list[tuple[str, dict, deque]] = []
        self._renames: list[tuple[str, str]] = []
        self._empty_pages: set[int] = set()
        self.latency = 0.0               # seconds added to every unscripted response (slow upstream)
        self.history_quirks: set[str] = set()
        self.set_coins(coins)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-upstream", daemon=True)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self.coingecko_url = f"{self.url}/api/v3"
        self.coinpaprika_url = f"{self.url}/v1"

    # lifecycle
    def start(self) -> "FakeUpstream":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()            # wakes stalled responses
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def env(self, **extra) -> dict:
        """Environment for load_settings() pointing both APIs at this fake."""
        return {"COINGECKO_BASE_URL": self.coingecko_url, "COINPAPRIKA_BASE_URL": self.coinpaprika_url,
                **{k: str(v) for k, v in extra.items()}}

    # the data
    def set_coins(self, n: int) -> None:
        gecko = [gecko_coin(i) for i in range(1, n + 1)]
        paprika = [paprika_ticker(i) for i in range(1, n + 1)]
        with self._lock:
            self._gecko, self._paprika = gecko, paprika

    def rename_field(self, old: str, new: str) -> None:
        """Serve `old` under the name `new` from now on (both APIs; a dotted path such as
        "quotes.USD.price" renames a nested key)."""
        with self._lock:
            self._renames.append((old, new))

    def empty_page_at(self, page: int | None) -> None:
        """CoinGecko's page `page` answers [] (None clears)."""
        with self._lock:
            if page is None:
                self._empty_pages.clear()
            else:
                self._empty_pages.add(int(page))

    def coingecko_coins(self) -> list[dict]:
        """The full CoinGecko list as currently served (renames applied)."""
        with self._lock:
            return self._served(self._gecko)

    def coinpaprika_tickers(self) -> list[dict]:
        with self._lock:
            return self._served(self._paprika)

    # scripting
    def script(self, path_prefix: str, responses: list[dict], query: dict | None = None) -> None:
        """Answer the next len(responses) requests whose path starts with `path_prefix` (and whose query
        contains `query`, e.g. {"page": "2"}) with these responses, in order; then back to normal."""
        wanted = {k: str(v) for k, v in (query or {}).items()}
        with self._lock:
            self._scripts.append((path_prefix, wanted, deque(responses)))

    # what was asked
    @property
    def requests(self) -> list[tuple[float, str, dict, dict]]:
        """(time.monotonic(), path, query {name: last value}, headers {lower-case name: value}) per request."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path_prefix: str) -> list[tuple[float, str, dict, dict]]:
        return [r for r in self.requests if r[1].startswith(path_prefix)]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # internals (called from handler threads)
    def _record(self, path: str, query: dict, headers: dict) -> None:
        with self._lock:
            self._requests.append((time.monotonic(), path, query, headers))

    def _scripted(self, path: str, query: dict) -> dict | None:
        with self._lock:
            for entry in self._scripts:
                prefix, wanted, queue = entry
                if path.startswith(prefix) and all(query.get(k) == v for k, v in wanted.items()) and queue:
                    response = queue.popleft()
                    if not queue:
                        self._scripts.remove(entry)
                    return response
        return None

    def _served(self, records: list[dict]) -> list[dict]:
        out = copy.deepcopy(records)
        for old, new in self._renames:
            *parents, leaf = old.split(".")
            for record in out:
                target = record
                for key in parents:
                    target = target.get(key) if isinstance(target, dict) else None
                if isinstance(target, dict) and leaf in target:
                    target[new.split(".")[-1]] = target.pop(leaf)
        return out

    def _route(self, path: str, query: dict) -> dict:
        if path == "/api/v3/ping":
            return json_response(200, PING)
        if path == "/api/v3/coins/markets":
            return self._markets(query)
        if path.startswith("/v1/") and path.endswith("/") and len(path) > 4:
            return redirect(path.rstrip("/"))
        if path == "/v1/tickers":
            return json_response(200, self.coinpaprika_tickers())
        if path.startswith("/api/v3/coins/") and path.endswith("/market_chart/range"):
            return self._gecko_range(path.split("/")[4], query)
        if path.startswith("/v1/tickers/") and path.endswith("/historical"):
            return self._paprika_historical(path.split("/")[3], query)
        if path.startswith("/v1/tickers/"):
            wanted = path.rsplit("/", 1)[1]
            found = [t for t in self.coinpaprika_tickers() if t.get("id") == wanted]
            return json_response(200, found[0]) if found else paprika_error(404, "id not found")
        return paprika_error(404, "Not Found")

    def _coin_index(self, records: list[dict], wanted: str) -> int | None:
        with self._lock:
            for index, record in enumerate(records, start=1):
                if record.get("id") == wanted:
                    return index
        return None

    def _gecko_range(self, coin_id: str, query: dict) -> dict:
        i = self._coin_index(self._gecko, coin_id)
        if i is None:
            return paprika_error(404, "coin not found")
        start, end = _parse_moment(query.get("from")), _parse_moment(query.get("to"))
        if not query.get("vs_currency") or start is None or end is None:
            return paprika_error(400, "Missing parameter vs_currency, from or to")
        now = int(time.time())
        if start < now - HISTORY_REACH.total_seconds():
            return json_response(401, GECKO_RANGE_REFUSED)
        end = min(end, now)
        span = end - start
        step = 300 if span <= 86400 else 3600 if span <= 90 * 86400 else 86400
        times = _grid(start, end, step)
        if end == now and (not times or times[-1] != now):
            times.append(now)           # the last point is "now", not a bucket
        points = _history_points(i, times, self.history_quirks)
        body = {"prices": [[t * 1000, p] for t, p, _, _ in points],
                "market_caps": [[t * 1000, c] for t, _, c, _ in points],
                "total_volumes": [[t * 1000, v] for t, _, _, v in points]}
        if "null" in self.history_quirks and points:      # the oldest point's market cap
            oldest = min(range(len(points)), key=lambda k: points[k][0])
            body["market_caps"][oldest][1] = None
        return json_response(200, body)

    def _paprika_historical(self, ticker_id: str, query: dict) -> dict:
        i = self._coin_index(self._paprika, ticker_id)
        if i is None:
            return paprika_error(404, "id not found")
        interval = query.get("interval")
        start, now = _parse_moment(query.get("start")), int(time.time())
        end = min(_parse_moment(query.get("end")) or now, now)
        if start is None:
            return paprika_error(400, "invalid parameters: start")
        if interval not in ("1d", "24h", "1h"):
            return paprika_error(402, f"Getting historical data with interval {interval or '5m'} is not allowed "
                                      "in this plan")
        reach = 86400 if interval == "1h" else HISTORY_REACH.total_seconds()
        if start < now - reach:
            return paprika_error(402, "Getting historical data before "
                                      f"{datetime.fromtimestamp(now - reach, timezone.utc):%Y-%m-%d} is not "
                                      "allowed in this plan")
        step = 3600 if interval == "1h" else 86400
        times = _grid(start, end, step)[: max(1, min(_int(query.get("limit"), 1000), 5000))]
        items = [{"timestamp": datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "price": p, "volume_24h": v, "market_cap": round(c)}
                 for t, p, c, v in _history_points(i, times, self.history_quirks)]
        if "null" in self.history_quirks and items:       # the oldest point's price
            min(items, key=lambda item: item["timestamp"])["price"] = None
        return json_response(200, items)

    def _markets(self, query: dict) -> dict:
        if not query.get("vs_currency"):
            return paprika_error(400, "Missing parameter vs_currency")
        per_page = min(max(_int(query.get("per_page"), 100), 1), 250)
        page = max(_int(query.get("page"), 1), 1)
        with self._lock:
            if page in self._empty_pages:
                return json_response(200, [])
            coins = self._gecko[(page - 1) * per_page: page * per_page]
            return json_response(200, self._served(coins))


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class _Handler(BaseHTTPRequestHandler):
    server_version = "fake-upstream/1.0"

    def do_GET(self):  # noqa: N802 (the stdlib's naming)
        fake: FakeUpstream = self.server.fake
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        fake._record(split.path, query, {k.lower(): v for k, v in self.headers.items()})
        response = fake._scripted(split.path, query) or {**fake._route(split.path, query), "delay": fake.latency}
        delay = float(response.get("delay") or 0)
        if delay and fake._stopping.wait(delay):
            return                      # shutting down: drop the connection
        body = response.get("body", b"")
        headers = dict(response.get("headers") or {})
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        if isinstance(body, str):
            body = body.encode()
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        try:
            self.send_response(int(response.get("status", 200)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(response.get("content_length", len(body))))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass                        # the client gave up (a timeout test)

    def log_message(self, format, *args):  # noqa: A002 (quiet: pytest shows failures, not access logs)
        pass


@pytest.fixture
def fake_upstream():
    """A running FakeUpstream on 127.0.0.1 (random port); stopped and joined at teardown."""
    fake = FakeUpstream().start()
    try:
        yield fake
    finally:
        fake.stop()
