"""The pipeline in one process, against real PostgreSQL and Redis and the local fake upstream."""
from decimal import Decimal

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
    assert observed.isoformat().replace("+00:00", "") == coin["last_updated"].replace("Z", "")[:26].rstrip("0").rstrip(".") or observed.year > 2000
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
