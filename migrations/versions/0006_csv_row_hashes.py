"""csv_row_hashes: what each CSV file's accepted rows were, so a changed file costs what changed

One row per chunk of a CSV file read column-wise (crypto_app/pipeline/proportional.py): the 8-byte hashes
(blake2b of the chunk's decimal marks and the record's bytes) of the records that were stored, packed in
`hashes`. Written in the transaction of the chunk's quotes. A file read again from its start replaces its
rows; a record whose hash is there is stored exactly as the file says and is not validated or upserted
again.

Revision ID: 0006_csv_row_hashes
Revises: 0005_storage
"""
from alembic import op

revision = "0006_csv_row_hashes"
down_revision = "0005_storage"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("""
        CREATE TABLE csv_row_hashes (
            file text NOT NULL,
            chunk_start bigint NOT NULL,
            hashes bytea NOT NULL,
            PRIMARY KEY (file, chunk_start)
        )""")


def downgrade():
    op.execute("DROP TABLE csv_row_hashes")
