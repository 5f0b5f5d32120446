"""web UI sign-outs: a signed-out session's cookie stops working on every worker

Revision ID: 0013
Revises: 0012

- ui_signouts: the id of each session signed out, kept until its cookie would
  have expired anyway (``ui/sessions.py``). Deleting the cookie in the browser
  ended nothing: a copy of it worked on as long as the API token did.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_signouts",
        sa.Column("session", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("session"),
    )


def downgrade() -> None:
    op.drop_table("ui_signouts")
