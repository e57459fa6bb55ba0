"""ops/grafana/cryptoflow.json and ops/prometheus/alerts.yml name only metrics that /metrics really
serves (scraped after real runs through a worker, so the ETL families have samples), and the rules
file passes `promtool check rules` and the unit tests in ops/prometheus/alerts_test.yml (`promtool test
rules`; Debian's `prometheus` package, which .ci/run installs)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, wait_for

DASHBOARD = ROOT / "ops" / "grafana" / "cryptoflow.json"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "ops" / "prometheus" / "alerts_test.yml"
METRIC = re.compile(r"\b((?:cryptoflow|flask)_[a-z0-9_]+)\b")
AUTH = {"Authorization": "Bearer test-token"}


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def _names(texts) -> set[str]:
    return {name for text in texts for name in METRIC.findall(text)}


def test_the_dashboard_and_the_rules_reference_metrics_at_all():
    assert len(_dashboard_exprs()) >= 10
    assert {"cryptoflow_source_freshness_seconds", "cryptoflow_upstream_errors_total",
            "flask_http_request_duration_seconds_bucket"} <= _names(_dashboard_exprs())
    assert "cryptoflow_etl_runs_total" in _names([ALERTS.read_text()])


@pytest.mark.worker
def test_every_metric_the_dashboard_and_alerts_use_is_in_a_real_scrape(worker, client, db_conn, fake_upstream):
    fake_upstream.set_coins(12)
    fake_upstream.script("/api/v3/coins/markets", [fake_upstream.rate_limited(retry_after=1)])
    worker(env={**fake_upstream.env(COINGECKO_PER_PAGE=5, COINGECKO_RATE_PER_MINUTE=6000),
                "COINPAPRIKA_BASE_URL": "http://cryptoflow-test.invalid/v1", "TASK_MAX_RETRIES": "1",
                "HTTP_TIMEOUT_SECONDS": "2"})
    for source in ("coingecko", "coinpaprika"):
        assert client.post("/api/v1/runs", json={"source": source}, headers=AUTH).status_code in (201, 202)

    def finished():
        with db_conn.cursor() as cur:
            cur.execute("SELECT source, status FROM etl_runs WHERE finished_at IS NOT NULL ORDER BY source")
            rows = cur.fetchall()
        return rows if len(rows) == 2 else None

    assert wait_for(finished, timeout=90, message="both runs to finish") == [("coingecko", "succeeded"),
                                                                            ("coinpaprika", "failed")]
    client.get("/api/v1/data")
    scrape = client.get("/metrics").get_data(as_text=True)
    served = {s.name for family in text_string_to_metric_families(scrape) for s in family.samples}
    for path, texts in ((DASHBOARD, _dashboard_exprs()), (ALERTS, [ALERTS.read_text()])):
        missing = sorted(_names(texts) - served)
        assert not missing, f"{path.relative_to(ROOT)} uses metrics /metrics does not serve: {missing}"


def test_the_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run installs it)")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # and they fire on what they describe: a never-succeeded source past 2x its schedule, runs that only fail
    tested = subprocess.run([promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True,
                            timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
