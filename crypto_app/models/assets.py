"""Canonical assets and the identifiers each source uses for them.

Ticker symbols are not unique (several coins call themselves ETH or BTC), so a coin is an `Asset`
keyed by a slug, and every source's own id points at one asset through `AssetIdentifier`.
"""
from sqlalchemy import func

from ..extensions import db


class Asset(db.Model):
    __tablename__ = "assets"
    __table_args__ = (db.Index("ix_assets_symbol_lower", db.text("lower(symbol)")),)

    id = db.Column(db.BigInteger, primary_key=True)
    slug = db.Column(db.Text, nullable=False, unique=True)
    symbol = db.Column(db.Text, nullable=False, index=True)
    name = db.Column(db.Text, nullable=False)
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())

    identifiers = db.relationship("AssetIdentifier", back_populates="asset", lazy="selectin")


class AssetIdentifier(db.Model):
    __tablename__ = "asset_identifiers"

    source = db.Column(db.Text, primary_key=True)
    external_id = db.Column(db.Text, primary_key=True)
    asset_id = db.Column(db.BigInteger, db.ForeignKey("assets.id", ondelete="CASCADE"), nullable=False, index=True)
    symbol = db.Column(db.Text)
    name = db.Column(db.Text)
    first_seen_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())

    asset = db.relationship("Asset", back_populates="identifiers")
