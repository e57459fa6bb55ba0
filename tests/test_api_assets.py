"""Assets over HTTP: search across shared symbols, one asset with its consensus, history and candles."""
from datetime import datetime, timedelta, timezone

import pytest

import api_data as d


@pytest.fixture
def coins(db_conn):
    run_cg = d.run(db_conn, "coingecko")
    run_cp = d.run(db_conn, "coinpaprika")
    run_csv = d.run(db_conn, "csv")
    btc = d.asset(db_conn, "bitcoin", "BTC", "Bitcoin", {"coingecko": "bitcoin", "coinpaprika": "btc-bitcoin"})
    bitcoin_cash = d.asset(db_conn, "bitcoin-cash", "BCH", "Bitcoin Cash", {"coingecko": "bitcoin-cash"})
    fake = d.asset(db_conn, "batcoin", "btc", "Batcoin 100%", {"csv": "batcoin"})
    d.asset(db_conn, "ethereum", "ETH", "Ethereum")
    d.latest(db_conn, btc, "coingecko", "100.00", run_cg, market_cap="2000")
    d.latest(db_conn, btc, "coinpaprika", "103.00", run_cp)
    d.latest(db_conn, btc, "csv", "101.50", run_csv)
    return {"btc": btc, "bch": bitcoin_cash, "fake": fake, "run_cg": run_cg}


def test_search_by_symbol_shows_every_asset_that_shares_it(client, coins):
    body = client.get("/api/v1/assets?symbol=BTC").get_json()
    assert [a["slug"] for a in body["data"]] == ["bitcoin", "batcoin"]
    assert body["data"][0]["sources"] == ["coingecko", "coinpaprika"]
    assert body["metadata"]["total_count"] == 2


def test_search_by_name_puts_exact_symbol_matches_first(client, coins):
    slugs = [a["slug"] for a in client.get("/api/v1/assets?q=btc").get_json()["data"]]
    assert slugs == ["bitcoin", "batcoin"]
    assert [a["slug"] for a in client.get("/api/v1/assets?q=bitcoin").get_json()["data"]] == ["bitcoin", "bitcoin-cash"]
    # LIKE wildcards in the query are literal characters
    assert [a["slug"] for a in client.get("/api/v1/assets?q=100%25").get_json()["data"]] == ["batcoin"]
    assert client.get("/api/v1/assets?q=_").get_json()["data"] == []
    paged = client.get("/api/v1/assets?limit=2&offset=2").get_json()
    assert len(paged["data"]) == 2 and paged["metadata"]["total_count"] == 4


def test_one_asset_across_sources_with_consensus(client, coins):
    body = client.get(f"/api/v1/assets/{coins['btc']}").get_json()
    assert body["slug"] == "bitcoin" and body["sources"] == ["coingecko", "coinpaprika", "csv"]
    assert [(i["source"], i["external_id"]) for i in body["identifiers"]] == [
        ("coingecko", "bitcoin"), ("coinpaprika", "btc-bitcoin")]
    assert [(q["source"], q["price_usd"]) for q in body["quotes"]] == [
        ("coingecko", "100.00"), ("coinpaprika", "103.00"), ("csv", "101.50")]
    assert body["quotes"][0]["run_id"] == coins["run_cg"]
    assert body["consensus"] == {"sources": 3, "datasets": 3, "stale_excluded": 0, "median_price_usd": "101.50", "min_price_usd": "100.00",
                                 "max_price_usd": "103.00", "spread_usd": "3.00", "spread_pct": "2.9557"}
    assert client.get("/api/v1/assets/bitcoin").get_json()["id"] == coins["btc"]  # by slug too


def test_asset_without_quotes_and_unknown_asset(client, coins):
    body = client.get(f"/api/v1/assets/{coins['bch']}").get_json()
    assert body["quotes"] == [] and body["consensus"]["sources"] == 0 and body["consensus"]["median_price_usd"] is None
    missing = client.get("/api/v1/assets/no-such-coin")
    assert missing.status_code == 404 and "no-such-coin" in missing.get_json()["message"]
    assert client.get("/api/v1/assets/99999999999999999999999").status_code == 404


def test_history_raw_points_and_filters(client, db_conn, coins):
    run_id = coins["run_cg"]
    t0 = datetime(2030, 1, 7, 10, 0, tzinfo=timezone.utc)  # a Monday
    for minutes, price in ((0, "100"), (20, "110"), (50, "90"), (70, "95")):
        d.quote(db_conn, coins["btc"], "coingecko", price, run_id, t0 + timedelta(minutes=minutes))
    d.quote(db_conn, coins["btc"], "coinpaprika", "200", run_id, t0 + timedelta(minutes=5))
    url = f"/api/v1/assets/bitcoin/history?since=2030-01-07T00:00:00Z&until=2030-01-08T00:00:00Z"
    body = client.get(url).get_json()
    assert body["interval"] == "raw" and body["truncated"] is False
    assert [(p["source"], p["price_usd"]) for p in body["points"]] == [
        ("coingecko", "100"), ("coinpaprika", "200"), ("coingecko", "110"), ("coingecko", "90"), ("coingecko", "95")]
    only_cg = client.get(url + "&source=coingecko&limit=2").get_json()
    assert [p["price_usd"] for p in only_cg["points"]] == ["100", "110"] and only_cg["truncated"] is True
    window = client.get(f"/api/v1/assets/bitcoin/history?since=2030-01-07T10:10:00Z&until=2030-01-07T10:55:00Z")
    assert [p["price_usd"] for p in window.get_json()["points"]] == ["110", "90"]


def test_history_candles(client, db_conn, coins):
    run_id = coins["run_cg"]
    t0 = datetime(2030, 1, 7, 10, 0, tzinfo=timezone.utc)
    for minutes, price in ((0, "100"), (20, "110"), (50, "90"), (70, "95")):
        d.quote(db_conn, coins["btc"], "coingecko", price, run_id, t0 + timedelta(minutes=minutes), volume=str(minutes))
    url = f"/api/v1/assets/{coins['btc']}/history?since=2030-01-07T00:00:00Z&until=2030-01-08T00:00:00Z"
    hourly = client.get(url + "&interval=1h").get_json()
    assert "points" not in hourly
    assert [(c["bucket"][:19], c["open"], c["high"], c["low"], c["close"], c["volume_24h_usd"], c["samples"])
            for c in hourly["candles"]] == [("2030-01-07T10:00:00", "100", "110", "90", "90", "50", 3),
                                            ("2030-01-07T11:00:00", "95", "95", "95", "95", "70", 1)]
    daily = client.get(url + "&interval=1d").get_json()["candles"]
    assert [(c["open"], c["high"], c["low"], c["close"], c["samples"]) for c in daily] == [("100", "110", "90", "95", 4)]
    weekly = client.get(url + "&interval=1w").get_json()["candles"]
    assert weekly[0]["bucket"].startswith("2030-01-07T00:00:00")  # weeks start on Monday


@pytest.mark.parametrize("query", ["interval=2h", "limit=0", "source=binance", "since=2030-01-02&until=2030-01-01",
                                   "until=never"])
def test_history_bad_parameters(client, coins, query):
    response = client.get(f"/api/v1/assets/bitcoin/history?{query}")
    assert response.status_code == 422 and response.get_json()["details"]["query"]
