"""chunk records stored uncompressed on PostgreSQL, so ranges of them read directly

Revision ID: 0011
Revises: 0010

- versions.chunk_records, dataset_versions.chunk_records: STORAGE EXTERNAL on
  PostgreSQL (out of line, never compressed). A large list is read back in
  ranges (``substr``: repository.DatabaseRecords). A compressed value is
  decompressed from its start for every range, so reading one of N ranges
  costs the whole prefix: the list of a file of repeated chunks (a zeroed
  checkpoint, a sparse image) compresses very well and would be read back
  decompressing it over and over. Random digests hardly compress anyway.
  Applies to rows written from now on; SQLite has no such setting.
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TABLES = ("versions", "dataset_versions")


def _set_storage(mode: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN chunk_records SET STORAGE {mode}")


def upgrade() -> None:
    _set_storage("EXTERNAL")


def downgrade() -> None:
    _set_storage("EXTENDED")
