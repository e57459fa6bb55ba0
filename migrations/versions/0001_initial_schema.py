"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 12:55:49.312732

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('assets',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('slug', sa.Text(), nullable=False),
    sa.Column('symbol', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_assets')),
    sa.UniqueConstraint('slug', name=op.f('uq_assets_slug'))
    )
    with op.batch_alter_table('assets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_assets_symbol'), ['symbol'], unique=False)

    op.create_table('checkpoints',
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('cursor', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('source', name=op.f('pk_checkpoints'))
    )
    op.create_table('etl_runs',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('trigger', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='queued', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('duration_seconds', sa.Float(), nullable=True),
    sa.Column('fetched', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('loaded', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('rejected', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('pages', sa.Integer(), server_default='0', nullable=False),
    sa.Column('deliveries', sa.Integer(), server_default='0', nullable=False),
    sa.Column('unfinished_deliveries', sa.Integer(), server_default='0', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('checkpoint_before', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('checkpoint_after', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('schema_drift', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('stats', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.CheckConstraint("status IN ('queued','running','succeeded','partial','failed')", name=op.f('ck_etl_runs_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_etl_runs'))
    )
    with op.batch_alter_table('etl_runs', schema=None) as batch_op:
        batch_op.create_index('ix_etl_runs_source_created', ['source', sa.literal_column('created_at DESC')], unique=False)
        batch_op.create_index('ix_etl_runs_status', ['status'], unique=False)

    op.create_table('raw_payloads',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('locator', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('content_hash', sa.Text(), nullable=False),
    sa.Column('fetched_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('record_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('body', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_raw_payloads'))
    )
    with op.batch_alter_table('raw_payloads', schema=None) as batch_op:
        batch_op.create_index('ix_raw_payloads_hash', ['content_hash'], unique=False)
        batch_op.create_index('ix_raw_payloads_run', ['run_id'], unique=False)

    op.create_table('rejected_records',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('errors', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('record', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('locator', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rejected_records'))
    )
    with op.batch_alter_table('rejected_records', schema=None) as batch_op:
        batch_op.create_index('ix_rejected_records_run', ['run_id'], unique=False)

    op.create_table('asset_identifiers',
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('external_id', sa.Text(), nullable=False),
    sa.Column('asset_id', sa.BigInteger(), nullable=False),
    sa.Column('symbol', sa.Text(), nullable=True),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['asset_id'], ['assets.id'], name=op.f('fk_asset_identifiers_asset_id_assets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('source', 'external_id', name=op.f('pk_asset_identifiers'))
    )
    with op.batch_alter_table('asset_identifiers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_asset_identifiers_asset_id'), ['asset_id'], unique=False)

    op.create_table('latest_quotes',
    sa.Column('asset_id', sa.BigInteger(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('price_usd', sa.Numeric(), nullable=False),
    sa.Column('open_usd', sa.Numeric(), nullable=True),
    sa.Column('high_usd', sa.Numeric(), nullable=True),
    sa.Column('low_usd', sa.Numeric(), nullable=True),
    sa.Column('market_cap_usd', sa.Numeric(), nullable=True),
    sa.Column('volume_24h_usd', sa.Numeric(), nullable=True),
    sa.Column('circulating_supply', sa.Numeric(), nullable=True),
    sa.Column('total_supply', sa.Numeric(), nullable=True),
    sa.Column('max_supply', sa.Numeric(), nullable=True),
    sa.Column('market_cap_rank', sa.Integer(), nullable=True),
    sa.Column('change_24h_pct', sa.Numeric(), nullable=True),
    sa.Column('observed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('payload_hash', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['asset_id'], ['assets.id'], name=op.f('fk_latest_quotes_asset_id_assets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('asset_id', 'source', name=op.f('pk_latest_quotes'))
    )
    with op.batch_alter_table('latest_quotes', schema=None) as batch_op:
        batch_op.create_index('ix_latest_quotes_observed', ['observed_at'], unique=False)
        batch_op.create_index('ix_latest_quotes_source', ['source'], unique=False)
    # The API's stable order (market cap, then asset, then source) walked by keyset cursors.
    op.execute("CREATE INDEX ix_latest_quotes_sort ON latest_quotes "
               "(COALESCE(market_cap_usd, '-1'::numeric) DESC, asset_id, source)")
    op.execute("CREATE INDEX ix_assets_symbol_lower ON assets (lower(symbol))")

    op.create_table('quotes',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('asset_id', sa.BigInteger(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('price_usd', sa.Numeric(), nullable=False),
    sa.Column('open_usd', sa.Numeric(), nullable=True),
    sa.Column('high_usd', sa.Numeric(), nullable=True),
    sa.Column('low_usd', sa.Numeric(), nullable=True),
    sa.Column('market_cap_usd', sa.Numeric(), nullable=True),
    sa.Column('volume_24h_usd', sa.Numeric(), nullable=True),
    sa.Column('circulating_supply', sa.Numeric(), nullable=True),
    sa.Column('total_supply', sa.Numeric(), nullable=True),
    sa.Column('max_supply', sa.Numeric(), nullable=True),
    sa.Column('market_cap_rank', sa.Integer(), nullable=True),
    sa.Column('change_24h_pct', sa.Numeric(), nullable=True),
    sa.Column('observed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('payload_hash', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['asset_id'], ['assets.id'], name=op.f('fk_quotes_asset_id_assets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quotes')),
    sa.UniqueConstraint('asset_id', 'source', 'observed_at', name='uq_quotes_asset_source_observed')
    )
    with op.batch_alter_table('quotes', schema=None) as batch_op:
        batch_op.create_index('ix_quotes_run', ['run_id'], unique=False)
        batch_op.create_index('ix_quotes_source_observed', ['source', 'observed_at'], unique=False)



def downgrade():
    with op.batch_alter_table('quotes', schema=None) as batch_op:
        batch_op.drop_index('ix_quotes_source_observed')
        batch_op.drop_index('ix_quotes_run')

    op.drop_table('quotes')
    op.execute("DROP INDEX IF EXISTS ix_latest_quotes_sort")
    op.execute("DROP INDEX IF EXISTS ix_assets_symbol_lower")
    with op.batch_alter_table('latest_quotes', schema=None) as batch_op:
        batch_op.drop_index('ix_latest_quotes_source')
        batch_op.drop_index('ix_latest_quotes_observed')

    op.drop_table('latest_quotes')
    with op.batch_alter_table('asset_identifiers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_asset_identifiers_asset_id'))

    op.drop_table('asset_identifiers')
    with op.batch_alter_table('rejected_records', schema=None) as batch_op:
        batch_op.drop_index('ix_rejected_records_run')

    op.drop_table('rejected_records')
    with op.batch_alter_table('raw_payloads', schema=None) as batch_op:
        batch_op.drop_index('ix_raw_payloads_run')
        batch_op.drop_index('ix_raw_payloads_hash')

    op.drop_table('raw_payloads')
    with op.batch_alter_table('etl_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_etl_runs_status')
        batch_op.drop_index('ix_etl_runs_source_created')

    op.drop_table('etl_runs')
    op.drop_table('checkpoints')
    with op.batch_alter_table('assets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_assets_symbol'))

    op.drop_table('assets')
