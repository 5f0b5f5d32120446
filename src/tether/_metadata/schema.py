"""Table definitions. Every change here needs an Alembic migration beside it.

Times are ISO-8601 UTC strings (``2026-11-24T10:00:00.000000Z``): they sort as
text, read the same in SQLite and PostgreSQL, and need no time-zone handling.
JSON columns hold canonical JSON text for the same portability.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

models = Table(
    "models",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("owners", Text, nullable=False, default="[]"),
    Column("tags", Text, nullable=False, default="{}"),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Index("ix_models_updated_at", "updated_at"),  # model lists sorted by change (0008)
    Index("ix_models_created_at", "created_at"),  # (0008)
)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_id", Integer, ForeignKey("models.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("semver", String(64), nullable=False),
    Column("major", Integer, nullable=False),
    Column("minor", Integer, nullable=False),
    Column("patch", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("files_digest", String(64), nullable=False),
    Column("manifest", Text, nullable=False),
    #: The chunk lists of the manifest's files of many chunks, as packed records
    #: (see repository.stored_parts): a million chunks are 40 MB here, not 90 MB of
    #: JSON text held twice while it is written and read.
    Column("chunk_records", LargeBinary, nullable=True),
    Column("flavor", Text, nullable=False),
    Column("signature", Text, nullable=True),
    Column("input_example", Text, nullable=True),
    Column("params", Text, nullable=False, default="{}"),
    Column("metrics", Text, nullable=False, default="{}"),
    Column("data", Text, nullable=False, default="{}"),
    Column("lineage", Text, nullable=False, default="{}"),
    Column("environment", Text, nullable=False, default="{}"),
    Column("tags", Text, nullable=False, default="{}"),
    Column("notes", Text, nullable=False, default=""),
    Column("author", String(256), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("status", String(16), nullable=False, default="ready"),
    UniqueConstraint("model_id", "seq", name="uq_versions_model_seq"),
    UniqueConstraint("model_id", "semver", name="uq_versions_model_semver"),
    Index("ix_versions_digest", "digest"),
    # Counts and latest versions of a page of models, from the index alone (0008).
    Index("ix_versions_model_status_seq", "model_id", "status", "seq"),
    # The highest version number of a model, read from the index at every log (0009).
    Index("ix_versions_model_semver_order", "model_id", "major", "minor", "patch"),
)

aliases = Table(
    "aliases",
    metadata,
    Column("model_id", Integer, ForeignKey("models.id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("updated_by", String(256), nullable=False),
    # Bumped on every move: the cheap ETag of an alias read.
    Column("generation", Integer, nullable=False, default=1),
    Index("ix_aliases_name", "name"),  # models that have a given alias (0008)
)

alias_moves = Table(
    "alias_moves",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_id", Integer, ForeignKey("models.id"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=True),
    Column("previous_version_id", Integer, ForeignKey("versions.id"), nullable=True),
    Column("action", String(16), nullable=False),  # set | rollback | delete
    # A "set" row that a rollback undid; rollback walks back over these.
    Column("undone", Boolean, nullable=False, default=False),
    Column("actor", String(256), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("moved_at", String(32), nullable=False),
    Index("ix_alias_moves_model_alias_id", "model_id", "alias", "id"),  # history order (0008)
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("ts", String(32), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("model", String(128), nullable=True),
    Column("subject", Text, nullable=True),
    Column("before", Text, nullable=True),
    Column("after", Text, nullable=True),
    Column("details", Text, nullable=False, default="{}"),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_events_model_id", "model", "id"),  # one model's newest events (0008)
)

# One row: the newest event's id and hash. Appending locks it, which orders
# concurrent writers, and it lets `audit verify` notice a deleted tail.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_id", Integer, nullable=False),
    Column("last_hash", String(64), nullable=False),
)

#: The registry key's signature over the chain's head after each writing transaction.
audit_signatures = Table(
    "audit_signatures",
    metadata,
    Column("event_id", Integer, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("signature", String(256), nullable=False),
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)

# -- governance (revision 0002) ------------------------------------------------

# A model's policy file, versioned: every `tether policy set` adds a revision.
policies = Table(
    "policies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_id", Integer, ForeignKey("models.id"), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("author", String(256), nullable=False),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("model_id", "revision", name="uq_policies_model_revision"),
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("comment", Text, nullable=False, default=""),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("version_id", "alias", "actor", name="uq_approvals_once"),
)

signatures = Table(
    "signatures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", Text, nullable=False),
    Column("payload_digest", String(64), nullable=False),
    Column("signer", String(256), nullable=False),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("version_id", "key_id", name="uq_signatures_version_key"),
)

trusted_keys = Table(
    "trusted_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("public_key", Text, nullable=False),
    Column("added_by", String(256), nullable=False),
    Column("created_at", String(32), nullable=False),
)

# Who holds which role, registry-wide (model NULL) or for one model.
grants = Table(
    "grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("principal", String(256), nullable=False),
    Column("role", String(32), nullable=False),
    Column("model", String(128), nullable=True),
    Column("granted_by", String(256), nullable=False),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("principal", "role", "model", name="uq_grants"),
)

# -- API tokens (revision 0003) ----------------------------------------------------

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # SHA-256 of the secret: the secret itself is shown once and never stored.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("principal", String(256), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("created_by", String(256), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("expires_at", String(32), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
)

# -- datasets (revision 0005) --------------------------------------------------
# Datasets are versioned like models (sequence, semantic version, content digest,
# aliases with moves, audit events) in tables of their own: a dataset and a model
# may share a name, and nothing that lists or gates models sees datasets.

datasets = Table(
    "datasets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
)

dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("semver", String(64), nullable=False),
    Column("major", Integer, nullable=False),
    Column("minor", Integer, nullable=False),
    Column("patch", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("files_digest", String(64), nullable=False),
    Column("manifest", Text, nullable=False),
    Column("chunk_records", LargeBinary, nullable=True),  # as in versions
    # Per tabular file: format, columns (name -> type), rows. Derived from the bytes.
    Column("tables", Text, nullable=False, default="{}"),
    # Where it was added from: path, git state.
    Column("source", Text, nullable=False, default="{}"),
    Column("tags", Text, nullable=False, default="{}"),
    Column("notes", Text, nullable=False, default=""),
    Column("author", String(256), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("status", String(16), nullable=False, default="ready"),
    UniqueConstraint("dataset_id", "seq", name="uq_dataset_versions_seq"),
    UniqueConstraint("dataset_id", "semver", name="uq_dataset_versions_semver"),
    Index("ix_dataset_versions_digest", "digest"),
)

dataset_aliases = Table(
    "dataset_aliases",
    metadata,
    Column("dataset_id", Integer, ForeignKey("datasets.id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("version_id", Integer, ForeignKey("dataset_versions.id"), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("updated_by", String(256), nullable=False),
    Column("generation", Integer, nullable=False, default=1),
)

dataset_alias_moves = Table(
    "dataset_alias_moves",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("version_id", Integer, ForeignKey("dataset_versions.id"), nullable=True),
    Column("previous_version_id", Integer, ForeignKey("dataset_versions.id"), nullable=True),
    Column("action", String(16), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("moved_at", String(32), nullable=False),
    Index("ix_dataset_alias_moves", "dataset_id", "alias"),
)

# Lineage both ways: which dataset versions a model version was trained on
# (also in the model's `data`, bound by its digest), indexed for the reverse look-up.
dataset_links = Table(
    "dataset_links",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("dataset_version_id", Integer, ForeignKey("dataset_versions.id"), nullable=False),
    Column("role", String(128), nullable=False),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("model_version_id", "role", name="uq_dataset_links_model_role"),
    Index("ix_dataset_links_dataset", "dataset_version_id"),
)

# -- idempotency keys (revision 0006) ------------------------------------------------
# A version commit sent with an Idempotency-Key records the version it registered,
# so the same request sent again (a retry after a lost response) answers that
# version instead of registering anything. Kept a day; a key is the client's own.

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("principal", String(256), nullable=False),
    Column("scope", String(256), nullable=False),
    Column("request_digest", String(64), nullable=False),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("created_at", String(32), nullable=False),
    Index("ix_idempotency_keys_created", "created_at"),
)

# -- deployments and their replicas (revision 0007) ------------------------------------
# A deployment's desired state (endpoints, routes, weights, shadows, rules) is one
# versioned record: every change is a new revision (kept whole in
# deployment_revisions) and an audit event. Serving replicas follow it, publish
# their window statistics beside it, and one of them at a time holds its lease.

deployments = Table(
    "deployments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("revision", Integer, nullable=False),
    Column("spec", Text, nullable=False),
    Column("paused", Text, nullable=False, default="[]"),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("updated_by", String(256), nullable=False),
)

deployment_revisions = Table(
    "deployment_revisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("deployment_id", Integer, ForeignKey("deployments.id"), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("spec", Text, nullable=False),
    Column("paused", Text, nullable=False, default="[]"),
    Column("action", String(32), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("deployment_id", "revision", name="uq_deployment_revisions"),
)

deployment_replicas = Table(
    "deployment_replicas",
    metadata,
    Column("deployment", String(128), primary_key=True),
    Column("replica", String(128), primary_key=True),
    Column("host", String(256), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("url", String(512), nullable=False, default=""),
    Column("started_at", String(32), nullable=False),
    # Seconds since the epoch (the registry's clock): heartbeat and when it counts as gone.
    Column("heartbeat_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("info", Text, nullable=False, default="{}"),
    Column("stats", Text, nullable=False, default="{}"),
    # The caller that reports it (revision 0014): counted and checked without decoding info.
    Column("principal", String(256), nullable=False, server_default=""),
    Index("ix_deployment_replicas_expires", "expires_at"),
    Index("ix_deployment_replicas_principal", "deployment", "principal"),
)

deployment_leases = Table(
    "deployment_leases",
    metadata,
    Column("deployment", String(128), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("acquired_at", Float, nullable=False),
)

# A signature by a trusted key over the content digests each trusted endpoint of a
# deployment may load (revision 0012): replicas of a remote registry check it themselves.
deployment_signatures = Table(
    "deployment_signatures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("deployment", String(128), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("signature", Text, nullable=False),
    Column("signer", String(256), nullable=False),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("deployment", "key_id", name="uq_deployment_signatures_key"),
)

# When each API token (its SHA-256) last signed out of the web UI (revision 0013): its
# cookies sealed before then are refused until they would have expired anyway
# (ui/sessions.py).
ui_signouts = Table(
    "ui_signouts",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("signed_out_at", Float, nullable=False),
)
