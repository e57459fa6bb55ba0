"""Routes of the two systems cryptoflow replaces, as thin aliases of the canonical ones.

- System A: `GET /data?page=&page_size=&source=&symbol=` (rows also carry A's coin_id, current_price,
  market_cap), `GET /stats`; `/health` and `/metrics` are canonical routes already.
- System B: `GET /api/v1/etl/jobs`, `POST /api/v1/etl/run/{source}` (async by default; `?sync=true`
  waits for the run to finish, up to `timeout` seconds); `/api/v1/data`, `/api/v1/stats`,
  `/api/v1/metrics` and `/api/v1/runs/compare` are canonical routes already.

Triggers through the old route need the bearer token too: safety wins over compatibility.
"""
from __future__ import annotations

import time

import marshmallow as ma
from flask import url_for
from flask_smorest import Blueprint
from marshmallow import fields, validate

from ..extensions import db
from ..pipeline.runs import TERMINAL, get_run
from . import readcache
from .auth import SECURITY, require_token
from .data import DataArgsSchema, quote_page_body
from .errors import ApiError
from .fastdump import FastDumper
from .runs import RunListArgsSchema, RunListSchema, RunSchema, run_list, start_run
from .schemas import ConflictSchema, ErrorSchema, ListMetadataSchema, QuoteRowSchema
from .stats import STATS_SCHEMA, StatsSchema, compute_stats

blp = Blueprint("compat", __name__, description="Routes kept for clients of the systems cryptoflow replaces")
POLL_SECONDS = 0.25


def _float(value):
    return None if value is None else float(value)


class LegacyQuoteRowSchema(QuoteRowSchema):
    coin_id = fields.Function(lambda row: row["slug"], metadata={
        "type": "string", "description": "Legacy alias of slug"})
    current_price = fields.Function(lambda row: _float(row["price_usd"]), metadata={
        "type": "number", "nullable": True,
        "description": "Legacy float alias of price_usd (may be rounded; price_usd is exact)"})
    market_cap = fields.Function(lambda row: _float(row["market_cap_usd"]), metadata={
        "type": "number", "nullable": True,
        "description": "Legacy float alias of market_cap_usd (may be rounded; market_cap_usd is exact)"})


LEGACY_ROWS = FastDumper(LegacyQuoteRowSchema())


class LegacyDataPageSchema(ma.Schema):
    data = fields.List(fields.Nested(LegacyQuoteRowSchema), required=True)
    metadata = fields.Nested(ListMetadataSchema, required=True)


class SyncArgsSchema(ma.Schema):
    sync = fields.Boolean(load_default=False, metadata={"description": "Wait for the run to finish"})
    timeout = fields.Float(load_default=60.0, validate=validate.Range(min=0, max=300), metadata={
        "description": "With sync: seconds to wait at most (default 60, max 300)"})


@blp.route("/data")
@blp.arguments(DataArgsSchema, location="query")
@blp.response(200, LegacyDataPageSchema, description="As GET /api/v1/data (default page_size 50), rows with "
                                                     "the legacy fields too")
@blp.alt_response(400, schema=ErrorSchema, description="Contradicting paging arguments")
@blp.doc(responses=readcache.DOC_304)
def legacy_data(args):
    """Latest quotes (legacy route of system A)"""
    return readcache.serve(lambda: quote_page_body(args, default_size=50, dumper=LEGACY_ROWS))


readcache.cacheable("compat.legacy_data")


@blp.route("/stats")
@blp.response(200, StatsSchema, description="As GET /api/v1/stats")
@blp.doc(responses=readcache.DOC_304)
def legacy_stats():
    """ETL statistics (legacy route of system A)"""
    return readcache.serve(lambda: STATS_SCHEMA.dump(compute_stats()))


readcache.cacheable("compat.legacy_stats")


@blp.route("/api/v1/etl/jobs")
@blp.arguments(RunListArgsSchema, location="query")
@blp.response(200, RunListSchema, description="As GET /api/v1/runs")
@blp.alt_response(400, schema=ErrorSchema, description="Contradicting paging arguments")
def legacy_jobs(args):
    """ETL job history (legacy route of system B)"""
    return run_list(args)


@blp.route("/api/v1/etl/run/<source>", methods=["POST"])
@blp.doc(security=SECURITY, parameters=[{"in": "path", "name": "source", "schema": {"type": "string"}}])
@require_token
@blp.arguments(SyncArgsSchema, location="query")
@blp.response(202, RunSchema, description="Queued (or, with sync, still going when the timeout passed)",
              headers={"Location": {"description": "URL of the run", "schema": {"type": "string"}}})
@blp.alt_response(200, schema=RunSchema, success=True, description="With sync: the run finished (see status)")
@blp.alt_response(401, schema=ErrorSchema, description="No bearer token")
@blp.alt_response(403, schema=ErrorSchema, description="Wrong bearer token")
@blp.alt_response(409, schema=ConflictSchema, description="A run of this source is already going")
@blp.alt_response(503, schema=ErrorSchema, description="Broker unreachable, or API_TOKEN unset on the server")
def legacy_run(args, source):
    """Trigger a run (legacy route of system B)"""
    run, status, headers = start_run(source)
    if not args["sync"]:
        return run, status, headers
    run_id, deadline = run.id, time.monotonic() + args["timeout"]
    while True:
        db.session.rollback()  # end the transaction: each poll must see the worker's commits
        run = get_run(run_id)
        if run is None:
            raise ApiError(404, f"Run {run_id} disappeared while waiting for it.")
        if run.status in TERMINAL:
            return run, 200, {"Location": url_for("runs.get_one", run_id=run_id)}
        if time.monotonic() >= deadline:
            return run, 202, headers
        time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))
