"""GET /api/v1/stats: what the ETL has done, overall and by source, and how much data is served.

Nothing is scanned per request: `run_stats` (per source and status) and `source_quote_stats` (per
source) are maintained by triggers in the transactions that write etl_runs and latest_quotes
(migration 0002), so a request reads a few dozen rows whatever the size of the history. They are
exact, and current as of the last commit.
"""
from __future__ import annotations

import marshmallow as ma
from flask import current_app
from flask_smorest import Blueprint
from marshmallow import fields
from sqlalchemy import text

from ..extensions import db
from . import readcache
from .storage_stats import storage_report

MAINTENANCE = "maintenance"

blp = Blueprint("stats", __name__, url_prefix="/api/v1", description="ETL and data statistics")

# The same figures as aggregating etl_runs by (source, status) and latest_quotes by source.
RUNS_SQL = text("""
    SELECT source, status, runs, fetched, loaded, rejected, timed, duration::float8 AS duration, last_at
    FROM run_stats WHERE runs <> 0 ORDER BY source, status
""")
DATA_SQL = text("""
    SELECT source, latest_quotes AS quotes, newest_observation AS newest
    FROM source_quote_stats WHERE latest_quotes <> 0 ORDER BY source
""")
STATUSES = ("queued", "running", "succeeded", "partial", "failed")


class RunStatsSchema(ma.Schema):
    total_runs = fields.Integer(required=True)
    runs_by_status = fields.Dict(keys=fields.String(), values=fields.Integer())
    records_processed = fields.Integer(metadata={"description": "Records fetched from the source"})
    records_loaded = fields.Integer(metadata={"description": "Records written (inserted or updated)"})
    records_rejected = fields.Integer(metadata={"description": "Records that failed validation"})
    last_success = fields.DateTime(allow_none=True, metadata={"description": "End of the newest succeeded or partial run"})
    last_failure = fields.DateTime(allow_none=True, metadata={"description": "End of the newest failed run"})
    average_duration_seconds = fields.Float(allow_none=True, metadata={"description": "Over finished runs"})


class SourceStatsSchema(RunStatsSchema):
    latest_quotes = fields.Integer(metadata={"description": "Assets this source currently quotes"})
    newest_observation = fields.DateTime(allow_none=True)


class DataStatsSchema(ma.Schema):
    latest_quotes = fields.Integer(metadata={"description": "Rows served by /api/v1/data (asset x source)"})
    newest_observation = fields.DateTime(allow_none=True)


class StorageStatsSchema(ma.Schema):
    tables = fields.Dict(keys=fields.String(), values=fields.Dict(), metadata={
        "description": "Per table: bytes on disk (heap, TOAST, indexes; partitions summed), rows_estimate "
                       "(planner estimate), partitions"})
    rows_by_resolution = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "Estimated price rows: raw (quotes), 1h and 1d (rollup candles)"})
    oldest = fields.Dict(keys=fields.String(), values=fields.DateTime(allow_none=True), metadata={
        "description": "Oldest row kept per resolution (raw: observed_at; 1h/1d: candle bucket)"})
    raw_payloads = fields.Dict(metadata={
        "description": "bytes (raw_pages + raw_payloads), pages_with_body, oldest_body (first seen)"})


class StatsSchema(RunStatsSchema):
    by_source = fields.Dict(keys=fields.String(), values=fields.Nested(SourceStatsSchema), metadata={
        "description": "Per source; `maintenance` is the storage maintenance task (fetched: rows rolled up, "
                       "loaded: candle rows written), not counted in the overall totals"})
    data = fields.Nested(DataStatsSchema)
    storage = fields.Nested(StorageStatsSchema)


def _empty() -> dict:
    return {"total_runs": 0, "runs_by_status": {s: 0 for s in STATUSES}, "records_processed": 0,
            "records_loaded": 0, "records_rejected": 0, "last_success": None, "last_failure": None,
            "_timed": 0, "_duration": 0.0}


def _add(acc: dict, row) -> None:
    acc["total_runs"] += row["runs"]
    acc["runs_by_status"][row["status"]] = acc["runs_by_status"].get(row["status"], 0) + row["runs"]
    acc["records_processed"] += row["fetched"]
    acc["records_loaded"] += row["loaded"]
    acc["records_rejected"] += row["rejected"]
    acc["_timed"] += row["timed"]
    acc["_duration"] += row["duration"]
    key = {"succeeded": "last_success", "partial": "last_success", "failed": "last_failure"}.get(row["status"])
    if key and row["last_at"] is not None and (acc[key] is None or row["last_at"] > acc[key]):
        acc[key] = row["last_at"]


def _finish(acc: dict) -> dict:
    timed, duration = acc.pop("_timed"), acc.pop("_duration")
    acc["average_duration_seconds"] = round(duration / timed, 3) if timed else None
    return acc


def compute_stats() -> dict:
    settings = current_app.config["SETTINGS"]
    total = _empty()
    by_source = {name: _empty() for name in settings.enabled_sources}
    for row in db.session.execute(RUNS_SQL).mappings():
        if row["source"] != MAINTENANCE:          # its rows rolled up are not records processed
            _add(total, row)
        _add(by_source.setdefault(row["source"], _empty()), row)
    out = _finish(total)
    out["by_source"] = {name: _finish(acc) | {"latest_quotes": 0, "newest_observation": None}
                        for name, acc in sorted(by_source.items())}
    data = {"latest_quotes": 0, "newest_observation": None}
    for row in db.session.execute(DATA_SQL).mappings():
        entry = out["by_source"].setdefault(row["source"], _finish(_empty()))
        entry.update(latest_quotes=row["quotes"], newest_observation=row["newest"])
        data["latest_quotes"] += row["quotes"]
        if row["newest"] and (data["newest_observation"] is None or row["newest"] > data["newest_observation"]):
            data["newest_observation"] = row["newest"]
    out["data"] = data
    out["storage"] = storage_report()
    return out


@blp.route("/stats")
@blp.response(200, StatsSchema, description="Runs, records processed/loaded/rejected, last success and failure, "
                                            "average duration; overall and by source")
@blp.doc(responses=readcache.DOC_304)
def stats():
    """ETL statistics"""
    return readcache.serve(lambda: STATS_SCHEMA.dump(compute_stats()))


STATS_SCHEMA = StatsSchema()
readcache.cacheable("stats.stats")
