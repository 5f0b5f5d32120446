"""index for numbering: a model's highest semantic version without reading its versions

Revision ID: 0009
Revises: 0008

- versions (model_id, major, minor, patch): logging a version asks for the
  highest version number given so far; with thousands of versions per model
  that was a sort of every row on every log.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_versions_model_semver_order", "versions", ["model_id", "major", "minor", "patch"]
    )


def downgrade() -> None:
    op.drop_index("ix_versions_model_semver_order", table_name="versions")
