"""Model policies kept in the registry, versioned: setting, reading, approvals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._digest import blake3_hex
from .._errors import Conflict, NotFound, PolicyViolation
from .._metadata import repository as repo
from .._metadata.audit_log import append_event
from .._metadata.clock import now_iso
from .._metadata.schema import approvals, policies
from .._policy import Policy, parse_policy
from .._records import ModelVersion
from .._reference import parse_reference, validate_alias_name
from .manifest_limits import check_reason
from .resolve import require_model, resolve_version
from .roles import require_role

if TYPE_CHECKING:
    from .registry import Registry


def policy_row(conn: sa.Connection, mid: int) -> sa.Row[Any] | None:
    query = (
        sa.select(policies)
        .where(policies.c.model_id == mid)
        .order_by(policies.c.revision.desc())
        .limit(1)
    )
    return conn.execute(query).first()


def current_policy(conn: sa.Connection, mid: int) -> Policy:
    row = policy_row(conn, mid)
    return parse_policy(row.text) if row is not None else Policy()


def set_policy(registry: Registry, name: str, text: str) -> dict[str, Any]:
    # Who may, first: the text is read only for an admin of the model (a review: a
    # reader's YAML bomb was expanded, and printed, before the role was asked).
    with registry.read() as conn:
        require_model(conn, name)
        require_role(conn, registry.actor, "admin", name)
    parse_policy(text)  # refuse a bad file before anything is written
    with registry.write() as conn:
        mid = require_model(conn, name, lock=True)
        require_role(conn, registry.actor, "admin", name)
        previous = policy_row(conn, mid)
        digest = blake3_hex(text.encode())
        if previous is not None and previous.digest == digest:
            return {
                "model": name,
                "revision": previous.revision,
                "digest": digest,
                "changed": False,
            }
        revision = (previous.revision if previous is not None else 0) + 1
        conn.execute(
            policies.insert().values(
                model_id=mid,
                revision=revision,
                text=text,
                digest=digest,
                author=registry.actor,
                created_at=now_iso(),
            )
        )
        append_event(
            conn,
            actor=registry.actor,
            action="policy.set",
            model=name,
            subject=f"{name} policy",
            before=previous.revision if previous else None,
            after=revision,
            details={"digest": digest},
        )
        return {"model": name, "revision": revision, "digest": digest, "changed": True}


def get_policy(registry: Registry, name: str, revision: int | None = None) -> dict[str, Any]:
    with registry.read() as conn:
        mid = require_model(conn, name)
        query = sa.select(policies).where(policies.c.model_id == mid)
        if revision is not None:
            query = query.where(policies.c.revision == revision)
        rows = list(conn.execute(query.order_by(policies.c.revision)))
        if not rows:
            raise NotFound(
                f"{name} has no policy" + (f" revision {revision}" if revision else ""),
                hint=f"set one with `tether policy set {name} policy.yaml`",
            )
        row = rows[-1]
        return {
            "model": name,
            "revision": row.revision,
            "text": row.text,
            "digest": row.digest,
            "author": row.author,
            "created_at": row.created_at,
            "revisions": [r.revision for r in rows],
        }



# -- approvals --------------------------------------------------------------------


def approve(registry: Registry, ref: str, alias: str, *, comment: str = "") -> list[str]:
    check_reason(comment, "the comment")
    validate_alias_name(alias)
    with registry.write() as conn:
        # The role first: a refusal naming the missing version listed the model's
        # versions and aliases to a caller with no role on it.
        require_role(conn, registry.actor, "approver", parse_reference(ref).name)
        version = resolve_version(conn, ref)
        if version.author == registry.actor:
            raise PolicyViolation(
                f"{registry.actor} logged {version.ref}; an approval must come from someone else",
                hint="ask another approver to run `tether approve`",
            )
        try:
            with conn.begin_nested():
                conn.execute(
                    approvals.insert().values(
                        version_id=version.id,
                        alias=alias,
                        actor=registry.actor,
                        comment=comment,
                        created_at=now_iso(),
                    )
                )
        except sa.exc.IntegrityError as error:
            raise Conflict(
                f"{registry.actor} already approved {version.ref} for {alias}"
            ) from error
        append_event(
            conn,
            actor=registry.actor,
            action="version.approved",
            model=version.name,
            subject=f"{version.ref} for {alias}",
            details={"comment": comment},
        )
        return approvers(conn, version.id, alias)


def approvers(conn: sa.Connection, vid: int, alias: str) -> list[str]:
    query = sa.select(approvals.c.actor).where(
        approvals.c.version_id == vid, approvals.c.alias == alias
    )
    return sorted(conn.execute(query).scalars())


def check_deprecated_by_policy(conn: sa.Connection, version: ModelVersion) -> bool:
    mid = repo.model_id(conn, version.name)
    return mid is not None and current_policy(conn, mid).is_deprecated(version.semver)
