"""The CoinGecko and CoinPaprika sources and their HTTP client, against the local fake upstream."""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime

import pytest
import requests

from crypto_app.config import ConfigError, load_settings
from crypto_app.pipeline.validate import validate_record
from crypto_app.sources import build_source
from crypto_app.sources.base import PermanentSourceError, TransientSourceError
from crypto_app.sources.coingecko import CoinGeckoSource
from crypto_app.sources.coinpaprika import CoinPaprikaSource
from crypto_app.sources.http import HttpClient, retry_after_seconds

from fake_upstream import FIXTURES, gecko_coin

MARKETS = "/api/v3/coins/markets"
TICKERS = "/v1/tickers"
CANARY = "CG-canary-5ec7e7-do-not-leak"


def make(fake, name="coingecko", throttle=None, on_http_status=None, **env):
    settings = load_settings({**fake.env(HTTP_TIMEOUT_SECONDS=5), **{k: str(v) for k, v in env.items()}})
    return build_source(name, settings, throttle=throttle, on_http_status=on_http_status)


def drain(source, cursor=None):
    return list(source.batches(cursor or {}))


def ids(batch):
    return [r["id"] for r in batch.records]


def fails_with(exc_type, source, cursor=None):
    with pytest.raises(exc_type) as info:
        drain(source, cursor)
    return info.value


# ---- paging and cursors ----------------------------------------------------------------------------------

def test_coingecko_pages_until_a_short_page(fake_upstream):
    fake_upstream.set_coins(23)
    batches = drain(make(fake_upstream, COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=10))
    assert [len(b.records) for b in batches] == [10, 10, 3]
    assert ids(batches[0])[0] == "coin-1" and ids(batches[2]) == ["coin-21", "coin-22", "coin-23"]
    assert [b.done for b in batches] == [False, False, True]
    assert [b.next_cursor for b in batches] == [{"page": 2}, {"page": 3}, {}]
    assert [b.locator for b in batches] == [{"page": n, "path": "/coins/markets"} for n in (1, 2, 3)]
    assert batches[0].raw == fake_upstream.coingecko_coins()[:10]
    queries = [q for _, _, q, _ in fake_upstream.requests_to(MARKETS)]
    assert queries == [{"vs_currency": "usd", "per_page": "10", "page": str(n), "order": "market_cap_desc"}
                       for n in (1, 2, 3)]
    # the hash is of the bytes the upstream sent
    again = requests.get(fake_upstream.coingecko_url + "/coins/markets", params=queries[2], timeout=5).content
    assert batches[2].content_hash == hashlib.sha256(again).hexdigest()


def test_coingecko_ends_on_an_empty_page_with_an_empty_done_batch(fake_upstream):
    fake_upstream.set_coins(20)
    batches = drain(make(fake_upstream, COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=10))
    assert [(len(b.records), b.done) for b in batches] == [(10, False), (10, False), (0, True)]
    assert batches[-1].locator == {"page": 3, "path": "/coins/markets"} and batches[-1].raw == []
    assert len(fake_upstream.requests) == 3


def test_coingecko_stops_at_an_early_empty_page(fake_upstream):
    fake_upstream.empty_page_at(2)
    batches = drain(make(fake_upstream, COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=10))
    assert [(len(b.records), b.done) for b in batches] == [(10, False), (0, True)]
    assert len(fake_upstream.requests) == 2


def test_coingecko_stops_at_max_pages(fake_upstream):
    fake_upstream.set_coins(100)
    batches = drain(make(fake_upstream, COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=3))
    assert [len(b.records) for b in batches] == [10, 10, 10] and batches[-1].done
    assert batches[-1].next_cursor == {}
    assert [q["page"] for _, _, q, _ in fake_upstream.requests] == ["1", "2", "3"]


def test_coingecko_resumes_from_the_cursor_page(fake_upstream):
    fake_upstream.set_coins(25)
    batches = drain(make(fake_upstream, COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=10), {"page": 3})
    assert [ids(b) for b in batches] == [[f"coin-{i}" for i in range(21, 26)]]
    assert [q["page"] for _, _, q, _ in fake_upstream.requests] == ["3"]


def test_coingecko_cursor_past_the_cap_ends_without_a_request(fake_upstream):
    batches = drain(make(fake_upstream, COINGECKO_MAX_PAGES=2), {"page": 3})
    assert [(b.records, b.done) for b in batches] == [([], True)]
    assert fake_upstream.requests == []


def test_coingecko_leaves_out_a_coin_seen_on_an_earlier_page(fake_upstream):
    fake_upstream.set_coins(20)
    shifted = [gecko_coin(10)] + [gecko_coin(i) for i in range(11, 20)]    # coin-10 slipped to page 2
    fake_upstream.script(MARKETS, [fake_upstream.json_response(200, shifted)], query={"page": "2"})
    batches = drain(make(fake_upstream, COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=10))
    assert ids(batches[1]) == [f"coin-{i}" for i in range(11, 20)]
    assert batches[1].raw[0]["id"] == "coin-10"


def test_coingecko_list_items_that_are_not_objects_are_invalid(fake_upstream):
    fake_upstream.script(MARKETS, [fake_upstream.json_response(200, [gecko_coin(1), "oops", 7])])
    (batch,) = drain(make(fake_upstream, COINGECKO_PER_PAGE=10))
    assert ids(batch) == ["coin-1"]
    assert [reason for _, reason in batch.invalid] == ["not a JSON object"] * 2


def test_coinpaprika_hands_out_the_list_in_chunks_of_500(fake_upstream):
    fake_upstream.set_coins(1203)
    batches = drain(make(fake_upstream, "coinpaprika"))
    assert [len(b.records) for b in batches] == [500, 500, 203]
    assert [b.next_cursor for b in batches] == [{"offset": 500}, {"offset": 1000}, {}]
    assert [b.done for b in batches] == [False, False, True]
    assert batches[1].locator == {"path": "/tickers", "offset": 500, "end": 1000, "total": 1203}
    assert batches[0].content_hash != batches[1].content_hash
    assert [(p, q) for _, p, q, _ in fake_upstream.requests] == [(TICKERS, {"quotes": "USD"})]

    fake_upstream.clear_requests()
    resumed = drain(make(fake_upstream, "coinpaprika"), {"offset": 1000})
    assert [len(b.records) for b in resumed] == [203] and resumed[0].records[0]["id"] == "c1001-coin-1001"
    assert len(fake_upstream.requests) == 1


def test_coinpaprika_empty_list_gives_one_done_batch(fake_upstream):
    fake_upstream.set_coins(0)
    assert [(b.records, b.done) for b in drain(make(fake_upstream, "coinpaprika"))] == [([], True)]


# ---- auth ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("plan, header", [("public", None), ("demo", "x-cg-demo-api-key"),
                                          ("pro", "x-cg-pro-api-key")])
def test_coingecko_auth_header_per_plan(fake_upstream, plan, header):
    fake_upstream.set_coins(15)
    drain(make(fake_upstream, COINGECKO_API_PLAN=plan, COINGECKO_API_KEY=CANARY, COINGECKO_PER_PAGE=10))
    assert len(fake_upstream.requests) == 2
    for _, path, query, headers in fake_upstream.requests:
        sent = {k: v for k, v in headers.items() if v == CANARY}
        assert sent == ({header: CANARY} if header else {})
        assert CANARY not in path + json.dumps(query)
        assert not any(k.startswith("x_cg") for k in query)


@pytest.mark.parametrize("plan", ["demo", "pro"])
def test_coingecko_paid_plan_without_a_key_is_refused_at_start(fake_upstream, plan):
    with pytest.raises(ConfigError, match=f"COINGECKO_API_PLAN={plan} needs COINGECKO_API_KEY"):
        make(fake_upstream, COINGECKO_API_PLAN=plan)
    assert fake_upstream.requests == []


def test_coinpaprika_sends_the_key_as_a_bare_authorization_header(fake_upstream):
    drain(make(fake_upstream, "coinpaprika", COINPAPRIKA_API_KEY=CANARY))
    drain(make(fake_upstream, "coinpaprika"))
    (_, path, query, with_key), (_, _, _, without_key) = fake_upstream.requests
    assert with_key["authorization"] == CANARY
    assert "authorization" not in without_key
    assert path == TICKERS and CANARY not in json.dumps(query)


# ---- failures --------------------------------------------------------------------------------------------

def test_429_carries_retry_after_seconds(fake_upstream):
    statuses = []
    fake_upstream.script(MARKETS, [fake_upstream.rate_limited(retry_after=119)])
    error = fails_with(TransientSourceError, make(fake_upstream, on_http_status=statuses.append))
    assert error.retry_after == 119 and error.status == 429
    assert "429" in str(error) and "exceeded the Rate Limit" in str(error)
    assert statuses == [429]


def test_429_retry_after_as_an_http_date(fake_upstream):
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    fake_upstream.script(MARKETS, [fake_upstream.rate_limited(retry_after=when)])
    error = fails_with(TransientSourceError, make(fake_upstream))
    assert 25 <= error.retry_after <= 31


def test_429_falls_back_to_x_ratelimit_reset(fake_upstream):
    reset = (datetime.now(timezone.utc) + timedelta(seconds=60)).strftime("%Y-%m-%d %H:%M:%S +0000")
    fake_upstream.script(MARKETS, [fake_upstream.rate_limited(reset=reset)])
    error = fails_with(TransientSourceError, make(fake_upstream))
    assert 55 <= error.retry_after <= 61


def test_retry_after_parsing_edge_cases():
    now = datetime(2025, 7, 25, 14, 53, 0, tzinfo=timezone.utc)
    assert retry_after_seconds({"x-ratelimit-reset": "2025-07-25 14:54:00 +0000"}, now) == 60
    assert retry_after_seconds({"x-ratelimit-reset": "2025-07-25 14:50:00 +0000"}, now) == 0
    assert retry_after_seconds({"Retry-After": "Fri, 25 Jul 2025 14:53:10 GMT"}, now) == 10
    assert retry_after_seconds({"Retry-After": "soon", "x-ratelimit-reset": "later"}, now) is None
    assert retry_after_seconds({}, now) is None


def test_429_without_hints_and_as_cloudflare_html_is_transient(fake_upstream):
    fake_upstream.script(MARKETS, [fake_upstream.rate_limited(), fake_upstream.rate_limited(html=True)])
    plain = fails_with(TransientSourceError, make(fake_upstream))
    html = fails_with(TransientSourceError, make(fake_upstream))
    assert plain.retry_after is None and plain.status == 429
    assert html.status == 429 and "text/html" in str(html)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_transient(fake_upstream, status):
    body = fake_upstream.html_error(status) if status == 502 else fake_upstream.gecko_error(status, "busy")
    fake_upstream.script(MARKETS, [body])
    assert fails_with(TransientSourceError, make(fake_upstream)).status == status


def test_coinpaprika_500_is_transient(fake_upstream):
    fake_upstream.script(TICKERS, [fake_upstream.paprika_error(500, "internal")])
    assert fails_with(TransientSourceError, make(fake_upstream, "coinpaprika")).status == 500


def test_a_stalled_response_times_out_as_transient(fake_upstream):
    fake_upstream.script(MARKETS, [fake_upstream.stalled(2)])
    source = make(fake_upstream, HTTP_TIMEOUT_SECONDS=0.5)
    started = time.monotonic()
    error = fails_with(TransientSourceError, source)
    assert "timed out" in str(error) and time.monotonic() - started < 1.8


def test_connection_refused_is_transient(fake_upstream):
    source = make(fake_upstream, COINGECKO_BASE_URL="http://127.0.0.1:9/api/v3")
    error = fails_with(TransientSourceError, source)
    assert error.kind == "refused" and "connection refused by 127.0.0.1:9" in str(error)


@pytest.mark.parametrize("cut_connection", [False, True])
def test_truncated_json_is_transient(fake_upstream, cut_connection):
    fake_upstream.script(MARKETS, [fake_upstream.truncated_json(cut_connection=cut_connection)])
    fails_with(TransientSourceError, make(fake_upstream))


@pytest.mark.parametrize("response, message", [
    (lambda f: f.gecko_error(401, "Invalid API Key", 10002), "coingecko answered 401 on /api/v3/coins/markets: "
                                                            "Invalid API Key (error_code 10002)"),
    (lambda f: f.html_error(403), "coingecko answered 403 on /api/v3/coins/markets: text/html body"),
    (lambda f: f.paprika_error(404, "coin not found"), "coingecko answered 404 on /api/v3/coins/markets: coin not found"),
    (lambda f: f.gecko_error(400, "invalid vs_currency"), "invalid vs_currency"),
])
def test_client_errors_are_permanent_with_the_upstream_message(fake_upstream, response, message):
    fake_upstream.script(MARKETS, [response(fake_upstream)])
    assert message in str(fails_with(PermanentSourceError, make(fake_upstream)))


def test_coinpaprika_402_is_permanent_with_its_message(fake_upstream):
    fake_upstream.script(TICKERS, [fake_upstream.paprika_error(402, "upgrade your plan")])
    error = fails_with(PermanentSourceError, make(fake_upstream, "coinpaprika"))
    assert error.status == 402 and "coinpaprika answered 402" in str(error) and "upgrade your plan" in str(error)


def test_an_html_page_with_200_is_permanent(fake_upstream):
    fake_upstream.script(MARKETS, [fake_upstream.html_error(200)])
    assert "expected JSON, got text/html" in str(fails_with(PermanentSourceError, make(fake_upstream)))


def test_an_error_object_with_200_is_permanent(fake_upstream):
    fake_upstream.script(MARKETS, [fake_upstream.json_response(200, {"error": "plan restricted"})])
    assert "plan restricted" in str(fails_with(PermanentSourceError, make(fake_upstream)))


def test_a_redirect_is_permanent_and_not_followed(fake_upstream):
    client = HttpClient(5, name="coinpaprika")
    with pytest.raises(PermanentSourceError) as info:
        client.get_json(fake_upstream.coinpaprika_url + "/tickers/", {"quotes": "USD"})
    assert info.value.status == 301 and "redirect" in str(info.value)
    fake_upstream.script(TICKERS, [fake_upstream.redirect("/v1/tickers")])
    assert fails_with(PermanentSourceError, make(fake_upstream, "coinpaprika")).status == 301
    assert [p for _, p, _, _ in fake_upstream.requests] == ["/v1/tickers/", TICKERS]


# ---- throttle and metrics hooks --------------------------------------------------------------------------

def test_throttle_runs_before_every_request_and_status_after(fake_upstream):
    fake_upstream.set_coins(25)
    seen_before, statuses = [], []
    source = make(fake_upstream, throttle=lambda: seen_before.append(len(fake_upstream.requests)),
                  on_http_status=statuses.append, COINGECKO_PER_PAGE=10)
    drain(source)
    assert seen_before == [0, 1, 2] and statuses == [200, 200, 200]


@pytest.mark.parametrize("name", ["coingecko", "coinpaprika"])
def test_an_exception_from_throttle_propagates_untouched(fake_upstream, name):
    class Denied(Exception):
        pass

    def throttle():
        raise Denied("bucket empty")

    with pytest.raises(Denied, match="bucket empty"):
        drain(make(fake_upstream, name, throttle=throttle))
    assert fake_upstream.requests == []


# ---- secrets ---------------------------------------------------------------------------------------------

def test_the_key_never_appears_in_errors_locators_or_logs(fake_upstream, caplog):
    caplog.set_level(logging.DEBUG)
    echo = f"key {CANARY} is not valid"
    fake_upstream.script(MARKETS, [
        fake_upstream.gecko_error(401, echo), fake_upstream.json_response(500, echo),
        fake_upstream.json_response(200, {"error": echo}), {**fake_upstream.html_error(200), "body": f"<p>{echo}"},
        fake_upstream.rate_limited(html=True), fake_upstream.redirect(f"/api/v3/x?key={CANARY}"),
        fake_upstream.stalled(2),
    ])
    fake_upstream.script(TICKERS, [fake_upstream.paprika_error(403, echo), {"status": 200, "body": echo}])
    gecko = dict(COINGECKO_API_PLAN="demo", COINGECKO_API_KEY=CANARY)
    paprika = dict(COINPAPRIKA_API_KEY=CANARY)
    texts = []
    for _ in range(6):
        texts.append(fails_with(Exception, make(fake_upstream, **gecko)))
    texts.append(fails_with(TransientSourceError, make(fake_upstream, HTTP_TIMEOUT_SECONDS=0.3, **gecko)))
    texts.append(fails_with(TransientSourceError, make(fake_upstream, COINGECKO_BASE_URL="http://127.0.0.1:9", **gecko)))
    for _ in range(2):
        texts.append(fails_with(PermanentSourceError, make(fake_upstream, "coinpaprika", **paprika)))
    assert all(isinstance(e, (TransientSourceError, PermanentSourceError)) for e in texts)
    assert "***" in str(texts[0])                     # the echoed key was masked, the message kept
    fake_upstream.set_coins(3)
    batches = drain(make(fake_upstream, **gecko)) + drain(make(fake_upstream, "coinpaprika", **paprika))
    everything = [str(e) + repr(e.args) for e in texts]
    everything += [repr((b.locator, b.next_cursor)) for b in batches]
    everything += [r.getMessage() + repr(r.__dict__) for r in caplog.records]
    everything += [p + json.dumps(q) for _, p, q, _ in fake_upstream.requests]
    assert not [text for text in everything if CANARY in text]


# ---- normalize -------------------------------------------------------------------------------------------

def _settings():
    return load_settings({})


def test_coingecko_normalize_of_the_real_fixture_validates():
    raw = json.loads((FIXTURES / "coingecko_markets_single_2024.json").read_text())[0]
    record, errors = validate_record(CoinGeckoSource(_settings()).normalize(raw))
    assert errors is None
    assert record["price_usd"] == Decimal("70187") and record["external_id"] == "bitcoin"
    assert record["observed_at"] == datetime(2024, 4, 7, 16, 49, 31, 736000, tzinfo=timezone.utc)
    assert (record["symbol"], record["name"], record["slug_hint"]) == ("BTC", "Bitcoin", "bitcoin")
    assert record["market_cap_usd"] == Decimal("1381651251183") and record["volume_24h_usd"] == Decimal("20154184933")
    assert (record["high_usd"], record["low_usd"]) == (Decimal("70215"), Decimal("68060"))
    assert record["change_24h_pct"] == Decimal("3.12502") and record["market_cap_rank"] == 1
    assert (record["circulating_supply"], record["total_supply"], record["max_supply"]) == (
        Decimal("19675987"), Decimal("21000000"), Decimal("21000000"))


def test_coinpaprika_normalize_of_the_real_fixture_validates():
    raw = json.loads((FIXTURES / "coinpaprika_ticker_btc-bitcoin.json").read_text())
    source = CoinPaprikaSource(_settings())
    record, errors = validate_record(source.normalize(raw))
    assert errors is None
    assert (record["external_id"], record["slug_hint"], record["symbol"]) == ("btc-bitcoin", "bitcoin", "BTC")
    assert record["price_usd"] == Decimal("41389.57931641128")
    assert record["observed_at"] == datetime(2022, 4, 19, 15, 43, 22, tzinfo=timezone.utc)
    assert record["market_cap_usd"] == Decimal("787066061422") and record["change_24h_pct"] == Decimal("5.25")
    assert record["volume_24h_usd"] == Decimal("35357658696.99645") and record["market_cap_rank"] == 1
    assert record["max_supply"] == Decimal("21000000")

    uncapped = copy.deepcopy(raw)
    uncapped["max_supply"] = 0
    assert source.normalize(uncapped)["max_supply"] is None
    assert validate_record(source.normalize(uncapped))[0]["max_supply"] is None

    no_usd = copy.deepcopy(raw)
    del no_usd["quotes"]["USD"]
    assert source.normalize(no_usd)["price_usd"] is None
    assert "price_usd" in validate_record(source.normalize(no_usd))[1]


@pytest.mark.parametrize("ticker_id, symbol, slug", [("btc-bitcoin", "BTC", "bitcoin"), ("eth-ethereum", "eth", "ethereum"),
                                                     ("wrapped-btc", "WBTC", "wrapped-btc"), ("btc-", "BTC", "btc-"),
                                                     ("usdt-tether", None, "usdt-tether")])
def test_coinpaprika_slug_hint(ticker_id, symbol, slug):
    assert CoinPaprikaSource(_settings()).normalize({"id": ticker_id, "symbol": symbol})["slug_hint"] == slug


def test_a_missing_key_is_none():
    assert CoinGeckoSource(_settings()).normalize({"id": "x"})["price_usd"] is None
    assert CoinPaprikaSource(_settings()).normalize({"id": "x", "quotes": None})["price_usd"] is None


@pytest.mark.parametrize("name", ["coingecko", "coinpaprika"])
def test_every_fake_coin_validates_and_symbols_collide(fake_upstream, name):
    source = make(fake_upstream, name, COINGECKO_PER_PAGE=250)
    records = [r for b in drain(source) for r in b.records]
    cleaned = [validate_record(source.normalize(r)) for r in records]
    assert len(cleaned) == 30 and all(errors is None for _, errors in cleaned)
    by_symbol = {}
    for record, _ in cleaned:
        by_symbol.setdefault(record["symbol"], []).append(record["slug_hint"])
    assert by_symbol["C3"] == ["coin-3", "coin-4"]
    assert len({record["observed_at"] for record, _ in cleaned}) == 30
    assert sum(record["max_supply"] is None for record, _ in cleaned) == 6


@pytest.mark.parametrize("name, old, new, field", [
    ("coingecko", "current_price", "price", "price_usd"),
    ("coingecko", "last_updated", "updated_at", "observed_at"),
    ("coinpaprika", "quotes.USD.price", "last_price", "price_usd"),
])
def test_a_renamed_upstream_field_is_rejected_by_validation(fake_upstream, name, old, new, field):
    fake_upstream.set_coins(3)
    fake_upstream.rename_field(old, new)
    source = make(fake_upstream, name)
    results = [validate_record(source.normalize(r)) for b in drain(source) for r in b.records]
    assert len(results) == 3
    assert all(record is None and field in errors for record, errors in results)


def test_the_fake_answers_ping_and_records_request_times(fake_upstream):
    before = time.monotonic()
    answer = requests.get(fake_upstream.coingecko_url + "/ping", timeout=5)
    assert answer.json() == {"gecko_says": "(V3) To the Moon!"}
    ((at, path, _, headers),) = fake_upstream.requests
    assert before <= at <= time.monotonic() and path == "/api/v3/ping" and "user-agent" in headers
