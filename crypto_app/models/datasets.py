"""Datasets: what was read (one CSV file or a named collection of files, one API endpoint of a source),
with its provenance, and per (dataset, asset) how many rows it holds and over which span.

A quote's natural key is (asset_id, dataset_id, observed_at): rows of different datasets of the same
asset and time coexist. `source` stays the kind of upstream (coingecko, coinpaprika, csv).
Schema and carry-over of older rows: migrations/versions/0003_datasets.py.
"""
from sqlalchemy import func

from ..extensions import db


class Dataset(db.Model):
    __tablename__ = "datasets"

    id = db.Column(db.Integer, db.Identity(), primary_key=True)
    name = db.Column(db.Text, nullable=False, unique=True)      # "coingecko:markets", "csv:Binance_BTCUSDT_d.csv"
    source = db.Column(db.Text, nullable=False)
    endpoint = db.Column(db.Text)                               # API endpoint ("markets"); NULL for files
    files = db.Column(db.ARRAY(db.Text))                        # CSV files read into it (relative to the data dir)
    publisher = db.Column(db.Text)
    url = db.Column(db.Text)
    description = db.Column(db.Text)
    native_interval = db.Column(db.Interval)                    # spacing of its series; NULL: snapshots
    interval_declared = db.Column(db.Boolean, nullable=False, server_default=db.text("false"))
    first_import_at = db.Column(db.DateTime(timezone=True))
    last_import_at = db.Column(db.DateTime(timezone=True))
    last_run_id = db.Column(db.Uuid)
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())


class DatasetAsset(db.Model):
    """Maintained by the loader in the transaction that writes the quotes (pipeline/load.py)."""

    __tablename__ = "dataset_assets"
    __table_args__ = (db.Index("ix_dataset_assets_dataset", "dataset_id"),)

    asset_id = db.Column(db.BigInteger, db.ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True)
    dataset_id = db.Column(db.Integer, db.ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    rows = db.Column(db.BigInteger, nullable=False, server_default=db.text("0"))
    first_observed_at = db.Column(db.DateTime(timezone=True))
    last_observed_at = db.Column(db.DateTime(timezone=True))
