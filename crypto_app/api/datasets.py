"""Datasets with their provenance: GET /api/v1/datasets, and the datasets of one asset.

Row counts and observation spans come from `dataset_assets` (maintained by the loader), never from a
scan of `quotes`.
"""
from __future__ import annotations

from datetime import timedelta

import marshmallow as ma
from flask_smorest import Blueprint
from marshmallow import fields, validate
from sqlalchemy import text

from ..extensions import db
from . import readcache
from .schemas import SourceField

blp = Blueprint("datasets", __name__, url_prefix="/api/v1/datasets",
                description="Datasets: what was read (a CSV file, an API endpoint) and where it came from")

INTERVAL_NAMES = {timedelta(minutes=1): "1m", timedelta(minutes=5): "5m", timedelta(minutes=15): "15m",
                  timedelta(minutes=30): "30m", timedelta(hours=1): "1h", timedelta(hours=4): "4h",
                  timedelta(days=1): "1d", timedelta(weeks=1): "1w"}


def interval_name(value: timedelta | None) -> str | None:
    """"1d" for a day; other spacings as seconds ("7200s"); None for snapshots."""
    if value is None:
        return None
    return INTERVAL_NAMES.get(value) or f"{int(value.total_seconds())}s"


class DatasetSchema(ma.Schema):
    name = fields.String(required=True, metadata={
        "description": "`<source>:<endpoint>` for an API, `csv:<file>` or the name datasets.json gives a CSV file"})
    source = fields.String(required=True, metadata={"description": "Kind of upstream: coingecko, coinpaprika, csv"})
    endpoint = fields.String(allow_none=True, metadata={"description": "API endpoint read (null for files)"})
    files = fields.List(fields.String(), allow_none=True, metadata={
        "description": "CSV files read into the dataset, relative to CSV_DATA_DIR"})
    publisher = fields.String(allow_none=True, metadata={"description": "Publisher, when datasets.json names it"})
    url = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    native_interval = fields.Function(lambda row: interval_name(row["native_interval"]), metadata={
        "type": "string", "nullable": True,
        "description": "Spacing of the dataset's series (1m, 5m, 15m, 30m, 1h, 4h, 1d, 1w, or '<n>s'), declared "
                       "in datasets.json or detected from its timestamps; null for snapshots (API tickers)"})
    interval_declared = fields.Boolean(metadata={"description": "native_interval comes from datasets.json"})
    first_import_at = fields.DateTime(allow_none=True)
    last_import_at = fields.DateTime(allow_none=True)
    rows = fields.Integer(metadata={"description": "Rows stored (of this asset, in an asset's datasets)"})
    assets = fields.Integer(metadata={"description": "Assets with rows in the dataset"})
    first_observed_at = fields.DateTime(allow_none=True)
    last_observed_at = fields.DateTime(allow_none=True)


class DatasetListArgsSchema(ma.Schema):
    source = SourceField("Only the datasets of this source")
    name = fields.String(validate=validate.Length(min=1, max=300), metadata={"description": "Exact dataset name"})


class DatasetListSchema(ma.Schema):
    data = fields.List(fields.Nested(DatasetSchema), required=True)


_COLUMNS = ("d.name, d.source, d.endpoint, d.files, d.publisher, d.url, d.description, d.native_interval, "
            "d.interval_declared, d.first_import_at, d.last_import_at")
LIST_SQL = text(f"""
    SELECT {_COLUMNS}, coalesce(sum(da.rows), 0) AS rows, count(da.asset_id) AS assets,
           min(da.first_observed_at) AS first_observed_at, max(da.last_observed_at) AS last_observed_at
    FROM datasets d LEFT JOIN dataset_assets da ON da.dataset_id = d.id
    WHERE (CAST(:source AS text) IS NULL OR d.source = :source) AND (CAST(:name AS text) IS NULL OR d.name = :name)
    GROUP BY d.id ORDER BY d.source, d.name
""")
# an asset's datasets: those with rows of it, and those holding its latest quote (rows 0 when a writer
# bypassed the loader)
ASSET_SQL = text(f"""
    SELECT {_COLUMNS}, coalesce(da.rows, 0) AS rows, 1 AS assets, da.first_observed_at, da.last_observed_at
    FROM datasets d
    JOIN (SELECT dataset_id FROM dataset_assets WHERE asset_id = :asset_id
          UNION SELECT dataset_id FROM latest_quotes WHERE asset_id = :asset_id) x ON x.dataset_id = d.id
    LEFT JOIN dataset_assets da ON da.dataset_id = d.id AND da.asset_id = :asset_id
    ORDER BY d.source, d.name
""")


def asset_datasets(asset_id: int) -> list[dict]:
    return [dict(r) for r in db.session.execute(ASSET_SQL, {"asset_id": asset_id}).mappings()]


@blp.route("")
@blp.arguments(DatasetListArgsSchema, location="query")
@blp.response(200, DatasetListSchema, description="Every dataset with its provenance, rows and observation span")
@blp.doc(responses=readcache.DOC_304)
def list_datasets(args):
    """Datasets"""
    def payload():
        rows = db.session.execute(LIST_SQL, {"source": args.get("source"), "name": args.get("name")}).mappings()
        return DATASET_LIST_SCHEMA.dump({"data": [dict(r) for r in rows]})
    return readcache.serve(payload)


DATASET_LIST_SCHEMA = DatasetListSchema()
readcache.cacheable("datasets.list_datasets")
