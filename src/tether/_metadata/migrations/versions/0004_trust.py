"""trust: version digests bind every chunk list; signed audit heads

Revision ID: 0004
Revises: 0003

Recomputes each version's manifest digest and content digest with the chunk
lists included (so a chunk list changed in the database no longer matches),
records the old and new digest of every version in one audit event, and adds
the table of signed audit heads. Signatures and lock pins made over an old
digest must be renewed (`tether sign`, `tether lock update`).
"""

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

from tether._digest import digest_of
from tether._identity import version_digest
from tether._metadata.audit_log import append_event

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _manifest_digest(manifest: list[dict[str, Any]]) -> str:
    """The manifest digest as defined when this ran (frozen here: the library's own
    reads manifests more strictly now, and a migration must not change with it)."""
    rows = [[f["path"], int(f["size"]), f["digest"],
             [[c[0], int(c[1])] for c in f.get("chunks", [])]] for f in manifest]
    return digest_of(sorted(rows, key=lambda row: str(row[0])))


def upgrade() -> None:
    op.create_table(
        "audit_signatures",
        sa.Column("event_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("signature", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT v.id, m.name, v.semver, v.digest, v.manifest, v.flavor, v.signature, "
            "v.params, v.data FROM versions v JOIN models m ON m.id = v.model_id ORDER BY v.id"
        )
    ).all()
    changed: dict[str, list[str]] = {}
    for row in rows:
        files_digest = _manifest_digest(json.loads(row.manifest))
        digest = version_digest(
            files_digest=files_digest,
            flavor=json.loads(row.flavor),
            schema=json.loads(row.signature) if row.signature is not None else None,
            params=json.loads(row.params),
            data=json.loads(row.data),
        )
        conn.execute(
            sa.text("UPDATE versions SET digest = :d, files_digest = :f WHERE id = :i"),
            {"d": digest, "f": files_digest, "i": row.id},
        )
        if digest != row.digest:
            changed[f"{row.name}@{row.semver}"] = [f"sha:{row.digest}", f"sha:{digest}"]
    if changed:
        append_event(
            conn,
            actor="tether db upgrade",
            action="registry.digests_recomputed",
            details={
                "why": "digests now bind every file's chunk list; renew signatures and lock pins",
                "versions": changed,
            },
        )


def downgrade() -> None:
    op.drop_table("audit_signatures")
