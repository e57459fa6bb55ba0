"""Backfills and their windows (migration 0004_backfills; written with SQL by crypto_app/pipeline/backfill*.py).

The models exist so that `flask db check` compares them with the schema; the pipeline does not use the ORM.
"""
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from ..extensions import db


class Backfill(db.Model):
    __tablename__ = "backfills"
    __table_args__ = (db.Index("ix_backfills_created", db.text("created_at DESC")),)

    id = db.Column(db.Uuid, primary_key=True)
    status = db.Column(db.Text, nullable=False, server_default="running")
    interval = db.Column(db.Text, nullable=False)
    since = db.Column(db.DateTime(timezone=True), nullable=False)
    until = db.Column(db.DateTime(timezone=True), nullable=False)
    sources = db.Column(ARRAY(db.Text), nullable=False)
    request = db.Column(JSONB, nullable=False, server_default=db.text("'{}'::jsonb"))
    trigger = db.Column(db.Text, nullable=False, server_default="api")
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())
    finished_at = db.Column(db.DateTime(timezone=True))
    cancelled_at = db.Column(db.DateTime(timezone=True))


class BackfillWindow(db.Model):
    __tablename__ = "backfill_windows"
    __table_args__ = (
        db.Index("ix_backfill_windows_backfill", "backfill_id", "status"),
        db.Index("ix_backfill_windows_active", "asset_id", "source", "interval",
                 postgresql_where=db.text("status IN ('pending', 'running')")),
    )

    id = db.Column(db.BigInteger, primary_key=True)
    backfill_id = db.Column(db.Uuid, db.ForeignKey("backfills.id", ondelete="CASCADE"), nullable=False)
    source = db.Column(db.Text, nullable=False)
    endpoint = db.Column(db.Text, nullable=False)
    asset_id = db.Column(db.BigInteger, db.ForeignKey("assets.id", ondelete="CASCADE"), nullable=False)
    external_id = db.Column(db.Text, nullable=False)
    interval = db.Column(db.Text, nullable=False)
    starts_at = db.Column(db.DateTime(timezone=True), nullable=False)
    ends_at = db.Column(db.DateTime(timezone=True), nullable=False)
    status = db.Column(db.Text, nullable=False, server_default="pending")
    attempts = db.Column(db.Integer, nullable=False, server_default=db.text("0"))
    requests = db.Column(db.Integer, nullable=False, server_default=db.text("0"))
    fetched = db.Column(db.Integer, nullable=False, server_default=db.text("0"))
    inserted = db.Column(db.Integer, nullable=False, server_default=db.text("0"))
    updated = db.Column(db.Integer, nullable=False, server_default=db.text("0"))
    unchanged = db.Column(db.Integer, nullable=False, server_default=db.text("0"))
    rejected = db.Column(db.Integer, nullable=False, server_default=db.text("0"))
    error = db.Column(db.Text)
    started_at = db.Column(db.DateTime(timezone=True))
    finished_at = db.Column(db.DateTime(timezone=True))
    touched_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())
    requeues = db.Column(db.Integer, nullable=False, server_default=db.text("0"))
