"""Alembic environment: runs on the connection Tether hands it."""

from __future__ import annotations

from alembic import context

from tether._metadata.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when run by the alembic CLI
    raise RuntimeError("run migrations through `tether db upgrade`, not the alembic CLI")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
