"""The pipeline in one process, against real PostgreSQL and Redis and the local fake upstream."""
from decimal import Decimal

import pytest

from crypto_app.pipeline.validate import parse_timestamp
from pipeline_helpers import quotes_snapshot, run_inline, settings_for, table


def test_coingecko_pages_land_as_canonical_rows_with_provenance(test_env, fake_upstream, db_conn):
    fake_upstream.set_coins(25)
    settings = settings_for(test_env, **fake_upstream.env(COINGECKO_PER_PAGE=10, COINGECKO_RATE_PER_MINUTE=6000))
    run_id, outcome = run_inline(settings, "coingecko")

    assert outcome.status == "succeeded"
    assert (outcome.fetched, outcome.loaded, outcome.rejected, outcome.pages) == (25, 25, 0, 3)
    rows = table(db_conn, "SELECT q.run_id::text, q.payload_hash, q.observed_at, q.fetched_at, r.content_hash "
                          "FROM quotes q JOIN raw_payloads r ON r.content_hash = q.payload_hash")
    assert len(rows) == 25 and all(r[0] == run_id and r[1] == r[4] for r in rows)
    assert len(table(db_conn, "SELECT 1 FROM raw_payloads WHERE run_id = %s", (run_id,))) == 3
    coin = fake_upstream.coingecko_coins()[0]
    price, observed = table(db_conn, "SELECT q.price_usd, q.observed_at FROM quotes q JOIN asset_identifiers i "
                                     "ON i.asset_id = q.asset_id WHERE i.source = 'coingecko' AND i.external_id = %s",
                            (coin["id"],))[0]
    assert price == Decimal(str(coin["current_price"]))
    assert observed == parse_timestamp(coin["last_updated"])   # the record's own time, not our fetch time
    run = table(db_conn, "SELECT status, fetched, loaded, pages, stats->'http_status'->>'200' FROM etl_runs WHERE id = %s",
                (run_id,))[0]
    assert run == ("succeeded", 25, 25, 3, "3")


def test_replaying_the_same_payloads_changes_nothing(test_env, fake_upstream, db_conn):
    settings = settings_for(test_env, **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000))
    run_inline(settings, "coingecko")
    before = quotes_snapshot(db_conn)
    _, second = run_inline(settings, "coingecko")
    assert quotes_snapshot(db_conn) == before
    assert second.stats["inserted"] == 0 and second.stats["updated"] == 0
    assert second.stats["unchanged"] == len(before)


def test_an_older_observation_never_overwrites_the_latest_quote(test_env, fake_upstream, db_conn):
    fake_upstream.set_coins(3)
    settings = settings_for(test_env, **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000))
    run_inline(settings, "coingecko")
    newer = table(db_conn, "SELECT asset_id, observed_at, price_usd FROM latest_quotes ORDER BY asset_id")
    old = fake_upstream.coingecko_coins()
    for coin in old:
        coin["last_updated"] = "2020-01-01T00:00:00.000Z"
        coin["current_price"] = 1.23
    fake_upstream.script("/api/v3/coins/markets", [fake_upstream.json_response(200, old)])
    run_inline(settings, "coingecko")
    assert table(db_conn, "SELECT asset_id, observed_at, price_usd FROM latest_quotes ORDER BY asset_id") == newer
    # ... while the history keeps both observations
    assert len(table(db_conn, "SELECT 1 FROM quotes")) == 6


def test_bad_records_are_quarantined_with_reasons_and_the_run_goes_on(test_env, fake_upstream, db_conn):
    coins = fake_upstream.coingecko_coins()[:10]
    coins[0]["current_price"] = -5            # negative price
    coins[1]["current_price"] = "NaN"         # not finite
    coins[2]["last_updated"] = "yesterday"    # not a time
    coins[3]["price_change_percentage_24h"] = -12.5   # negative change is fine
    coins[4]["total_supply"] = 1e30           # huge values are kept exactly (a market cap that big is not:
    #                                           plausibility's market_cap_ceiling, tests/faults/test_plausibility.py)
    coins[5]["max_supply"] = None             # missing optional stays null
    fake_upstream.script("/api/v3/coins/markets", [fake_upstream.json_response(200, coins)])
    settings = settings_for(test_env, **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000, REJECT_SHARE_PARTIAL=0.2))
    run_id, outcome = run_inline(settings, "coingecko")

    assert (outcome.fetched, outcome.loaded, outcome.rejected) == (10, 7, 3)
    assert outcome.status == "partial"        # 30% rejected > 20% allowed
    rejected = dict(table(db_conn, "SELECT record->>'id', reason FROM rejected_records WHERE run_id = %s", (run_id,)))
    assert set(rejected) == {coins[0]["id"], coins[1]["id"], coins[2]["id"]}
    assert "price_usd" in rejected[coins[0]["id"]] and "observed_at" in rejected[coins[2]["id"]]
    errors = table(db_conn, "SELECT errors FROM rejected_records WHERE record->>'id' = %s", (coins[0]["id"],))[0][0]
    assert errors == {"price_usd": ["must not be negative"]}
    values = dict(table(db_conn, "SELECT i.external_id, ARRAY[q.change_24h_pct, q.total_supply, q.max_supply] "
                                 "FROM quotes q JOIN asset_identifiers i ON i.asset_id = q.asset_id"))
    assert values[coins[3]["id"]][0] == Decimal("-12.5")
    assert values[coins[4]["id"]][1] == Decimal("1E+30")
    assert values[coins[5]["id"]][2] is None


def test_a_failure_mid_crawl_resumes_from_the_checkpoint_without_duplicates(test_env, fake_upstream, db_conn):
    from crypto_app.sources.base import TransientSourceError

    fake_upstream.set_coins(50)
    settings = settings_for(test_env, **fake_upstream.env(COINGECKO_PER_PAGE=10, COINGECKO_MAX_PAGES=10,
                                                          COINGECKO_RATE_PER_MINUTE=6000))
    fake_upstream.script("/api/v3/coins/markets", [fake_upstream.json_response(503, {"error": "busy"})],
                         query={"page": "3"})


    with pytest.raises(TransientSourceError):
        run_inline(settings, "coingecko")
    assert len(table(db_conn, "SELECT 1 FROM quotes")) == 20          # pages 1-2 committed with their checkpoint
    assert table(db_conn, "SELECT cursor->'position' FROM checkpoints WHERE source = 'coingecko'")[0][0] == {"page": 3}

    fake_upstream.clear_requests()
    run_inline(settings, "coingecko")
    pages = [r[2]["page"] for r in fake_upstream.requests_to("/api/v3/coins/markets")]
    assert pages == ["3", "4", "5", "6"]           # resumed (page 6 is the empty end); pages 1-2 not fetched again
    assert len(table(db_conn, "SELECT DISTINCT asset_id FROM quotes")) == 50
    assert len(table(db_conn, "SELECT 1 FROM quotes")) == 50           # nothing twice, nothing missing
    assert table(db_conn, "SELECT cursor->>'complete' FROM checkpoints WHERE source = 'coingecko'")[0][0] == "true"


def test_a_renamed_upstream_field_is_recorded_as_drift_and_rejected_not_crashed(test_env, fake_upstream, db_conn):
    fake_upstream.set_coins(5)
    settings = settings_for(test_env, **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000))
    run_inline(settings, "coingecko")
    fake_upstream.rename_field("current_price", "price")
    run_id, outcome = run_inline(settings, "coingecko")
    assert outcome.rejected == 5 and outcome.status == "partial"
    drift = table(db_conn, "SELECT schema_drift FROM etl_runs WHERE id = %s", (run_id,))[0][0]
    assert drift["added"] == ["price"] and drift["removed"] == ["current_price"]
    reasons = {r[0] for r in table(db_conn, "SELECT reason FROM rejected_records WHERE run_id = %s", (run_id,))}
    assert reasons == {"invalid fields: price_usd"}


def test_coins_sharing_a_symbol_stay_apart_and_one_coin_from_two_apis_is_one_asset(test_env, fake_upstream, db_conn):
    fake_upstream.set_coins(6)   # coin-3 and coin-4 share the symbol C3
    settings = settings_for(test_env, **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000,
                                                          COINPAPRIKA_RATE_PER_MINUTE=6000))
    run_inline(settings, "coingecko")
    run_inline(settings, "coinpaprika")
    assets = table(db_conn, "SELECT a.slug, a.symbol, array_agg(i.source || ':' || i.external_id ORDER BY i.source) "
                            "FROM assets a JOIN asset_identifiers i ON i.asset_id = a.id GROUP BY a.id ORDER BY a.slug")
    assert len(assets) == 6
    by_slug = {slug: (symbol, ids) for slug, symbol, ids in assets}
    assert by_slug["coin-3"] == ("C3", ["coingecko:coin-3", "coinpaprika:c3-coin-3"])
    assert by_slug["coin-4"][0] == "C3" and by_slug["coin-4"][1] == ["coingecko:coin-4", "coinpaprika:c3-coin-4"]
