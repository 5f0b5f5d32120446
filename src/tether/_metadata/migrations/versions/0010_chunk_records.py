"""chunk records: large files' chunk lists beside the manifest, as packed binary

Revision ID: 0010
Revises: 0009

- versions.chunk_records, dataset_versions.chunk_records: the chunk lists of a
  manifest's files of many chunks, 40 bytes a chunk (see
  repository.stored_parts). Rows written before keep their lists in the
  manifest's JSON, which is still read.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("versions", sa.Column("chunk_records", sa.LargeBinary, nullable=True))
    op.add_column("dataset_versions", sa.Column("chunk_records", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    # Older code reads a "stored_chunks" entry as a file without chunks, and gc would then
    # collect its bytes: refuse rather than lose them.
    bind = op.get_bind()
    for table in ("versions", "dataset_versions"):
        used = bind.execute(sa.text(
            f"SELECT COUNT(*) FROM {table} WHERE chunk_records IS NOT NULL")).scalar()
        if used:
            raise RuntimeError(
                f"{used} row(s) of {table} keep chunk lists in chunk_records, which the "
                "schema before 0010 cannot hold; downgrading would lose them")
    with op.batch_alter_table("dataset_versions") as batch:
        batch.drop_column("chunk_records")
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("chunk_records")
