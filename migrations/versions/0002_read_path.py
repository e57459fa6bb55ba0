"""read path: data version, precomputed stats, indexes for the reads

The API's reads stop scanning the big tables per request:

- `data_version` goes up when a transaction that wrote `latest_quotes`, `quotes`, `assets` or
  `asset_identifiers`, or changed what /api/v1/stats counts in `etl_runs` (status, counters,
  duration, times), commits; the API's response cache is keyed on it.
- `run_stats` (per source and status) and `source_quote_stats` (per source) hold what /api/v1/stats
  reports, maintained from every change to `etl_runs` and `latest_quotes`.

Everything is maintained by triggers, in the writing transaction: the pipeline does not change.
Row and statement triggers only queue deltas in `read_model_pending` (an insert: no shared row is
locked while the writer works); a deferred constraint trigger applies them when the transaction
commits, locking the shared rows in one fixed order (run_stats by key, source_quote_stats by key,
data_version last), so that concurrent writers cannot deadlock on them. A transaction that changes
nothing the API caches (a heartbeat, a checkpoint) does not touch data_version at all.

ix_latest_quotes_sort gets market_cap_usd as an INCLUDE column (same key, same order): PostgreSQL can
then walk it index-only (its key is an expression of market_cap_usd), which is what skipping rows by
OFFSET and finding the keys of a page cost.

`SELECT cryptoflow_rm_rebuild()` recomputes everything from the tables (after a restore made with
triggers disabled, for instance).

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SORT_KEY = "COALESCE(market_cap_usd, '-1'::numeric) DESC, asset_id, source"  # ix_latest_quotes_sort (0001)

FUNCTIONS = r"""
CREATE FUNCTION cryptoflow_rm_mark_version() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- once per transaction (the setting is transaction-local, and undone with a rolled-back savepoint)
    IF current_setting('cryptoflow.version_pending', true) IS DISTINCT FROM 'on' THEN
        INSERT INTO read_model_pending (kind) VALUES ('version');
        PERFORM set_config('cryptoflow.version_pending', 'on', true);
    END IF;
END $$;

-- quotes: statement level, without a transition table (it would copy every row the loaders write):
-- any INSERT, UPDATE or DELETE statement counts as a change, even one that matched no row
CREATE FUNCTION cryptoflow_rm_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cryptoflow_rm_mark_version();
    RETURN NULL;
END $$;

-- assets, asset_identifiers: statement level; the transition table is `changed_rows`
CREATE FUNCTION cryptoflow_rm_rows_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed_rows) THEN
        PERFORM cryptoflow_rm_mark_version();
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION cryptoflow_rm_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'latest_quotes' THEN
        -- TRUNCATE holds an exclusive lock on latest_quotes: no other transaction has quote deltas
        DELETE FROM read_model_pending WHERE kind = 'quotes';
        DELETE FROM source_quote_stats;
    ELSIF TG_TABLE_NAME = 'etl_runs' THEN
        DELETE FROM read_model_pending WHERE kind = 'run';
        DELETE FROM run_stats;
    END IF;
    PERFORM cryptoflow_rm_mark_version();
    RETURN NULL;
END $$;

-- latest_quotes: statement level, per source: count delta, newest observation that joined, and the
-- newest that left when nothing newer replaced it (then the maximum is recomputed at commit)
CREATE FUNCTION cryptoflow_rm_latest_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO read_model_pending (kind, source, quotes, added_at)
    SELECT 'quotes', source, count(*), max(observed_at) FROM new_rows GROUP BY source;
    IF FOUND THEN
        PERFORM cryptoflow_rm_mark_version();
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION cryptoflow_rm_latest_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO read_model_pending (kind, source, quotes, added_at, removed_at)
    SELECT 'quotes', source, sum(n), max(added),
           CASE WHEN max(removed) > coalesce(max(added), '-infinity') THEN max(removed) END
    FROM (SELECT source, count(*) AS n, max(observed_at) AS added, NULL::timestamptz AS removed
          FROM new_rows GROUP BY source
          UNION ALL
          SELECT source, -count(*), NULL, max(observed_at) FROM old_rows GROUP BY source) d
    GROUP BY source;
    IF FOUND THEN
        PERFORM cryptoflow_rm_mark_version();
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION cryptoflow_rm_latest_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO read_model_pending (kind, source, quotes, removed_at)
    SELECT 'quotes', source, -count(*), max(observed_at) FROM old_rows GROUP BY source;
    IF FOUND THEN
        PERFORM cryptoflow_rm_mark_version();
    END IF;
    RETURN NULL;
END $$;

-- etl_runs: row level (an UPDATE that changes none of the counted columns, like a heartbeat, is
-- filtered out by the trigger's WHEN and costs nothing). The counted columns are what /api/v1/stats
-- shows, so they move the data version too.
CREATE FUNCTION cryptoflow_rm_run_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_last timestamptz;
    new_last timestamptz;
BEGIN
    PERFORM cryptoflow_rm_mark_version();
    IF TG_OP = 'UPDATE' AND OLD.source = NEW.source AND OLD.status = NEW.status THEN
        old_last := coalesce(OLD.finished_at, OLD.created_at);
        new_last := coalesce(NEW.finished_at, NEW.created_at);
        INSERT INTO read_model_pending (kind, source, status, runs, fetched, loaded, rejected, timed, duration,
                                        added_at, removed_at)
        VALUES ('run', NEW.source, NEW.status, 0, NEW.fetched - OLD.fetched, NEW.loaded - OLD.loaded,
                NEW.rejected - OLD.rejected,
                (NEW.duration_seconds IS NOT NULL)::int - (OLD.duration_seconds IS NOT NULL)::int,
                coalesce(NEW.duration_seconds, 0)::numeric - coalesce(OLD.duration_seconds, 0)::numeric,
                new_last, CASE WHEN old_last > new_last THEN old_last END);
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO read_model_pending (kind, source, status, runs, fetched, loaded, rejected, timed, duration,
                                        removed_at)
        VALUES ('run', OLD.source, OLD.status, -1, -OLD.fetched, -OLD.loaded, -OLD.rejected,
                -(OLD.duration_seconds IS NOT NULL)::int, -coalesce(OLD.duration_seconds, 0)::numeric,
                coalesce(OLD.finished_at, OLD.created_at));
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO read_model_pending (kind, source, status, runs, fetched, loaded, rejected, timed, duration,
                                        added_at)
        VALUES ('run', NEW.source, NEW.status, 1, NEW.fetched, NEW.loaded, NEW.rejected,
                (NEW.duration_seconds IS NOT NULL)::int, coalesce(NEW.duration_seconds, 0)::numeric,
                coalesce(NEW.finished_at, NEW.created_at));
    END IF;
    RETURN NULL;
END $$;

-- At commit (deferred constraint trigger on read_model_pending): apply this transaction's deltas.
-- The first event of the transaction applies them all; the others find their row gone.
CREATE FUNCTION cryptoflow_rm_flush() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    stored timestamptz;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM read_model_pending WHERE id = NEW.id) THEN
        RETURN NULL;
    END IF;
    FOR r IN SELECT source, status, sum(runs) AS runs, sum(fetched) AS fetched, sum(loaded) AS loaded,
                    sum(rejected) AS rejected, sum(timed) AS timed, sum(duration) AS duration,
                    max(added_at) AS added_at, max(removed_at) AS removed_at
             FROM read_model_pending WHERE kind = 'run'
             GROUP BY source, status ORDER BY source, status
    LOOP
        INSERT INTO run_stats AS s (source, status, runs, fetched, loaded, rejected, timed, duration, last_at)
        VALUES (r.source, r.status, r.runs, r.fetched, r.loaded, r.rejected, r.timed, r.duration, r.added_at)
        ON CONFLICT (source, status) DO UPDATE SET
            runs = s.runs + EXCLUDED.runs, fetched = s.fetched + EXCLUDED.fetched,
            loaded = s.loaded + EXCLUDED.loaded, rejected = s.rejected + EXCLUDED.rejected,
            timed = s.timed + EXCLUDED.timed, duration = s.duration + EXCLUDED.duration,
            last_at = GREATEST(s.last_at, EXCLUDED.last_at)
        RETURNING s.last_at INTO stored;
        IF r.removed_at IS NOT NULL AND (stored IS NULL OR r.removed_at >= stored) THEN
            -- the newest run of the group may have left it: look again (the row is locked, and this
            -- statement sees every transaction that applied deltas to it before)
            UPDATE run_stats SET last_at = (SELECT max(coalesce(finished_at, created_at)) FROM etl_runs
                                            WHERE source = r.source AND status = r.status)
            WHERE source = r.source AND status = r.status;
        END IF;
    END LOOP;
    FOR r IN SELECT source, sum(quotes) AS quotes, max(added_at) AS added_at, max(removed_at) AS removed_at
             FROM read_model_pending WHERE kind = 'quotes'
             GROUP BY source ORDER BY source
    LOOP
        INSERT INTO source_quote_stats AS s (source, latest_quotes, newest_observation)
        VALUES (r.source, r.quotes, r.added_at)
        ON CONFLICT (source) DO UPDATE SET
            latest_quotes = s.latest_quotes + EXCLUDED.latest_quotes,
            newest_observation = GREATEST(s.newest_observation, EXCLUDED.newest_observation)
        RETURNING s.newest_observation INTO stored;
        IF r.removed_at IS NOT NULL AND (stored IS NULL OR r.removed_at >= stored) THEN
            UPDATE source_quote_stats SET newest_observation = (SELECT max(observed_at) FROM latest_quotes
                                                                WHERE source = r.source)
            WHERE source = r.source;
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM read_model_pending WHERE kind = 'version') THEN
        UPDATE data_version SET version = version + 1, changed_at = now() WHERE id = 1;
        PERFORM set_config('cryptoflow.version_pending', 'off', true);
    END IF;
    DELETE FROM read_model_pending;
    RETURN NULL;
END $$;

CREATE FUNCTION cryptoflow_rm_rebuild() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    LOCK TABLE etl_runs, latest_quotes IN SHARE MODE;  -- writers wait until the rebuild commits
    DELETE FROM read_model_pending;
    DELETE FROM run_stats;
    INSERT INTO run_stats (source, status, runs, fetched, loaded, rejected, timed, duration, last_at)
    SELECT source, status, count(*), sum(fetched), sum(loaded), sum(rejected), count(duration_seconds),
           coalesce(sum(duration_seconds::numeric), 0), max(coalesce(finished_at, created_at))
    FROM etl_runs GROUP BY source, status;
    DELETE FROM source_quote_stats;
    INSERT INTO source_quote_stats (source, latest_quotes, newest_observation)
    SELECT source, count(*), max(observed_at) FROM latest_quotes GROUP BY source;
    INSERT INTO data_version (id, version, changed_at) VALUES (1, 1, now())
    ON CONFLICT (id) DO UPDATE SET version = data_version.version + 1, changed_at = now()
    RETURNING version INTO v;
    PERFORM set_config('cryptoflow.version_pending', 'off', true);
    RETURN v;
END $$;
"""

TRIGGERS = r"""
CREATE CONSTRAINT TRIGGER rm_flush AFTER INSERT ON read_model_pending
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cryptoflow_rm_flush();

CREATE TRIGGER rm_latest_insert AFTER INSERT ON latest_quotes REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_latest_inserted();
CREATE TRIGGER rm_latest_update AFTER UPDATE ON latest_quotes REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_latest_updated();
CREATE TRIGGER rm_latest_delete AFTER DELETE ON latest_quotes REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_latest_deleted();
CREATE TRIGGER rm_latest_truncate AFTER TRUNCATE ON latest_quotes
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_truncated();

CREATE TRIGGER rm_quotes_write AFTER INSERT OR UPDATE OR DELETE ON quotes
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_statement();
CREATE TRIGGER rm_quotes_truncate AFTER TRUNCATE ON quotes
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_truncated();

CREATE TRIGGER rm_assets_insert AFTER INSERT ON assets REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_rows_changed();
CREATE TRIGGER rm_assets_update AFTER UPDATE ON assets REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_rows_changed();
CREATE TRIGGER rm_assets_delete AFTER DELETE ON assets REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_rows_changed();
CREATE TRIGGER rm_assets_truncate AFTER TRUNCATE ON assets
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_truncated();

CREATE TRIGGER rm_identifiers_insert AFTER INSERT ON asset_identifiers REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_rows_changed();
CREATE TRIGGER rm_identifiers_update AFTER UPDATE ON asset_identifiers REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_rows_changed();
CREATE TRIGGER rm_identifiers_delete AFTER DELETE ON asset_identifiers REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_rows_changed();
CREATE TRIGGER rm_identifiers_truncate AFTER TRUNCATE ON asset_identifiers
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_truncated();

CREATE TRIGGER rm_runs_insert_delete AFTER INSERT OR DELETE ON etl_runs
    FOR EACH ROW EXECUTE FUNCTION cryptoflow_rm_run_changed();
CREATE TRIGGER rm_runs_update AFTER UPDATE ON etl_runs FOR EACH ROW
    WHEN (OLD.source IS DISTINCT FROM NEW.source OR OLD.status IS DISTINCT FROM NEW.status
          OR OLD.fetched IS DISTINCT FROM NEW.fetched OR OLD.loaded IS DISTINCT FROM NEW.loaded
          OR OLD.rejected IS DISTINCT FROM NEW.rejected
          OR OLD.duration_seconds IS DISTINCT FROM NEW.duration_seconds
          OR OLD.finished_at IS DISTINCT FROM NEW.finished_at OR OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION cryptoflow_rm_run_changed();
CREATE TRIGGER rm_runs_truncate AFTER TRUNCATE ON etl_runs
    FOR EACH STATEMENT EXECUTE FUNCTION cryptoflow_rm_truncated();
"""

DROP_TRIGGERS = [
    ("rm_flush", "read_model_pending"),
    ("rm_latest_insert", "latest_quotes"), ("rm_latest_update", "latest_quotes"),
    ("rm_latest_delete", "latest_quotes"), ("rm_latest_truncate", "latest_quotes"),
    ("rm_quotes_write", "quotes"), ("rm_quotes_truncate", "quotes"),
    ("rm_assets_insert", "assets"), ("rm_assets_update", "assets"), ("rm_assets_delete", "assets"),
    ("rm_assets_truncate", "assets"),
    ("rm_identifiers_insert", "asset_identifiers"), ("rm_identifiers_update", "asset_identifiers"),
    ("rm_identifiers_delete", "asset_identifiers"), ("rm_identifiers_truncate", "asset_identifiers"),
    ("rm_runs_insert_delete", "etl_runs"), ("rm_runs_update", "etl_runs"), ("rm_runs_truncate", "etl_runs"),
]
DROP_FUNCTIONS = [
    "cryptoflow_rm_rebuild()", "cryptoflow_rm_flush()", "cryptoflow_rm_run_changed()",
    "cryptoflow_rm_latest_deleted()", "cryptoflow_rm_latest_updated()", "cryptoflow_rm_latest_inserted()",
    "cryptoflow_rm_truncated()", "cryptoflow_rm_rows_changed()", "cryptoflow_rm_statement()",
    "cryptoflow_rm_mark_version()",
]


def upgrade():
    op.create_table(
        "data_version",
        sa.Column("id", sa.SmallInteger(), server_default=sa.text("1"), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), server_default=sa.text("1"), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_data_version_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_version")),
    )
    op.create_table(
        "run_stats",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("runs", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("fetched", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("loaded", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("rejected", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("timed", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("duration", sa.Numeric(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("source", "status", name=op.f("pk_run_stats")),
    )
    op.create_table(
        "source_quote_stats",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("latest_quotes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("newest_observation", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_source_quote_stats")),
    )
    op.create_table(
        "read_model_pending",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("runs", sa.BigInteger(), nullable=True),
        sa.Column("fetched", sa.BigInteger(), nullable=True),
        sa.Column("loaded", sa.BigInteger(), nullable=True),
        sa.Column("rejected", sa.BigInteger(), nullable=True),
        sa.Column("timed", sa.BigInteger(), nullable=True),
        sa.Column("duration", sa.Numeric(), nullable=True),
        sa.Column("quotes", sa.BigInteger(), nullable=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_read_model_pending")),
    )
    op.create_index("ix_etl_runs_created", "etl_runs", [sa.text("created_at DESC"), sa.text("id DESC")])
    # built before the old one is dropped: reads keep the old index until this migration commits
    op.execute(f"CREATE INDEX ix_latest_quotes_sort_next ON latest_quotes ({SORT_KEY}) INCLUDE (market_cap_usd)")
    op.execute("DROP INDEX ix_latest_quotes_sort")
    op.execute("ALTER INDEX ix_latest_quotes_sort_next RENAME TO ix_latest_quotes_sort")
    op.execute("CREATE INDEX ix_etl_runs_source_status_last ON etl_runs "
               "(source, status, (COALESCE(finished_at, created_at)))")
    op.execute(FUNCTIONS)
    op.execute(TRIGGERS)
    # Backfill from what is there. Creating the triggers locked the tables against writes until this
    # migration commits, so nothing can slip between the backfill and the triggers.
    op.execute("SELECT cryptoflow_rm_rebuild()")


def downgrade():
    for trigger, table in DROP_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    for function in DROP_FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.execute("DROP INDEX IF EXISTS ix_etl_runs_source_status_last")
    op.execute(f"CREATE INDEX ix_latest_quotes_sort_prev ON latest_quotes ({SORT_KEY})")
    op.execute("DROP INDEX ix_latest_quotes_sort")
    op.execute("ALTER INDEX ix_latest_quotes_sort_prev RENAME TO ix_latest_quotes_sort")
    op.drop_index("ix_etl_runs_created", table_name="etl_runs")
    op.drop_table("read_model_pending")
    op.drop_table("source_quote_stats")
    op.drop_table("run_stats")
    op.drop_table("data_version")
