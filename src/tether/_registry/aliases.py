"""Moving aliases: promote, roll back, delete, and their history.

Every move is a row in ``alias_moves`` and an audit event. Rollback walks back
over the alias's "set" moves: it marks the newest one undone and points the
alias at the one before, so repeated rollbacks go further back in time.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._errors import Conflict, InvalidInput, NotFound, PermissionDenied, PolicyViolation
from .._metadata import repository as repo
from .._metadata.audit_log import append_event
from .._policy import protected_alias_patterns, role_to_move
from .._records import AliasMove, ModelVersion
from .._reference import parse_reference, refuse_a_version_name, validate_alias_name
from .manifest_limits import check_reason
from .policies import check_deprecated_by_policy, current_policy
from .resolve import require_model, resolve_row
from .roles import require_role

if TYPE_CHECKING:
    from .registry import Registry

#: Called inside the promote transaction with (conn, version, alias, current target)
#: and raising PolicyViolation to refuse; governance plugs in here.
PromoteCheck = Callable[[sa.Connection, ModelVersion, str, ModelVersion | None], None]


def _semver_of(conn: sa.Connection, vid: int | None) -> str | None:
    if vid is None:
        return None
    row = repo.version_by_id(conn, vid)
    return row.semver if row is not None else None


def promote(
    registry: Registry,
    ref: str,
    alias: str,
    *,
    actor: str,
    reason: str = "",
    checks: list[PromoteCheck] | None = None,
    create: bool = False,
) -> AliasMove:
    """Point ``alias`` at ``ref`` after the checks; an alias that does not exist yet
    is made only with ``create=True``, so a typo never becomes a new, unguarded alias."""
    check_reason(reason, "the reason")
    validate_alias_name(alias)
    parsed = parse_reference(ref)
    with registry.write() as conn:
        # The role first: asked before the lookup, a missing model and one the caller may
        # not touch answer alike (a 404 against a 403 told which names exist: a review).
        require_role_to_move(conn, actor, parsed.name, alias)
        mid = require_model(conn, parsed.name, lock=True)
        _, row = resolve_row(conn, parsed)
        version = repo.row_to_version(row, parsed.name)
        if version.status == "deprecated" or check_deprecated_by_policy(conn, version):
            raise PolicyViolation(
                f"{version.ref} is deprecated and cannot be promoted",
                hint="promote a newer version, or undeprecate this one first",
            )
        current = repo.alias_row(conn, mid, alias)
        if current is None and not create:
            raise unknown_alias(conn, mid, parsed.name, alias, creating=ref)
        if current is None:
            refuse_a_look_alike(conn, alias, mid)
        current_version = None
        if current is not None:
            current_row = repo.version_by_id(conn, current.version_id)
            if current_row is not None:
                current_version = repo.row_to_version(current_row, parsed.name)
        before = current_version.semver if current_version else None
        if current is not None and current.version_id == row.id:
            return AliasMove(
                parsed.name,
                alias,
                row.semver,
                before,
                "unchanged",
                actor,
                reason,
                current.updated_at,
            )
        # Checks relative to the current target judge against the last one when the alias
        # was deleted: deleting `production` and creating it again with a version its
        # policy had refused (worse than the current) passed every relative check.
        judged = current_version if current is not None else _last_target(
            conn, mid, parsed.name, alias)
        for check in checks or []:
            check(conn, version, alias, judged)
        repo.point_alias(conn, mid, alias, row.id, actor)
        repo.record_move(
            conn,
            mid,
            alias,
            vid=row.id,
            previous=current.version_id if current else None,
            action="set",
            actor=actor,
            reason=reason,
        )
        event = append_event(
            conn,
            actor=actor,
            action="alias.set",
            model=parsed.name,
            subject=f"{parsed.name}@{alias}",
            before=before,
            after=row.semver,
            details={"digest": f"sha:{row.digest}", "reason": reason},
        )
        return AliasMove(parsed.name, alias, row.semver, before, "set", actor, reason, event.ts)


def _last_target(conn: sa.Connection, mid: int, name: str, alias: str) -> ModelVersion | None:
    """The live version ``alias`` pointed at when it was last deleted (None: it never
    existed, or that version is gone)."""
    from .._metadata.schema import alias_moves

    row = conn.execute(
        sa.select(alias_moves.c.version_id, alias_moves.c.previous_version_id)
        .where(alias_moves.c.model_id == mid, alias_moves.c.alias == alias)
        .order_by(alias_moves.c.id.desc()).limit(1)
    ).first()
    target = None if row is None else (row.version_id or row.previous_version_id)
    found = repo.version_by_id(conn, target) if target is not None else None
    if found is None or found.status == "deleted":
        return None
    return repo.row_to_version(found, name)


#: Registry setting: aliases (comma-separated, glob patterns allowed) only approvers move.
PROTECTED_SETTING = "protected_aliases"


def refuse_a_look_alike(conn: sa.Connection, alias: str, mid: int | None = None) -> None:
    """Refuse a new alias that reads as a protected one but is not (``Production``,
    ``production.``, ``PROD-eu`` beside the pattern ``prod-*``, ``Champion`` beside a
    ``champion`` the model's policy guards): a contributor may make it, and a reader of
    a dashboard or a deployment file takes it for the guarded alias. Or one that reads
    as a version (``refuse_a_version_name``)."""
    import fnmatch

    refuse_a_version_name(alias)

    def plain(name: str) -> str:
        return name.casefold().strip("._-")

    guarded = list(protected_alias_patterns(repo.get_setting(conn, PROTECTED_SETTING)))
    if mid is not None:  # the aliases the model's policy names: guarded as well
        guarded += list(current_policy(conn, mid).aliases)
    guarded = [p for p in guarded if p != "*"]  # a policy's rule for every other alias
    if any(fnmatch.fnmatchcase(alias, pattern) for pattern in guarded):
        return  # it is guarded itself: moved only as its rule says
    for pattern in guarded:
        if not fnmatch.fnmatchcase(plain(alias), plain(pattern)):
            continue
        raise InvalidInput(
            f"alias {alias!r} reads as the guarded alias {pattern!r} but is not it",
            hint=f"use {pattern!r} itself (its moves need the role its rule asks for), or "
            "another name")


def require_policy_roles(conn: sa.Connection, actor: str, model: str, alias: str) -> None:
    """The roles the model's policy asks for to move ``alias``. A promotion checks them
    in its gate; a rollback or a delete skipped them (a review: a policy's `roles:
    [admin]` on production, and an approver rolled it back, or deleted it)."""
    from .roles import roles_of

    mid = repo.model_id(conn, model)
    rule = current_policy(conn, mid).rule_for(alias) if mid is not None else None
    if rule is None:
        return
    held = roles_of(conn, actor, model)
    if not rule.lets_move(held):
        raise PermissionDenied(
            f"moving {model}@{alias} needs role {' or '.join(rule.roles)} by its policy; "
            f"{actor} has {', '.join(held) or 'no role'}",
            hint=f"see `tether policy show {model}`; an admin grants roles with "
            "`tether role grant`")


def may_move(conn: sa.Connection, actor: str, model: str, alias: str) -> bool:
    """Whether ``actor`` may move ``model@alias``: the protected aliases' role and the
    roles its policy rule names (as a rollback asks)."""
    try:
        require_role_to_move(conn, actor, model, alias)
        require_policy_roles(conn, actor, model, alias)
    except PermissionDenied:
        return False
    return True


def _deprecated(conn: sa.Connection, vid: int | None) -> bool:
    row = repo.version_by_id(conn, vid) if vid is not None else None
    if row is None:
        return False
    return row.status == "deprecated" or current_policy(conn, row.model_id).is_deprecated(
        row.semver)


def require_role_to_move(conn: sa.Connection, actor: str, model: str, alias: str) -> None:
    """The one place that decides who may move an alias (every shell ends up here)."""
    role = role_to_move(alias, repo.get_setting(conn, PROTECTED_SETTING))
    require_role(conn, actor, role, model)


def unknown_alias(
    conn: sa.Connection, mid: int, name: str, alias: str, *, creating: str | None = None
) -> NotFound:
    """NotFound for ``name@alias`` listing the aliases that exist and the closest one;
    ``creating`` (the reference being promoted) adds how to create the alias."""
    existing = list(repo.alias_targets(conn, mid))
    known = sorted({*existing, *_policy_alias_names(conn, mid)})
    close = difflib.get_close_matches(alias, known, n=1, cutoff=0.6)
    parts = [f"aliases of {name}: {', '.join(existing) or 'none yet'}"]
    if close:
        parts.append(f"did you mean {close[0]}?")
    if creating:
        parts.append(
            f"to create it: `tether promote {creating} {alias} --create` (create=True in Python)"
        )
    return NotFound(f"{name} has no alias {alias!r}", hint="; ".join(parts))


def _policy_alias_names(conn: sa.Connection, mid: int) -> list[str]:
    """Alias names the model's policy spells out (patterns and "*" are not names)."""
    return [a for a in current_policy(conn, mid).aliases if not any(c in a for c in "*?[")]


def rollback(
    registry: Registry, name: str, alias: str, *, actor: str, reason: str = "",
    from_digest: str | None = None, from_generation: int | None = None,
) -> AliasMove:
    check_reason(reason, "the reason")
    validate_alias_name(alias)
    with registry.write() as conn:
        return rollback_in(conn, name, alias, actor=actor, reason=reason,
                           from_digest=from_digest, from_generation=from_generation)


def rollback_in(
    conn: sa.Connection,
    name: str,
    alias: str,
    *,
    actor: str,
    reason: str = "",
    details: dict[str, Any] | None = None,
    from_digest: str | None = None,
    from_generation: int | None = None,
) -> AliasMove:
    """`rollback` inside the caller's transaction (a deployment's rule rolls back here).

    ``from_digest``: roll back only if the alias points at that version now. Several
    serving processes that see the same version fail each roll back; without the
    condition the second one rolled back again, past the last good version.
    ``from_generation``: and only if the alias has not moved since (a late rollback
    after someone promoted the same version again would undo that promotion).
    """
    check_reason(reason, "the reason")
    require_role_to_move(conn, actor, name, alias)  # first, as in promote
    mid = require_model(conn, name, lock=True)
    require_policy_roles(conn, actor, name, alias)
    current = repo.alias_row(conn, mid, alias)
    if current is None:
        raise unknown_alias(conn, mid, name, alias)
    if from_digest is not None:
        row = repo.version_by_id(conn, current.version_id)
        now = row.digest if row is not None else ""
        if now != from_digest.removeprefix("sha:"):
            raise Conflict(
                f"{name}@{alias} no longer points at sha:{from_digest.removeprefix('sha:')[:12]} "
                f"(now {_semver_of(conn, current.version_id)}); not rolled back again",
                hint="it was moved (or rolled back) meanwhile; see "
                f"`tether alias history {name} {alias}`",
            )
    if from_generation is not None and current.generation != from_generation:
        raise Conflict(
            f"{name}@{alias} moved since generation {from_generation} (now "
            f"{current.generation}, {_semver_of(conn, current.version_id)}); not rolled back",
            hint=f"see `tether alias history {name} {alias}`",
        )
    sets = repo.live_sets(conn, mid, alias)
    # Drop the moves that led to the current target (normally just the newest).
    while sets and sets[0].version_id == current.version_id:
        repo.mark_undone(conn, sets[0].id)
        sets.pop(0)
    # Never back to the same bytes under another number (logged again with other notes):
    # that "rollback" kept serving what failed.
    failing = repo.version_by_id(conn, current.version_id)
    # Nor to a version deprecated since (its status or the policy): a promotion of it is
    # refused, and a rollback is a move too (a review).
    target = next((s for s in sets if _is_live(conn, s.version_id)
                   and not _same_bytes(conn, s.version_id, failing)
                   and not _deprecated(conn, s.version_id)), None)
    if target is None:
        passed = sorted({str(_semver_of(conn, s.version_id)) for s in sets
                         if _is_live(conn, s.version_id) and _deprecated(conn, s.version_id)})
        if passed:
            raise NotFound(
                f"{name}@{alias} has no earlier target to roll back to that is not "
                f"deprecated (passed over: {', '.join(passed)})",
                hint=f"undeprecate one (`tether deprecate {name}@{passed[-1]} --undo`, or take "
                f"it out of the policy's deprecated list), or promote another version")
        raise NotFound(
            f"{name}@{alias} has no earlier target to roll back to",
            hint=f"see `tether alias history {name} {alias}`",
        )
    before = _semver_of(conn, current.version_id)
    after = _semver_of(conn, target.version_id)
    repo.point_alias(conn, mid, alias, target.version_id, actor)
    repo.record_move(
        conn,
        mid,
        alias,
        vid=target.version_id,
        previous=current.version_id,
        action="rollback",
        actor=actor,
        reason=reason,
    )
    event = append_event(
        conn,
        actor=actor,
        action="alias.rollback",
        model=name,
        subject=f"{name}@{alias}",
        before=before,
        after=after,
        details={"reason": reason, **(details or {})},
    )
    return AliasMove(name, alias, after, before, "rollback", actor, reason, event.ts)


def _same_bytes(conn: sa.Connection, vid: int | None, failing: Any) -> bool:
    row = repo.version_by_id(conn, vid) if vid is not None else None
    return row is not None and failing is not None and row.digest == failing.digest


def _is_live(conn: sa.Connection, vid: int | None) -> bool:
    row = repo.version_by_id(conn, vid) if vid is not None else None
    return row is not None and row.status != "deleted"


def delete_alias(registry: Registry, name: str, alias: str, *, actor: str) -> AliasMove:
    with registry.write() as conn:
        require_role_to_move(conn, actor, name, alias)  # first, as in promote
        mid = require_model(conn, name, lock=True)
        require_policy_roles(conn, actor, name, alias)
        current = repo.alias_row(conn, mid, alias)
        if current is None:
            raise unknown_alias(conn, mid, name, alias)
        before = _semver_of(conn, current.version_id)
        repo.drop_alias(conn, mid, alias)
        repo.record_move(
            conn,
            mid,
            alias,
            vid=None,
            previous=current.version_id,
            action="delete",
            actor=actor,
            reason="",
        )
        event = append_event(
            conn,
            actor=actor,
            action="alias.delete",
            model=name,
            subject=f"{name}@{alias}",
            before=before,
            after=None,
        )
        return AliasMove(name, alias, None, before, "delete", actor, "", event.ts)


def history(registry: Registry, name: str, alias: str,
            limit: int | None = None) -> list[AliasMove]:
    with registry.read() as conn:
        mid = require_model(conn, name)
        moves = repo.alias_history(conn, mid, name, alias, limit)
        if not moves:
            error = unknown_alias(conn, mid, name, alias)
            raise NotFound(f"{name} has never had an alias {alias!r}", hint=error.hint)
        return moves


def alias_state(registry: Registry, name: str, alias: str) -> dict[str, Any]:
    """The hot-path read: target and generation (an ETag) of one alias, in one query."""
    with registry.read() as conn:
        row = repo.alias_state(conn, name, alias)
        if row is None:
            mid = require_model(conn, name)  # says "no model named ..." with the list
            raise unknown_alias(conn, mid, name, alias)
        return {
            "model": name,
            "alias": alias,
            "version": row.semver,
            "seq": row.seq,
            "digest": f"sha:{row.digest}",
            "generation": row.generation,
            "updated_at": row.updated_at,
            "updated_by": row.updated_by,
        }
