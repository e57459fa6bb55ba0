"""ETL bookkeeping: runs, per-source checkpoints, raw payloads and rejected records."""
import uuid

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import JSONB

from ..extensions import db

RUN_STATUSES = ("queued", "running", "succeeded", "partial", "failed")
RUN_TRIGGERS = ("schedule", "api", "cli", "startup")


class EtlRun(db.Model):
    __tablename__ = "etl_runs"
    __table_args__ = (
        db.Index("ix_etl_runs_source_created", "source", db.text("created_at DESC")),
        db.Index("ix_etl_runs_status", "status"),
        db.CheckConstraint("status IN ('queued','running','succeeded','partial','failed')", name="status"),
    )

    id = db.Column(db.Uuid, primary_key=True, default=uuid.uuid4, server_default=db.text("gen_random_uuid()"))
    source = db.Column(db.Text, nullable=False)
    trigger = db.Column(db.Text, nullable=False)
    status = db.Column(db.Text, nullable=False, default="queued", server_default="queued")
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())
    started_at = db.Column(db.DateTime(timezone=True))
    finished_at = db.Column(db.DateTime(timezone=True))
    heartbeat_at = db.Column(db.DateTime(timezone=True))
    duration_seconds = db.Column(db.Float)
    fetched = db.Column(db.BigInteger, nullable=False, default=0, server_default=db.text("0"))
    loaded = db.Column(db.BigInteger, nullable=False, default=0, server_default=db.text("0"))
    rejected = db.Column(db.BigInteger, nullable=False, default=0, server_default=db.text("0"))
    pages = db.Column(db.Integer, nullable=False, default=0, server_default=db.text("0"))
    deliveries = db.Column(db.Integer, nullable=False, default=0, server_default=db.text("0"))          # task executions, retries included
    unfinished_deliveries = db.Column(db.Integer, nullable=False, default=0,  # executions that died mid-way in a row
                                      server_default=db.text("0"))
    error = db.Column(db.Text)
    checkpoint_before = db.Column(JSONB)
    checkpoint_after = db.Column(JSONB)
    schema_drift = db.Column(JSONB)
    stats = db.Column(JSONB, nullable=False, server_default=db.text("'{}'::jsonb"))


class Checkpoint(db.Model):
    __tablename__ = "checkpoints"

    source = db.Column(db.Text, primary_key=True)
    cursor = db.Column(JSONB, nullable=False, server_default=db.text("'{}'::jsonb"))
    run_id = db.Column(db.Uuid)
    updated_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())


class RawPayload(db.Model):
    __tablename__ = "raw_payloads"
    __table_args__ = (db.Index("ix_raw_payloads_run", "run_id"),
                      db.Index("ix_raw_payloads_hash", "content_hash"))

    id = db.Column(db.BigInteger, primary_key=True)
    run_id = db.Column(db.Uuid, nullable=False)
    source = db.Column(db.Text, nullable=False)
    locator = db.Column(JSONB, nullable=False)
    content_hash = db.Column(db.Text, nullable=False)
    fetched_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())
    record_count = db.Column(db.Integer, nullable=False, default=0, server_default=db.text("0"))
    # the page's body lives once per content hash in raw_pages (migration 0005_storage)


class RejectedRecord(db.Model):
    __tablename__ = "rejected_records"
    __table_args__ = (db.Index("ix_rejected_records_run", "run_id"),
                      db.Index("ix_rejected_records_created", "created_at"))

    id = db.Column(db.BigInteger, primary_key=True)
    run_id = db.Column(db.Uuid, nullable=False)
    source = db.Column(db.Text, nullable=False)
    reason = db.Column(db.Text, nullable=False)
    errors = db.Column(JSONB, nullable=False)
    record = db.Column(JSONB)
    locator = db.Column(JSONB)
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())


class CsvRowHashes(db.Model):
    """Hashes of the records each column-wise CSV chunk stored (crypto_app/pipeline/proportional.py)."""
    __tablename__ = "csv_row_hashes"

    file = db.Column(db.Text, primary_key=True)
    chunk_start = db.Column(db.BigInteger, primary_key=True, autoincrement=False)
    hashes = db.Column(db.LargeBinary, nullable=False)
