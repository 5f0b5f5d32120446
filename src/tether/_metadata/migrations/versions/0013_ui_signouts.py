"""web UI sign-outs: a signed-out session's cookie stops working on every worker

Revision ID: 0013
Revises: 0012

- ui_signouts: when each API token (by its SHA-256) last signed out of the UI;
  a cookie sealed for that token before then is refused, until it would have
  expired anyway (``ui/sessions.py``). Deleting the cookie in the browser ended
  nothing: a copy of it worked on as long as the API token did. One row per
  token, so signing in and out again and again adds none.
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
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("signed_out_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("token"),
    )


def downgrade() -> None:
    op.drop_table("ui_signouts")
