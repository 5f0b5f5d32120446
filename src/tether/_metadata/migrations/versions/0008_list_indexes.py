"""indexes for big registries: version counts, audit pages and alias histories in index order

Revision ID: 0008
Revises: 0007

- versions (model_id, status, seq): a model list's version counts and latest
  versions (count and max(seq) of the live versions of a page's models) are
  answered from the index, never from the wide version rows;
- events (model, id): one model's newest events without sorting all of them
  (replaces events (model));
- alias_moves (model_id, alias, id): an alias's history newest first
  (replaces alias_moves (model_id, alias));
- aliases (name): "models that have a production alias" without a scan;
- models (updated_at), models (created_at): a model list sorted by last change
  or creation reads one page in index order.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_versions_model_status_seq", "versions", ["model_id", "status", "seq"])
    op.create_index("ix_events_model_id", "events", ["model", "id"])
    op.drop_index("ix_events_model", table_name="events")
    op.create_index("ix_alias_moves_model_alias_id", "alias_moves", ["model_id", "alias", "id"])
    op.drop_index("ix_alias_moves_model_alias", table_name="alias_moves")
    op.create_index("ix_aliases_name", "aliases", ["name"])
    op.create_index("ix_models_updated_at", "models", ["updated_at"])
    op.create_index("ix_models_created_at", "models", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_models_created_at", table_name="models")
    op.drop_index("ix_models_updated_at", table_name="models")
    op.drop_index("ix_aliases_name", table_name="aliases")
    op.create_index("ix_alias_moves_model_alias", "alias_moves", ["model_id", "alias"])
    op.drop_index("ix_alias_moves_model_alias_id", table_name="alias_moves")
    op.create_index("ix_events_model", "events", ["model"])
    op.drop_index("ix_events_model_id", table_name="events")
    op.drop_index("ix_versions_model_status_seq", table_name="versions")
