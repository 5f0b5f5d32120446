"""signed deployments: which versions a trusted endpoint may run, vouched by a key

Revision ID: 0012
Revises: 0011

- deployment_signatures: one signature per (deployment, key) over the content
  digests each trusted endpoint may load (``_registry/deployment_signing.py``).
  A replica of a remote registry honours ``trusted: true`` only for a version a
  signature it checks itself, by a key it pins, lists.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment_signatures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("deployment", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("signer", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("deployment", "key_id", name="uq_deployment_signatures_key"),
    )


def downgrade() -> None:
    op.drop_table("deployment_signatures")
