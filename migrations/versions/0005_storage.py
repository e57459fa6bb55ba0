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

Cost on an existing database: one pass over raw_payloads copying each distinct body into raw_pages,
then `body` is dropped (metadata only; the space is reused as the table is vacuumed, or at once with
VACUUM FULL raw_payloads). Writers of raw_payloads wait for the migration.

Revision ID: 0005_storage
Revises: 0003
"""
from alembic import op

revision = "0005_storage"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
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


def downgrade():
    op.execute("DROP TABLE candles")
    op.execute("DROP INDEX IF EXISTS ix_rejected_records_created")
    op.execute("ALTER TABLE raw_payloads ADD COLUMN body jsonb")
    op.execute("UPDATE raw_payloads p SET body = r.body FROM raw_pages r WHERE r.content_hash = p.content_hash")
    op.execute("DROP TABLE raw_pages")
