"""storage: raw pages stored once per content hash, rollup candles, retention

- `raw_pages`: one row per distinct page content (content_hash, the SHA-256 the pipeline already
  computes), with its JSON body; `raw_payloads` keeps one small row per (run, page) naming the hash, so
  an unchanged page is stored once and referenced by every run that saw it. The maintenance task prunes
  bodies not seen for RAW_PAYLOAD_RETENTION_DAYS (`body` NULL, `pruned_at` set): the hash stays, so
  quotes.payload_hash and raw_payloads still name the page they came from.
- `candles`: hourly ('1h') and daily ('1d') rollups per (dataset, asset) of the quote rows the
  maintenance task expires (older than RETENTION_RAW_DAYS). They are mergeable (first/last observation
  times next to open/close, extremes, sums and counts), so rows that arrive late for an already rolled-up
  bucket merge in exactly; both resolutions are written in the statement that deletes the rows, so a row
  is rolled up exactly once and nothing is deleted without its rollup. Hourly candles are kept
  CANDLE_HOURLY_RETENTION_DAYS, daily ones forever.

- `quotes` becomes a partitioned table (RANGE on observed_at): weekly partitions from 8 weeks before the
  migration to 4 weeks after it, one partition per year before that for the years that hold rows (CSV
  history), and a default partition; `quote_partitioning.weekly_from` records where weekly partitions
  start (layout, locks and why weekly: crypto_app/pipeline/partitions.py).
  The natural key (asset_id, dataset_id, observed_at) ends in the partition key, as PostgreSQL requires
  of a unique constraint; `quotes.id` stays a column (sequence default) but is no longer a key: no code
  reads it (it cost an index of ~30 bytes per row).

Cost on an existing database: `quotes` is REWRITTEN: every row is copied into the new partitioned
table and every index rebuilt (about as long as loading the rows again: minutes per ten million rows),
with `quotes` locked against writes and reads for the duration: stop the workers first. Also one pass
over raw_payloads copying each distinct body into raw_pages,
then `body` is dropped (metadata only; the space is reused as the table is vacuumed, or at once with
VACUUM FULL raw_payloads). Writers of raw_payloads wait for the migration.

Revision ID: 0005_storage
Revises: 0004_backfills
"""
from alembic import op

revision = "0005_storage"
down_revision = "0004_backfills"
branch_labels = None
depends_on = None


PARTITIONED = """
CREATE TABLE quotes_partitioned (LIKE quotes INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (observed_at);
ALTER TABLE quotes_partitioned
    ADD CONSTRAINT uq_quotes_asset_dataset_observed_p UNIQUE (asset_id, dataset_id, observed_at),
    ADD CONSTRAINT fk_quotes_asset_id_assets_p FOREIGN KEY (asset_id) REFERENCES assets (id) ON DELETE CASCADE,
    ADD CONSTRAINT fk_quotes_dataset_id_datasets_p FOREIGN KEY (dataset_id) REFERENCES datasets (id);
CREATE INDEX ix_quotes_source_observed_p ON quotes_partitioned (source, observed_at);
CREATE INDEX ix_quotes_run_p ON quotes_partitioned (run_id);
CREATE TABLE quotes_default PARTITION OF quotes_partitioned DEFAULT;
"""
SWAP = """
INSERT INTO quotes_partitioned SELECT * FROM quotes;
ALTER SEQUENCE quotes_id_seq OWNED BY NONE;
DROP TABLE quotes;
ALTER TABLE quotes_partitioned RENAME TO quotes;
ALTER SEQUENCE quotes_id_seq OWNED BY quotes.id;
ALTER TABLE quotes RENAME CONSTRAINT uq_quotes_asset_dataset_observed_p TO uq_quotes_asset_dataset_observed;
ALTER TABLE quotes RENAME CONSTRAINT fk_quotes_asset_id_assets_p TO fk_quotes_asset_id_assets;
ALTER TABLE quotes RENAME CONSTRAINT fk_quotes_dataset_id_datasets_p TO fk_quotes_dataset_id_datasets;
ALTER INDEX ix_quotes_source_observed_p RENAME TO ix_quotes_source_observed;
ALTER INDEX ix_quotes_run_p RENAME TO ix_quotes_run;
CREATE TRIGGER quotes_default_dataset BEFORE INSERT ON quotes FOR EACH ROW
    WHEN (NEW.dataset_id IS NULL) EXECUTE FUNCTION cryptoflow_default_dataset();
CREATE TRIGGER rm_quotes_write AFTER INSERT OR UPDATE OR DELETE ON quotes
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_statement();
CREATE TRIGGER rm_quotes_truncate AFTER TRUNCATE ON quotes
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_truncated();
"""
WEEKS_BEFORE, WEEKS_AFTER = 8, 4


def _partition(name: str, lo, hi) -> None:
    op.execute(f"CREATE TABLE {name} PARTITION OF quotes_partitioned FOR VALUES FROM ('{lo.isoformat()}') "
               f"TO ('{hi.isoformat()}')")


def _partitions() -> None:
    """Weekly partitions around now, yearly ones for the older years that hold rows."""
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    first_week = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0) \
        - timedelta(weeks=WEEKS_BEFORE)
    op.execute("CREATE TABLE quote_partitioning (id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1), "
               "weekly_from timestamptz NOT NULL)")
    op.get_bind().exec_driver_sql("INSERT INTO quote_partitioning (weekly_from) VALUES (%(first)s)",
                                  {"first": first_week})
    for i in range(WEEKS_BEFORE + WEEKS_AFTER + 1):
        lo = first_week + timedelta(weeks=i)
        _partition(f"quotes_w{lo:%Y%m%d}", lo, lo + timedelta(weeks=1))
    years = op.get_bind().exec_driver_sql(
        "SELECT DISTINCT extract(year FROM observed_at AT TIME ZONE 'UTC')::int FROM quotes "
        "WHERE observed_at < %(first)s ORDER BY 1", {"first": first_week}).scalars().all()
    for year in years:
        lo = datetime(year, 1, 1, tzinfo=timezone.utc)
        hi = min(datetime(year + 1, 1, 1, tzinfo=timezone.utc), first_week)
        _partition(f"quotes_y{lo:%Y%m%d}", lo, hi)


def upgrade():
    op.execute("LOCK TABLE quotes IN ACCESS EXCLUSIVE MODE")
    op.get_bind().exec_driver_sql(PARTITIONED)
    _partitions()
    op.get_bind().exec_driver_sql(SWAP)
    op.execute("""
        CREATE TABLE raw_pages (
            content_hash text CONSTRAINT pk_raw_pages PRIMARY KEY,
            source text NOT NULL,
            record_count integer NOT NULL DEFAULT 0,
            body jsonb,
            first_seen_at timestamptz NOT NULL DEFAULT now(),
            last_seen_at timestamptz NOT NULL DEFAULT now(),
            pruned_at timestamptz
        )""")
    op.execute("CREATE INDEX ix_raw_pages_unpruned_seen ON raw_pages (last_seen_at) WHERE body IS NOT NULL")
    op.execute("""
        INSERT INTO raw_pages (content_hash, source, record_count, body, first_seen_at, last_seen_at)
        SELECT DISTINCT ON (content_hash) content_hash, source, record_count, body,
               min(fetched_at) OVER (PARTITION BY content_hash), max(fetched_at) OVER (PARTITION BY content_hash)
        FROM raw_payloads ORDER BY content_hash, (body IS NULL), fetched_at DESC""")
    op.execute("ALTER TABLE raw_payloads DROP COLUMN body")
    op.execute("CREATE INDEX ix_rejected_records_created ON rejected_records (created_at)")
    op.execute("""
        CREATE TABLE candles (
            dataset_id integer NOT NULL CONSTRAINT fk_candles_dataset_id_datasets REFERENCES datasets (id),
            asset_id bigint NOT NULL CONSTRAINT fk_candles_asset_id_assets REFERENCES assets (id) ON DELETE CASCADE,
            resolution text NOT NULL CONSTRAINT ck_candles_resolution CHECK (resolution IN ('1h', '1d')),
            bucket timestamptz NOT NULL,
            o_open numeric NOT NULL,          -- first observed price (by observed_at)
            o_high numeric NOT NULL,          -- highest observed price
            o_low numeric NOT NULL,           -- lowest observed price
            close numeric NOT NULL,           -- last observed price
            s_open numeric,                   -- the source's own open of the first row
            s_high numeric,                   -- max of the source's highs
            s_low numeric,                    -- min of the source's lows
            ohlc boolean NOT NULL,            -- every row carried the source's open, high and low
            market_cap_usd numeric,           -- last in the bucket
            volume_24h_usd numeric,           -- last in the bucket
            volume_sum numeric,               -- sum of the rows' volumes
            volumes integer NOT NULL,         -- rows with a volume
            samples integer NOT NULL,         -- rows rolled up
            first_observed_at timestamptz NOT NULL,
            last_observed_at timestamptz NOT NULL,
            rolled_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_candles PRIMARY KEY (dataset_id, asset_id, resolution, bucket)
        )""")
    op.execute("CREATE INDEX ix_candles_resolution_bucket ON candles (resolution, bucket)")
    # the API caches what candles hold: writes move the data version (0002's functions)
    op.execute("CREATE TRIGGER rm_candles_write AFTER INSERT OR UPDATE OR DELETE ON candles "
               "FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_statement()")
    op.execute("CREATE TRIGGER rm_candles_truncate AFTER TRUNCATE ON candles "
               "FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_truncated()")
    op.execute("SELECT cryptoflow_rm_rebuild()")
    op.execute("SET CONSTRAINTS ALL IMMEDIATE")


def downgrade():
    """Back to one plain table (rewritten again); rows rolled up and expired stay gone."""
    op.get_bind().exec_driver_sql("""
        CREATE TABLE quotes_plain (LIKE quotes INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
        INSERT INTO quotes_plain SELECT * FROM quotes;
        ALTER SEQUENCE quotes_id_seq OWNED BY NONE;
        DROP TABLE quotes;
        ALTER TABLE quotes_plain RENAME TO quotes;
        ALTER SEQUENCE quotes_id_seq OWNED BY quotes.id;
        ALTER TABLE quotes ADD CONSTRAINT pk_quotes PRIMARY KEY (id),
            ADD CONSTRAINT uq_quotes_asset_dataset_observed UNIQUE (asset_id, dataset_id, observed_at),
            ADD CONSTRAINT fk_quotes_asset_id_assets FOREIGN KEY (asset_id) REFERENCES assets (id) ON DELETE CASCADE,
            ADD CONSTRAINT fk_quotes_dataset_id_datasets FOREIGN KEY (dataset_id) REFERENCES datasets (id);
        CREATE INDEX ix_quotes_source_observed ON quotes (source, observed_at);
        CREATE INDEX ix_quotes_run ON quotes (run_id);
        CREATE TRIGGER quotes_default_dataset BEFORE INSERT ON quotes FOR EACH ROW
            WHEN (NEW.dataset_id IS NULL) EXECUTE FUNCTION cryptoflow_default_dataset();
        CREATE TRIGGER rm_quotes_write AFTER INSERT OR UPDATE OR DELETE ON quotes
            FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_statement();
        CREATE TRIGGER rm_quotes_truncate AFTER TRUNCATE ON quotes
            FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_truncated();
    """)
    op.execute("DROP TABLE candles")
    op.execute("DROP TABLE IF EXISTS quote_partitioning")
    op.execute("DROP INDEX IF EXISTS ix_rejected_records_created")
    op.execute("ALTER TABLE raw_payloads ADD COLUMN body jsonb")
    op.execute("UPDATE raw_payloads p SET body = r.body FROM raw_pages r WHERE r.content_hash = p.content_hash")
    op.execute("DROP TABLE raw_pages")
