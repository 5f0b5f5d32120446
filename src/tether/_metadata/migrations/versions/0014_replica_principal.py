"""deployment replicas: who reports each, in a column of its own

Revision ID: 0014
Revises: 0013

- deployment_replicas.principal: the caller that reports the replica (it was only
  inside the row's ``info`` JSON). Every heartbeat of a new replica counted the
  caller's replicas by decoding every row's info (up to 64 KB each): with a
  thousand rows one 200-byte heartbeat held the write lock 3.9 s (a review). Now
  it is an indexed column; existing rows are filled from their info.
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployment_replicas") as batch:
        batch.add_column(sa.Column("principal", sa.String(length=256), nullable=False,
                                   server_default=""))
        batch.create_index("ix_deployment_replicas_principal", ["deployment", "principal"])
    conn = op.get_bind()
    replicas = sa.table("deployment_replicas", sa.column("deployment"), sa.column("replica"),
                        sa.column("info"), sa.column("principal"))
    for deployment, replica, info in conn.execute(
            sa.select(replicas.c.deployment, replicas.c.replica, replicas.c.info)).all():
        try:
            owner = json.loads(info).get("_principal")
        except (TypeError, ValueError, AttributeError):
            owner = None
        if isinstance(owner, str):
            conn.execute(replicas.update().where(replicas.c.deployment == deployment,
                                                 replicas.c.replica == replica)
                         .values(principal=owner[:256]))


def downgrade() -> None:
    with op.batch_alter_table("deployment_replicas") as batch:
        batch.drop_index("ix_deployment_replicas_principal")
        batch.drop_column("principal")
