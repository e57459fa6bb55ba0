"""An asset's history from `quotes`: raw observations, or OHLC candles per dataset and interval.

Each dataset is read on its own through the quotes key (asset_id, dataset_id, observed_at), and its
rows never mix with another dataset's in a candle. A candle says where it comes from:

- `from: "source"`: the dataset has a native interval (declared or detected, see /api/v1/datasets)
  that divides the asked interval, and every row in the bucket carries the source's own open, high and
  low. At the native interval the candle IS the source's row (open, high, low, close = the row's
  open_usd, high_usd, low_usd, price_usd); coarser buckets aggregate them: first open, max high, min
  low, last close; `volume_usd` is the SUM of the rows' volumes (a candle file's volume is the volume
  of its own period).
- `from: "observed"`: built from observed prices (snapshot sources such as API tickers, or a file
  without OHLC): open is the first price in the bucket, close the last, high and low the extremes;
  `volume_usd` is null, because a rolling 24h volume cannot be summed.
In both, `volume_24h_usd` and `market_cap_usd` are the last values in the bucket. Buckets start on
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

# One index range scan per dataset (datasets are few; the filters pick them before any quote is read).
DATASETS = """
    FROM datasets d CROSS JOIN LATERAL ({inner}) q
    WHERE (CAST(:source AS text) IS NULL OR d.source = :source)
      AND (CAST(:dataset AS text) IS NULL OR d.name = :dataset)
"""
ROWS_OF_DATASET = """
    FROM quotes WHERE asset_id = :asset_id AND dataset_id = d.id AND observed_at >= :since AND observed_at <= :until
"""
RAW_SQL = text("""
    SELECT d.source, d.name AS dataset, q.observed_at, q.price_usd, q.open_usd, q.high_usd, q.low_usd,
           q.market_cap_usd, q.volume_24h_usd, coalesce(q.flags, '{}'::text[]) AS flags, q.run_id
""" + DATASETS.format(inner="SELECT * " + ROWS_OF_DATASET + " ORDER BY observed_at LIMIT :limit") + """
    ORDER BY q.observed_at, d.source, d.name LIMIT :limit
""")
# Rows of the dataset still at full resolution, and the rollup candles of the rows the maintenance task
# expired (crypto_app/pipeline/maintenance.py): a row is in exactly one of the two, and both carry first/last
# observation times, so merging them per bucket is exact (first open, extremes, last close, sums).
_PIECES = """
    SELECT observed_at AS at, observed_at AS first_at, observed_at AS last_at,
           (open_usd IS NOT NULL AND high_usd IS NOT NULL AND low_usd IS NOT NULL) AS ohlc,
           open_usd AS s_open, high_usd AS s_high, low_usd AS s_low, price_usd AS o_open, price_usd AS o_high,
           price_usd AS o_low, price_usd AS close, market_cap_usd, volume_24h_usd, volume_24h_usd AS volume_sum,
           (volume_24h_usd IS NOT NULL)::int AS volumes, 1 AS samples
""" + ROWS_OF_DATASET + """
    UNION ALL
    SELECT bucket, first_observed_at, last_observed_at, ohlc, s_open, s_high, s_low, o_open, o_high, o_low, close,
           market_cap_usd, volume_24h_usd, volume_sum, volumes, samples
    FROM candles WHERE dataset_id = d.id AND asset_id = :asset_id AND resolution = :resolution
      AND bucket > :since - CAST(:rollup_step AS interval) AND bucket <= :until
"""
_BUCKETS = """
    SELECT date_bin(:step, at, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, bool_and(ohlc) AS ohlc,
           (array_agg(s_open ORDER BY first_at))[1] AS s_open, max(s_high) AS s_high, min(s_low) AS s_low,
           (array_agg(o_open ORDER BY first_at))[1] AS o_open, max(o_high) AS o_high, min(o_low) AS o_low,
           (array_agg(close ORDER BY last_at DESC))[1] AS close,
           (array_agg(market_cap_usd ORDER BY last_at DESC))[1] AS market_cap_usd,
           (array_agg(volume_24h_usd ORDER BY last_at DESC))[1] AS volume_24h_usd,
           sum(volume_sum) AS volume_sum, sum(volumes) AS volumes, sum(samples) AS samples
    FROM (""" + _PIECES + """) p GROUP BY 1 ORDER BY 1 LIMIT :limit"""
CANDLES_SQL = text("""
    SELECT source, dataset, bucket, CASE WHEN native THEN 'source' ELSE 'observed' END AS from_,
           CASE WHEN native THEN s_open ELSE o_open END AS open,
           CASE WHEN native THEN s_high ELSE o_high END AS high,
           CASE WHEN native THEN s_low ELSE o_low END AS low,
           close, market_cap_usd, volume_24h_usd,
           CASE WHEN native AND volumes = samples THEN volume_sum END AS volume_usd, samples
    FROM (SELECT d.source, d.name AS dataset, q.*,
                 (q.ohlc AND d.native_interval IS NOT NULL AND d.native_interval <= :step
                  AND mod(extract(epoch FROM :step)::numeric, extract(epoch FROM d.native_interval)::numeric) = 0)
                 AS native
""" + DATASETS.format(inner=_BUCKETS) + """) c
    ORDER BY bucket, source, dataset LIMIT :limit
""").bindparams(bindparam("step", type_=Interval()), bindparam("rollup_step", type_=Interval()))
ROLLUPS = (("1h", timedelta(hours=1)), ("1d", timedelta(days=1)))


class HistoryArgsSchema(ma.Schema):
    source = SourceField("Only this source's datasets (csv: every CSV dataset)")
    dataset = fields.String(validate=validate.Length(min=1, max=300), metadata={
        "description": "Only this dataset (a name from /api/v1/datasets)"})
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
    dataset = fields.String(metadata={"description": "Dataset of the row"})
    observed_at = fields.DateTime()
    price_usd = Money("Price in USD (the close of a candle row)")
    open_usd = Money("Open of the source's period, when it gives one")
    high_usd = Money("High of the source's period, when it gives one")
    low_usd = Money("Low of the source's period, when it gives one")
    market_cap_usd = Money("Market cap in USD")
    volume_24h_usd = Money("24h volume in USD (a candle file's volume of its own period)")
    flags = fields.List(fields.String(), metadata={"description": "Soft plausibility rules the row tripped; [] if none"})
    run_id = fields.UUID()


class CandleSchema(ma.Schema):
    source = fields.String()
    dataset = fields.String(metadata={"description": "Dataset the candle is built from (datasets never mix)"})
    bucket = fields.DateTime(metadata={"description": "Start of the bucket"})
    from_ = fields.String(data_key="from", metadata={
        "enum": ["source", "observed"],
        "description": "source: the source's own candles (at their interval, or aggregated); observed: built "
                       "from observed prices"})
    open = Money("Open: the first source candle's open, or the first observed price")
    high = Money("High: the highest source high, or the highest observed price")
    low = Money("Low: the lowest source low, or the lowest observed price")
    close = Money("Close: the last price in the bucket")
    market_cap_usd = Money("Last market cap in the bucket")
    volume_24h_usd = Money("Last volume value in the bucket")
    volume_usd = Money("With from=source: the sum of the source candles' volumes; null with from=observed")
    samples = fields.Integer(metadata={"description": "Rows in the bucket"})


class HistorySchema(ma.Schema):
    asset_id = fields.Integer()
    slug = fields.String()
    symbol = fields.String()
    interval = fields.String()
    source = fields.String(allow_none=True)
    dataset = fields.String(allow_none=True)
    since = fields.DateTime()
    until = fields.DateTime()
    truncated = fields.Boolean(metadata={"description": "More rows matched than `limit`; narrow the window"})
    resolution = fields.String(metadata={
        "enum": ["raw", "1h", "1d"],
        "description": "What the answer was built from: raw (full-resolution rows only), or 1h / 1d when the "
                       "window reaches back past `raw_since` and the rows there were rolled up into hourly or "
                       "daily candles (merged exactly with the raw rows after it)"})
    raw_since = fields.DateTime(metadata={
        "description": "Full-resolution rows of snapshot datasets are kept from here on (RETENTION_RAW_DAYS); "
                       "older ones live only as rollups"})
    points = fields.List(fields.Nested(PointSchema), metadata={"description": "With interval=raw"})
    candles = fields.List(fields.Nested(CandleSchema), metadata={"description": "With an interval"})


def rollup_for(step: timedelta, since: datetime, now: datetime, storage) -> tuple[str, timedelta] | None:
    """The stored rollup that serves buckets of `step` back to `since`: hourly while they are kept, else
    daily; None when `step` is finer than an hour (only raw rows can answer it)."""
    for name, width in ROLLUPS:
        if step % width == timedelta(0) and (
                name == "1d" or since >= now - timedelta(days=storage.candle_hourly_retention_days)):
            return name, width
    return None


def asset_history(asset, args: dict, storage=None) -> dict:
    from flask import current_app

    storage = storage or current_app.config["SETTINGS"].storage
    interval = args["interval"]
    now = datetime.now(timezone.utc)
    until = args.get("until") or now
    since = args.get("since") or until - DEFAULT_SPAN[interval]
    raw_since = now - timedelta(days=storage.retention_raw_days)
    params = {"asset_id": asset.id, "since": since, "until": until, "source": args.get("source"),
              "dataset": args.get("dataset"), "limit": args["limit"] + 1}
    resolution = "raw"
    if interval == "raw":
        rows = db.session.execute(RAW_SQL, params).mappings().all()
    else:
        step = INTERVALS[interval]
        rollup = rollup_for(step, since, now, storage)
        if rollup and since < raw_since:
            resolution = rollup[0]
        name, width = rollup or ("none", timedelta(hours=1))
        rows = db.session.execute(CANDLES_SQL, {**params, "step": step, "resolution": name,
                                                "rollup_step": width}).mappings().all()
    out = {"asset_id": asset.id, "slug": asset.slug, "symbol": asset.symbol, "interval": interval,
           "source": args.get("source"), "dataset": args.get("dataset"), "since": since, "until": until,
           "truncated": len(rows) > args["limit"], "resolution": resolution, "raw_since": raw_since}
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
