"""volume_usd: the volume traded within a row's own interval, beside the rolling 24-hour volume

CSV candle files carry the volume of the row's own interval (CryptoDataDownload's "Volume USDT" in an hourly
file is that hour's volume; Kaggle's "Volume" in a daily file is that day's). They were stored in
volume_24h_usd and served as a 24-hour volume. `volume_usd` (nullable NUMERIC, on `quotes` and
`latest_quotes`) now holds them: "USD volume traded within the row's interval (a candle's volume); the
interval is the dataset's native_interval". volume_24h_usd keeps the rolling 24h volumes of the APIs and of
CSV columns that say they are one ("24h volume", "volume_24h_usd", "total_volume").

`quotes` is partitioned (0005): ADD COLUMN on the parent reaches every partition, and a nullable column
without a default is a catalog change only (no rewrite, a brief ACCESS EXCLUSIVE lock).

Existing rows are NOT moved: a CSV row's volume_24h_usd may have come from a "Volume" column (an interval
volume) or from a "24h volume" column (a 24h volume), and the database does not record which header it was.
`flask etl import --force FILE` reads a file again and rewrites its rows into the right column (README,
"Upgrading to 0007").

Rollup candles (`candles.volume_sum`, `volumes`) are from now on the sum and count of the rolled-up rows'
volume_usd (crypto_app/pipeline/maintenance.py). For datasets of the API sources these held sums of rolling
24h volumes, which are no interval volume; their rows have no volume_usd, so the new definition gives NULL
and 0 there, which is set here (certain: every API volume is a rolling 24h volume). Candles of CSV datasets
keep their sums (of what the file's volume column said).

Revision ID: 0007_volume_usd
Revises: 0006_csv_row_hashes
"""
from alembic import op

revision = "0007_volume_usd"
down_revision = "0006_csv_row_hashes"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("ALTER TABLE quotes ADD COLUMN volume_usd numeric")
    op.execute("ALTER TABLE latest_quotes ADD COLUMN volume_usd numeric")
    op.execute("UPDATE candles SET volume_sum = NULL, volumes = 0 "
               "WHERE dataset_id IN (SELECT id FROM datasets WHERE source <> 'csv') "
               "AND (volume_sum IS NOT NULL OR volumes <> 0)")


def downgrade():
    """The columns go (with the interval volumes they hold; re-import CSV files after downgrading). The
    cleared rollup sums of API datasets are not restored (they were sums of 24h volumes)."""
    op.execute("ALTER TABLE latest_quotes DROP COLUMN volume_usd")
    op.execute("ALTER TABLE quotes DROP COLUMN volume_usd")
