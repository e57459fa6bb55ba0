"""An asset's history from `quotes`: raw observations, or OHLC candles per source and interval.

Candles are built from the observed prices: open is the first price in the bucket, close the last,
high and low the extremes; market cap and volume are the last observed in the bucket. Buckets start on
multiples of the interval from Monday 2000-01-03 00:00 UTC (so weeks start on Mondays).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import marshmallow as ma
from marshmallow import fields, validate
from sqlalchemy import bindparam, text
from sqlalchemy.types import Interval

from ..extensions import db
from .fastdump import FastDumper
from .schemas import Money, SourceField, UtcDateTime

INTERVALS = {"5m": timedelta(minutes=5), "15m": timedelta(minutes=15), "1h": timedelta(hours=1),
             "4h": timedelta(hours=4), "1d": timedelta(days=1), "1w": timedelta(weeks=1)}
DEFAULT_SPAN = {"raw": timedelta(days=7), "5m": timedelta(days=2), "15m": timedelta(days=7),
                "1h": timedelta(days=30), "4h": timedelta(days=90), "1d": timedelta(days=365),
                "1w": timedelta(days=3 * 365)}

RAW_SQL = text("""
    SELECT source, observed_at, price_usd, market_cap_usd, volume_24h_usd, run_id
    FROM quotes
    WHERE asset_id = :asset_id AND observed_at >= :since AND observed_at <= :until
      AND (CAST(:source AS text) IS NULL OR source = :source)
    ORDER BY observed_at, source LIMIT :limit
""")
CANDLES_SQL = text("""
    SELECT source, date_bin(:step, observed_at, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
           (array_agg(price_usd ORDER BY observed_at))[1] AS open,
           max(price_usd) AS high, min(price_usd) AS low,
           (array_agg(price_usd ORDER BY observed_at DESC))[1] AS close,
           (array_agg(market_cap_usd ORDER BY observed_at DESC))[1] AS market_cap_usd,
           (array_agg(volume_24h_usd ORDER BY observed_at DESC))[1] AS volume_24h_usd,
           count(*) AS samples
    FROM quotes
    WHERE asset_id = :asset_id AND observed_at >= :since AND observed_at <= :until
      AND (CAST(:source AS text) IS NULL OR source = :source)
    GROUP BY source, bucket
    ORDER BY bucket, source LIMIT :limit
""").bindparams(bindparam("step", type_=Interval()))


class HistoryArgsSchema(ma.Schema):
    source = SourceField()
    since = UtcDateTime(metadata={
        "description": "Start (inclusive; default: a span before `until` that suits the interval)"})
    until = UtcDateTime(metadata={"description": "End (inclusive; default now)"})
    interval = fields.String(load_default="raw", validate=validate.OneOf(["raw", *INTERVALS]), metadata={
        "description": "raw observations, or OHLC candles of this width", "enum": ["raw", *INTERVALS]})
    limit = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=10000),
                           metadata={"description": "At most this many points or candles (oldest first)"})

    @ma.validates_schema
    def _window(self, data, **kwargs):
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise ma.ValidationError("since must not be after until", "since")


class PointSchema(ma.Schema):
    source = fields.String()
    observed_at = fields.DateTime()
    price_usd = Money("Price in USD")
    market_cap_usd = Money("Market cap in USD")
    volume_24h_usd = Money("24h volume in USD")
    run_id = fields.UUID()


class CandleSchema(ma.Schema):
    source = fields.String()
    bucket = fields.DateTime(metadata={"description": "Start of the bucket"})
    open = Money("First observed price in the bucket")
    high = Money("Highest observed price")
    low = Money("Lowest observed price")
    close = Money("Last observed price")
    market_cap_usd = Money("Last observed market cap")
    volume_24h_usd = Money("Last observed 24h volume")
    samples = fields.Integer(metadata={"description": "Observations in the bucket"})


class HistorySchema(ma.Schema):
    asset_id = fields.Integer()
    slug = fields.String()
    symbol = fields.String()
    interval = fields.String()
    source = fields.String(allow_none=True)
    since = fields.DateTime()
    until = fields.DateTime()
    truncated = fields.Boolean(metadata={"description": "More rows matched than `limit`; narrow the window"})
    points = fields.List(fields.Nested(PointSchema), metadata={"description": "With interval=raw"})
    candles = fields.List(fields.Nested(CandleSchema), metadata={"description": "With an interval"})


def asset_history(asset, args: dict) -> dict:
    interval = args["interval"]
    until = args.get("until") or datetime.now(timezone.utc)
    since = args.get("since") or until - DEFAULT_SPAN[interval]
    params = {"asset_id": asset.id, "since": since, "until": until, "source": args.get("source"),
              "limit": args["limit"] + 1}
    if interval == "raw":
        rows = db.session.execute(RAW_SQL, params).mappings().all()
    else:
        rows = db.session.execute(CANDLES_SQL, {**params, "step": INTERVALS[interval]}).mappings().all()
    out = {"asset_id": asset.id, "slug": asset.slug, "symbol": asset.symbol, "interval": interval,
           "source": args.get("source"), "since": since, "until": until,
           "truncated": len(rows) > args["limit"]}
    out["points" if interval == "raw" else "candles"] = rows[: args["limit"]]
    return out


POINTS = FastDumper(PointSchema())
CANDLES = FastDumper(CandleSchema())
HISTORY_HEAD = HistorySchema(exclude=("points", "candles"))


def history_payload(asset, args: dict) -> dict:
    """HistorySchema().dump(asset_history(asset, args)), with the points or candles dumped fast."""
    out = asset_history(asset, args)
    payload = HISTORY_HEAD.dump(out)
    if "points" in out:
        payload["points"] = POINTS.dump_many(out["points"])
    else:
        payload["candles"] = CANDLES.dump_many(out["candles"])
    return payload
