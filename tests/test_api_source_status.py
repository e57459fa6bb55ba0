"""GET /api/v1/sources: freshness against the schedule, newest run and error, rate-limit waits and 429s."""
from datetime import datetime, timedelta, timezone

import api_data as d


def test_each_enabled_source_says_how_fresh_it_is_and_what_went_wrong_last(client, db_conn):
    now = datetime.now(timezone.utc)   # not api_data.NOW: that is the suite's import time, minutes old by now
    ok = d.run(db_conn, "coingecko", loaded=5, created_at=now - timedelta(minutes=3),
               stats={"rate_limit_waits": 2, "rate_limit_wait_seconds": 4.5, "http_status": {"200": 3, "429": 2}})
    failed = d.run(db_conn, "coingecko", "failed", error="gave up after 6 transient failures: ConnectionError",
                   created_at=now - timedelta(minutes=1), stats={"http_status": {"429": 1}})
    d.run(db_conn, "coingecko", created_at=now - timedelta(days=2), stats={"rate_limit_waits": 9})  # outside 24h
    d.run(db_conn, "csv", created_at=now - timedelta(hours=5), duration=2.0)

    response = client.get("/api/v1/sources")
    assert response.status_code == 200
    sources = {s["source"]: s for s in response.get_json()["data"]}
    assert list(sources) == ["coingecko", "coinpaprika", "csv"]

    gecko = sources["coingecko"]
    assert gecko["last_status"] == "failed" and gecko["last_run_id"] == failed
    assert gecko["last_error_run_id"] == failed and gecko["last_error_at"]
    assert gecko["last_error"].startswith("gave up after 6")
    assert gecko["stale"] is False and 100 < gecko["age_seconds"] < 600 and gecko["schedule_seconds"] == 300
    assert gecko["recent"] == {"hours": 24, "runs": 2, "failed": 1, "rate_limit_waits": 2,
                               "rate_limit_wait_seconds": 4.5, "http_429": 3}
    assert ok != failed

    paprika = sources["coinpaprika"]                      # never ran: stale, no age, nothing recent
    assert paprika["stale"] is True and paprika["age_seconds"] is None and paprika["last_error"] is None
    assert paprika["recent"]["runs"] == 0

    csv = sources["csv"]                                  # hourly schedule: 5 hours old is stale
    assert csv["stale"] is True and csv["last_status"] == "succeeded" and csv["last_error"] is None


def test_the_root_url_serves_the_dashboard_to_browsers_and_an_index_to_json_clients(client):
    page = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert b"<script>" not in page.data                   # scripts come from files only (CSP without inline)
    index = client.get("/", headers={"Accept": "application/json"})
    assert index.status_code == 200 and index.get_json()["docs"] == "/docs"
    assert client.get("/").mimetype == "text/html"        # no Accept header: the dashboard


def test_untrusted_text_in_the_url_is_escaped_in_the_page(client):
    page = client.get("/assets?q=%3Cscript%3Ealert(1)%3C/script%3E").get_data(as_text=True)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    page = client.get("/assets/%22%3E%3Cscript%3Ex%3C%2Fscript%3E").get_data(as_text=True)
    assert "<script>x" not in page
