"""datasets: rows of different datasets of the same asset and time coexist; flags on quotes

- `datasets`: one row per CSV file (or per name given in the data dir's datasets.json) and per API
  (source, endpoint), e.g. `coingecko:markets`, `csv:Binance_BTCUSDT_d.csv`; provenance (files,
  publisher, url, first and last import) and the native interval of its series (NULL: snapshots).
- `quotes`: natural key (asset_id, dataset_id, observed_at) instead of (asset_id, source, observed_at);
  `source` stays a column (`csv` for every CSV dataset). The key ends in the time, so a later
  partitioning by observed_at keeps it.
- `latest_quotes`: newest observation per (asset, dataset) instead of per (asset, source); the API's
  sort index is rebuilt on (market cap, asset_id, dataset_id).
- `dataset_assets`: rows, first and last observation per (dataset, asset), maintained by the loader in
  the transaction that writes the quotes (crypto_app/pipeline/load.py); `cryptoflow_dataset_stats_rebuild()`
  recomputes it from `quotes` (after deleting quotes by hand, for instance).
- `flags text[]` on both quote tables: the soft plausibility rules a row tripped, sorted. NULL means
  none (the API shows []): an empty array would cost 16 bytes on every row, a NULL costs nothing.
- A writer that names no dataset (older code, hand-written SQL) gets its source's default dataset
  (`coingecko:markets`, `coinpaprika:tickers`, `csv:unknown-file`) from a BEFORE INSERT trigger whose
  WHEN clause makes it free for the loader, which always names one.

Existing rows are carried over: API rows go to their source's dataset; a CSV row goes to the dataset of
the file it came from, found through the raw payload its run stored for its chunk (raw_payloads.locator
->> 'file' where run_id and content_hash match the row's run_id and payload_hash); a CSV row whose
payload is gone goes to `csv:unknown-file`. Cost: one UPDATE of every quote row (the table is rewritten
once), one of latest_quotes, and a few aggregates over quotes; writers wait for the migration.

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DEFAULT_DATASETS = {"coingecko": ("coingecko:markets", "markets"),
                    "coinpaprika": ("coinpaprika:tickers", "tickers"),
                    "csv": ("csv:unknown-file", None)}

FUNCTIONS = r"""
CREATE FUNCTION cryptoflow_default_dataset_name(src text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE src WHEN 'coingecko' THEN 'coingecko:markets' WHEN 'coinpaprika' THEN 'coinpaprika:tickers'
                    WHEN 'csv' THEN 'csv:unknown-file' ELSE src || ':default' END
$$;

-- BEFORE INSERT on quotes and latest_quotes, only when dataset_id IS NULL (the trigger's WHEN)
CREATE FUNCTION cryptoflow_default_dataset() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted text := cryptoflow_default_dataset_name(NEW.source);
BEGIN
    SELECT id INTO NEW.dataset_id FROM datasets WHERE name = wanted;
    IF NEW.dataset_id IS NULL THEN
        INSERT INTO datasets (name, source, endpoint) VALUES (wanted, NEW.source, split_part(wanted, ':', 2))
        ON CONFLICT (name) DO NOTHING;
        SELECT id INTO NEW.dataset_id FROM datasets WHERE name = wanted;
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION cryptoflow_dataset_stats_rebuild() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    LOCK TABLE quotes IN SHARE MODE;
    DELETE FROM dataset_assets;
    INSERT INTO dataset_assets (dataset_id, asset_id, rows, first_observed_at, last_observed_at)
    SELECT dataset_id, asset_id, count(*), min(observed_at), max(observed_at) FROM quotes
    GROUP BY dataset_id, asset_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
"""

TRIGGERS = r"""
CREATE TRIGGER quotes_default_dataset BEFORE INSERT ON quotes FOR EACH ROW
    WHEN (NEW.dataset_id IS NULL) EXECUTE FUNCTION cryptoflow_default_dataset();
CREATE TRIGGER latest_quotes_default_dataset BEFORE INSERT ON latest_quotes FOR EACH ROW
    WHEN (NEW.dataset_id IS NULL) EXECUTE FUNCTION cryptoflow_default_dataset();

-- the API caches what these tables hold: any write moves the data version (0002's functions)
CREATE TRIGGER rm_datasets_write AFTER INSERT OR UPDATE OR DELETE ON datasets
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_statement();
CREATE TRIGGER rm_datasets_truncate AFTER TRUNCATE ON datasets
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_truncated();
CREATE TRIGGER rm_dataset_assets_write AFTER INSERT OR UPDATE OR DELETE ON dataset_assets
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_statement();
CREATE TRIGGER rm_dataset_assets_truncate AFTER TRUNCATE ON dataset_assets
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_truncated();
"""

SORT_KEY = "COALESCE(market_cap_usd, '-1'::numeric) DESC, asset_id"

CARRY_OVER = r"""
-- datasets of the API sources and of every CSV file a run recorded
INSERT INTO datasets (name, source, endpoint, first_import_at, last_import_at)
SELECT cryptoflow_default_dataset_name(source), source, split_part(cryptoflow_default_dataset_name(source), ':', 2),
       min(fetched_at), max(fetched_at)
FROM (SELECT source, fetched_at FROM quotes WHERE source <> 'csv'
      UNION ALL SELECT source, fetched_at FROM latest_quotes WHERE source <> 'csv') s
GROUP BY source;

CREATE TEMP TABLE payload_files ON COMMIT DROP AS
SELECT DISTINCT ON (run_id, content_hash) run_id, content_hash, locator ->> 'file' AS file, fetched_at
FROM raw_payloads WHERE source = 'csv' AND locator ? 'file'
ORDER BY run_id, content_hash, locator ->> 'file';
CREATE INDEX ON payload_files (run_id, content_hash);
ANALYZE payload_files;

INSERT INTO datasets (name, source, files, first_import_at, last_import_at)
SELECT 'csv:' || file, 'csv', ARRAY[file], min(fetched_at), max(fetched_at)
FROM payload_files GROUP BY file;

UPDATE quotes q SET dataset_id = d.id
FROM payload_files p JOIN datasets d ON d.name = 'csv:' || p.file
WHERE q.source = 'csv' AND q.run_id = p.run_id AND q.payload_hash = p.content_hash;
UPDATE latest_quotes q SET dataset_id = d.id
FROM payload_files p JOIN datasets d ON d.name = 'csv:' || p.file
WHERE q.source = 'csv' AND q.run_id = p.run_id AND q.payload_hash = p.content_hash;

-- what is left: API rows, and CSV rows whose payload is gone (csv:unknown-file, created by the trigger
-- function's logic here)
INSERT INTO datasets (name, source, endpoint)
SELECT DISTINCT cryptoflow_default_dataset_name(source), source, NULL
FROM (SELECT source FROM quotes WHERE dataset_id IS NULL UNION SELECT source FROM latest_quotes
      WHERE dataset_id IS NULL) s
ON CONFLICT (name) DO NOTHING;
UPDATE quotes q SET dataset_id = d.id FROM datasets d
WHERE q.dataset_id IS NULL AND d.name = cryptoflow_default_dataset_name(q.source);
UPDATE latest_quotes q SET dataset_id = d.id FROM datasets d
WHERE q.dataset_id IS NULL AND d.name = cryptoflow_default_dataset_name(q.source);

-- the newest row of every other (asset, dataset) pair: a CSV asset read from two files had one latest
-- row (the newest of both files); now each file's dataset has its own
INSERT INTO latest_quotes (asset_id, source, dataset_id, price_usd, open_usd, high_usd, low_usd, market_cap_usd,
                           volume_24h_usd, circulating_supply, total_supply, max_supply, market_cap_rank,
                           change_24h_pct, observed_at, fetched_at, run_id, payload_hash)
SELECT DISTINCT ON (asset_id, dataset_id) asset_id, source, dataset_id, price_usd, open_usd, high_usd, low_usd,
       market_cap_usd, volume_24h_usd, circulating_supply, total_supply, max_supply, market_cap_rank,
       change_24h_pct, observed_at, fetched_at, run_id, payload_hash
FROM quotes q
WHERE q.source = 'csv'
  AND NOT EXISTS (SELECT 1 FROM latest_quotes l WHERE l.asset_id = q.asset_id AND l.dataset_id = q.dataset_id)
ORDER BY asset_id, dataset_id, observed_at DESC;

-- native interval of each CSV dataset: the most common spacing of one asset's consecutive rows
UPDATE datasets d SET native_interval = g.gap FROM (
    SELECT DISTINCT ON (dataset_id) dataset_id, gap FROM (
        SELECT dataset_id, observed_at - lag(observed_at) OVER (PARTITION BY dataset_id, asset_id
                                                                ORDER BY observed_at) AS gap
        FROM quotes WHERE source = 'csv') x
    WHERE gap > interval '0'
    GROUP BY dataset_id, gap ORDER BY dataset_id, count(*) DESC, gap) g
WHERE d.id = g.dataset_id;
"""


def _raw(sql: str) -> None:
    """Run SQL as written (op.execute would read ':markets' in a string literal as a bind parameter)."""
    op.get_bind().exec_driver_sql(sql)


def upgrade():
    op.execute("""
        CREATE TABLE datasets (
            id integer GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_datasets PRIMARY KEY,
            name text NOT NULL CONSTRAINT uq_datasets_name UNIQUE,
            source text NOT NULL,
            endpoint text,
            files text[],
            publisher text,
            url text,
            description text,
            native_interval interval,
            interval_declared boolean NOT NULL DEFAULT false,
            first_import_at timestamptz,
            last_import_at timestamptz,
            last_run_id uuid,
            created_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("""
        CREATE TABLE dataset_assets (
            asset_id bigint NOT NULL CONSTRAINT fk_dataset_assets_asset_id_assets
                REFERENCES assets (id) ON DELETE CASCADE,
            dataset_id integer NOT NULL CONSTRAINT fk_dataset_assets_dataset_id_datasets
                REFERENCES datasets (id) ON DELETE CASCADE,
            rows bigint NOT NULL DEFAULT 0,
            first_observed_at timestamptz,
            last_observed_at timestamptz,
            CONSTRAINT pk_dataset_assets PRIMARY KEY (asset_id, dataset_id)
        )""")
    op.execute("CREATE INDEX ix_dataset_assets_dataset ON dataset_assets (dataset_id)")
    for table in ("quotes", "latest_quotes"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN dataset_id integer, ADD COLUMN flags text[]")
    # the old keys go first: the carry-over adds latest rows that share (asset, source)
    op.execute("ALTER TABLE quotes DROP CONSTRAINT uq_quotes_asset_source_observed")
    op.execute("ALTER TABLE latest_quotes DROP CONSTRAINT pk_latest_quotes")
    _raw(FUNCTIONS)
    _raw(CARRY_OVER)
    op.execute("INSERT INTO dataset_assets (dataset_id, asset_id, rows, first_observed_at, last_observed_at) "
               "SELECT dataset_id, asset_id, count(*), min(observed_at), max(observed_at) FROM quotes "
               "GROUP BY dataset_id, asset_id")
    for table in ("quotes", "latest_quotes"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN dataset_id SET NOT NULL, "
                   f"ADD CONSTRAINT fk_{table}_dataset_id_datasets FOREIGN KEY (dataset_id) REFERENCES datasets (id), "
                   f"ADD CONSTRAINT ck_{table}_flags_not_empty CHECK (cardinality(flags) > 0)")
    op.execute("ALTER TABLE quotes "
               "ADD CONSTRAINT uq_quotes_asset_dataset_observed UNIQUE (asset_id, dataset_id, observed_at)")
    op.execute("ALTER TABLE latest_quotes ADD CONSTRAINT pk_latest_quotes PRIMARY KEY (asset_id, dataset_id)")
    op.execute(f"CREATE INDEX ix_latest_quotes_sort_next ON latest_quotes ({SORT_KEY}, dataset_id) "
               "INCLUDE (market_cap_usd)")
    op.execute("DROP INDEX ix_latest_quotes_sort")
    op.execute("ALTER INDEX ix_latest_quotes_sort_next RENAME TO ix_latest_quotes_sort")
    op.execute("CREATE INDEX ix_latest_quotes_dataset ON latest_quotes (dataset_id)")
    op.execute(TRIGGERS)
    op.execute("SELECT cryptoflow_rm_rebuild()")
    # apply the read model's deferred deltas now: a later migration in this transaction may alter its tables
    op.execute("SET CONSTRAINTS ALL IMMEDIATE")


def downgrade():
    """Back to one row per (asset, source, observed_at): where datasets overlap, the row of the dataset
    imported last wins (that was the old behaviour); the others are deleted."""
    for trigger, table in (("quotes_default_dataset", "quotes"), ("latest_quotes_default_dataset", "latest_quotes"),
                           ("rm_datasets_write", "datasets"), ("rm_datasets_truncate", "datasets"),
                           ("rm_dataset_assets_write", "dataset_assets"),
                           ("rm_dataset_assets_truncate", "dataset_assets")):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    op.execute("""
        DELETE FROM quotes q USING quotes o, datasets dq, datasets do_
        WHERE o.asset_id = q.asset_id AND o.source = q.source AND o.observed_at = q.observed_at
          AND o.id <> q.id AND dq.id = q.dataset_id AND do_.id = o.dataset_id
          AND (coalesce(do_.last_import_at, '-infinity'), o.id) > (coalesce(dq.last_import_at, '-infinity'), q.id)""")
    op.execute("""
        DELETE FROM latest_quotes q USING latest_quotes o
        WHERE o.asset_id = q.asset_id AND o.source = q.source
          AND (o.observed_at, o.dataset_id) > (q.observed_at, q.dataset_id)""")
    op.execute("DROP INDEX ix_latest_quotes_dataset")
    op.execute(f"CREATE INDEX ix_latest_quotes_sort_prev ON latest_quotes ({SORT_KEY}, source) "
               "INCLUDE (market_cap_usd)")
    op.execute("DROP INDEX ix_latest_quotes_sort")
    op.execute("ALTER INDEX ix_latest_quotes_sort_prev RENAME TO ix_latest_quotes_sort")
    op.execute("ALTER TABLE latest_quotes DROP CONSTRAINT pk_latest_quotes, "
               "ADD CONSTRAINT pk_latest_quotes PRIMARY KEY (asset_id, source)")
    op.execute("ALTER TABLE quotes DROP CONSTRAINT uq_quotes_asset_dataset_observed, "
               "ADD CONSTRAINT uq_quotes_asset_source_observed UNIQUE (asset_id, source, observed_at)")
    for table in ("quotes", "latest_quotes"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN dataset_id, DROP COLUMN flags")
    op.execute("DROP TABLE dataset_assets")
    op.execute("DROP TABLE datasets")
    for function in ("cryptoflow_dataset_stats_rebuild()", "cryptoflow_default_dataset()",
                     "cryptoflow_default_dataset_name(text)"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.execute("SELECT cryptoflow_rm_rebuild()")
    op.execute("SET CONSTRAINTS ALL IMMEDIATE")   # 0002's downgrade drops the tables the deltas go to
