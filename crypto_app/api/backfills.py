"""Backfills: fill an asset's history from the APIs' history endpoints (POST, bearer token), follow one
(GET), cancel one (DELETE). The work is in crypto_app/pipeline/backfill_*.py; windows run on the workers.
"""
from __future__ import annotations

from datetime import date, datetime, timezone

import marshmallow as ma
import psycopg2
from flask import current_app, url_for
from flask_smorest import Blueprint
from marshmallow import fields, validate, validates_schema

from ..broker import send_task
from ..celery_settings import BACKFILL_TASK
from ..pipeline.backfill_plan import BackfillConflict, PlanError
from ..pipeline.backfill_window import cancel_backfill
from ..pipeline.backfills import WINDOW_STATES, start_backfill, summary
from ..sources import HISTORY
from ..sources.history import INTERVALS
from .auth import SECURITY, require_token
from .errors import ApiError
from .schemas import ErrorSchema

blp = Blueprint("backfills", __name__, url_prefix="/api/v1/backfills",
                description="Backfills: history from the APIs' history endpoints, in checkpointed windows")


class Moment(fields.String):
    """An ISO 8601 date (`2025-01-01`, midnight UTC) or date-time (UTC when no offset is given)."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            moment = (datetime.fromisoformat(text.replace("Z", "+00:00")) if "T" in text or " " in text
                      else datetime.combine(date.fromisoformat(text), datetime.min.time()))
        except ValueError:
            raise ma.ValidationError("expected a date (2025-01-01) or an ISO 8601 date-time") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class GapsOfSchema(ma.Schema):
    asset = fields.String(required=True, metadata={"description": "Asset slug or source id"})
    source = fields.String(required=True, validate=validate.OneOf(list(HISTORY)),
                           metadata={"description": "Fills the gaps of its history dataset (<source>:<endpoint>)"})
    since = Moment(required=True)
    until = Moment(metadata={"description": "End, exclusive (default and cap: just after the newest final point)"})


class BackfillRequestSchema(ma.Schema):
    assets = fields.List(fields.String(validate=validate.Length(min=1, max=200)),
                         validate=validate.Length(min=1, max=1000),
                         metadata={"description": "Asset slugs or source ids (`bitcoin`, `btc-bitcoin`)"})
    top = fields.Integer(validate=validate.Range(min=1, max=1000),
                         metadata={"description": "Instead of `assets`: the N best ranked assets"})
    sources = fields.List(fields.String(validate=validate.OneOf(list(HISTORY))), validate=validate.Length(min=1),
                          metadata={"description": "History sources (default: all)", "example": list(HISTORY)})
    gaps_of = fields.Nested(GapsOfSchema, metadata={
        "description": "Instead of assets/top: fill exactly the gaps GET /api/v1/assets/{id}/coverage reports"})
    since = Moment(metadata={"description": "First bucket (floored to the interval); required with assets/top",
                             "example": "2025-01-01"})
    until = Moment(metadata={"description": "End, exclusive (default and cap: just after the newest final point)"})
    interval = fields.String(load_default="1d", validate=validate.OneOf(list(INTERVALS)),
                             metadata={"enum": list(INTERVALS)})

    @validates_schema
    def _one_selection(self, data, **kwargs):
        if sum(1 for key in ("assets", "top", "gaps_of") if data.get(key)) != 1:
            raise ma.ValidationError("give exactly one of `assets`, `top` or `gaps_of`", "assets")
        if not data.get("gaps_of") and not data.get("since"):
            raise ma.ValidationError("`since` is required with `assets` or `top`", "since")


class WindowCountsSchema(ma.Schema):
    total = fields.Integer(required=True)
    left = fields.Integer(required=True, metadata={"description": "pending + running"})
    for _state in WINDOW_STATES:
        locals()[_state] = fields.Integer(required=True)
    del _state


class RowCountsSchema(ma.Schema):
    fetched = fields.Integer(required=True, metadata={"description": "Points received inside the windows"})
    inserted = fields.Integer(required=True)
    updated = fields.Integer(required=True)
    unchanged = fields.Integer(required=True, metadata={"description": "Already stored with the same values"})
    rejected = fields.Integer(required=True, metadata={"description": "Quarantined with a reason"})


class WindowErrorSchema(ma.Schema):
    window_id = fields.Integer(required=True)
    asset = fields.String(required=True)
    source = fields.String(required=True)
    external_id = fields.String(required=True)
    starts_at = fields.DateTime(required=True)
    ends_at = fields.DateTime(required=True)
    status = fields.String(required=True, metadata={"enum": list(WINDOW_STATES)})
    attempts = fields.Integer(required=True)
    error = fields.String(required=True, metadata={"description": "The upstream's reason, or the last retry's"})


class BackfillSchema(ma.Schema):
    id = fields.String(required=True)
    status = fields.String(required=True, metadata={"enum": ["running", "succeeded", "partial", "failed",
                                                             "cancelled"]})
    interval = fields.String(required=True)
    since = fields.DateTime(required=True)
    until = fields.DateTime(required=True)
    sources = fields.List(fields.String(), required=True)
    trigger = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    finished_at = fields.DateTime(allow_none=True)
    cancelled_at = fields.DateTime(allow_none=True)
    windows = fields.Nested(WindowCountsSchema, required=True)
    rows = fields.Nested(RowCountsSchema, required=True)
    requests = fields.Integer(required=True, metadata={"description": "Upstream requests made so far"})
    eta_seconds = fields.Float(allow_none=True, metadata={
        "description": "Windows left / each source's rate limit (one request per window); null when finished"})
    errors = fields.List(fields.Nested(WindowErrorSchema), required=True,
                         metadata={"description": "Windows with an error (the first 100)"})
    skipped = fields.List(fields.String(), required=True,
                          metadata={"description": "`top` assets without an id on a source (not filled)"})
    location = fields.Function(lambda b: url_for("backfills.get_backfill", backfill_id=b["id"]))


class BackfillConflictSchema(ErrorSchema):
    backfill_id = fields.String(allow_none=True, metadata={"description": "The backfill already filling it"})
    location = fields.String(allow_none=True)


def _connect():
    return psycopg2.connect(current_app.config["SETTINGS"].libpq_url, connect_timeout=10)


@blp.route("", methods=["POST"])
@blp.doc(security=SECURITY)
@require_token
@blp.arguments(BackfillRequestSchema)
@blp.response(202, BackfillSchema, description="Planned and queued; follow the Location header",
              headers={"Location": {"description": "URL of the backfill", "schema": {"type": "string"}}})
@blp.alt_response(401, schema=ErrorSchema, description="No bearer token")
@blp.alt_response(403, schema=ErrorSchema, description="Wrong bearer token")
@blp.alt_response(409, schema=BackfillConflictSchema, description="A going backfill fills the same asset, source "
                                                                  "and interval over an overlapping range")
@blp.alt_response(413, schema=ErrorSchema, description="Request body too large")
@blp.alt_response(503, schema=ErrorSchema, description="Broker unreachable, or API_TOKEN unset on the server")
def create(body):
    """Start a backfill"""
    settings = current_app.config["SETTINGS"]
    conn = _connect()
    try:
        try:
            plan = start_backfill(conn, settings, body, lambda window_id: send_task(
                BACKFILL_TASK, {"window_id": window_id}, f"backfill-window-{window_id}"))
        except PlanError as exc:
            raise ApiError(422, str(exc), {"json": {"assets": [str(exc)]}}) from None
        except BackfillConflict as exc:
            raise ApiError(409, f"{exc}; follow it, or cancel it first.", {"backfill_id": exc.backfill_id},
                           extra={"backfill_id": exc.backfill_id,
                                  "location": url_for("backfills.get_backfill", backfill_id=exc.backfill_id)}
                           ) from None
        except (ApiError, psycopg2.Error):
            raise
        except Exception as exc:  # kombu raises several types for an unreachable broker
            raise ApiError(503, f"the broker (Redis) is unreachable ({exc.__class__.__name__}); the backfill's "
                                "unqueued windows are marked failed. Try again when the broker is back.",
                           {"component": "broker"}, {"Retry-After": "10"}) from None
        out = summary(conn, settings, plan.id)
    finally:
        conn.close()
    return out, 202, {"Location": url_for("backfills.get_backfill", backfill_id=plan.id)}


@blp.route("/<uuid:backfill_id>")
@blp.response(200, BackfillSchema, description="Windows per state, rows, requests, errors per window, ETA")
@blp.alt_response(404, schema=ErrorSchema, description="No such backfill")
def get_backfill(backfill_id):
    """Follow a backfill"""
    conn = _connect()
    try:
        out = summary(conn, current_app.config["SETTINGS"], backfill_id)
    finally:
        conn.close()
    if out is None:
        raise ApiError(404, f"backfill {backfill_id} does not exist", {"backfill_id": str(backfill_id)})
    return out


@blp.route("/<uuid:backfill_id>", methods=["DELETE"])
@blp.doc(security=SECURITY)
@require_token
@blp.response(200, BackfillSchema, description="Cancelled (windows not started are cancelled; running windows "
                                               "finish their transaction); a finished backfill is left as it is")
@blp.alt_response(401, schema=ErrorSchema, description="No bearer token")
@blp.alt_response(403, schema=ErrorSchema, description="Wrong bearer token")
@blp.alt_response(404, schema=ErrorSchema, description="No such backfill")
@blp.alt_response(503, schema=ErrorSchema, description="API_TOKEN unset on the server")
def cancel(backfill_id):
    """Cancel a backfill"""
    conn = _connect()
    try:
        cancel_backfill(conn, str(backfill_id))
        out = summary(conn, current_app.config["SETTINGS"], backfill_id)
    finally:
        conn.close()
    if out is None:
        raise ApiError(404, f"backfill {backfill_id} does not exist", {"backfill_id": str(backfill_id)})
    return out
