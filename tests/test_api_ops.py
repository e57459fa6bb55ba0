"""Operations over HTTP: /health and probes, /api/v1/stats, /metrics, errors, request ids."""
import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crypto_app import liveness
from crypto_app.api import freshness

import api_data as d
from api_data import app_with  # noqa: F401  (fixture)



def _fresh_runs(db_conn, sources=("coingecko", "coinpaprika", "csv")):
    for source in sources:
        d.run(db_conn, source, finished_at=d.NOW - timedelta(seconds=30))


def _worker_alive(redis, name="worker@test"):
    """What a live worker's heartbeat_sent hook writes (tasks/__init__.py)."""
    liveness.beat_worker(redis, name)


def test_health_is_degraded_without_workers_and_lists_sources(client, db_conn, settings, monkeypatch):
    # a source that never ran is aged from the API process's start: pin it to now, or this test depends on
    # how long the test session has run (stale after twice coinpaprika's 300 s schedule, e.g. on a slow CI)
    monkeypatch.setattr(freshness, "PROCESS_STARTED", time.time())
    d.run(db_conn, "coingecko", finished_at=d.NOW - timedelta(seconds=30))
    d.run(db_conn, "csv", "failed", created_at=datetime.now(timezone.utc), error="csv: no such file")
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"]["status"] == "up" and body["checks"]["broker"]["status"] == "up"
    assert body["checks"]["workers"] == {**body["checks"]["workers"], "status": "down", "count": 0}
    assert body["reasons"] == ["no worker alive (no heartbeat in the last 10 s)"]
    gecko, csv, paprika = (body["sources"][s] for s in ("coingecko", "csv", "coinpaprika"))
    assert gecko["stale"] is False and gecko["last_success"] and gecko["age_since"] == "last_success"
    # never succeeded, but its schedule has not passed twice yet: an age, not stale (was: stale, age null)
    assert csv["last_success"] is None and csv["stale"] is False and csv["last_status"] == "failed"
    assert csv["age_since"] in ("first_run", "process_start") and 0 <= csv["age_seconds"] < 7200
    assert csv["last_error"] == "csv: no such file" and csv["failing"] is False and csv["blocked"] is None
    assert paprika["age_since"] == "process_start" and paprika["stale"] is False
    assert abs(paprika["age_seconds"] - (time.time() - freshness.PROCESS_STARTED)) < 5


def test_a_source_that_never_succeeded_is_stale_once_its_schedule_has_passed_twice(client, db_conn, settings,
                                                                                    redis):
    _worker_alive(redis)
    _fresh_runs(db_conn, ("coingecko", "csv"))
    schedule = settings.sources["coinpaprika"].schedule_seconds
    d.run(db_conn, "coinpaprika", "failed", created_at=datetime.now(timezone.utc) - timedelta(seconds=3 * schedule))
    body = client.get("/health").get_json()
    paprika = body["sources"]["coinpaprika"]
    assert body["reasons"] == ["source coinpaprika is stale"]
    assert paprika["age_since"] == "first_run" and 3 * schedule - 5 < paprika["age_seconds"] < 3 * schedule + 60


def test_health_is_healthy_when_everything_answers(client, db_conn, redis):
    _worker_alive(redis)
    _fresh_runs(db_conn)
    body = client.get("/health").get_json()
    assert body["status"] == "healthy" and body["reasons"] == []
    assert body["checks"]["workers"]["names"] == ["worker@test"]
    assert body["checks"]["workers"]["last_seen_seconds"]["worker@test"] < 5


def test_a_worker_whose_heartbeat_stopped_is_not_alive(client, db_conn, redis):
    _fresh_runs(db_conn)
    server_now = float(redis.time()[0])
    redis.zadd(liveness.WORKERS_KEY, {"gone@test": server_now - 60})   # last beat a minute ago
    _worker_alive(redis, "alive@test")
    workers = client.get("/health").get_json()["checks"]["workers"]
    assert workers["names"] == ["alive@test"] and workers["count"] == 1


def test_a_source_is_stale_after_twice_its_schedule(client, db_conn, settings, redis):
    _worker_alive(redis)
    _fresh_runs(db_conn, ("coingecko", "csv"))
    schedule = settings.sources["coinpaprika"].schedule_seconds
    d.run(db_conn, "coinpaprika", "partial", created_at=d.NOW - timedelta(seconds=2 * schedule + 60),
          finished_at=d.NOW - timedelta(seconds=2 * schedule + 30))
    body = client.get("/health").get_json()
    assert body["status"] == "degraded" and body["reasons"] == ["source coinpaprika is stale"]
    assert body["sources"]["coinpaprika"]["age_seconds"] >= 2 * schedule


def test_health_with_the_broker_down_is_degraded_and_quick(app_with, db_conn):
    _fresh_runs(db_conn)
    client = app_with(REDIS_URL="redis://127.0.0.1:1/0").test_client()
    started = time.monotonic()
    response = client.get("/health")
    assert time.monotonic() - started < 5
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "degraded"
    assert body["checks"]["broker"]["status"] == "down" and body["checks"]["workers"]["status"] == "unknown"


def test_health_with_the_database_down_is_unhealthy_503(app_with):
    client = app_with(DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere").test_client()
    started = time.monotonic()
    response = client.get("/health")
    assert response.status_code == 503 and response.get_json()["status"] == "unhealthy"
    assert response.get_json()["checks"]["database"]["status"] == "down"
    assert client.get("/health/ready").status_code == 503
    assert client.get("/health/live").status_code == 200
    data = client.get("/api/v1/data")
    assert data.status_code == 503 and data.get_json()["details"] == {"component": "database"}
    assert time.monotonic() - started < 15


def test_readiness_checks_migrations(app_with, client):
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"
    ahead = app_with()
    ahead.extensions["cryptoflow_migration_heads"] = {"9999_from_the_future"}
    response = ahead.test_client().get("/health/ready")
    assert response.status_code == 503 and "migrations not applied" in response.get_json()["reason"]


def test_stats_overall_and_by_source(client, db_conn):
    d.run(db_conn, "coingecko", fetched=100, loaded=90, rejected=10, duration=2.0,
          finished_at=d.NOW - timedelta(minutes=10))
    d.run(db_conn, "coingecko", "failed", fetched=5, duration=4.0, error="429",
          finished_at=d.NOW - timedelta(minutes=5))
    d.run(db_conn, "csv", "partial", fetched=20, loaded=18, rejected=2, duration=6.0,
          finished_at=d.NOW - timedelta(minutes=1))
    d.run(db_conn, "csv", "running")
    asset_id = d.asset(db_conn, "bitcoin", "BTC", "Bitcoin")
    d.latest(db_conn, asset_id, "csv", "1", d.run(db_conn, "csv", "queued"))
    body = client.get("/api/v1/stats").get_json()
    assert body["total_runs"] == 5 and body["records_processed"] == 125
    assert body["records_loaded"] == 108 and body["records_rejected"] == 12
    assert body["average_duration_seconds"] == 4.0
    assert body["runs_by_status"] == {"queued": 1, "running": 1, "succeeded": 1, "partial": 1, "failed": 1}
    assert body["last_success"].startswith((d.NOW - timedelta(minutes=1)).isoformat()[:19])
    assert body["last_failure"].startswith((d.NOW - timedelta(minutes=5)).isoformat()[:19])
    cg = body["by_source"]["coingecko"]
    assert (cg["total_runs"], cg["records_loaded"], cg["average_duration_seconds"]) == (2, 90, 3.0)
    assert body["by_source"]["coinpaprika"]["total_runs"] == 0
    assert body["by_source"]["csv"]["latest_quotes"] == 1 and body["data"]["latest_quotes"] == 1
    assert client.get("/stats").get_json() == {**body, "data": client.get("/stats").get_json()["data"]}


def _samples(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_expose_etl_figures_from_the_database(client, db_conn):
    d.run(db_conn, "coingecko", loaded=90, rejected=10, duration=2.5,
          stats={"http_status": {"200": 4, "429": 2}, "rate_limit_waits": 3, "rate_limit_wait_seconds": 1.5},
          finished_at=datetime.now(timezone.utc) - timedelta(seconds=100))   # not d.NOW: fixed at import
    d.run(db_conn, "coingecko", "failed", duration=1.5, stats={"http_status": {"429": 1}, "rate_limit_waits": "x",
                                                              "upstream_errors": {"http_429": 1, "dns": 2}})
    d.run(db_conn, "csv", "running", loaded=5)
    client.get("/api/v1/data")
    client.get("/no/such/route")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain; version=0.0.4")
    text = response.get_data(as_text=True)
    samples = _samples(text)
    cg = (("source", "coingecko"),)
    assert samples[("cryptoflow_etl_runs_total", cg + (("status", "succeeded"),))] == 1
    assert samples[("cryptoflow_etl_runs_total", cg + (("status", "failed"),))] == 1
    assert samples[("cryptoflow_etl_runs_total", (("source", "csv"), ("status", "succeeded")))] == 0
    assert samples[("cryptoflow_etl_runs_in_progress", (("source", "csv"), ("status", "running")))] == 1
    assert samples[("cryptoflow_etl_records_loaded_total", cg)] == 90
    assert samples[("cryptoflow_etl_records_loaded_total", (("source", "csv"),))] == 5
    assert samples[("cryptoflow_etl_records_rejected_total", cg)] == 10
    assert samples[("cryptoflow_etl_run_duration_seconds_count", cg)] == 2
    assert samples[("cryptoflow_etl_run_duration_seconds_sum", cg)] == 4.0
    assert samples[("cryptoflow_upstream_http_responses_total", cg + (("status", "429"),))] == 3
    assert samples[("cryptoflow_upstream_http_responses_total", cg + (("status", "200"),))] == 4
    assert samples[("cryptoflow_rate_limit_waits_total", cg)] == 3  # the malformed "x" is ignored
    assert samples[("cryptoflow_rate_limit_wait_seconds_total", cg)] == 1.5
    assert 95 <= samples[("cryptoflow_source_freshness_seconds", cg)] < 200
    # never succeeded: measured from its first run or this process's start (was: no sample at all)
    assert 0 <= samples[("cryptoflow_source_freshness_seconds", (("source", "csv"),))] < 3600
    assert samples[("cryptoflow_source_never_succeeded", (("source", "csv"),))] == 1
    assert samples[("cryptoflow_source_never_succeeded", cg)] == 0
    # durations 2.5 and 1.5 s: a histogram with buckets (was a summary)
    assert samples[("cryptoflow_etl_run_duration_seconds_bucket", (("le", "1.0"),) + cg)] == 0
    assert samples[("cryptoflow_etl_run_duration_seconds_bucket", (("le", "5.0"),) + cg)] == 2
    assert samples[("cryptoflow_etl_run_duration_seconds_bucket", (("le", "+Inf"),) + cg)] == 2
    assert samples[("cryptoflow_upstream_errors_total", (("kind", "dns"),) + cg)] == 2
    assert samples[("cryptoflow_upstream_errors_total", (("kind", "http_429"),) + cg)] == 1
    assert samples[("cryptoflow_etl_metrics_up", ())] == 1
    assert any(name == "flask_http_request_total" and value >= 1 for (name, _), value in samples.items())
    assert any(name == "flask_http_request_duration_seconds_count" and ("url_rule", "/api/v1/data") in labels
               for (name, labels) in samples)
    unmatched = [labels for (name, labels) in samples if name == "flask_http_request_duration_seconds_count"
                 and ("status", "404") in labels]
    # a URL no route matches is labelled "<unmatched>" (was "None"); a 404 from a matched route (an unknown
    # asset) keeps its rule, and other tests of the session may have made those
    assert any(("url_rule", "<unmatched>") in labels for labels in unmatched), unmatched
    assert not any(("url_rule", "None") in labels for labels in unmatched), unmatched
    alias = _samples(client.get("/api/v1/metrics").get_data(as_text=True))
    assert alias[("cryptoflow_etl_records_loaded_total", cg)] == 90


def test_errors_share_one_shape_and_echo_the_request_id(client, db_conn, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="crypto_app.api.access")
    missing = client.get("/api/v1/nothing-here", headers={"X-Request-ID": "abc-123"})
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "abc-123"
    assert missing.get_json() == {"status": 404, "error": "Not Found", "message": missing.get_json()["message"],
                                  "details": {}, "request_id": "abc-123"}
    wrong_method = client.delete("/api/v1/data")
    assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["Allow"]
    assert wrong_method.get_json()["error"] == "Method Not Allowed"
    line = [r for r in caplog.records if r.name == "crypto_app.api.access" and r.request_id == "abc-123"]
    assert line and line[0].status == 404 and line[0].path == "/api/v1/nothing-here"
    unsafe = client.get("/health/live", headers={"X-Request-ID": "<script>" + "x" * 200})
    assert len(unsafe.headers["X-Request-ID"]) == 32 and "<" not in unsafe.headers["X-Request-ID"]

    from crypto_app.api import stats

    def broken():
        raise RuntimeError("kaboom")

    monkeypatch.setattr(stats, "compute_stats", broken)
    crash = client.get("/api/v1/stats", headers={"X-Request-ID": "crash-1"})
    assert crash.status_code == 500
    assert crash.get_json()["request_id"] == "crash-1" and "kaboom" not in crash.get_data(as_text=True)


def test_docs_pages_render(client):
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200 and "/openapi.json" in page.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
def test_probes(client, path):
    assert client.get(path).status_code == 200


NASTY = ["asset=99999999999999999999999", "symbol=%00", "cursor=WzEsIjFlOTk5OTk5OTk5IiwxLCJhIl0",
         "cursor=WzEsIk5hTiIsMSwiYSJd", "cursor=%25%25", "page=1000000&page_size=100", "q=" + "x" * 101,
         "since=0000-00-00", "limit=1e3", "a=nope&b=", "interval=%00", "top=-1", "status=%27%3B--"]


@pytest.mark.parametrize("path", ["/api/v1/data", "/data", "/api/v1/assets", "/api/v1/assets/bitcoin/history",
                                  "/api/v1/runs", "/api/v1/runs/compare", "/api/v1/etl/jobs"])
def test_odd_inputs_never_answer_500(client, db_conn, path):
    d.asset(db_conn, "bitcoin", "BTC", "Bitcoin")
    for query in NASTY:
        response = client.get(f"{path}?{query}")
        assert response.status_code < 500, (path, query, response.get_data(as_text=True))
        if response.status_code >= 400:
            assert set(response.get_json()) == {"status", "error", "message", "details", "request_id"}
    assert client.get("/api/v1/assets/%00").status_code == 400
