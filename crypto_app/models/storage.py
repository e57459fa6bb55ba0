"""Storage (migration 0005_storage): raw pages once per content hash, rollup candles, the partitioning anchor.

Written by the loader (raw_pages) and the maintenance task (candles); see crypto_app/pipeline/maintenance.py.
"""
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import JSONB

from ..extensions import db


class RawPage(db.Model):
    """One row per distinct page content; `body` NULL once pruned (the hash stays)."""

    __tablename__ = "raw_pages"
    __table_args__ = (db.Index("ix_raw_pages_unpruned_seen", "last_seen_at", postgresql_where=db.text("body IS NOT NULL")),)

    content_hash = db.Column(db.Text, primary_key=True)
    source = db.Column(db.Text, nullable=False)
    record_count = db.Column(db.Integer, nullable=False, server_default=db.text("0"))
    body = db.Column(JSONB)
    first_seen_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())
    last_seen_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())
    pruned_at = db.Column(db.DateTime(timezone=True))


class Candle(db.Model):
    """Hourly ('1h') and daily ('1d') rollups per (dataset, asset): mergeable (see the migration)."""

    __tablename__ = "candles"
    __table_args__ = (db.Index("ix_candles_resolution_bucket", "resolution", "bucket"),)

    dataset_id = db.Column(db.Integer, db.ForeignKey("datasets.id", name="fk_candles_dataset_id_datasets"),
                           primary_key=True)
    asset_id = db.Column(db.BigInteger, db.ForeignKey("assets.id", ondelete="CASCADE",
                                                      name="fk_candles_asset_id_assets"), primary_key=True)
    resolution = db.Column(db.Text, primary_key=True)
    bucket = db.Column(db.DateTime(timezone=True), primary_key=True)
    o_open = db.Column(db.Numeric, nullable=False)
    o_high = db.Column(db.Numeric, nullable=False)
    o_low = db.Column(db.Numeric, nullable=False)
    close = db.Column(db.Numeric, nullable=False)
    s_open = db.Column(db.Numeric)
    s_high = db.Column(db.Numeric)
    s_low = db.Column(db.Numeric)
    ohlc = db.Column(db.Boolean, nullable=False)
    market_cap_usd = db.Column(db.Numeric)
    volume_24h_usd = db.Column(db.Numeric)           # the last rolling 24h volume in the bucket
    volume_sum = db.Column(db.Numeric)               # sum of the rows' volume_usd (interval volumes; 0007)
    volumes = db.Column(db.Integer, nullable=False)  # rows with a volume_usd
    samples = db.Column(db.Integer, nullable=False)
    first_observed_at = db.Column(db.DateTime(timezone=True), nullable=False)
    last_observed_at = db.Column(db.DateTime(timezone=True), nullable=False)
    rolled_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())


class QuotePartitioning(db.Model):
    """Where dated (weekly, then daily) partitions of quotes start (crypto_app/pipeline/partitions.py); one row."""

    __tablename__ = "quote_partitioning"

    id = db.Column(db.SmallInteger, primary_key=True, server_default=db.text("1"), autoincrement=False)
    weekly_from = db.Column(db.DateTime(timezone=True), nullable=False)
