"""Schemas shared by several resources: the error shape, money, quote rows, list metadata."""
from __future__ import annotations

from datetime import timezone

import marshmallow as ma
from marshmallow import fields, validate

from ..config import SOURCES

MONEY_NOTE = ("Exact decimal serialized as a JSON string in plain notation (never a float, never an "
              "exponent), e.g. \"87440.12345678\". Parse it with a decimal type to keep every digit.")


def Money(description: str, **kwargs) -> fields.Decimal:
    """An exact NUMERIC value, serialized as a string (see MONEY_NOTE)."""
    return fields.Decimal(as_string=True, allow_none=True,
                          metadata={"description": f"{description}. {MONEY_NOTE}",
                                    "type": "string", "format": "decimal", "example": "87440.12"},
                          **kwargs)


def SourceField(description: str = "Data source", **kwargs) -> fields.String:
    return fields.String(validate=validate.OneOf(SOURCES),
                         metadata={"description": description, "enum": list(SOURCES)}, **kwargs)


class ErrorSchema(ma.Schema):
    """Every error answer, whatever the endpoint or the cause."""

    status = fields.Integer(required=True, metadata={"description": "HTTP status code"})
    error = fields.String(required=True, metadata={"description": "HTTP reason phrase"})
    message = fields.String(required=True, metadata={"description": "What went wrong, for a human"})
    details = fields.Dict(required=True, metadata={
        "description": "Machine-readable details: for validation errors, messages per location and field"})
    request_id = fields.String(allow_none=True, metadata={
        "description": "The request's id (also in the X-Request-ID header); quote it when reporting"})


class ConflictSchema(ErrorSchema):
    run_id = fields.String(allow_none=True, metadata={"description": "Id of the run already going"})
    location = fields.String(allow_none=True, metadata={"description": "Where to follow the running run"})


class QuoteValuesSchema(ma.Schema):
    """The normalized values of one observation (money and supplies exact, as strings)."""

    source = fields.String(required=True, metadata={
        "description": "Kind of upstream that reported the values (coingecko, coinpaprika, csv)"})
    dataset = fields.String(required=True, metadata={
        "description": "Dataset the row belongs to (see /api/v1/datasets): `<source>:<endpoint>` for an API, "
                       "`csv:<file>` or the configured name for a CSV file"})
    price_usd = Money("Price in USD")
    open_usd = Money("Open price in USD of the source's period, when it reports one")
    high_usd = Money("High price in USD of the source's period, when it reports one")
    low_usd = Money("Low price in USD of the source's period, when it reports one")
    market_cap_usd = Money("Market capitalization in USD")
    volume_24h_usd = Money("Rolling 24-hour traded volume in USD: what the APIs report, and CSV columns that say they "
                           "are a 24h volume (\"24h volume\", \"volume_24h_usd\", \"total_volume\"); null for a CSV "
                           "candle file's volume, which is volume_usd")
    volume_usd = Money("USD volume traded within the row's own interval (a candle's volume, e.g. the volume of that "
                       "hour in an hourly CSV file, of that day in a daily one); the interval is the dataset's "
                       "native_interval (listed at /api/v1/datasets). Null for API rows, whose volume is the rolling "
                       "volume_24h_usd")
    circulating_supply = Money("Circulating supply in units of the asset")
    total_supply = Money("Total supply in units of the asset")
    max_supply = Money("Maximum supply in units of the asset")
    market_cap_rank = fields.Integer(allow_none=True, metadata={"description": "Rank by market cap at the source"})
    change_24h_pct = Money("Price change over 24 hours, in percent")
    flags = fields.List(fields.String(), required=True, metadata={
        "description": "Soft plausibility rules the row tripped (stored, but worth a look), sorted; [] if none"})
    observed_at = fields.DateTime(required=True, metadata={"description": "When the source observed the values (UTC)"})
    fetched_at = fields.DateTime(required=True, metadata={"description": "When cryptoflow fetched them (UTC)"})
    run_id = fields.UUID(required=True, metadata={"description": "The ingestion run that wrote them"})


class QuoteRowSchema(QuoteValuesSchema):
    """The latest quote of one asset from one source."""

    asset_id = fields.Integer(required=True, metadata={"description": "cryptoflow's asset id"})
    slug = fields.String(required=True, metadata={"description": "Unique, stable asset key"})
    symbol = fields.String(required=True, metadata={"description": "Ticker symbol (not unique across assets)"})
    name = fields.String(required=True)


class ListMetadataSchema(ma.Schema):
    request_id = fields.String(allow_none=True)
    api_latency_ms = fields.Float(metadata={"description": "Time spent serving the request, in milliseconds"})
    page = fields.Integer(allow_none=True, metadata={
        "description": "1-based page number; null when paging by cursor or by an offset that is not a "
                       "multiple of page_size"})
    page_size = fields.Integer(metadata={"description": "Rows asked for (page_size or limit)"})
    offset = fields.Integer(allow_none=True, metadata={"description": "Rows skipped; null when paging by cursor"})
    total_count = fields.Integer(metadata={
        "description": "Rows matching the filters (ignoring paging). Exact when total_count_exact is true, "
                       "which is the case whenever at most 10,000 rows match, and on /api/v1/data and /data "
                       "without filters or filtered by source only (counts maintained as data is written); "
                       "otherwise, beyond 10,000, a planner estimate, so that no request ever counts a "
                       "large table."})
    total_count_exact = fields.Boolean()
    has_more = fields.Boolean(metadata={"description": "Whether rows follow this page"})
    next_cursor = fields.String(allow_none=True, metadata={
        "description": "Opaque cursor of the next page (pass it as `cursor`); null on the last page"})


class UtcDateTime(fields.AwareDateTime):
    """A time in the query string (ISO 8601; UTC when no offset is given), converted to UTC.

    Python accepts offsets up to 23:59 and any year 1-9999 with any offset; PostgreSQL refuses offsets
    beyond 15:59 and a year 0 or 10000 does not exist in Python: converting here makes those a 422, not a
    500 from the database."""

    def __init__(self, **kwargs):
        super().__init__(default_timezone=timezone.utc, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(timezone.utc)
        except OverflowError:
            raise ma.ValidationError("Not a valid time: out of range once converted to UTC.") from None


class PageArgsSchema(ma.Schema):
    """page/page_size and limit/offset, the two ways earlier clients page."""

    page = fields.Integer(validate=validate.Range(min=1, max=1_000_000),
                          metadata={"description": "1-based page number (with page_size)"})
    page_size = fields.Integer(validate=validate.Range(min=1, max=100),
                               metadata={"description": "Rows per page, at most 100"})
    limit = fields.Integer(validate=validate.Range(min=1, max=1000),
                           metadata={"description": "Rows to return, at most 1000 (alias of page_size "
                                                    "for clients that page with limit/offset)"})
    offset = fields.Integer(validate=validate.Range(min=0, max=10_000_000),
                            metadata={"description": "Rows to skip (with limit)"})

    @ma.validates_schema
    def _one_way(self, data, **kwargs):
        if "page" in data and "offset" in data:
            raise ma.ValidationError("use either page or offset, not both", "offset")
        if "page_size" in data and "limit" in data and data["page_size"] != data["limit"]:
            raise ma.ValidationError("use either page_size or limit, not both", "limit")
