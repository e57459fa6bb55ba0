"""Backfill windows executed in this process against the fake upstream's history endpoints: real-shaped
answers (out of order, duplicated timestamps, nulls, a gap), the plan's reach, 402/401 per window."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from crypto_app.pipeline.backfill_plan import BackfillConflict, PlanError, create_backfill, plan_backfill
from crypto_app.pipeline.backfill_window import run_window
from crypto_app.pipeline.backfills import start_backfill, summary
from crypto_app.sources.coingecko_history import merge_points

from pipeline_helpers import run_inline, settings_for, table

FIXTURES = __import__("pathlib").Path(__file__).resolve().parent / "fixtures"


def test_market_chart_points_are_joined_by_time_and_the_now_point_is_not_a_candle():
    body = json.loads((FIXTURES / "coingecko_market_chart_range.json").read_text())
    points = merge_points(body)
    assert [p["t"] for p in points] == [1711843200000, 1711929600000, 1711983682000]
    assert points[0] == {"t": 1711843200000, "price": 69702.3087473573, "market_cap": 1370247487960.09,
                         "total_volume": 16408802301.8374}


@pytest.fixture
def known(test_env, fake_upstream):
    """Both snapshot sources ran once against the fake (so assets have their CoinGecko and CoinPaprika ids)."""
    fake_upstream.set_coins(4)
    settings = settings_for(test_env, **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000,
                                                          COINPAPRIKA_RATE_PER_MINUTE=6000))
    run_inline(settings, "coingecko")
    run_inline(settings, "coinpaprika")
    fake_upstream.clear_requests()
    return settings


def _day(days_ago: int) -> datetime:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_ago)


def _run_all(conn, settings, backfill_id):
    for (window_id,) in table(conn, "SELECT id FROM backfill_windows WHERE backfill_id = %s AND status = 'pending' "
                                    "ORDER BY id", (backfill_id,)):
        step = run_window(settings, window_id)
        assert step.retry_in is None, step


def test_a_daily_backfill_of_both_sources_stores_each_day_once(known, db_conn, fake_upstream):
    conn = psycopg2.connect(known.libpq_url)
    plan = start_backfill(conn, known, {"assets": ["coin-1", "c2-coin-2"], "since": _day(30)}, send=lambda _id: None)
    assert plan.requests == 4                     # 2 assets x 2 sources, one window each
    _run_all(db_conn, known, plan.id)
    got = summary(conn, known, plan.id)
    assert got["status"] == "succeeded" and got["windows"]["done"] == 4 and got["requests"] == 4
    rows = table(db_conn, "SELECT d.name, count(*), min(q.observed_at), max(q.observed_at) FROM quotes q "
                          "JOIN datasets d ON d.id = q.dataset_id WHERE d.name LIKE '%%:market_chart:1d' "
                          "OR d.name LIKE '%%:historical:1d' GROUP BY 1 ORDER BY 1")
    # up to today 00:00: the newest point whose finality (10 min) has passed
    assert rows == [("coingecko:market_chart:1d", 62, _day(30), _day(0)),
                    ("coinpaprika:historical:1d", 62, _day(30), _day(0))]
    gecko = fake_upstream.requests_to("/api/v3/coins/coin-1/market_chart/range")[0][2]
    assert int(gecko["to"]) - int(gecko["from"]) > 90 * 86400     # a daily answer needs a span > 90 days
    paprika = fake_upstream.requests_to("/v1/tickers/c2-coin-2/historical")[0][2]
    assert paprika["interval"] == "1d" and paprika["limit"] == "5000"
    # identical second backfill: nothing written
    before = table(db_conn, "SELECT asset_id, dataset_id, observed_at, price_usd, run_id FROM quotes ORDER BY 1, 2, 3")
    again = start_backfill(conn, known, {"assets": ["coin-1", "c2-coin-2"], "since": _day(30)}, send=lambda _id: None)
    _run_all(db_conn, known, again.id)
    assert summary(conn, known, again.id)["rows"] == {"fetched": 124, "inserted": 0, "updated": 0,
                                                      "unchanged": 124, "rejected": 0}
    assert table(db_conn, "SELECT asset_id, dataset_id, observed_at, price_usd, run_id FROM quotes "
                          "ORDER BY 1, 2, 3") == before
    conn.close()


def test_quirky_answers_give_the_right_rows_once(known, db_conn, fake_upstream):
    fake_upstream.history_quirks = {"out_of_order", "duplicate", "null", "gap"}
    conn = psycopg2.connect(known.libpq_url)
    plan = start_backfill(conn, known, {"assets": ["coin-3"], "since": _day(200)}, send=lambda _id: None)
    _run_all(db_conn, known, plan.id)
    got = summary(conn, known, plan.id)
    missing = sum(1 for d in range(0, 201) if _day(d).timetuple().tm_yday % 50 == 7)
    # CoinPaprika's first point has a null price: rejected with its reason; CoinGecko's null cap: stored unknown
    assert got["rows"]["rejected"] == 1 and got["status"] == "succeeded"
    counts = dict(table(db_conn, "SELECT q.source, count(DISTINCT observed_at) FROM quotes q JOIN datasets d "
                                 "ON d.id = q.dataset_id WHERE d.endpoint IN ('market_chart', 'historical') GROUP BY 1"))
    assert counts == {"coingecko": 201 - missing, "coinpaprika": 201 - missing - 1}
    reason = table(db_conn, "SELECT reason FROM rejected_records")[0][0]
    assert "price_usd" in reason
    assert table(db_conn, "SELECT count(*) FROM quotes WHERE market_cap_usd IS NULL")[0][0] == 1
    conn.close()


def test_windows_beyond_the_plan_are_unavailable_with_the_reason_and_not_retried(known, db_conn, fake_upstream):
    conn = psycopg2.connect(known.libpq_url)
    plan = start_backfill(conn, known, {"assets": ["coin-1"], "since": _day(500), "until": _day(100)},
                          send=lambda _id: None)
    states = table(db_conn, "SELECT source, status, starts_at, ends_at FROM backfill_windows ORDER BY source, starts_at")
    gecko = [s for s in states if s[0] == "coingecko"]
    assert gecko[0][1] == "unavailable" and gecko[-1][1] == "pending"     # split at the 365-day reach
    assert gecko[0][3] == gecko[1][2]
    _run_all(db_conn, known, plan.id)
    got = summary(conn, known, plan.id)
    assert got["status"] == "partial"
    errors = {(e["source"], e["status"]) for e in got["errors"]}
    assert ("coingecko", "unavailable") in errors and ("coinpaprika", "unavailable") in errors
    assert any("not allowed in this plan" in e["error"] for e in got["errors"] if e["source"] == "coinpaprika")
    assert all(e["attempts"] <= 1 for e in got["errors"])
    # a scripted 402 and a 401 for single windows
    fake_upstream.script("/v1/tickers/", [fake_upstream.paprika_error(402, "This plan does not cover it")])
    fake_upstream.script("/api/v3/coins/", [fake_upstream.gecko_error(401, "Invalid API key", 10002)])
    other = start_backfill(conn, known, {"assets": ["coin-2"], "since": _day(10)}, send=lambda _id: None)
    _run_all(db_conn, known, other.id)
    by_source = {e["source"]: (e["status"], e["error"]) for e in summary(conn, known, other.id)["errors"]}
    assert by_source["coinpaprika"][0] == "unavailable" and "This plan does not cover it" in by_source["coinpaprika"][1]
    assert by_source["coingecko"][0] == "failed" and "Invalid API key" in by_source["coingecko"][1]
    conn.close()


def test_overlapping_backfill_is_refused_naming_the_running_one(known, db_conn):
    conn = psycopg2.connect(known.libpq_url)
    first = start_backfill(conn, known, {"assets": ["coin-1"], "since": _day(30)}, send=lambda _id: None)
    with pytest.raises(BackfillConflict) as info:
        create_backfill(conn, plan_backfill(conn, known, {"assets": ["coin-1"], "since": _day(10),
                                                          "sources": ["coinpaprika"]}))
    assert info.value.backfill_id == first.id
    # a running backfill owns its whole range, even when its windows there are done: finish first's
    # CoinPaprika window, then an overlapping CoinPaprika backfill is still refused while first runs
    (paprika_window,) = table(db_conn, "SELECT id FROM backfill_windows WHERE backfill_id = %s AND source = "
                                       "'coinpaprika'", (first.id,))[0]
    assert run_window(known, paprika_window).status == "done"
    assert summary(conn, known, first.id)["status"] == "running"
    with pytest.raises(BackfillConflict) as info:
        create_backfill(conn, plan_backfill(conn, known, {"assets": ["coin-1"], "since": _day(10),
                                                          "sources": ["coinpaprika"]}))
    assert info.value.backfill_id == first.id
    # another interval or asset is fine
    create_backfill(conn, plan_backfill(conn, known, {"assets": ["coin-1"], "since": _day(2), "interval": "1h"}))
    with pytest.raises(PlanError, match="unknown assets: nope"):
        plan_backfill(conn, known, {"assets": ["nope"], "since": _day(2)})
    conn.close()


def test_coverage_reports_the_gaps_and_a_gaps_of_backfill_fills_exactly_those(known, db_conn, fake_upstream, client):
    fake_upstream.history_quirks = {"gap"}
    conn = psycopg2.connect(known.libpq_url)
    since, until = _day(120), _day(0)
    plan = start_backfill(conn, known, {"assets": ["coin-2"], "sources": ["coingecko"], "since": since},
                          send=lambda _id: None)
    _run_all(db_conn, known, plan.id)
    url = (f"/api/v1/assets/coin-2/coverage?dataset=coingecko:market_chart:1d&interval=1d"
           f"&since={since.date().isoformat()}&until={until.date().isoformat()}")
    cover = client.get(url).get_json()
    holes = [d for d in range(1, 121) if _day(d).timetuple().tm_yday % 50 == 7]
    assert cover["expected"] == 120 and cover["missing"] == len(holes) > 0
    assert sorted(g["first"] for g in cover["gaps"]) == sorted(_day(d).isoformat() for d in holes)
    assert all(g["buckets"] == 1 for g in cover["gaps"])
    fake_upstream.history_quirks = set()
    fake_upstream.clear_requests()
    fill = start_backfill(conn, known, {"gaps_of": {"asset": "coin-2", "source": "coingecko", "since": since,
                                                    "until": until}}, send=lambda _id: None)
    assert len(fill.windows) == len(holes)
    _run_all(db_conn, known, fill.id)
    got = summary(conn, known, fill.id)
    assert got["status"] == "succeeded" and got["requests"] == len(holes)
    after = client.get(url).get_json()
    assert after["missing"] == 0 and after["gaps"] == [] and after["covered"][0]["buckets"] == 120
    conn.close()


def test_keep_current_fetches_each_final_day_once(known, db_conn, fake_upstream):
    from crypto_app.pipeline.keep_current import keep_current

    conn = psycopg2.connect(known.libpq_url)
    plan = start_backfill(conn, known, {"assets": ["coin-1", "coin-2"], "since": _day(20), "until": _day(5)},
                          send=lambda _id: None)
    _run_all(db_conn, known, plan.id)
    fake_upstream.clear_requests()
    started = keep_current(conn, known, "coinpaprika", send=lambda _id: None)
    assert len(started) == 1                      # both assets stand at the same day: one backfill
    _run_all(db_conn, known, started[0])
    got = summary(conn, known, started[0])
    assert got["status"] == "succeeded" and got["rows"]["inserted"] == 2 * 6 and got["rows"]["unchanged"] == 0
    # from just after the newest final row (day 6), to the end of today's bucket
    assert table(db_conn, "SELECT trigger, since, until FROM backfills WHERE id = %s", (started[0],)) == [
        ("schedule", _day(6) + timedelta(seconds=1), _day(-1))]
    assert keep_current(conn, known, "coinpaprika", send=lambda _id: None) == []     # current: nothing asked
    assert len(fake_upstream.requests_to("/v1/tickers/")) == 2
    conn.close()


def _points(client, slug, **query):
    got = client.get(f"/api/v1/assets/{slug}/history", query_string=query)
    assert got.status_code == 200, got.get_json()
    return got.get_json()


def test_keep_current_stores_the_provisional_now_point_and_replaces_it_with_the_final_one(known, db_conn, client):
    from crypto_app.pipeline.keep_current import keep_current

    now = datetime.now(timezone.utc)
    if now - _day(0) < timedelta(minutes=15) or _day(-1) - now < timedelta(minutes=1):
        pytest.skip("today's 00:00 point is not final yet (or the day ends during the test)")
    conn = psycopg2.connect(known.libpq_url)
    dataset = "coingecko:market_chart:1d"
    plan = start_backfill(conn, known, {"assets": ["coin-1"], "sources": ["coingecko"], "since": _day(3)},
                          send=lambda _id: None)
    _run_all(db_conn, known, plan.id)
    assert table(db_conn, "SELECT count(*) FROM quotes WHERE 'provisional' = ANY(flags)") == [(0,)]
    (first,) = keep_current(conn, known, "coingecko", send=lambda _id: None)
    _run_all(db_conn, known, first)
    # only the "now" point was new: the final days were not stored again
    assert summary(conn, known, first)["rows"] == {"fetched": 1, "inserted": 1, "updated": 0, "unchanged": 0,
                                                   "rejected": 0}
    provisional = table(db_conn, "SELECT observed_at FROM quotes WHERE 'provisional' = ANY(flags)")
    assert len(provisional) == 1 and provisional[0][0] > _day(0)
    points = _points(client, "coin-1", dataset=dataset, since=_day(3).isoformat())["points"]
    assert [p["final"] for p in points] == [True, True, True, True, False]
    assert points[-1]["flags"] == ["provisional"] and points[0]["run_id"] == plan.id
    candles = _points(client, "coin-1", dataset=dataset, interval="1d", since=_day(3).isoformat())["candles"]
    assert [(c["bucket"], c["final"]) for c in candles] == [
        (_day(3).isoformat(), True), (_day(2).isoformat(), True), (_day(1).isoformat(), True),
        (_day(0).isoformat(), False)]        # today's bucket has not closed
    # snapshot datasets carry no finality
    snapshot = _points(client, "coin-1", dataset="coingecko:markets", since="2000-01-01T00:00:00Z")["points"]
    assert {p["final"] for p in snapshot} == {None}
    # a row's run_id leads to its backfill
    missing = client.get(f"/api/v1/runs/{plan.id}")
    assert missing.status_code == 404 and missing.get_json()["details"]["backfill_id"] == plan.id
    assert f"/api/v1/backfills/{plan.id}" in missing.get_json()["message"]

    # yesterday's provisional point (stored at noon, before today's final 00:00 point existed) is replaced
    with db_conn.cursor() as cur:
        cur.execute("UPDATE quotes SET observed_at = %s WHERE 'provisional' = ANY(flags)",
                    (_day(1) + timedelta(hours=12),))
        cur.execute("DELETE FROM quotes q USING datasets d WHERE d.id = q.dataset_id AND d.name = %s "
                    "AND q.observed_at = %s", (dataset, _day(0)))
    db_conn.commit()
    (second,) = keep_current(conn, known, "coingecko", send=lambda _id: None)
    assert table(db_conn, "SELECT since FROM backfills WHERE id = %s", (second,)) == [(_day(1) + timedelta(seconds=1),)]
    _run_all(db_conn, known, second)
    rows = table(db_conn, "SELECT q.observed_at, coalesce(q.flags, '{}') FROM quotes q JOIN datasets d "
                          "ON d.id = q.dataset_id WHERE d.name = %s AND q.observed_at >= %s ORDER BY 1",
                 (dataset, _day(1)))
    assert [r[0] for r in rows[:2]] == [_day(1), _day(0)] and rows[1][1] == []      # the final point arrived
    assert len(rows) == 3 and rows[2][1] == ["provisional"] and rows[2][0] > _day(0)  # one provisional: now
    conn.close()


def test_lost_queue_messages_are_requeued_then_failed_so_the_backfill_ends(known, db_conn):
    from crypto_app.pipeline.backfill_reaper import requeue_stalled_windows

    conn = psycopg2.connect(known.libpq_url)
    lost = start_backfill(conn, known, {"assets": ["coin-1", "coin-2"], "since": _day(20)}, send=lambda _id: None)
    pending = sorted(w for (w,) in table(db_conn, "SELECT id FROM backfill_windows WHERE backfill_id = %s",
                                         (lost.id,)))
    sent = []
    # fresh: not stalled
    assert requeue_stalled_windows(conn, sent.append, stall_seconds=60) == {"requeued": [], "failed": []}

    def stall():
        with db_conn.cursor() as cur:
            cur.execute("UPDATE backfill_windows SET touched_at = now() - interval '1 hour'")
        db_conn.commit()

    stall()
    assert sorted(requeue_stalled_windows(conn, sent.append, stall_seconds=60)["requeued"]) == pending
    assert sorted(sent) == pending
    for window_id in sent[:2]:                   # the re-queued messages are delivered this time
        assert run_window(known, window_id).status == "done"
    # the other two are lost again, three more times: then failed, and the backfill ends
    for _ in range(2):
        stall()
        assert len(requeue_stalled_windows(conn, sent.append, stall_seconds=60)["requeued"]) == 2
    stall()
    assert len(requeue_stalled_windows(conn, sent.append, stall_seconds=60)["failed"]) == 2
    got = summary(conn, known, lost.id)
    assert got["status"] == "partial" and got["windows"]["failed"] == 2 and got["windows"]["left"] == 0
    assert all("re-queued 3 times" in e["error"] for e in got["errors"])
    conn.close()
