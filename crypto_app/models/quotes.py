"""Quotes: the normalized time series, and the newest observation per asset and dataset.

Money and supply figures are NUMERIC (exact); times are timestamptz.
"""
from ..extensions import db

# Value columns shared by `quotes` and `latest_quotes`, in the order the loader writes them.
QUOTE_VALUE_COLUMNS = (
    "price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd", "volume_usd",
    "circulating_supply", "total_supply", "max_supply", "market_cap_rank", "change_24h_pct",
)


class QuoteValues:
    """Columns shared by a quote and the latest quote (SQLAlchemy copies mixin columns)."""

    price_usd = db.Column(db.Numeric, nullable=False)
    open_usd = db.Column(db.Numeric)
    high_usd = db.Column(db.Numeric)
    low_usd = db.Column(db.Numeric)
    market_cap_usd = db.Column(db.Numeric)
    volume_24h_usd = db.Column(db.Numeric)          # a rolling 24-hour volume (API tickers, "24h volume" columns)
    # the volume traded within the row's own interval (a candle's volume); the interval is the dataset's
    # native_interval (migration 0007)
    volume_usd = db.Column(db.Numeric)
    circulating_supply = db.Column(db.Numeric)
    total_supply = db.Column(db.Numeric)
    max_supply = db.Column(db.Numeric)
    market_cap_rank = db.Column(db.Integer)
    change_24h_pct = db.Column(db.Numeric)
    observed_at = db.Column(db.DateTime(timezone=True), nullable=False)
    fetched_at = db.Column(db.DateTime(timezone=True), nullable=False)
    run_id = db.Column(db.Uuid, nullable=False)
    payload_hash = db.Column(db.Text, nullable=False)
    # soft plausibility rules the row tripped, sorted; NULL = none (an empty array costs 16 bytes a row)
    flags = db.Column(db.ARRAY(db.Text))


class Quote(QuoteValues, db.Model):
    __tablename__ = "quotes"
    __table_args__ = (
        db.UniqueConstraint("asset_id", "dataset_id", "observed_at", name="uq_quotes_asset_dataset_observed"),
        db.Index("ix_quotes_source_observed", "source", "observed_at"),
        db.Index("ix_quotes_run", "run_id"),
    )

    # Since migration 0005_storage the table is partitioned by observed_at and its key is the unique
    # (asset_id, dataset_id, observed_at); `id` is a plain column (sequence default, no index) that the
    # ORM still uses as its identity. Nothing reads quotes through the ORM.
    id = db.Column(db.BigInteger, primary_key=True)
    asset_id = db.Column(db.BigInteger, db.ForeignKey("assets.id", ondelete="CASCADE"), nullable=False)
    source = db.Column(db.Text, nullable=False)
    dataset_id = db.Column(db.Integer, db.ForeignKey("datasets.id"), nullable=False)


class LatestQuote(QuoteValues, db.Model):
    __tablename__ = "latest_quotes"
    __table_args__ = (
        db.Index("ix_latest_quotes_source", "source"),
        db.Index("ix_latest_quotes_observed", "observed_at"),
        db.Index("ix_latest_quotes_dataset", "dataset_id"),
        # the API's stable order (market cap, then asset, then dataset), walked by keyset cursors
        db.Index("ix_latest_quotes_sort", db.text("COALESCE(market_cap_usd, '-1'::numeric) DESC"), "asset_id",
                 "dataset_id"),
    )

    asset_id = db.Column(db.BigInteger, db.ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True)
    dataset_id = db.Column(db.Integer, db.ForeignKey("datasets.id"), primary_key=True)
    source = db.Column(db.Text, nullable=False)
    asset = db.relationship("Asset", lazy="joined")
    dataset_ref = db.relationship("Dataset", lazy="joined")

    @property
    def dataset(self) -> str:
        return self.dataset_ref.name
