"""GET /api/v1/data: the latest normalized quote per asset and source, filtered and paged.

Order is stable: market cap descending (unknown market caps last), then asset id, then source; that
is the index `ix_latest_quotes_sort`, which keyset cursors walk.
"""
from __future__ import annotations

from datetime import timezone
from decimal import Decimal, InvalidOperation

import marshmallow as ma
from flask_smorest import Blueprint
from marshmallow import fields, validate
from sqlalchemy import and_, func, literal_column, select, tuple_, union_all

from ..config import SOURCES
from ..extensions import db
from ..models import Asset, LatestQuote
from ..models.quotes import QUOTE_VALUE_COLUMNS
from .errors import ApiError
from .pagination import CursorField, bounded_count, encode_cursor, list_metadata, window
from .schemas import ErrorSchema, ListMetadataSchema, PageArgsSchema, QuoteRowSchema, UtcDateTime

blp = Blueprint("data", __name__, url_prefix="/api/v1", description="Latest normalized quotes")

lq = LatestQuote.__table__
assets = Asset.__table__
# Must stay the very expression of ix_latest_quotes_sort (a literal -1, not a bound parameter).
SORT_KEY = func.coalesce(lq.c.market_cap_usd, literal_column("-1"))
MAX_LIST_ITEMS = 50


class DataArgsSchema(PageArgsSchema):
    symbol = fields.String(validate=validate.Length(min=1, max=200), metadata={
        "description": "Ticker symbol, case-insensitive; several comma-separated (BTC,ETH)"})
    source = fields.String(validate=validate.Length(min=1, max=200), metadata={
        "description": f"Source, or several comma-separated; one of {', '.join(SOURCES)}"})
    asset = fields.String(validate=validate.Length(min=1, max=200), metadata={
        "description": "Asset id or slug"})
    since = UtcDateTime(metadata={
        "description": "Only quotes observed at or after this time (ISO 8601; UTC when no offset is given)"})
    until = UtcDateTime(metadata={
        "description": "Only quotes observed at or before this time (ISO 8601; UTC when no offset is given)"})
    cursor = CursorField(metadata={
        "description": "Opaque keyset cursor from a previous page's metadata.next_cursor; alone, "
                       "without page or offset. Stays fast at any depth."})

    @ma.validates_schema
    def _filters(self, data, **kwargs):
        if "source" in data:
            unknown = [s for s in split_list(data["source"]) if s not in SOURCES]
            if unknown:
                raise ma.ValidationError(f"unknown source {', '.join(unknown)}; known: {', '.join(SOURCES)}",
                                         "source")
        for name in ("symbol", "source"):
            if name in data and len(split_list(data[name])) > MAX_LIST_ITEMS:
                raise ma.ValidationError(f"at most {MAX_LIST_ITEMS} values", name)
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise ma.ValidationError("since must not be after until", "since")


class DataPageSchema(ma.Schema):
    data = fields.List(fields.Nested(QuoteRowSchema), required=True)
    metadata = fields.Nested(ListMetadataSchema, required=True)


def split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def quote_columns():
    return [lq.c.asset_id, assets.c.slug, assets.c.symbol, assets.c.name, lq.c.source,
            *(lq.c[name] for name in QUOTE_VALUE_COLUMNS),
            lq.c.observed_at, lq.c.fetched_at, lq.c.run_id, SORT_KEY.label("sort_key")]


def filtered_quotes(args: dict):
    """SELECT of latest quotes joined to their asset, with the filters of `args` (no order, no paging)."""
    stmt = select(*quote_columns()).select_from(lq.join(assets, assets.c.id == lq.c.asset_id))
    if args.get("symbol"):
        stmt = stmt.where(func.lower(assets.c.symbol).in_([s.lower() for s in split_list(args["symbol"])]))
    if args.get("source"):
        stmt = stmt.where(lq.c.source.in_(split_list(args["source"])))
    if args.get("asset"):
        ref = args["asset"].strip()
        by_id = ref.isascii() and ref.isdigit() and len(ref) < 19  # longer digit strings cannot be a bigint id: try the slug
        stmt = stmt.where(lq.c.asset_id == int(ref)) if by_id else stmt.where(assets.c.slug == ref)
    if args.get("since"):
        stmt = stmt.where(lq.c.observed_at >= args["since"])
    if args.get("until"):
        stmt = stmt.where(lq.c.observed_at <= args["until"])
    return stmt


def is_filtered(args: dict) -> bool:
    return any(args.get(k) for k in ("symbol", "source", "asset", "since", "until"))


def ordered(stmt):
    return stmt.order_by(SORT_KEY.desc(), lq.c.asset_id, lq.c.source)


def after_cursor(stmt, key: list, limit: int):
    """Rows strictly after `key` in the sort order, as two index-friendly range scans."""
    try:
        sort_value, asset_id, source = Decimal(str(key[0])), int(key[1]), str(key[2])
        if not sort_value.is_finite() or abs(sort_value.adjusted()) > 1000 or abs(asset_id) >= 2**63:
            raise ValueError("out of range")
    except (IndexError, TypeError, ValueError, InvalidOperation):
        raise ApiError(422, "The cursor is not one this API issued.",
                       {"query": {"cursor": ["not a cursor this API issued"]}}) from None
    same_key = (stmt.where(and_(SORT_KEY == sort_value, tuple_(lq.c.asset_id, lq.c.source) > tuple_(asset_id, source)))
                .order_by(lq.c.asset_id, lq.c.source).limit(limit))
    lower_key = ordered(stmt.where(SORT_KEY < sort_value)).limit(limit)
    both = union_all(same_key, lower_key).subquery()
    return select(both).order_by(both.c.sort_key.desc(), both.c.asset_id, both.c.source).limit(limit)


def quote_page(args: dict, default_size: int) -> dict:
    """One page of latest quotes with its metadata; what /api/v1/data and /data answer."""
    win = window(args, default_size)
    base = filtered_quotes(args)
    if win.cursor is not None:
        page_stmt = after_cursor(base, win.cursor, win.size + 1)
    else:
        page_stmt = ordered(base).offset(win.offset).limit(win.size + 1)
    rows = [dict(r) for r in db.session.execute(page_stmt).mappings()]
    has_more = len(rows) > win.size
    rows = rows[: win.size]
    next_cursor = None
    if has_more and rows:
        last = rows[-1]
        next_cursor = encode_cursor(str(last["sort_key"]), last["asset_id"], last["source"])
    total, exact = bounded_count(base, None if is_filtered(args) else "latest_quotes")
    return {"data": rows, "metadata": list_metadata(win, total, exact, has_more, next_cursor)}


@blp.route("/data")
@blp.arguments(DataArgsSchema, location="query")
@blp.response(200, DataPageSchema, description=(
    "Latest quote per asset and source, ordered by market cap (unknown last), asset id, source. "
    "Page with page/page_size, limit/offset, or the keyset `cursor` from metadata.next_cursor."))
@blp.alt_response(400, schema=ErrorSchema, description="Paging arguments that contradict each other")
def list_data(args):
    """Latest quotes"""
    return quote_page(args, default_size=100)
