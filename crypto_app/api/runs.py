"""Runs: trigger an ingestion (POST, bearer token), list runs, inspect one, compare two.

Triggering goes through `pipeline.runs.trigger_run` (lock, queued row, publish); the API never imports
the worker's tasks.
"""
from __future__ import annotations

import logging

import marshmallow as ma
from flask import url_for
from flask_smorest import Blueprint
from marshmallow import fields, validate
from sqlalchemy import select, text

from ..config import SOURCES
from ..extensions import db
from ..models import EtlRun, RejectedRecord
from ..models.runs import RUN_STATUSES, RUN_TRIGGERS
from ..pipeline.runs import BrokerUnavailable, RunAlreadyActive, UnknownSource, get_run, trigger_run
from .auth import SECURITY, require_token
from .compare import CompareArgsSchema, CompareSchema, compare_runs
from .errors import ApiError
from .pagination import bounded_count, list_metadata, window
from .schemas import ConflictSchema, ErrorSchema, ListMetadataSchema, PageArgsSchema

log = logging.getLogger(__name__)
blp = Blueprint("runs", __name__, url_prefix="/api/v1/runs", description="ETL runs: trigger, list, inspect, compare")


class RunSchema(ma.Schema):
    id = fields.UUID(required=True)
    source = fields.String(required=True)
    trigger = fields.String(metadata={"enum": list(RUN_TRIGGERS)})
    status = fields.String(required=True, metadata={"enum": list(RUN_STATUSES)})
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    heartbeat_at = fields.DateTime(allow_none=True)
    duration_seconds = fields.Float(allow_none=True)
    fetched = fields.Integer(metadata={"description": "Records fetched from the source"})
    loaded = fields.Integer(metadata={"description": "Records written"})
    rejected = fields.Integer(metadata={"description": "Records rejected by validation"})
    pages = fields.Integer()
    deliveries = fields.Integer(metadata={"description": "Times the task was delivered to a worker"})
    error = fields.String(allow_none=True)
    stats = fields.Dict(metadata={"description": "Worker statistics: http_status counts, rate_limit_waits, "
                                                 "rate_limit_wait_seconds, inserted, updated, unchanged"})
    location = fields.Function(lambda run: url_for("runs.get_one", run_id=run.id),
                               metadata={"description": "URL of this run"})


class RejectedRecordSchema(ma.Schema):
    id = fields.Integer()
    reason = fields.String()
    errors = fields.Raw(metadata={"description": "Validation errors per field"})
    record = fields.Raw(allow_none=True, metadata={"description": "The record as the source sent it"})
    created_at = fields.DateTime()


class RunDetailSchema(RunSchema):
    checkpoint_before = fields.Raw(allow_none=True)
    checkpoint_after = fields.Raw(allow_none=True)
    schema_drift = fields.Raw(allow_none=True)
    rejected_records = fields.List(fields.Nested(RejectedRecordSchema), metadata={
        "description": "The first rejected records (see rejected_limit); `rejected` has the total"})


class RunArgsSchema(ma.Schema):
    rejected_limit = fields.Integer(load_default=50, validate=validate.Range(min=0, max=500),
                                    metadata={"description": "How many rejected records to include"})


RUN_SOURCES = (*SOURCES, "maintenance")   # maintenance: the storage maintenance task's runs


class RunListArgsSchema(PageArgsSchema):
    source = fields.String(validate=validate.OneOf(RUN_SOURCES), metadata={
        "description": "Data source, or maintenance (rollups, retention, partitions)", "enum": list(RUN_SOURCES)})
    status = fields.String(validate=validate.OneOf(RUN_STATUSES), metadata={"enum": list(RUN_STATUSES)})
    trigger = fields.String(validate=validate.OneOf(RUN_TRIGGERS), metadata={"enum": list(RUN_TRIGGERS)})


class RunListSchema(ma.Schema):
    data = fields.List(fields.Nested(RunSchema), required=True)
    metadata = fields.Nested(ListMetadataSchema, required=True)


class TriggerSchema(ma.Schema):
    source = fields.String(required=True, validate=validate.OneOf(SOURCES),
                           metadata={"description": "Source to ingest", "enum": list(SOURCES)})


def start_run(source: str):
    """Queue a run of `source` for the API; (run, 202, headers) or ApiError (409/422/503)."""
    try:
        run = trigger_run(source, "api")
    except UnknownSource as exc:
        raise ApiError(422, str(exc), {"json": {"source": [str(exc)]}}) from None
    except RunAlreadyActive as exc:
        location = url_for("runs.get_one", run_id=exc.run_id) if exc.run_id else None
        raise ApiError(409, f"A {source} run is already going; follow it instead of starting another.",
                       {"source": source}, extra={"run_id": exc.run_id, "location": location}) from None
    except BrokerUnavailable as exc:
        raise ApiError(503, f"{exc}. Try again when the broker is back.", {"component": "broker"},
                       {"Retry-After": "10"}) from None
    return run, 202, {"Location": url_for("runs.get_one", run_id=run.id)}


def run_list(args: dict, default_size: int = 50) -> dict:
    win = window(args, default_size)
    stmt = select(EtlRun)
    filters = [name for name in ("source", "status", "trigger") if args.get(name)]
    for name in filters:
        stmt = stmt.where(getattr(EtlRun, name) == args[name])
    page = stmt.order_by(EtlRun.created_at.desc(), EtlRun.id.desc()).offset(win.offset).limit(win.size + 1)
    runs = list(db.session.scalars(page))
    total, exact = bounded_count(stmt, None if filters else "etl_runs")
    has_more = len(runs) > win.size
    return {"data": runs[: win.size], "metadata": list_metadata(win, total, exact, has_more, None)}


@blp.route("", methods=["POST"])
@blp.doc(security=SECURITY)
@require_token
@blp.arguments(TriggerSchema, description="The source to ingest")
@blp.response(202, RunSchema, description="Queued; follow the Location header",
              headers={"Location": {"description": "URL of the run", "schema": {"type": "string"}}})
@blp.alt_response(401, schema=ErrorSchema, description="No bearer token")
@blp.alt_response(403, schema=ErrorSchema, description="Wrong bearer token")
@blp.alt_response(409, schema=ConflictSchema, description="A run of this source is already going (run_id)")
@blp.alt_response(413, schema=ErrorSchema, description="Request body too large")
@blp.alt_response(503, schema=ErrorSchema, description="Broker unreachable (no run is left queued), "
                                                       "or API_TOKEN unset on the server")
def trigger(body):
    """Trigger an ingestion run"""
    return start_run(body["source"])


@blp.route("")
@blp.arguments(RunListArgsSchema, location="query")
@blp.response(200, RunListSchema, description="Runs, newest first")
@blp.alt_response(400, schema=ErrorSchema, description="Contradicting paging arguments")
def list_runs(args):
    """List runs"""
    return run_list(args)


@blp.route("/<uuid:run_id>")
@blp.arguments(RunArgsSchema, location="query")
@blp.response(200, RunDetailSchema, description="The run: status, counts, error, rejected records")
@blp.alt_response(404, schema=ErrorSchema, description="No such run")
def get_one(args, run_id):
    """One run, with its rejected records"""
    run = get_run(run_id)
    if run is None:
        # rows of the history datasets carry their backfill's id as run_id (backfills are not etl_runs)
        if db.session.execute(text("SELECT 1 FROM backfills WHERE id = :id"), {"id": str(run_id)}).first():
            location = url_for("backfills.get_backfill", backfill_id=run_id)
            raise ApiError(404, f"No run {run_id}: it is a backfill's id (rows of history datasets carry their "
                                f"backfill's id as run_id); see GET {location}.",
                           {"backfill_id": str(run_id), "location": location})
        raise ApiError(404, f"No run {run_id}.")
    run.rejected_records = list(db.session.scalars(
        select(RejectedRecord).where(RejectedRecord.run_id == run.id).order_by(RejectedRecord.id)
        .limit(args["rejected_limit"])))
    return run


@blp.route("/compare")
@blp.arguments(CompareArgsSchema, location="query")
@blp.response(200, CompareSchema, description="Count deltas, assets added or missing, largest price moves")
@blp.alt_response(404, schema=ErrorSchema, description="A run was not found, or fewer than two finished runs")
def compare(args):
    """Compare two runs (by default the two newest finished runs of a source)"""
    return compare_runs(args)
