"""Mutable descriptions around immutable versions: model metadata, tags, deletion.

A version's bytes and recorded facts never change; its tags and notes are
labels around it (the content digest does not cover them), and deleting marks
it deleted (metadata and audit trail stay, gc reclaims the bytes).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._errors import Conflict, PolicyViolation
from .._metadata import repository as repo
from .._metadata.audit_log import append_event
from .._metadata.schema import aliases, models, versions
from .._records import ModelInfo, ModelVersion
from .._reference import parse_reference, validate_model_name
from . import model_search
from .manifest_limits import check_tags, check_text
from .resolve import require_model, resolve_version

if TYPE_CHECKING:
    from .registry import Registry


def create_model(
    registry: Registry, name: str, *, description: str = "", tags: dict[str, str] | None = None
) -> ModelInfo:
    validate_model_name(name)
    check_text(description, "the description")
    check_tags(tags)
    with registry.write() as conn:
        if repo.model_id(conn, name) is not None:
            raise Conflict(f"model {name!r} already exists")
        mid, _ = repo.ensure_model(conn, name)
        repo.update_model(conn, mid, description=description, tags=tags or {})
        append_event(conn, actor=registry.actor, action="model.created", model=name, subject=name)
    return model_search.model_info(registry, name)


def update_model(
    registry: Registry,
    name: str,
    *,
    description: str | None = None,
    set_tags: dict[str, str] | None = None,
    delete_tags: list[str] | None = None,
) -> ModelInfo:
    check_text(description, "the description")
    check_tags(set_tags)
    with registry.write() as conn:
        mid = require_model(conn, name, lock=True)
        row = conn.execute(sa.select(models).where(models.c.id == mid)).one()
        tags = json.loads(row.tags or "{}")
        tags.update(set_tags or {})
        for key in delete_tags or []:
            tags.pop(key, None)
        check_tags(tags)
        fields: dict[str, Any] = {"tags": tags}
        if description is not None:
            fields["description"] = description
        repo.update_model(conn, mid, **fields)
        append_event(
            conn,
            actor=registry.actor,
            action="model.updated",
            model=name,
            subject=name,
            # What changed, not every tag again (the audit log keeps each event forever).
            details=_changes(set_tags, delete_tags, description=description),
        )
    return model_search.model_info(registry, name)


def delete_model(registry: Registry, name: str) -> None:
    from .deployments import routed_version_ids

    with registry.write() as conn:
        mid = require_model(conn, name, lock=True)
        if repo.alias_targets(conn, mid):
            raise PolicyViolation(
                f"{name} still has aliases; delete them first",
                hint=f"aliases: {', '.join(repo.alias_targets(conn, mid))}",
            )
        ids = set(conn.execute(sa.select(versions.c.id).where(versions.c.model_id == mid))
                  .scalars())
        deployed = next((d for vid, d in routed_version_ids(conn, history=False).items()
                         if vid in ids), None)
        if deployed is not None:
            raise PolicyViolation(
                f"{name} takes traffic in deployment {deployed!r}",
                hint=f"change deployment {deployed!r} to route elsewhere first")
        conn.execute(versions.update().where(versions.c.model_id == mid).values(status="deleted"))
        # Free the name for a new model; the old rows stay for the audit trail.
        conn.execute(
            models.update()
            .where(models.c.id == mid)
            .values(deleted=True, name=f"{name}~deleted~{mid}")
        )
        append_event(conn, actor=registry.actor, action="model.deleted", model=name, subject=name)


def delete_version(registry: Registry, ref: str) -> ModelVersion:
    """Mark ``ref`` deleted: it no longer resolves or counts, its record and audit
    trail stay, and gc reclaims bytes no kept version shares. Refused while an alias
    points at it."""
    with registry.write() as conn:
        # The model's row locked first, as a promotion, a deployment or gc's marking lock
        # it: a promotion racing this deletion left its alias on a deleted version (a
        # review, on PostgreSQL).
        require_model(conn, parse_reference(ref).name, lock=True)
        version = resolve_version(conn, ref)
        if version.aliases:
            moves = "; ".join(
                f"`tether alias delete {version.name} {a}` or promote another version to {a}"
                for a in version.aliases
            )
            raise PolicyViolation(
                f"{version.ref} is the target of {', '.join(version.aliases)}",
                hint=moves,
            )
        from .deployments import routed_version_ids

        deployed = routed_version_ids(conn, history=False).get(version.id)
        if deployed is not None:
            raise PolicyViolation(
                f"{version.ref} takes traffic in deployment {deployed!r}",
                hint=f"change deployment {deployed!r} to route elsewhere first "
                "(`tether deploy apply`)")
        repo.set_version_status(conn, version.id, "deleted")
        append_event(
            conn,
            actor=registry.actor,
            action="version.deleted",
            model=version.name,
            subject=version.ref,
            before=version.status,
            after="deleted",
            details={"digest": f"sha:{version.digest}"},
        )
        return replace(version, status="deleted")


def versions_with_deleted(registry: Registry, name: str) -> list[ModelVersion]:
    """Every version of ``name`` by sequence number, deleted ones included."""
    with registry.read() as conn:
        mid = require_model(conn, name)
        return repo.listed_versions(conn, name, mid,
                                    repo.version_rows(conn, mid, include_deleted=True))


def deleted_models(registry: Registry) -> list[ModelInfo]:
    """Models deleted with ``delete_model``, under their original names."""
    with registry.read() as conn:
        rows = conn.execute(
            sa.select(models).where(models.c.deleted.is_(True)).order_by(models.c.name)
        )
        return [
            ModelInfo(
                name=row.name.rsplit("~deleted~", 1)[0],
                description=row.description,
                owners=json.loads(row.owners or "[]"),
                tags=json.loads(row.tags or "{}"),
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
            for row in rows
        ]


def update_version(
    registry: Registry,
    ref: str,
    *,
    notes: str | None = None,
    set_tags: dict[str, str] | None = None,
    delete_tags: list[str] | None = None,
) -> ModelVersion:
    check_text(notes, "the notes")
    check_tags(set_tags)
    with registry.write() as conn:
        version = resolve_version(conn, ref)
        tags = dict(version.tags)
        tags.update(set_tags or {})
        for key in delete_tags or []:
            tags.pop(key, None)
        check_tags(tags)
        values: dict[str, Any] = {"tags": json.dumps(tags, sort_keys=True, separators=(",", ":"))}
        if notes is not None:
            values["notes"] = notes
        conn.execute(versions.update().where(versions.c.id == version.id).values(**values))
        append_event(
            conn,
            actor=registry.actor,
            action="version.updated",
            model=version.name,
            subject=version.ref,
            details=_changes(set_tags, delete_tags, notes=notes),
        )
        return resolve_version(conn, f"{version.name}@{version.semver}")


def _changes(set_tags: dict[str, str] | None, delete_tags: list[str] | None,
             **text: str | None) -> dict[str, Any]:
    """An update's audit details: the tags set and deleted, and any text given."""
    out: dict[str, Any] = {k: v for k, v in text.items() if v is not None}
    if set_tags:
        out["set_tags"] = dict(set_tags)
    if delete_tags:
        out["delete_tags"] = list(delete_tags)
    return out


def alias_names(conn: sa.Connection, mid: int) -> list[str]:
    return list(conn.execute(sa.select(aliases.c.name).where(aliases.c.model_id == mid)).scalars())
