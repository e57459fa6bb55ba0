"""The read model: what the API reads instead of scanning the big tables on every request.

All of it is maintained by PostgreSQL triggers (migration 0002), in the same transaction as the writes,
so nothing in the pipeline has to know about it:

- `data_version`: one row whose `version` goes up whenever a transaction that wrote `latest_quotes`,
  `quotes`, `assets` or `asset_identifiers`, or changed what the stats count in `etl_runs`, commits.
  The API keys its response cache on it.
- `run_stats`: per (source, status), the run count and the sums /api/v1/stats reports, kept up to date
  from every insert, update and delete on `etl_runs`.
- `source_quote_stats`: per source, how many latest quotes it has and the newest observation.
- `read_model_pending`: deltas a transaction has produced and not yet applied. They are applied (and
  deleted) by a deferred constraint trigger when the transaction commits, so the shared rows above are
  locked only for the instant of the commit and always in the same order: writers never deadlock on
  them and never wait for each other while they work. Outside a transaction in flight it is empty.

The functions and triggers themselves are in migrations/versions/0002_read_path.py.
"""
from sqlalchemy import func

from ..extensions import db
from .quotes import LatestQuote
from .runs import EtlRun


class DataVersion(db.Model):
    __tablename__ = "data_version"
    __table_args__ = (db.CheckConstraint("id = 1", name="single_row"),)

    id = db.Column(db.SmallInteger, primary_key=True, autoincrement=False, server_default=db.text("1"))
    version = db.Column(db.BigInteger, nullable=False, server_default=db.text("1"))
    changed_at = db.Column(db.DateTime(timezone=True), nullable=False, server_default=func.now())


class RunStats(db.Model):
    __tablename__ = "run_stats"

    source = db.Column(db.Text, primary_key=True)
    status = db.Column(db.Text, primary_key=True)
    runs = db.Column(db.BigInteger, nullable=False, server_default=db.text("0"))
    fetched = db.Column(db.BigInteger, nullable=False, server_default=db.text("0"))
    loaded = db.Column(db.BigInteger, nullable=False, server_default=db.text("0"))
    rejected = db.Column(db.BigInteger, nullable=False, server_default=db.text("0"))
    timed = db.Column(db.BigInteger, nullable=False, server_default=db.text("0"))  # runs with a duration
    duration = db.Column(db.Numeric, nullable=False, server_default=db.text("0"))   # sum of their durations
    last_at = db.Column(db.DateTime(timezone=True))  # max(coalesce(finished_at, created_at))


class SourceQuoteStats(db.Model):
    __tablename__ = "source_quote_stats"

    source = db.Column(db.Text, primary_key=True)
    latest_quotes = db.Column(db.BigInteger, nullable=False, server_default=db.text("0"))
    newest_observation = db.Column(db.DateTime(timezone=True))


class ReadModelPending(db.Model):
    __tablename__ = "read_model_pending"

    id = db.Column(db.BigInteger, primary_key=True)
    kind = db.Column(db.Text, nullable=False)  # 'version', 'run' or 'quotes'
    source = db.Column(db.Text)
    status = db.Column(db.Text)
    runs = db.Column(db.BigInteger)
    fetched = db.Column(db.BigInteger)
    loaded = db.Column(db.BigInteger)
    rejected = db.Column(db.BigInteger)
    timed = db.Column(db.BigInteger)
    duration = db.Column(db.Numeric)
    quotes = db.Column(db.BigInteger)
    added_at = db.Column(db.DateTime(timezone=True))    # a value that joined the group (max candidate)
    removed_at = db.Column(db.DateTime(timezone=True))  # a value that left it (the max may need recomputing)


# Indexes the reads need on tables declared elsewhere (attached to those tables' metadata).
db.Index("ix_etl_runs_created", EtlRun.created_at.desc(), EtlRun.id.desc())  # GET /api/v1/runs, newest first
db.Index("ix_etl_runs_source_status_last", EtlRun.source, EtlRun.status,
         func.coalesce(EtlRun.finished_at, EtlRun.created_at))  # run_stats.last_at when a run leaves a group

# Migration 0002 rebuilt the sort index with market_cap_usd as an INCLUDE column (index-only walks).
for _index in LatestQuote.__table__.indexes:
    if _index.name == "ix_latest_quotes_sort":
        _index.dialect_kwargs["postgresql_include"] = ["market_cap_usd"]
