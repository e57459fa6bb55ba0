"""Assets: search, one asset across sources and datasets (with a consensus price), and its price history.

The consensus spans every dataset's latest quote of the asset (API endpoints and CSV files alike)
observed within CONSENSUS_WINDOW of the newest of them: a CSV file that ends in 2018 does not vote on
today's price (it is counted in `stale_excluded`)."""
from __future__ import annotations

import statistics
from datetime import timedelta
from decimal import Decimal

import marshmallow as ma
from flask_smorest import Blueprint
from marshmallow import fields, validate
from sqlalchemy import func, or_, select, text

from ..extensions import db
from ..models import Asset, AssetIdentifier
from . import readcache
from .datasets import DatasetSchema, asset_datasets
from .errors import ApiError
from .history import HistoryArgsSchema, HistorySchema, history_payload
from .pagination import bounded_count, list_metadata, window
from .schemas import ErrorSchema, ListMetadataSchema, Money, PageArgsSchema, QuoteValuesSchema

blp = Blueprint("assets", __name__, url_prefix="/api/v1/assets", description="Assets across sources")
ASSET_REF_DOC = {"description": "Asset id, or its slug", "schema": {"type": "string"}}
identifiers = AssetIdentifier.__table__
CONSENSUS_WINDOW = timedelta(days=1)


class AssetSearchArgsSchema(PageArgsSchema):
    q = fields.String(validate=validate.Length(min=1, max=100), metadata={
        "description": "Search: exact symbol (case-insensitive), or part of the name or slug"})
    symbol = fields.String(validate=validate.Length(min=1, max=50), metadata={
        "description": "Exact symbol, case-insensitive: lists every asset that shares it"})


class AssetSchema(ma.Schema):
    id = fields.Integer(required=True)
    slug = fields.String(required=True)
    symbol = fields.String(required=True)
    name = fields.String(required=True)
    created_at = fields.DateTime()
    sources = fields.List(fields.String(), metadata={"description": "Sources that know this asset"})


class AssetListSchema(ma.Schema):
    data = fields.List(fields.Nested(AssetSchema), required=True)
    metadata = fields.Nested(ListMetadataSchema, required=True)


class IdentifierSchema(ma.Schema):
    source = fields.String()
    external_id = fields.String(metadata={"description": "The source's own id of the asset"})
    symbol = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    first_seen_at = fields.DateTime()


class ConsensusSchema(ma.Schema):
    sources = fields.Integer(metadata={"description": "Sources among the datasets counted"})
    datasets = fields.Integer(metadata={"description": "Datasets whose latest price is counted"})
    stale_excluded = fields.Integer(metadata={
        "description": "Datasets left out: their latest observation is more than a day older than the newest"})
    median_price_usd = Money("Median of the counted datasets' latest prices")
    min_price_usd = Money("Lowest latest price")
    max_price_usd = Money("Highest latest price")
    spread_usd = Money("max - min")
    spread_pct = Money("(max - min) / median, in percent")


class AssetDetailSchema(AssetSchema):
    identifiers = fields.List(fields.Nested(IdentifierSchema))
    datasets = fields.List(fields.Nested(DatasetSchema), metadata={
        "description": "Datasets holding this asset, with provenance; rows and first/last observation of this asset"})
    quotes = fields.List(fields.Nested(QuoteValuesSchema), metadata={
        "description": "Latest quote per dataset (ordered by source, then dataset)"})
    consensus = fields.Nested(ConsensusSchema)


def sources_of():
    return (select(func.array_agg(func.distinct(identifiers.c.source)))
            .where(identifiers.c.asset_id == Asset.id).scalar_subquery())


def find_asset(ref: str) -> Asset:
    ref = ref.strip()
    asset = db.session.get(Asset, int(ref)) if ref.isascii() and ref.isdigit() and len(ref) < 19 else \
        db.session.scalars(select(Asset).where(Asset.slug == ref)).first()
    if asset is None:
        raise ApiError(404, f"No asset {ref!r}: pass an asset id or slug.")
    return asset


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def consensus(quotes: list[dict]) -> dict:
    """Median, range and spread of the latest prices of the datasets observed within CONSENSUS_WINDOW of
    the newest one."""
    priced = [q for q in quotes if q["price_usd"] is not None]
    newest = max((q["observed_at"] for q in priced), default=None)
    fresh = [q for q in priced if q["observed_at"] >= newest - CONSENSUS_WINDOW] if newest else []
    prices = [q["price_usd"] for q in fresh]
    counts = {"sources": len({q["source"] for q in fresh}), "datasets": len(fresh),
              "stale_excluded": len(priced) - len(fresh)}
    if not prices:
        return {**counts, "median_price_usd": None, "min_price_usd": None, "max_price_usd": None,
                "spread_usd": None, "spread_pct": None}
    median, low, high = statistics.median(prices), min(prices), max(prices)
    pct = ((high - low) / median * 100).quantize(Decimal("0.0001")) if median else None
    return {**counts, "median_price_usd": median, "min_price_usd": low, "max_price_usd": high,
            "spread_usd": high - low, "spread_pct": pct}


@blp.route("")
@blp.arguments(AssetSearchArgsSchema, location="query")
@blp.response(200, AssetListSchema, description="Assets, exact symbol matches first")
@blp.alt_response(400, schema=ErrorSchema, description="Contradicting paging arguments")
@blp.doc(responses=readcache.DOC_304)
def list_assets(args):
    """Search assets"""
    return readcache.serve(lambda: ASSET_LIST_SCHEMA.dump(search_assets(args)))


def search_assets(args: dict) -> dict:
    win = window(args, 50)
    stmt = select(Asset.id, Asset.slug, Asset.symbol, Asset.name, Asset.created_at, sources_of().label("sources"))
    order = [Asset.id]
    if args.get("symbol"):
        stmt = stmt.where(func.lower(Asset.symbol) == args["symbol"].lower())
    if args.get("q"):
        q = args["q"].strip()
        exact = func.lower(Asset.symbol) == q.lower()
        stmt = stmt.where(or_(exact, Asset.name.ilike(_like(q), escape="\\"), Asset.slug.ilike(_like(q), escape="\\")))
        order = [exact.desc(), Asset.id]
    rows = [dict(r) for r in db.session.execute(stmt.order_by(*order).offset(win.offset).limit(win.size + 1)).mappings()]
    for row in rows:
        row["sources"] = sorted(row["sources"] or [])
    total, exact_count = bounded_count(stmt, None if args.get("symbol") or args.get("q") else "assets")
    has_more = len(rows) > win.size
    return {"data": rows[: win.size], "metadata": list_metadata(win, total, exact_count, has_more, None)}


@blp.route("/<asset_ref>")
@blp.doc(parameters=[{"in": "path", "name": "asset_ref", **ASSET_REF_DOC}])
@blp.response(200, AssetDetailSchema, description="Identifiers per source, datasets with provenance, latest quote "
                                                  "per dataset, consensus")
@blp.alt_response(404, schema=ErrorSchema, description="No such asset")
@blp.doc(responses=readcache.DOC_304)
def get_asset(asset_ref):
    """One asset across sources"""
    return readcache.serve(lambda: ASSET_DETAIL_SCHEMA.dump(asset_detail(asset_ref)))


LATEST_SQL = text("""
    SELECT lq.*, ds.name AS dataset, coalesce(lq.flags, '{}'::text[]) AS flags
    FROM latest_quotes lq JOIN datasets ds ON ds.id = lq.dataset_id
    WHERE lq.asset_id = :asset_id ORDER BY lq.source, ds.name
""")


def asset_detail(asset_ref: str) -> dict:
    asset = find_asset(asset_ref)
    quotes = [dict(r) for r in db.session.execute(LATEST_SQL, {"asset_id": asset.id}).mappings()]
    datasets = asset_datasets(asset.id)
    return {"id": asset.id, "slug": asset.slug, "symbol": asset.symbol, "name": asset.name,
            "created_at": asset.created_at, "sources": sorted({i.source for i in asset.identifiers} |
                                                               {q["source"] for q in quotes} |
                                                               {d["source"] for d in datasets}),
            "identifiers": sorted(asset.identifiers, key=lambda i: (i.source, i.external_id)),
            "datasets": datasets, "quotes": quotes, "consensus": consensus(quotes)}


@blp.route("/<asset_ref>/history")
@blp.doc(parameters=[{"in": "path", "name": "asset_ref", **ASSET_REF_DOC}])
@blp.arguments(HistoryArgsSchema, location="query")
@blp.response(200, HistorySchema, description="Raw observations, or OHLC candles per source and interval")
@blp.alt_response(404, schema=ErrorSchema, description="No such asset")
@blp.doc(responses=readcache.DOC_304)
def history(args, asset_ref):
    """Price history of one asset"""
    return readcache.serve(lambda: history_payload(asset_ref, args))


ASSET_LIST_SCHEMA = AssetListSchema()
ASSET_DETAIL_SCHEMA = AssetDetailSchema()
readcache.cacheable("assets.list_assets")
readcache.cacheable("assets.get_asset")
# Without `until` the window ends "now": the answer changes with the clock, not only with the data.
readcache.cacheable("assets.history", when=lambda req: "until" in req.args)
