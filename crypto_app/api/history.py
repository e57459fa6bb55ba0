"""An asset's history from `quotes`: raw observations, or OHLC candles per dataset and interval.

Each dataset is read on its own through the quotes key (asset_id, dataset_id, observed_at), and its
rows never mix with another dataset's in a candle. A candle says where it comes from:

- `from: "source"`: the dataset has a native interval (declared or detected, see /api/v1/datasets)
  that divides the asked interval, and every row in the bucket carries the source's own open, high and
  low. At the native interval the candle IS the source's row (open, high, low, close = the row's
  open_usd, high_usd, low_usd, price_usd); coarser buckets aggregate them: first open, max high, min
  low, last close.
- `from: "observed"`: built from observed prices (snapshot sources such as API tickers, or a file
  without OHLC): open is the first price in the bucket, close the last, high and low the extremes.
Volumes: a row's `volume_usd` is the volume traded within its own interval (a candle file's volume; the
interval is the dataset's native interval) and a row's `volume_24h_usd` a rolling 24-hour volume (API
tickers, CSV columns that say "24h"). A candle's `volume_usd` is the SUM of its rows' `volume_usd`, given
only when the dataset's native interval divides the candle's interval and every row in the bucket has one
(else null: an hour's volume is no 15-minute candle's, and a rolling 24h volume cannot be summed). A
candle's `volume_24h_usd`, like its `market_cap_usd`, is the last value in the bucket: never a sum.
Buckets start on multiples of the interval from Monday 2000-01-03 00:00 UTC (so weeks start on Mondays).

`final` (history datasets of the APIs, `<source>:market_chart|historical:<interval>`; null elsewhere):
a point is final unless stored with the flag `provisional` (younger than the source's finality delay,
or CoinGecko's "now" point); a candle is final when its bucket has closed plus the source's finality
delay (CoinGecko: the previous UTC day is final at 00:10 UTC) and none of its rows is provisional.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import marshmallow as ma
from marshmallow import fields, validate
from ..extensions import db
from ..pipeline.backfill_plan import ENDPOINTS, FINALITY, PROVISIONAL
from . import readcache
from .errors import ApiError
from .fastdump import FastDumper
from .schemas import Money, SourceField, UtcDateTime

INTERVALS = {"5m": timedelta(minutes=5), "15m": timedelta(minutes=15), "1h": timedelta(hours=1),
             "4h": timedelta(hours=4), "1d": timedelta(days=1), "1w": timedelta(weeks=1)}
DEFAULT_SPAN = {"raw": timedelta(days=7), "5m": timedelta(days=2), "15m": timedelta(days=7),
                "1h": timedelta(days=30), "4h": timedelta(days=90), "1d": timedelta(days=365),
                "1w": timedelta(days=3 * 365)}

# One statement per request: the asset (by id or slug) LEFT JOIN LATERAL its rows, so that an asset
# without rows still gives one row (its columns, the rest null) and an unknown asset none. Inside, one
# index range scan per dataset (datasets are few; the filters pick them before any quote is read).
# pyformat parameters: run on the read connection (readcache.query) or through SQLAlchemy alike.
ASSET_BY = {"id": "SELECT id, slug, symbol FROM assets WHERE id = %(asset_key)s",
            "slug": "SELECT id, slug, symbol FROM assets WHERE slug = %(asset_key)s"}
DATASETS = """
    FROM datasets d CROSS JOIN LATERAL ({inner}) q
    WHERE (CAST(%(source)s AS text) IS NULL OR d.source = %(source)s)
      AND (CAST(%(dataset)s AS text) IS NULL OR d.name = %(dataset)s)
"""
ROWS_OF_DATASET = """
    FROM quotes WHERE asset_id = a.id AND dataset_id = d.id AND observed_at >= %(since)s AND observed_at <= %(until)s
"""
RAW_ROWS = """
    SELECT d.source, d.name AS dataset, q.observed_at, q.price_usd, q.open_usd, q.high_usd, q.low_usd,
           q.market_cap_usd, q.volume_24h_usd, q.volume_usd, coalesce(q.flags, '{}'::text[]) AS flags, q.run_id
""" + DATASETS.format(inner="SELECT * " + ROWS_OF_DATASET + " ORDER BY observed_at LIMIT %(limit)s") + """
    ORDER BY q.observed_at, d.source, d.name LIMIT %(limit)s
"""
# Rows of the dataset still at full resolution, and the rollup candles of the rows the maintenance task
# expired (crypto_app/pipeline/maintenance.py): a row is in exactly one of the two, and both carry first/last
# observation times, so merging them per bucket is exact (first open, extremes, last close, sums).
# Only full-resolution rows can be provisional (history datasets' newest points): rollups are of old rows.
_PIECES = """
    SELECT observed_at AS at, observed_at AS first_at, observed_at AS last_at,
           (open_usd IS NOT NULL AND high_usd IS NOT NULL AND low_usd IS NOT NULL) AS ohlc,
           open_usd AS s_open, high_usd AS s_high, low_usd AS s_low, price_usd AS o_open, price_usd AS o_high,
           price_usd AS o_low, price_usd AS close, market_cap_usd, volume_24h_usd, volume_usd AS volume_sum,
           (volume_usd IS NOT NULL)::int AS volumes, 1 AS samples,
           coalesce(flags, '{}'::text[]) @> ARRAY['provisional'] AS provisional
""" + ROWS_OF_DATASET + """
    UNION ALL
    SELECT bucket, first_observed_at, last_observed_at, ohlc, s_open, s_high, s_low, o_open, o_high, o_low, close,
           market_cap_usd, volume_24h_usd, volume_sum, volumes, samples, false
    FROM candles WHERE dataset_id = d.id AND asset_id = a.id AND resolution = %(resolution)s
      AND bucket > %(since)s - CAST(%(rollup_step)s AS interval) AND bucket <= %(until)s
"""
_BUCKETS = """
    SELECT date_bin(%(step)s, at, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, bool_and(ohlc) AS ohlc,
           (array_agg(s_open ORDER BY first_at))[1] AS s_open, max(s_high) AS s_high, min(s_low) AS s_low,
           (array_agg(o_open ORDER BY first_at))[1] AS o_open, max(o_high) AS o_high, min(o_low) AS o_low,
           (array_agg(close ORDER BY last_at DESC))[1] AS close,
           (array_agg(market_cap_usd ORDER BY last_at DESC))[1] AS market_cap_usd,
           (array_agg(volume_24h_usd ORDER BY last_at DESC))[1] AS volume_24h_usd,
           sum(volume_sum) AS volume_sum, sum(volumes) AS volumes, sum(samples) AS samples,
           bool_or(provisional) AS provisional_rows
    FROM (""" + _PIECES + """) p GROUP BY 1 ORDER BY 1 LIMIT %(limit)s"""
CANDLE_ROWS = """
    SELECT source, dataset, bucket, CASE WHEN native THEN 'source' ELSE 'observed' END AS from_,
           CASE WHEN native THEN s_open ELSE o_open END AS open,
           CASE WHEN native THEN s_high ELSE o_high END AS high,
           CASE WHEN native THEN s_low ELSE o_low END AS low,
           close, market_cap_usd, volume_24h_usd,
           CASE WHEN divides AND volumes = samples THEN volume_sum END AS volume_usd, samples, provisional_rows
    FROM (SELECT s.*, s.ohlc AND s.divides AS native FROM (
          SELECT d.source, d.name AS dataset, q.*,
                 (d.native_interval IS NOT NULL AND d.native_interval <= %(step)s::interval
                  AND mod(extract(epoch FROM %(step)s::interval)::numeric,
                          extract(epoch FROM d.native_interval)::numeric) = 0)
                 AS divides
""" + DATASETS.format(inner=_BUCKETS) + """) s) c
    ORDER BY bucket, source, dataset LIMIT %(limit)s
"""


def _of_asset(rows_sql: str, order: str, by: str) -> str:
    return (f"SELECT a.id AS a_id, a.slug AS a_slug, a.symbol AS a_symbol, r.* FROM ({ASSET_BY[by]}) a "
            f"LEFT JOIN LATERAL ({rows_sql}) r ON true ORDER BY {order}")


RAW_SQL = {by: _of_asset(RAW_ROWS, "r.observed_at, r.source, r.dataset", by) for by in ASSET_BY}
CANDLES_SQL = {by: _of_asset(CANDLE_ROWS, "r.bucket, r.source, r.dataset", by) for by in ASSET_BY}
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
    volume_24h_usd = Money("Rolling 24-hour traded volume in USD (API tickers and history, CSV columns that say 24h); "
                           "null for a candle file's volume, which is volume_usd")
    volume_usd = Money("USD volume traded within the row's own interval (a candle's volume, e.g. an hourly file's "
                       "volume of that hour); the interval is the dataset's native_interval (GET /api/v1/datasets)")
    flags = fields.List(fields.String(), metadata={
        "description": "Soft plausibility rules the row tripped, and `provisional` for a history point not final "
                       "yet; [] if none"})
    run_id = fields.UUID(metadata={"description": "The run that stored the row; for a history dataset's row, the "
                                                  "backfill's id (GET /api/v1/backfills/{run_id})"})
    final = fields.Boolean(allow_none=True, metadata={
        "description": "History datasets: false while the point is provisional (not final at the source yet); "
                       "null for other datasets"})


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
    volume_24h_usd = Money("The last rolling 24-hour volume (volume_24h_usd) in the bucket, never a sum; null when "
                           "the rows carry none (candle files carry volume_usd)")
    volume_usd = Money("The SUM of the rows' volume_usd (each the volume of the dataset's native interval) over the "
                       "bucket: the volume traded within the candle. Null unless the dataset's native interval "
                       "divides the candle's interval and every row in the bucket has a volume_usd (never a sum of "
                       "24h volumes); `samples` says how many rows it sums")
    samples = fields.Integer(metadata={"description": "Rows in the bucket"})
    final = fields.Boolean(allow_none=True, metadata={
        "description": "History datasets: the bucket has closed plus the source's finality delay and no row in it "
                       "is provisional; null for other datasets"})


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
    """The stored rollup that serves buckets of `step` back to `since`: the coarsest one whose width divides
    `step` and that is still kept that far back (daily candles are kept forever, hourly ones
    CANDLE_HOURLY_RETENTION_DAYS), so a year of daily candles merges ~365 rollup rows per dataset, not ~8,760;
    None when `step` is finer than an hour (only raw rows can answer it)."""
    for name, width in reversed(ROLLUPS):
        if step % width == timedelta(0) and (
                name == "1d" or since >= now - timedelta(days=storage.candle_hourly_retention_days)):
            return name, width
    return None


def asset_history(asset_ref: str, args: dict, storage=None) -> dict:
    """The asset's points or candles, in one statement (on the read connection when the request read the
    data version, else through SQLAlchemy); 404 when no asset has this id or slug. Candles merge the rows
    still at full resolution with the maintenance task's rollups of older rows."""
    from flask import current_app

    storage = storage or current_app.config["SETTINGS"].storage
    ref = asset_ref.strip()
    by = "id" if ref.isascii() and ref.isdigit() and len(ref) < 19 else "slug"
    interval = args["interval"]
    now = datetime.now(timezone.utc)
    until = args.get("until") or now
    since = args.get("since") or until - DEFAULT_SPAN[interval]
    raw_since = now - timedelta(days=storage.retention_raw_days)
    params = {"asset_key": int(ref) if by == "id" else ref, "since": since, "until": until,
              "source": args.get("source"), "dataset": args.get("dataset"), "limit": args["limit"] + 1}
    resolution = "raw"
    if interval != "raw":
        step = INTERVALS[interval]
        rollup = rollup_for(step, since, now, storage)
        if rollup and since < raw_since:
            resolution = rollup[0]
        name, width = rollup or ("none", timedelta(hours=1))
        params.update(step=step, resolution=name, rollup_step=width)
    sql = (RAW_SQL if interval == "raw" else CANDLES_SQL)[by]
    rows = readcache.query(sql, params)
    if rows is None:
        rows = [row._mapping for row in db.session.connection().exec_driver_sql(sql, params).fetchall()]
    if not rows:
        raise ApiError(404, f"No asset {ref!r}: pass an asset id or slug.")
    asset = rows[0]
    rows = [row for row in rows if row["source"] is not None]  # the one null row of an asset without rows
    out = {"asset_id": asset["a_id"], "slug": asset["a_slug"], "symbol": asset["a_symbol"], "interval": interval,
           "source": args.get("source"), "dataset": args.get("dataset"), "since": since, "until": until,
           "truncated": len(rows) > args["limit"], "resolution": resolution, "raw_since": raw_since}
    if interval == "raw":
        out["points"] = [{**row, "final": _point_final(row)} for row in rows[: args["limit"]]]
    else:
        out["candles"] = [{**row, "final": _candle_final(row, step, now)} for row in rows[: args["limit"]]]
    return out


def _finality(row):
    """The source's finality delay when the row's dataset is a history dataset, else None."""
    parts = row["dataset"].split(":")
    if len(parts) == 3 and ENDPOINTS.get(parts[0]) == parts[1]:
        return FINALITY[parts[0]]
    return None


def _point_final(row) -> bool | None:
    return None if _finality(row) is None else PROVISIONAL not in (row["flags"] or [])


def _candle_final(row, step: timedelta, now: datetime) -> bool | None:
    delay = _finality(row)
    if delay is None:
        return None
    return not row["provisional_rows"] and row["bucket"] + step + delay <= now


POINTS = FastDumper(PointSchema())
CANDLES = FastDumper(CandleSchema())
HISTORY_HEAD = HistorySchema(exclude=("points", "candles"))


def history_payload(asset_ref: str, args: dict) -> dict:
    """HistorySchema().dump(asset_history(asset_ref, args)), with the points or candles dumped fast."""
    out = asset_history(asset_ref, args)
    payload = HISTORY_HEAD.dump(out)
    if "points" in out:
        payload["points"] = POINTS.dump_many(out["points"])
    else:
        payload["candles"] = CANDLES.dump_many(out["candles"])
    return payload
