"""The WSGI layer in front of Flask (crypto_app/api/cachelayer.py): a read-cache hit it answers is the answer
Flask gives for the same hit (body, ETag, headers), 304s work, a write invalidates, requests that need auth
or write never reach it, and its answers are counted in the HTTP metrics and logged. Real PostgreSQL."""
from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

import api_data as d
from crypto_app.api.cachelayer import CachedReads

URLS = ["/api/v1/data", "/api/v1/data?limit=3&source=coingecko", "/api/v1/data?cursor={cursor}", "/data?page_size=2",
        "/api/v1/assets", "/api/v1/assets/{btc}", "/api/v1/assets/bitcoin",
        "/api/v1/assets/{btc}/history?since=2020-01-01T00:00:00Z&until=2030-01-01T00:00:00Z",
        "/api/v1/stats", "/stats", "/api/v1/datasets"]
LATENCY = re.compile(rb'"api_latency_ms":[0-9.]+')


@pytest.fixture
def market(db_conn):
    run_id = d.run(db_conn, "coingecko", loaded=2)
    btc = d.asset(db_conn, "bitcoin", "BTC", "Bitcoin", {"coingecko": "bitcoin"})
    eth = d.asset(db_conn, "ethereum", "ETH", "Ethereum", {"coingecko": "ethereum"})
    d.latest(db_conn, btc, "coingecko", "87000.12345678", run_id, market_cap="1700000000000.10")
    d.latest(db_conn, eth, "coingecko", "3100.25", run_id, market_cap="370000000000")
    d.quote(db_conn, btc, "coingecko", "87000.12345678", run_id, d.NOW - timedelta(hours=1))
    return {"run_id": run_id, "btc": btc, "eth": eth}


@pytest.fixture
def layer(app):
    layer = app.wsgi_app
    assert isinstance(layer, CachedReads)
    layer.enabled = True
    yield layer
    layer.enabled = True


def _url(client, template: str, market: dict) -> str:
    cursor = ""
    if "{cursor}" in template:
        cursor = client.get("/api/v1/data?limit=1").get_json()["metadata"]["next_cursor"]
    return template.format(cursor=cursor, **market)


def _headers(response) -> list:
    return [(k, v) for k, v in response.headers.items() if k != "Content-Length"]


@pytest.mark.parametrize("template", URLS)
def test_a_hit_answered_by_the_layer_is_the_answer_flask_gives(client, layer, market, template):
    url = _url(client, template, market)
    client.get(url)  # a miss: computed by the view, stored
    served = layer.served
    by_layer = client.get(url, headers={"X-Request-ID": "same-id"})
    assert layer.served == served + 1
    layer.enabled = False
    by_flask = client.get(url, headers={"X-Request-ID": "same-id"})  # the in-Flask hook answers the same hit
    assert layer.served == served + 1
    assert by_layer.status_code == by_flask.status_code == 200
    assert LATENCY.sub(b"", by_layer.data) == LATENCY.sub(b"", by_flask.data)
    assert _headers(by_layer) == _headers(by_flask)
    assert by_layer.headers["Content-Type"] == "application/json" and by_layer.headers["ETag"].startswith('W/"')
    for response in (by_layer, by_flask):
        assert int(response.headers["Content-Length"]) == len(response.data)
    if b'"request_id"' in by_layer.data:
        assert by_layer.get_json()["metadata"]["request_id"] == "same-id"
    if b'"api_latency_ms"' in by_layer.data:
        assert isinstance(by_layer.get_json()["metadata"]["api_latency_ms"], float)


def test_money_stays_exact_decimal_strings_through_the_layer(client, layer, market):
    client.get("/api/v1/data")
    body = client.get("/api/v1/data").get_json()
    btc = [row for row in body["data"] if row["slug"] == "bitcoin"][0]
    assert btc["price_usd"] == "87000.12345678" and btc["market_cap_usd"] == "1700000000000.10"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_304_and_head_from_the_layer_match_flask(client, layer, market, method):
    etag = client.get("/api/v1/data").headers["ETag"]
    headers = {"If-None-Match": etag, "X-Request-ID": "rev-1"}
    served = layer.served
    by_layer = client.open("/api/v1/data", method=method, headers=headers)
    plain_layer = client.open("/api/v1/data", method=method, headers={"X-Request-ID": "rev-1"})
    assert layer.served == served + 2
    layer.enabled = False
    by_flask = client.open("/api/v1/data", method=method, headers=headers)
    plain_flask = client.open("/api/v1/data", method=method, headers={"X-Request-ID": "rev-1"})
    assert by_layer.status_code == by_flask.status_code == 304
    assert by_layer.data == by_flask.data == b""
    assert list(by_layer.headers.items()) == list(by_flask.headers.items())
    assert plain_layer.status_code == plain_flask.status_code == 200
    assert _headers(plain_layer) == _headers(plain_flask)
    if method == "HEAD":
        assert plain_layer.data == plain_flask.data == b""
    other = client.get("/api/v1/data", headers={"If-None-Match": 'W/"something-else"'})
    assert other.status_code == 200


def test_a_write_invalidates_what_the_layer_serves(client, layer, db_conn, market):
    first = client.get("/api/v1/data?symbol=BTC")
    served = layer.served
    assert client.get("/api/v1/data?symbol=BTC").status_code == 200 and layer.served == served + 1
    d.latest(db_conn, market["btc"], "coinpaprika", "87100.5", d.run(db_conn, "coinpaprika", loaded=1))
    after = client.get("/api/v1/data?symbol=BTC", headers={"If-None-Match": first.headers["ETag"]})
    assert layer.served == served + 1  # the version moved on: computed by the view, not the old entry
    assert after.status_code == 200 and after.headers["ETag"] != first.headers["ETag"]
    assert sorted(row["source"] for row in after.get_json()["data"]) == ["coingecko", "coinpaprika"]
    again = client.get("/api/v1/data?symbol=BTC", headers={"If-None-Match": after.headers["ETag"]})
    assert again.status_code == 304 and layer.served == served + 2


def test_writes_auth_and_uncacheable_requests_never_reach_the_layer(app, client, layer, market):
    for url in ("/api/v1/data", "/api/v1/runs", "/health/live"):
        client.get(url)
        client.get(url)
    served = layer.served
    assert client.post("/api/v1/runs", json={"source": "coingecko"}).status_code in (401, 503)
    assert client.post("/api/v1/runs", json={"source": "coingecko"},
                       headers={"Authorization": "Bearer wrong"}).status_code in (403, 503)
    assert client.post("/api/v1/data").status_code == 405
    assert client.delete("/api/v1/data").status_code == 405
    assert client.get("/api/v1/data", headers={"Authorization": "Bearer whatever"}).status_code == 200
    assert client.get("/api/v1/data", data=b"x" * 10).status_code == 200  # a body: Flask's to handle
    assert client.get("/api/v1/data/").status_code in (308, 404)          # no such route as cached
    assert client.get("/api/v1/runs").status_code == 200                  # not a cached endpoint
    assert client.get("/health/live").status_code == 200
    assert client.get("/api/v1/data?symbol=%00").status_code == 400       # NUL: refused by Flask
    assert layer.served == served
    assert client.get("/api/v1/data").status_code == 200 and layer.served == served + 1


def _samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_hits_from_the_layer_are_counted_and_logged(client, layer, market, caplog):
    caplog.set_level(logging.INFO, logger="crypto_app.api.access")
    client.get("/api/v1/data?limit=1")
    etag = client.get("/api/v1/data?limit=1").headers["ETag"]
    duration = ("flask_http_request_duration_seconds_count",
                (("method", "GET"), ("status", "200"), ("url_rule", "/api/v1/data")))
    duration_304 = (duration[0], (("method", "GET"), ("status", "304"), ("url_rule", "/api/v1/data")))
    total = ("flask_http_request_total", (("method", "GET"), ("status", "200")))
    before = _samples(client.get("/metrics").get_data(as_text=True))
    served = layer.served
    client.get("/api/v1/data?limit=1", headers={"X-Request-ID": "layer-hit"})
    client.get("/api/v1/data?limit=1", headers={"X-Request-ID": "layer-304", "If-None-Match": etag})
    assert layer.served == served + 2
    after = _samples(client.get("/metrics").get_data(as_text=True))
    assert after[duration] == before[duration] + 1
    assert after[duration_304] == before.get(duration_304, 0) + 1
    assert after[total] == before[total] + 2  # the hit and the /metrics request itself
    lines = {r.request_id: r for r in caplog.records if r.name == "crypto_app.api.access"}
    assert lines["layer-hit"].status == 200 and lines["layer-hit"].path == "/api/v1/data"
    assert lines["layer-hit"].method == "GET" and isinstance(lines["layer-hit"].duration_ms, float)
    assert lines["layer-304"].status == 304


def test_pages_read_on_the_version_connection_equal_those_read_through_sqlalchemy(settings, client, layer, db_conn,
                                                                                   market):
    """With the cache on, an uncached page runs its one statement on the connection the version was read on;
    with the cache off, through SQLAlchemy's session (as before). Same bodies."""
    from crypto_app import create_app
    from crypto_app.api.readcache import EXTENSION
    from crypto_app.extensions import db

    ada = d.asset(db_conn, "cardano", "ADA", "Cardano ₳", {"coingecko": "cardano"})
    d.latest(db_conn, ada, "coingecko", "0.00000001", market["run_id"], market_cap=None)
    uncached = create_app({"TESTING": True, "READ_CACHE_MAX_BYTES": 0}, settings=settings)
    try:
        other = uncached.test_client()
        cursor = client.get("/api/v1/data?limit=1").get_json()["metadata"]["next_cursor"]
        for url in ("/api/v1/data", "/api/v1/data?limit=1", f"/api/v1/data?cursor={cursor}", "/api/v1/data?offset=1",
                    "/api/v1/data?symbol=ada,btc", "/api/v1/data?source=coingecko&limit=2", "/data?page_size=2",
                    "/api/v1/data?since=2100-01-01T00:00:00Z"):
            fast, slow = client.get(url, headers={"X-Request-ID": "x"}), other.get(url, headers={"X-Request-ID": "x"})
            assert fast.status_code == slow.status_code == 200, url
            assert LATENCY.sub(b"", fast.data) == LATENCY.sub(b"", slow.data), url
    finally:
        with uncached.app_context():
            db.engine.dispose()
        uncached.extensions[EXTENSION].versions.close()


def test_history_is_one_statement_without_orm_objects(app, client, db_conn, market):
    """The asset and its points or candles come from one statement (cached windows: on the read connection;
    open windows: through SQLAlchemy); an asset without rows answers empty, an unknown one 404."""
    from sqlalchemy import event

    from crypto_app.api.readcache import EXTENSION
    from crypto_app.extensions import db

    statements: list = []
    versions = app.extensions[EXTENSION].versions
    run_on_read_connection = versions.query

    def query(sql, params):
        statements.append(sql)
        return run_on_read_connection(sql, params)

    def on_execute(conn, cursor, statement, params, context, many):
        statements.append(statement)

    with app.app_context():
        engine = db.engine
    versions.query = query
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        doge = d.asset(db_conn, "dogecoin", "DOGE", "Dogecoin")
        window = "since=2020-01-01T00:00:00Z&until=2030-01-01T00:00:00Z"
        for url in (f"/api/v1/assets/{market['btc']}/history?{window}", f"/api/v1/assets/bitcoin/history?{window}&interval=1d",
                    "/api/v1/assets/bitcoin/history?interval=1h&since=2020-01-01T00:00:00Z",
                    f"/api/v1/assets/{doge}/history?{window}"):
            statements.clear()
            body = client.get(url).get_json()
            assert len(statements) == 1 and "FROM assets WHERE" in statements[0], url
            assert body["slug"] in ("bitcoin", "dogecoin") and body["asset_id"] in (market["btc"], doge)
        assert body["points"] == [] and body["truncated"] is False
        raw = client.get(f"/api/v1/assets/bitcoin/history?{window}").get_json()
        assert [p["price_usd"] for p in raw["points"]] == ["87000.12345678"] and raw["symbol"] == "BTC"
        for ref in ("no-such-coin", "987654321"):
            missing = client.get(f"/api/v1/assets/{ref}/history?{window}")
            assert missing.status_code == 404 and f"No asset '{ref}'" in missing.get_json()["message"]
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
        versions.query = run_on_read_connection


def test_api_sessions_do_not_jit_compile(app, client, market):
    """History statements are costed above jit_above_cost; compiling them cost 50-140 ms for a 17 ms query."""
    from sqlalchemy import text

    from crypto_app.api.readcache import EXTENSION
    from crypto_app.extensions import db

    with app.app_context():
        assert db.session.execute(text("SHOW jit")).scalar() == "off"
        db.session.rollback()
    versions = app.extensions[EXTENSION].versions
    assert versions.read() is not None
    assert versions.query("SHOW jit", {}) == [{"jit": "off"}]
