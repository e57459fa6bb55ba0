"""daily partitions of quotes: raw rows kept 30-31 days instead of 30.8-36.8

Expired snapshot rows go a whole partition at a time (crypto_app/pipeline/maintenance.py). With weekly
partitions the raw rows kept swung between RETENTION_RAW_DAYS and that plus seven days: at the default
schedules 26.6 to 31.8 million rows, 6.9 to 8.3 GB, the whole database within ±10.9% of its mean over the
90-day soak instead of flat. From this migration on the maintenance task creates daily partitions
(`quotes_dYYYYMMDD`, crypto_app/pipeline/partitions.py), so the swing is one day.

Here: every weekly partition that starts after now and holds no row (the ones created ahead) is dropped
and replaced by daily partitions covering the same days. The weekly partitions that hold rows stay and
expire whole as before; `quote_partitioning.weekly_from` keeps its meaning (where dated partitions start).

Cost: catalog changes only (the partitions replaced are empty): a brief ACCESS EXCLUSIVE lock on `quotes`
for the DROPs, which waits for running reads and writes of `quotes` to finish.

Revision ID: 0008_daily_partitions
Revises: 0007_volume_usd
"""
from datetime import datetime, timedelta, timezone

from alembic import op

revision = "0008_daily_partitions"
down_revision = "0007_volume_usd"
branch_labels = None
depends_on = None

def upgrade():
    from crypto_app.pipeline.partitions import partitions

    bind = op.get_bind()
    now = datetime.now(timezone.utc)
    for part in partitions(bind.connection.dbapi_connection):
        if not part.name.startswith("quotes_w") or part.lo <= now \
                or bind.exec_driver_sql(f'SELECT EXISTS (SELECT 1 FROM "{part.name}")').scalar():
            continue
        op.execute(f'DROP TABLE "{part.name}"')
        day = part.lo
        while day < part.hi:
            op.execute(f"CREATE TABLE quotes_d{day:%Y%m%d} PARTITION OF quotes FOR VALUES FROM "
                       f"('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')")
            day += timedelta(days=1)


def downgrade():
    """Back to weeks: the daily partitions of each week are detached, a weekly partition takes their rows
    (copied), and they are dropped (the code before 0008 expires only weekly partitions)."""
    from crypto_app.pipeline.partitions import partitions, week_start

    conn = op.get_bind().connection.dbapi_connection
    daily = [p for p in partitions(conn) if p.name.startswith("quotes_d")]
    weeks = sorted({week_start(p.lo) for p in daily})
    for week in weeks:
        days = [p for p in daily if week <= p.lo < week + timedelta(weeks=1)]
        for p in days:
            op.execute(f'ALTER TABLE quotes DETACH PARTITION "{p.name}"')
        op.execute(f"CREATE TABLE quotes_w{week:%Y%m%d} PARTITION OF quotes FOR VALUES FROM "
                   f"('{week.isoformat()}') TO ('{(week + timedelta(weeks=1)).isoformat()}')")
        for p in days:
            op.execute(f'INSERT INTO quotes SELECT * FROM "{p.name}"')
            op.execute(f'DROP TABLE "{p.name}"')
