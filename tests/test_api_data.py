"""GET /api/v1/data and the legacy GET /data: filters, paging three ways, exact money, errors."""
from datetime import timedelta
from decimal import Decimal

import pytest


import api_data as d
from api_data import app_with  # noqa: F401  (fixture)


@pytest.fixture
def market3(db_conn):
    """BTC on two sources, a second coin that also calls itself BTC, and ETH."""
    run_cg = d.run(db_conn, "coingecko", loaded=3)
    run_cp = d.run(db_conn, "coinpaprika", loaded=2)
    btc = d.asset(db_conn, "bitcoin", "BTC", "Bitcoin", {"coingecko": "bitcoin", "coinpaprika": "btc-bitcoin"})
    fake = d.asset(db_conn, "batcoin", "BTC", "Batcoin", {"coingecko": "batcoin"})
    eth = d.asset(db_conn, "ethereum", "ETH", "Ethereum", {"coingecko": "ethereum"})
    d.latest(db_conn, btc, "coingecko", "87440.123456789012345678", run_cg, market_cap="1745978218739.12",
             volume="35000000000.5", observed_at=d.NOW - timedelta(hours=1), market_cap_rank=1)
    d.latest(db_conn, btc, "coinpaprika", "87450.5", run_cp, market_cap="1746000000000",
             observed_at=d.NOW - timedelta(minutes=5))
    d.latest(db_conn, fake, "coingecko", "0.0000001234", run_cg, observed_at=d.NOW - timedelta(days=2))
    d.latest(db_conn, eth, "coingecko", "3100.25", run_cg, market_cap="372000000000",
             observed_at=d.NOW - timedelta(minutes=30))
    return {"btc": btc, "fake": fake, "eth": eth, "run_cg": run_cg}


def test_rows_are_ordered_by_market_cap_and_money_is_exact(client, market3):
    body = client.get("/api/v1/data").get_json()
    rows = body["data"]
    assert [(r["slug"], r["source"]) for r in rows] == [
        ("bitcoin", "coinpaprika"), ("bitcoin", "coingecko"), ("ethereum", "coingecko"), ("batcoin", "coingecko")]
    btc = rows[1]
    assert btc["price_usd"] == "87440.123456789012345678"  # every digit, as a string
    assert btc["market_cap_usd"] == "1745978218739.12"
    assert rows[3]["price_usd"] == "0.0000001234"  # plain notation, no exponent
    assert rows[3]["market_cap_usd"] is None
    assert {"asset_id", "slug", "symbol", "name", "source", "price_usd", "market_cap_usd", "volume_24h_usd",
            "observed_at", "fetched_at", "run_id", "market_cap_rank"} <= set(btc)
    assert btc["run_id"] == market3["run_cg"] and btc["market_cap_rank"] == 1
    meta = body["metadata"]
    assert meta["total_count"] == 4 and meta["total_count_exact"] is True
    assert meta["page"] == 1 and meta["page_size"] == 100 and meta["next_cursor"] is None
    assert meta["request_id"] and isinstance(meta["api_latency_ms"], float)


@pytest.mark.parametrize("query, expected", [
    ("symbol=btc", {("bitcoin", "coingecko"), ("bitcoin", "coinpaprika"), ("batcoin", "coingecko")}),
    ("symbol=BTC,ETH&source=coingecko", {("bitcoin", "coingecko"), ("batcoin", "coingecko"),
                                         ("ethereum", "coingecko")}),
    ("source=coinpaprika", {("bitcoin", "coinpaprika")}),
    ("asset=ethereum", {("ethereum", "coingecko")}),
    ("since={day_ago}", {("bitcoin", "coingecko"), ("bitcoin", "coinpaprika"), ("ethereum", "coingecko")}),
    ("until={day_ago}", {("batcoin", "coingecko")}),
    ("since={two_hours_ago}&until={ten_minutes_ago}", {("bitcoin", "coingecko"), ("ethereum", "coingecko")}),
])
def test_filters(client, market3, query, expected):
    iso = lambda t: t.isoformat().replace("+00:00", "Z")  # noqa: E731
    query = query.format(day_ago=iso(d.NOW - timedelta(days=1)), two_hours_ago=iso(d.NOW - timedelta(hours=2)),
                         ten_minutes_ago=iso(d.NOW - timedelta(minutes=10)))
    body = client.get(f"/api/v1/data?{query}").get_json()
    assert {(r["slug"], r["source"]) for r in body["data"]} == expected
    assert body["metadata"]["total_count"] == len(expected)


def test_filter_by_asset_id(client, market3):
    rows = client.get(f"/api/v1/data?asset={market3['eth']}").get_json()["data"]
    assert [r["slug"] for r in rows] == ["ethereum"]


@pytest.mark.parametrize("query, field", [
    ("source=binance", "source"),
    ("page_size=101", "page_size"),
    ("page=0", "page"),
    ("limit=abc", "limit"),
    ("offset=-1", "offset"),
    ("since=yesterday", "since"),
    ("since=2030-01-02T00:00:00Z&until=2030-01-01T00:00:00Z", "since"),
    ("cursor=not-a-cursor", "cursor"),
    ("page=2&offset=10", "offset"),
    ("page_size=10&limit=20", "limit"),
])
def test_bad_parameters_answer_422_with_the_reason(client, query, field):
    response = client.get(f"/api/v1/data?{query}", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 422
    body = response.get_json()
    assert body["status"] == 422 and body["error"] == "Unprocessable Entity"
    assert field in str(body["details"]) and body["request_id"] == "req-42"


def test_cursor_with_offset_is_refused(client, db_conn):
    d.market(db_conn, 5)
    cursor = client.get("/api/v1/data?limit=2").get_json()["metadata"]["next_cursor"]
    response = client.get(f"/api/v1/data?cursor={cursor}&offset=2")
    assert response.status_code == 400 and "cursor" in response.get_json()["message"]


def test_page_limit_and_cursor_paging_agree_and_walk_every_row_once(client, db_conn):
    d.market(db_conn, 60)  # 120 rows, null market caps and ties on purpose
    expected = [(r["asset_id"], r["source"]) for r in client.get("/api/v1/data?limit=1000").get_json()["data"]]
    assert len(expected) == len(set(expected)) == 120

    by_cursor, cursor, pages = [], None, 0
    while True:
        url = "/api/v1/data?page_size=7" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url).get_json()
        by_cursor += [(r["asset_id"], r["source"]) for r in body["data"]]
        cursor, pages = body["metadata"]["next_cursor"], pages + 1
        assert body["metadata"]["has_more"] == (cursor is not None)
        if cursor is None:
            break
    assert by_cursor == expected and pages == 18

    by_page = []
    for page in range(1, 19):
        body = client.get(f"/api/v1/data?page={page}&page_size=7").get_json()
        assert body["metadata"]["page"] == page and body["metadata"]["total_count"] == 120
        by_page += [(r["asset_id"], r["source"]) for r in body["data"]]
    assert by_page == expected

    by_offset = []
    for offset in range(0, 120, 25):
        body = client.get(f"/api/v1/data?limit=25&offset={offset}").get_json()
        by_offset += [(r["asset_id"], r["source"]) for r in body["data"]]
    assert by_offset == expected

    nulls_last = [r["market_cap_usd"] for r in client.get("/api/v1/data?limit=1000").get_json()["data"]]
    assert nulls_last.index(None) == len(nulls_last) - nulls_last.count(None)


def test_cursor_paging_with_filters(client, db_conn):
    d.market(db_conn, 30)
    seen, cursor = [], None
    while True:
        body = client.get("/api/v1/data?symbol=C3&source=coinpaprika&limit=2"
                          + (f"&cursor={cursor}" if cursor else "")).get_json()
        seen += [(r["slug"], r["source"]) for r in body["data"]]
        cursor = body["metadata"]["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted({(f"coin-{i}", "coinpaprika") for i in range(30) if i % 7 == 3})
    assert len(seen) == len(set(seen))


def test_total_count_beyond_the_exact_cap_is_an_estimate(client, db_conn, monkeypatch):
    from crypto_app.api import pagination

    d.market(db_conn, 30)
    with db_conn.cursor() as cur:
        cur.execute("ANALYZE latest_quotes")
    monkeypatch.setattr(pagination, "EXACT_COUNT_CAP", 10)
    long_ago = "since=2000-01-01T00:00:00Z"  # a filter without a maintained count, matching every row
    filtered = client.get(f"/api/v1/data?limit=5&{long_ago}").get_json()["metadata"]
    assert filtered["total_count_exact"] is False and 11 <= filtered["total_count"] <= 60  # planner estimate
    small = client.get(f"/api/v1/data?limit=5&symbol=C1&source=coingecko&{long_ago}").get_json()["metadata"]
    assert small["total_count_exact"] is True and small["total_count"] == 5  # coin-1, 8, 15, 22, 29


def test_unfiltered_and_per_source_totals_are_maintained_counts(client, db_conn, monkeypatch):
    """No filter, or sources only: source_quote_stats has the exact count, whatever the size."""
    from crypto_app.api import pagination

    d.market(db_conn, 30)
    monkeypatch.setattr(pagination, "EXACT_COUNT_CAP", 10)
    for query, expected in (("", 60), ("&source=coingecko", 30), ("&source=coingecko,coinpaprika", 60),
                            ("&source=csv", 0)):
        meta = client.get(f"/api/v1/data?limit=5{query}").get_json()["metadata"]
        assert (meta["total_count"], meta["total_count_exact"]) == (expected, True), query
    with db_conn.cursor() as cur:
        cur.execute("DELETE FROM latest_quotes WHERE asset_id IN (SELECT id FROM assets WHERE slug = 'coin-3')")
    meta = client.get("/api/v1/data?limit=5").get_json()["metadata"]
    assert (meta["total_count"], meta["total_count_exact"]) == (58, True)


@pytest.mark.parametrize("offset, cursor, walk", [
    (None, ["5000", 10, 1], "Index Only Scan using ix_latest_quotes_sort"),  # keyset: two range scans
    (150, None, "Index Only Scan using ix_latest_quotes_sort"),  # rows skipped by OFFSET: in the index only
    (0, None, "Index Scan using ix_latest_quotes_sort"),  # first page: the walk itself
])
def test_page_queries_walk_the_sort_index(db_conn, offset, cursor, walk):
    """Page queries walk ix_latest_quotes_sort instead of sorting the table; pages other than the first
    find their keys in the index alone (market_cap_usd is an INCLUDE column of it)."""
    from crypto_app.api.data import COLUMNS, page_sql
    from crypto_app.api.pagination import Window

    d.market(db_conn, 200, null_caps_every=10**6)
    params = {}
    sql = page_sql({}, Window(20, offset, cursor), COLUMNS, params)
    with db_conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE latest_quotes")
        cur.execute("SET enable_seqscan = off")  # the tables are tiny; ask whether the index *can* serve it
        cur.execute("SET enable_bitmapscan = off")
        cur.execute("EXPLAIN " + sql, params)
        plan = "\n".join(r[0] for r in cur.fetchall())
    assert walk in plan and "Seq Scan" not in plan, plan


def test_legacy_data_route_keeps_system_a_shape(client, market3):
    body = client.get("/data?page=1&page_size=2&source=coingecko&symbol=BTC").get_json()
    assert set(body) == {"data", "metadata"}
    assert {"request_id", "api_latency_ms", "page", "page_size", "total_count"} <= set(body["metadata"])
    assert body["metadata"]["page_size"] == 2 and body["metadata"]["total_count"] == 2
    row = body["data"][0]
    assert row["coin_id"] == "bitcoin" and row["symbol"] == "BTC" and row["name"] == "Bitcoin"
    assert row["current_price"] == pytest.approx(87440.12345678901) and isinstance(row["current_price"], float)
    assert row["market_cap"] == pytest.approx(1745978218739.12)
    assert row["price_usd"] == "87440.123456789012345678"
    assert client.get("/data").get_json()["metadata"]["page_size"] == 50  # system A's default
    assert len(client.get("/data?limit=3").get_json()["data"]) == 3


def test_legacy_b_query_with_limit_offset(client, market3):
    body = client.get("/api/v1/data?symbol=BTC&source=coingecko&limit=1&offset=1").get_json()
    assert [r["slug"] for r in body["data"]] == ["batcoin"]
    assert body["metadata"]["offset"] == 1 and body["metadata"]["total_count"] == 2


def test_reads_do_not_need_redis(app_with, market3):
    client = app_with(REDIS_URL="redis://127.0.0.1:1/0").test_client()
    for url in ("/api/v1/data", "/data", f"/api/v1/assets/{market3['btc']}", "/api/v1/stats", "/api/v1/runs",
                "/metrics"):
        assert client.get(url).status_code == 200, url
    assert Decimal(client.get("/api/v1/data?symbol=ETH").get_json()["data"][0]["price_usd"]) == Decimal("3100.25")
