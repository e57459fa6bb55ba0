"""GET /api/v1/assets/{id}/coverage: covered ranges and gaps of an asset's series on the expected grid
(crypto_app/pipeline/coverage.py). Fill the gaps with POST /api/v1/backfills {"gaps_of": {...}}."""
from __future__ import annotations

from datetime import datetime, timezone

import marshmallow as ma
import psycopg2
from flask import current_app
from flask_smorest import Blueprint
from marshmallow import fields, validate

from ..pipeline.backfill_plan import floor_to
from ..pipeline.coverage import CoverageError, coverage
from ..sources.history import INTERVALS
from .assets import find_asset
from .backfills import Moment
from .errors import ApiError
from .schemas import ErrorSchema

blp = Blueprint("coverage", __name__, url_prefix="/api/v1/assets",
                description="Coverage: which buckets of an asset's series are stored, and the gaps")


class CoverageArgsSchema(ma.Schema):
    source = fields.String(metadata={"description": "Only this source's datasets"})
    dataset = fields.String(metadata={"description": "Only this dataset (e.g. coingecko:market_chart)"})
    interval = fields.String(load_default="1d", validate=validate.OneOf(list(INTERVALS)),
                             metadata={"enum": list(INTERVALS)})
    since = Moment(metadata={"description": "First bucket (default: the first stored observation)"})
    until = Moment(metadata={"description": "End, exclusive (default: the start of the current bucket)"})


class RangeSchema(ma.Schema):
    first = fields.DateTime(required=True, metadata={"description": "Start of the first bucket"})
    last = fields.DateTime(required=True, metadata={"description": "Start of the last bucket"})
    buckets = fields.Integer(required=True)


class CoverageSchema(ma.Schema):
    asset = fields.String(required=True)
    source = fields.String(allow_none=True)
    dataset = fields.String(allow_none=True)
    interval = fields.String(required=True)
    since = fields.DateTime(allow_none=True)
    until = fields.DateTime(allow_none=True)
    expected = fields.Integer(required=True, metadata={"description": "Buckets on the grid"})
    covered_buckets = fields.Integer(required=True)
    missing = fields.Integer(required=True, metadata={"description": "Buckets without any stored quote"})
    covered = fields.List(fields.Nested(RangeSchema), required=True)
    gaps = fields.List(fields.Nested(RangeSchema), required=True)


def asset_coverage(conn, asset_id: int, slug: str, args: dict) -> dict:
    step = INTERVALS[args.get("interval") or "1d"]
    until = floor_to(min(args.get("until") or datetime.now(timezone.utc), datetime.now(timezone.utc)), step)
    since = args.get("since")
    if since is None:
        with conn.cursor() as cur:
            cur.execute("SELECT min(q.observed_at) FROM quotes q JOIN datasets d ON d.id = q.dataset_id "
                        "WHERE q.asset_id = %s AND (%s::text IS NULL OR d.source = %s) "
                        "AND (%s::text IS NULL OR d.name = %s)",
                        (asset_id, args.get("source"), args.get("source"), args.get("dataset"), args.get("dataset")))
            since = cur.fetchone()[0]
        conn.commit()
    out = {"asset": slug, "source": args.get("source"), "dataset": args.get("dataset"),
           "interval": args.get("interval") or "1d", "since": None, "until": until}
    if since is None or floor_to(since, step) >= until:
        return {**out, "expected": 0, "covered_buckets": 0, "missing": 0, "covered": [], "gaps": []}
    since = floor_to(since, step)
    return {**out, "since": since, **coverage(conn, asset_id, step, since, until, args.get("source"),
                                              args.get("dataset"))}


@blp.route("/<asset_ref>/coverage")
@blp.arguments(CoverageArgsSchema, location="query")
@blp.response(200, CoverageSchema, description="Covered ranges and gaps against the expected grid")
@blp.alt_response(404, schema=ErrorSchema, description="No such asset")
def get_coverage(args, asset_ref):
    """Coverage and gaps of an asset's series"""
    asset = find_asset(asset_ref)
    conn = psycopg2.connect(current_app.config["SETTINGS"].libpq_url, connect_timeout=10)
    try:
        return asset_coverage(conn, asset.id, asset.slug, args)
    except CoverageError as exc:
        raise ApiError(422, str(exc), {"query": {"since": [str(exc)]}}) from None
    finally:
        conn.close()
