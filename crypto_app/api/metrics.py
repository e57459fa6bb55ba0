"""GET /metrics (and /api/v1/metrics): Prometheus text exposition.

- HTTP metrics come from prometheus-flask-exporter. Under gunicorn with several workers
  PROMETHEUS_MULTIPROC_DIR is set (gunicorn.conf.py sets it) and the multiprocess-aware class
  aggregates every worker's samples, so any worker answers for all of them. Otherwise the plain class
  with a registry of this app's own (so that several apps in one process do not collide); tests
  (app.testing) always use the plain class.
- ETL metrics are computed from the database at scrape time (see etl_metrics.py).
"""
from __future__ import annotations

import os

from flask import Response, current_app
from flask_smorest import Blueprint
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .etl_metrics import EtlCollector
from .storage_stats import StorageCollector

blp = Blueprint("metrics", __name__, description="Prometheus metrics")
EXTENSION = "cryptoflow_metrics"
METRICS_DOC = {
    "description": "Prometheus text format 0.0.4: HTTP metrics (flask_http_request_*) and ETL metrics "
                   "(cryptoflow_etl_runs_total, cryptoflow_etl_records_loaded_total, "
                   "cryptoflow_etl_records_rejected_total, cryptoflow_etl_run_duration_seconds (histogram), "
                   "cryptoflow_upstream_http_responses_total, cryptoflow_upstream_errors_total, "
                   "cryptoflow_rate_limit_waits_total, cryptoflow_source_freshness_seconds, ...).",
    "content": {CONTENT_TYPE_PLAIN_0_0_4: {"schema": {"type": "string"}}},
}


def multiprocess_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR, created if missing (prometheus_client writes there whenever it is set)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
    return path


def url_rule(request) -> str:
    """The `url_rule` label: the route's rule (`/api/v1/assets/<slug>`), `<unmatched>` for a 404 that
    matched no route (never the raw path: labels stay bounded)."""
    return str(request.url_rule) if request.url_rule is not None else "<unmatched>"


def init_http_metrics(app) -> None:
    """Attach prometheus-flask-exporter's request metrics to `app` (without its own /metrics route)."""
    options = {"group_by": url_rule, "defaults_prefix": "flask"}  # rules, not raw paths: bounded labels
    if multiprocess_dir() and not app.testing:
        from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

        http = GunicornPrometheusMetrics(app, **options)  # registers no route; we serve /metrics below
    else:
        from prometheus_flask_exporter import PrometheusMetrics

        registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        http = PrometheusMetrics(app, path=None, registry=registry, **options)
    etl = CollectorRegistry(auto_describe=False)  # auto_describe off: registering must not query the DB
    settings = app.config["SETTINGS"]
    etl.register(EtlCollector(settings.enabled_sources,
                              {name: settings.sources[name].schedule_seconds for name in settings.enabled_sources}))
    etl.register(StorageCollector())
    app.extensions[EXTENSION] = {"http": http, "etl": etl}


def exposition() -> bytes:
    ext = current_app.extensions[EXTENSION]
    http_text, _ = ext["http"].generate_metrics()  # merges worker files in multiprocess mode
    return http_text.encode() + generate_latest(ext["etl"])


@blp.route("/metrics")
@blp.doc(responses={"200": METRICS_DOC})
def metrics():
    """Prometheus metrics"""
    return Response(exposition(), mimetype=None, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


@blp.route("/api/v1/metrics")
@blp.doc(responses={"200": METRICS_DOC})
def metrics_v1():
    """Prometheus metrics (alias of /metrics)"""
    return Response(exposition(), mimetype=None, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
