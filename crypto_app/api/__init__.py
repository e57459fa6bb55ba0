"""HTTP API: one blueprint module per resource, registered here."""


def register_api(app, api):
    from . import (assets, auth, backfills, bodies, compat, context, coverage, data, datasets, errors, health,
                   metrics, readcache, runs, sources, stats)

    context.register(app)
    bodies.register(app)   # after context: the chunked-body bound runs first
    errors.register(app)
    errors.use_error_schema_in_docs(api)
    auth.register_security_scheme(api)
    metrics.init_http_metrics(app)
    readcache.register(app)  # after the request-id and metrics hooks: cached answers are counted and logged
    api.spec.options["info"] = {"description": API_DESCRIPTION}
    for module in (data, assets, coverage, datasets, stats, runs, backfills, sources, health, metrics, compat):
        api.register_blueprint(module.blp)


API_DESCRIPTION = """\
Crypto market data gathered from several sources, normalized, and served read-only; plus the
operations to trigger and inspect ingestion runs.

* **Money and supplies** are exact decimals serialized as JSON strings in plain notation
  (`"87440.12345678"`), never floats. The legacy `/data` route also carries the old float fields
  (`current_price`, `market_cap`) for the clients of the system it replaces.
* **Errors** always have the shape `{status, error, message, details, request_id}`. Send an
  `X-Request-ID` header to choose the id; it is echoed on every response.
* **Paging**: `page`/`page_size` (max 100) or `limit`/`offset`, or the opaque keyset `cursor` from
  `metadata.next_cursor`. `total_count` is exact up to 10,000 matching rows, an estimate beyond
  (`total_count_exact` says which); on `/api/v1/data` without filters or filtered by source only it
  is always exact (counts maintained as the data is written).
* **Caching**: the read endpoints send a weak `ETag` and `Cache-Control: no-cache`; send it back in
  `If-None-Match` to get `304 Not Modified` when the answer has not changed. Answers are cached by the
  server until the next write commits, never longer: a response is never older than the data.
* **Health**: `GET /health` answers 200 when `status` is `healthy` or `degraded` (broker down, no
  worker answering, or a stale source: data is still served) and 503 when `unhealthy` (database
  unreachable).
* **Triggering runs** needs `Authorization: Bearer <API_TOKEN>`, on the legacy routes too.
"""
