"""Backfills: history windows fetched from the APIs' history endpoints, each checkpointed in the database.

- `backfills`: one request (assets x sources x [since, until) at an interval), its status and the request.
- `backfill_windows`: one upstream request's worth of one asset and source. A window's state moves
  pending -> running -> done | failed | unavailable | cancelled, and `done` is committed in the same
  transaction as the window's rows (crypto_app/pipeline/backfill_window.py): a killed worker leaves the
  window pending/running with nothing written, and the redelivered task does it again.

Revision ID: 0004_backfills
Revises: 0003
"""
from alembic import op

revision = "0004_backfills"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("""
        CREATE TABLE backfills (
            id uuid PRIMARY KEY,
            status text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'succeeded', 'partial', 'failed', 'cancelled')),
            interval text NOT NULL,
            since timestamptz NOT NULL,
            until timestamptz NOT NULL,
            sources text[] NOT NULL,
            request jsonb NOT NULL DEFAULT '{}'::jsonb,
            trigger text NOT NULL DEFAULT 'api',
            created_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            cancelled_at timestamptz,
            CHECK (since < until)
        )
    """)
    op.execute("CREATE INDEX ix_backfills_created ON backfills (created_at DESC)")
    op.execute("""
        CREATE TABLE backfill_windows (
            id bigserial PRIMARY KEY,
            backfill_id uuid NOT NULL REFERENCES backfills (id) ON DELETE CASCADE,
            source text NOT NULL,
            endpoint text NOT NULL,
            asset_id bigint NOT NULL REFERENCES assets (id) ON DELETE CASCADE,
            external_id text NOT NULL,
            interval text NOT NULL,
            starts_at timestamptz NOT NULL,
            ends_at timestamptz NOT NULL,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'done', 'failed', 'unavailable', 'cancelled')),
            attempts integer NOT NULL DEFAULT 0,
            requests integer NOT NULL DEFAULT 0,
            fetched integer NOT NULL DEFAULT 0,
            inserted integer NOT NULL DEFAULT 0,
            updated integer NOT NULL DEFAULT 0,
            unchanged integer NOT NULL DEFAULT 0,
            rejected integer NOT NULL DEFAULT 0,
            error text,
            started_at timestamptz,
            finished_at timestamptz,
            touched_at timestamptz NOT NULL DEFAULT now(),   -- last state change (the stall reaper reads it)
            requeues integer NOT NULL DEFAULT 0,              -- times the reaper re-queued it (lost messages)
            CHECK (starts_at < ends_at)
        )
    """)
    op.execute("CREATE INDEX ix_backfill_windows_backfill ON backfill_windows (backfill_id, status)")
    # the overlap check: active windows of an asset, source and interval
    op.execute("CREATE INDEX ix_backfill_windows_active ON backfill_windows (asset_id, source, interval) "
               "WHERE status IN ('pending', 'running')")


def downgrade():
    op.execute("DROP TABLE backfill_windows")
    op.execute("DROP TABLE backfills")
