"""Metadata: models, versions, aliases and the audit log, in SQLite or PostgreSQL."""
