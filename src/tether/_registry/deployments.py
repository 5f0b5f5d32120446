"""Deployments kept in the registry, and what serving replicas record there.

A deployment (endpoints, routes with weights, shadows, rollback rules) is one
versioned record: `apply` stores a new revision, and `set_weights`, `pause`,
`resume`, `rollback` and `rollback_route` change it, each as a new revision
with an audit event, under the same role rules as alias moves (approver for a
route that follows a protected alias such as ``production``, else
contributor). Serving replicas follow the record by its revision (the ETag),
publish their window statistics with a heartbeat, and one of them at a time
holds the deployment's lease: only the holder's rule breaches roll back, and
`rollback_route` checks the lease and the failing version inside its
transaction, so a breach seen by many replicas is one rollback and one event.

A pinned route rolled back by a rule also records ``deployment.rollback``
through `record_route_rollback` when it is served from a file rather than a
stored deployment.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._deployment import Deployment, deployment_to_dict, parse_deployment
from .._digest import canonical_json
from .._errors import (
    Conflict,
    InvalidInput,
    InvalidReference,
    NotFound,
    PermissionDenied,
    PolicyViolation,
    TetherError,
    UnknownName,
)
from .._humanize import short_repr
from .._metadata import repository as repo
from .._metadata.audit_log import append_event
from .._metadata.clock import now_iso
from .._metadata.schema import (
    deployment_leases,
    deployment_replicas,
    deployment_revisions,
    deployments,
    models,
)
from .._policy import role_rank, role_to_move
from .._reference import SelectorKind, parse_reference, validate_model_name
from .aliases import PROTECTED_SETTING, rollback_in
from .manifest_limits import check_reason
from .policies import current_policy
from .resolve import require_model, resolve_row
from .roles import has_role, require_role

if TYPE_CHECKING:
    from .registry import Registry

#: An endpoint's or a route's name (as a deployment names them).
_ROUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
#: A replica that has not sent a heartbeat for this long is gone (seconds).
REPLICA_TTL = 5.0
#: How long a lease lasts without renewal (seconds).
LEASE_TTL = 3.0
#: Rows of replicas gone for longer than this are deleted (seconds).
FORGET_AFTER = 3600.0


def record_route_rollback(
    registry: Registry,
    model: str,
    *,
    endpoint: str,
    route: str,
    before: str,
    after: str | None,
    reason: str,
) -> None:
    """Append ``deployment.rollback`` for a pinned route that a rule switched back.

    The endpoint and route are names a deployment could have, and ``before`` and
    ``after`` versions of ``model`` that exist: a contributor wrote a rollback of an
    endpoint nowhere "from iris@2.0.0 (approved by root@team)", 200 KB of it (a
    review). Serving replicas of a deployment file call this too, so the endpoint
    itself is not looked up."""
    check_reason(reason, "the reason")
    for what, value in (("endpoint", endpoint), ("route", route)):
        if not isinstance(value, str) or not _ROUTE_NAME.fullmatch(value):
            raise InvalidInput(f"{what} {short_repr(value)} is not a name a deployment has",
                               hint="letters, digits, '.', '_' and '-', up to 63")
    with registry.write() as conn:
        require_model(conn, model)
        require_role(conn, registry.actor, "contributor", model)
        for what, ref in (("before", before), ("after", after)):
            if ref is None and what == "after":
                continue
            parsed = parse_reference(str(ref))
            if parsed.name != model:
                raise InvalidInput(f"{what} {short_repr(ref)} is not a version of {model}")
            resolve_row(conn, parsed)  # NotFound unless that version exists
        append_event(
            conn,
            actor=registry.actor,
            action="deployment.rollback",
            model=model,
            subject=f"{endpoint}/{route}",
            before=before,
            after=after,
            details={"reason": reason, "endpoint": endpoint, "route": route},
        )


# -- reading and checking specs ---------------------------------------------------------


def check_spec(spec: Any, name: str) -> tuple[Deployment, dict[str, Any]]:
    """The parsed deployment and its canonical mapping; InvalidInput names a bad key."""
    if isinstance(spec, Mapping) and "server" in spec:
        spec = {k: v for k, v in spec.items() if k != "server"}  # each replica's own
    deployment = parse_deployment(spec, source=f"deployment {name}")
    return deployment, deployment_to_dict(deployment)


def _validate_name(name: str) -> str:
    try:
        return validate_model_name(name)
    except Exception as error:
        raise InvalidInput(f"{name!r} is not a deployment name",
                           hint="use letters, digits, '.', '_' and '-'") from error


def _row(conn: sa.Connection, name: str, *, lock: bool = False) -> sa.Row[Any]:
    query = sa.select(deployments).where(deployments.c.name == name)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        names = [r[0] for r in conn.execute(sa.select(deployments.c.name).order_by(
            deployments.c.name))]
        raise UnknownName(f"no deployment named {name!r}", kind="deployments", names=names,
                          hint_tail="; store one with `tether deploy apply deploy.yaml "
                          "--name NAME`")
    return row


def _readable_row(conn: sa.Connection, name: str, actor: str, *,
                  lock: bool = False) -> sa.Row[Any]:
    """``_row``, for a caller who may read every model it routes to: its endpoints,
    routes and targets were told, in hints and answers, to callers with a role on
    another model only (a review). To a caller without reader registry-wide, a
    deployment it may not read and a missing one answer alike, naming no model."""
    wide = has_role(conn, actor, "reader", None)
    try:
        row = _row(conn, name, lock=lock)
    except NotFound:
        if wide:
            raise
        raise _not_yours(actor, name) from None
    try:
        models = _models(_stored_json(row.spec))
    except (KeyError, TypeError, AttributeError, InvalidReference):
        # Unreadable (written by another hand): only a reader registry-wide may use it,
        # as nobody can tell which models it routes to (a review: heartbeats failed).
        if wide:
            return row
        raise _not_yours(actor, name) from None
    if not all(has_role(conn, actor, "reader", model) for model in models):
        raise _not_yours(actor, name)
    return row


def _not_yours(actor: str, name: str) -> PermissionDenied:
    return PermissionDenied(
        f"{actor} may not use deployment {name[:128]!r}: it routes to models {actor} "
        "may not read, or there is no such deployment",
        hint="an admin grants roles with `tether role grant`")


def _may_change(conn: sa.Connection, actor: str, name: str, targets: Sequence[str]) -> None:
    """The roles to move the traffic of ``targets`` (a deployment's current routes),
    refused without naming their models to a caller without reader registry-wide."""
    try:
        _require_roles(conn, actor, targets)
    except PermissionDenied:
        if has_role(conn, actor, "reader", None):
            raise
        raise _not_yours(actor, name) from None


def _answer(conn: sa.Connection, actor: str, row: sa.Row[Any], *,
            changed: bool) -> dict[str, Any]:
    """What a change answers: the whole record to a reader of deployments, else its
    name and revision (the record carries signatures and every route: a review)."""
    if has_role(conn, actor, "reader", None):
        return {**_record(conn, row), "changed": changed}
    return {"name": row.name, "revision": row.revision, "generation": row.revision,
            "changed": changed}


def _record(conn: sa.Connection, row: sa.Row[Any]) -> dict[str, Any]:
    from .deployment_signing import stored_signatures

    return {
        "name": row.name,
        "revision": row.revision,
        "generation": row.revision,
        "spec": _stored_json(row.spec),
        "paused": _stored_json(row.paused),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "updated_by": row.updated_by,
        "signatures": stored_signatures(conn, row.name),
    }


def _routes(spec: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(endpoint, route) for every route of every endpoint, shadows as routes of weight 0."""
    out: list[tuple[str, dict[str, Any]]] = []
    for endpoint, body in spec["endpoints"].items():
        out.extend((endpoint, r) for r in body["routes"])
        out.extend((endpoint, {"name": "shadow", "target": s["target"], "weight": 0})
                   for s in body.get("shadow", []))
    return out


def _role_for(conn: sa.Connection, target: str) -> tuple[str, str]:
    """(model, role) a change to traffic of ``target`` needs."""
    ref = parse_reference(target)
    if ref.kind is SelectorKind.ALIAS:
        from .._metadata import repository as repo

        return ref.name, role_to_move(ref.value, repo.get_setting(conn, PROTECTED_SETTING))
    return ref.name, "contributor"


#: What a trusted endpoint may serve: a version fixed by the reference (or a whole digest,
#: see ``_movable``), or an alias only an approver may move.
_FIXED = (SelectorKind.SEQUENCE, SelectorKind.SEMVER)


def _check_trust(conn: sa.Connection, actor: str, spec: Mapping[str, Any]) -> None:
    """``trusted: true`` loads its targets' code-executing files (pickle) on every replica.
    A contributor who could store it, or move what it follows, ran code there (a review:
    a contributor on one model re-applied a deployment with ``trusted: true`` and its
    own pickle). So it takes an admin, and targets that stay what the admin saw: fixed
    versions (NAME@1.2.0, NAME@7, NAME@sha:...) or protected aliases (moved by approvers)."""
    if not _trusted_targets(spec):
        return
    require_role(conn, actor, "admin", None)
    for endpoint, target, problem in _movable_targets(conn, spec):
        name = parse_reference(target).name
        raise InvalidInput(
            f"endpoint {endpoint} is trusted (its targets' pickles run on every replica), but "
            f"{target} is {problem}: whoever can log a version or move that alias would "
            "choose the code it runs",
            hint=f"target a version ({name}@1.2.0 or its whole {name}@sha:...), or an alias only "
            "approvers may move (`tether config set protected_aliases`); or drop `trusted` and "
            "sign the versions with a key trusted for loading")


def _check_auth_kept(conn: sa.Connection, actor: str, before: Mapping[str, Any] | None,
                     after: Mapping[str, Any]) -> None:
    """Changing a deployment's ``auth`` (its serving token's variable, whether reads need
    it) takes an admin: a contributor of one routed model re-applied a deployment with
    ``token_env: PATH`` and no protected reads, and every replica restarted open, its
    token a value anyone could guess (a review)."""
    if (before or {}).get("auth") != after.get("auth") and not has_role(
            conn, actor, "admin", None):
        raise PermissionDenied(
            f"{actor} may not change the auth section of a deployment (its serving "
            "token, whether reads need it): that takes an admin",
            hint="apply it with the auth section as stored (`tether deploy status NAME`), or "
            "ask an admin")


def _weakened_safeguards(before: Mapping[str, Any] | None,
                         after: Mapping[str, Any]) -> list[str]:
    """What in ``after`` serves with a check that ``before`` kept switched off: an endpoint's
    environment policy other than plain ``strict`` where it had another, or non-finite
    numbers allowed in fields that refused them."""
    old = (before or {}).get("endpoints") or {}
    # A new endpoint is held to what every endpoint had: renaming one twice made it new
    # each time, its policy dropped to the registry's default (a review).
    kept = {b.get("env_policy") for b in old.values() if isinstance(b, dict)} or {None}
    weakened: list[str] = []
    for endpoint, body in after["endpoints"].items():
        stored = old.get(endpoint)
        was: Mapping[str, Any] = stored if isinstance(stored, dict) else {}
        policy = body.get("env_policy")
        allowed = {was.get("env_policy")} if stored is not None else kept
        if policy != "strict" and not (policy in allowed and len(allowed) == 1):
            weakened.append(f"{endpoint}.env_policy {policy!r}")
        lets, let_before = body.get("allow_non_finite"), was.get("allow_non_finite")
        if lets and lets != let_before and let_before is not True and not (
                isinstance(lets, list) and isinstance(let_before, list)
                and set(lets) <= set(let_before)):
            weakened.append(f"{endpoint}.allow_non_finite")
    return weakened


def _check_safeguards_kept(conn: sa.Connection, actor: str,
                           before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> None:
    """Switching off a check an endpoint serves with (its environment policy, its refusal of
    NaN and infinities) takes an admin, as its auth does: a contributor of one routed
    model could otherwise serve its version in an environment the registry refuses, to
    every caller of the deployment."""
    weakened = _weakened_safeguards(before, after)
    if weakened and not has_role(conn, actor, "admin", None):
        raise PermissionDenied(
            f"{actor} may not weaken what the deployment's endpoints check "
            f"({', '.join(weakened)}): that takes an admin",
            hint="keep them as stored (`tether deploy status NAME`), make them stricter, "
            "or ask an admin")


def _trusted_targets(spec: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(endpoint, target) of every route and shadow of the spec's trusted endpoints."""
    from .deployment_signing import trusted_endpoints

    return {(e, t) for e, targets in trusted_endpoints(spec).items() for t in targets}


def _movable_targets(conn: sa.Connection,
                     spec: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(endpoint, target, why) of each trusted target that could come to name other bytes."""
    for endpoint, target in sorted(_trusted_targets(spec)):
        problem = _movable(conn, target)
        if problem is not None:
            yield endpoint, target, problem


def _movable(conn: sa.Connection, target: str) -> str | None:
    """Why ``target`` could come to name other bytes than it does now, or None."""
    ref = parse_reference(target)
    if ref.kind is SelectorKind.DIGEST:
        # A prefix names whichever version has it: one logged to match it (65,536 tries
        # for four digits) once the version it named is collected.
        return None if ref.whole_digest else "a digest prefix, not a whole digest"
    if ref.kind in _FIXED:
        return None
    if ref.kind is SelectorKind.ALIAS and role_rank(role_to_move(
            ref.value, repo.get_setting(conn, PROTECTED_SETTING))) >= role_rank("approver"):
        return None
    return "not a fixed version or a protected alias"


def check_trusted_still_fixed(conn: sa.Connection) -> None:
    """After a change of the protected aliases (in the same transaction): every stored
    deployment's trusted endpoints still serve only fixed versions or protected aliases.
    Un-protecting an alias a trusted endpoint followed let any contributor move it and
    choose the code the replicas ran (a review)."""
    for name, text in conn.execute(sa.select(deployments.c.name, deployments.c.spec)).all():
        for endpoint, target, problem in _movable_targets(conn, json.loads(text)):
            raise InvalidInput(
                f"deployment {name}: trusted endpoint {endpoint} follows {target}, which "
                f"would then be {problem}",
                hint="apply that deployment with a fixed version (or without `trusted`) "
                "first; then change the protected aliases")


def _may_trust(conn: sa.Connection, actor: str, target: str) -> bool:
    """Whether ``actor`` could apply ``target`` on a trusted endpoint."""
    return has_role(conn, actor, "admin", None) and _movable(conn, target) is None


def _check_trust_kept(conn: sa.Connection, actor: str, before: Mapping[str, Any],
                      after: Mapping[str, Any]) -> None:
    """A change that is not an apply (a rollback of the deployment or of one route) may
    make a trusted endpoint serve only what it served while trusted; else it is checked
    as an apply is. A contributor restored an earlier trusted revision, then rolled a
    route back into it from an untrusted one: its own pickle, trusted (a review)."""
    if not _trusted_targets(after) <= _trusted_targets(before):
        _check_trust(conn, actor, after)


def _require_roles(conn: sa.Connection, actor: str, targets: Sequence[str]) -> None:
    needed: dict[str, str] = {}
    for target in targets:
        model, role = _role_for(conn, target)
        if model not in needed or role_rank(role) > role_rank(needed[model]):
            needed[model] = role
    for model, role in sorted(needed.items()):
        require_role(conn, actor, role, model)


def _models(spec: Mapping[str, Any]) -> list[str]:
    return sorted({parse_reference(r["target"]).name for _, r in _routes(spec)})


def _endpoint_of(spec: Mapping[str, Any], name: str, endpoint: str | None) -> str:
    endpoints = [str(e) for e in spec["endpoints"]]
    if endpoint is None:
        if len(endpoints) == 1:
            return endpoints[0]
        raise InvalidInput(f"deployment {name} has {len(endpoints)} endpoints; say which",
                           hint=f"endpoints: {', '.join(endpoints)}")
    if endpoint not in spec["endpoints"]:
        raise NotFound(f"deployment {name} has no endpoint {endpoint!r}",
                       hint=f"endpoints: {', '.join(endpoints)}")
    return endpoint


def _route(spec: Mapping[str, Any], name: str, endpoint: str, route: str) -> dict[str, Any]:
    routes = spec["endpoints"][endpoint]["routes"]
    for entry in routes:
        if entry["name"] == route:
            return dict(entry)
    raise NotFound(f"endpoint {endpoint} of deployment {name} has no route {route!r}",
                   hint=f"routes: {', '.join(r['name'] for r in routes)}")


def _check_traffic(spec: Mapping[str, Any], paused: Sequence[str], name: str) -> None:
    stopped = set(paused)
    for endpoint, body in spec["endpoints"].items():
        live = [r for r in body["routes"]
                if r["weight"] > 0 and f"{endpoint}/{r['name']}" not in stopped]
        if not live:
            raise InvalidInput(f"endpoint {endpoint} of deployment {name} would take no traffic",
                               hint="keep at least one route with a weight above 0 unpaused")


def effective_weights(record: Mapping[str, Any], endpoint: str) -> dict[str, float]:
    """Route weights of ``endpoint`` as served: a paused route's is 0."""
    paused = set(record["paused"])
    return {r["name"]: 0.0 if f"{endpoint}/{r['name']}" in paused else float(r["weight"])
            for r in record["spec"]["endpoints"][endpoint]["routes"]}


def _losing_traffic(spec_before: Mapping[str, Any], paused_before: Sequence[str],
                    spec_after: Mapping[str, Any], paused_after: Sequence[str],
                    endpoint: str) -> list[str]:
    """Targets of ``endpoint``'s routes whose share of its traffic goes down. Weights are
    relative: raising one route (or resuming it, or pausing another) takes traffic from
    the rest, and moving a route's traffic takes its role. A contributor set a canary's
    weight to 1e12 and took production's traffic from a route only approvers may move
    (a review)."""
    def shares(spec: Mapping[str, Any], paused: Sequence[str]) -> dict[str, float]:
        weights = effective_weights({"spec": spec, "paused": paused}, endpoint)
        total = sum(weights.values())
        return {r: (w / total if total > 0 else 0.0) for r, w in weights.items()}

    before, after = shares(spec_before, paused_before), shares(spec_after, paused_after)
    targets = {r["name"]: r["target"] for r in spec_before["endpoints"][endpoint]["routes"]}
    return [targets[r] for r, share in before.items()
            if after.get(r, 0.0) < share - 1e-12]


def _save(conn: sa.Connection, row: sa.Row[Any] | None, name: str, spec: Mapping[str, Any],
          paused: Sequence[str], *, action: str, actor: str, reason: str) -> int:
    now = now_iso()
    spec_text, paused_text = canonical_json(spec), canonical_json(sorted(paused))
    if row is None:
        revision = 1
        inserted = conn.execute(deployments.insert().values(
            name=name, revision=1, spec=spec_text, paused=paused_text, created_at=now,
            updated_at=now, updated_by=actor)).inserted_primary_key
        assert inserted is not None
        did = inserted[0]
    else:
        revision, did = row.revision + 1, row.id
        conn.execute(deployments.update().where(deployments.c.id == did).values(
            revision=revision, spec=spec_text, paused=paused_text, updated_at=now,
            updated_by=actor))
    conn.execute(deployment_revisions.insert().values(
        deployment_id=did, revision=revision, spec=spec_text, paused=paused_text,
        action=action, actor=actor, reason=reason, created_at=now))
    return revision


def _one_model(targets: Sequence[str]) -> str | None:
    names = {parse_reference(t).name for t in targets}
    return names.pop() if len(names) == 1 else None


# -- use cases ------------------------------------------------------------------------


def apply(registry: Registry, name: str, spec: Any, *, reason: str = "") -> dict[str, Any]:
    """Store ``spec`` as the next revision of deployment ``name`` (created if new).

    Every target must resolve now; the actor needs the role to move each
    route's traffic. An unchanged spec is no new revision and no event.
    """
    check_reason(reason, "the reason")
    _validate_name(name)
    _, canonical = check_spec(spec, name)
    actor = registry.actor
    with registry.write() as conn:
        # Roles first, then the lookups: resolving a target first told a caller with a
        # role on one model another model's versions and aliases (a review).
        new_targets = [r["target"] for _, r in _routes(canonical)]
        _require_roles(conn, actor, new_targets)
        row = conn.execute(sa.select(deployments).where(deployments.c.name == name)
                           .with_for_update()).first()
        _lock_and_resolve(conn, new_targets)
        old_spec = _current_spec(conn, actor, row)
        targets = list(new_targets)
        if old_spec is not None:
            old_targets = [r["target"] for _, r in _routes(old_spec)]
            _may_change(conn, actor, name, old_targets)
            targets += old_targets
        routes_now = {f"{e}/{r['name']}" for e, b in canonical["endpoints"].items()
                      for r in b["routes"]}
        stored_paused = _stored_json(row.paused) if row is not None else []
        paused_before = stored_paused if isinstance(stored_paused, list) else []
        paused = [p for p in paused_before if p in routes_now]
        if row is not None and old_spec is not None and old_spec == canonical and (
                paused == stored_paused):
            return _answer(conn, actor, row, changed=False)
        _check_trust(conn, actor, canonical)
        _check_auth_kept(conn, actor, old_spec, canonical)
        _check_safeguards_kept(conn, actor, old_spec, canonical)
        _check_traffic(canonical, paused, name)
        _refuse_more_traffic_to_deprecated(conn, old_spec, paused_before, canonical, paused)
        revision = _save(conn, row, name, canonical, paused, action="apply", actor=actor,
                         reason=reason)
        append_event(conn, actor=actor, action="deployment.apply", model=_one_model(targets),
                     subject=f"deployment:{name}",
                     before=row.revision if row is not None else None, after=revision,
                     details={"deployment": name, "reason": reason,
                              "endpoints": sorted(canonical["endpoints"])})
        return _answer(conn, actor, _row(conn, name), changed=True)


def _exposure(conn: sa.Connection, spec: Mapping[str, Any] | None, paused: Sequence[str],
              ids: dict[str, int | None]) -> dict[tuple[str, str, int], float]:
    """(endpoint, "route" or "shadow", version id) -> the share of the endpoint's traffic
    its routes take (weights over the live total, as the router splits them), or 1.0 for
    a shadow (it sees every request). Targets that no longer resolve are left out;
    ``ids`` keeps each target's version (the specs before and after share most)."""
    out: dict[tuple[str, str, int], float] = {}
    if spec is None:
        return out

    def version_id(target: str) -> int | None:
        if target not in ids:
            try:
                ids[target] = int(
                    resolve_row(conn, parse_reference(target), records=False)[1].id)
            except (NotFound, InvalidInput, InvalidReference):
                ids[target] = None
        return ids[target]

    for endpoint, body in spec["endpoints"].items():
        live = {r["name"]: 0.0 if f"{endpoint}/{r['name']}" in paused else float(r["weight"])
                for r in body["routes"]}
        total = sum(live.values())
        for r in body["routes"]:
            vid = version_id(r["target"])
            if vid is not None and total > 0:
                key = (endpoint, "route", vid)
                out[key] = out.get(key, 0.0) + live[r["name"]] / total
        for shadow in body.get("shadow", []):
            vid = version_id(shadow["target"])
            if vid is not None:
                out[(endpoint, "shadow", vid)] = 1.0
    return out


def _refuse_more_traffic_to_deprecated(conn: sa.Connection, before: Mapping[str, Any] | None,
                                       paused_before: Sequence[str], after: Mapping[str, Any],
                                       paused_after: Sequence[str]) -> None:
    """A change may not give a deprecated version (status or policy) a larger share of an
    endpoint's traffic than it had, as a promotion may not point an alias at one:
    `deploy apply` pinned one and sent it traffic; then a kept shadow became a 100% route,
    and lowering, pausing or rolling back the other routes raised its share (reviews).
    What already serves it may stay as it is, so a version deprecated since blocks no
    other change."""
    ids: dict[str, int | None] = {}
    old = _exposure(conn, before, paused_before, ids)
    for key, share in _exposure(conn, after, paused_after, ids).items():
        if share <= old.get(key, 0.0) + 1e-9:
            continue
        version = repo.version_by_id(conn, key[2], files=False, records=False)
        if version is None:
            continue
        if version.status == "deprecated" or current_policy(
                conn, version.model_id).is_deprecated(version.semver):
            name = conn.execute(sa.select(models.c.name).where(
                models.c.id == version.model_id)).scalar()
            what = "shadow it" if key[1] == "shadow" else (
                f"take {share:.0%} of its traffic (was {old.get(key, 0.0):.0%})")
            raise PolicyViolation(
                f"{name}@{version.semver} is deprecated: endpoint {key[0]} may not {what}",
                hint="route to a newer version, or undeprecate this one first")


def get(registry: Registry, name: str, *, known_revision: int | None = None) -> dict[str, Any]:
    """The record; only ``{name, revision, unchanged: True}`` when it is ``known_revision``."""
    _require_readers(registry)  # first: a hidden deployment and a missing one look alike
    with registry.read() as conn:
        if known_revision is not None:  # every replica asks each second: one small read
            current = conn.execute(sa.select(deployments.c.revision).where(
                deployments.c.name == name)).scalar()
            if current == known_revision:
                return {"name": name, "revision": current, "generation": current,
                        "unchanged": True}
        return _record(conn, _row(conn, name))


def _require_readers(registry: Registry) -> None:
    """Reading a deployment takes reader registry-wide (as the registry's access mode has
    it: an embedded registry's local user reads anyway). Reader on the models it routes
    to now was tried and withdrawn: its history, its replicas' reports and its
    signatures name the models it routed to before (a review). A token scoped to a model
    may still change that model's routes in a deployment it cannot read."""
    registry.require("reader", action="reading deployments")


def list_all(registry: Registry) -> list[dict[str, Any]]:
    _require_readers(registry)
    with registry.read() as conn:
        rows = conn.execute(sa.select(deployments).order_by(deployments.c.name)).all()
        return [_listed(r) for r in rows]


def _listed(row: sa.Row[Any]) -> dict[str, Any]:
    """A deployment's line in the listing; one whose stored spec is unreadable says so
    instead of failing the whole listing (a review)."""
    entry = {"name": row.name, "revision": row.revision, "updated_at": row.updated_at,
             "updated_by": row.updated_by, "endpoints": [], "paused": []}
    try:
        entry["endpoints"] = sorted(_stored_json(row.spec)["endpoints"])
        entry["paused"] = [p for p in _stored_json(row.paused) if isinstance(p, str)]
    except (TypeError, KeyError):  # not JSON (None), or not of its shape
        entry["unreadable"] = True
    return entry


def history(registry: Registry, name: str) -> list[dict[str, Any]]:
    """Every revision, newest first."""
    _require_readers(registry)  # first: a hidden deployment and a missing one look alike
    with registry.read() as conn:
        row = _row(conn, name)
        rows = conn.execute(sa.select(deployment_revisions).where(
            deployment_revisions.c.deployment_id == row.id).order_by(
            deployment_revisions.c.revision.desc())).all()
        return [{"revision": r.revision, "action": r.action, "actor": r.actor,
                 "reason": r.reason, "at": r.created_at, "spec": _stored_json(r.spec),
                 "paused": _stored_json(r.paused)} for r in rows]


def _current_spec(conn: sa.Connection, actor: str, row: sa.Row[Any] | None,
                  ) -> dict[str, Any] | None:
    """The stored spec a change replaces, or None for none. One that cannot be read
    (written by another hand) may be replaced only by an admin, and nothing is compared
    with it: a rollback or an apply crashed on it, so nothing could recover the
    deployment (a review)."""
    if row is None:
        return None
    spec = _stored_json(row.spec)
    try:
        check_spec(spec, row.name)  # what apply stores: anything else is unreadable
        return spec  # type: ignore[no-any-return]
    except (TetherError, KeyError, TypeError, AttributeError, ValueError):
        pass
    if not has_role(conn, actor, "admin", None):
        raise PermissionDenied(f"deployment {row.name}'s stored record is unreadable; only "
                               "an admin may replace it", hint="ask an admin to apply a "
                               "readable revision or roll back to one")
    return None


def routed_version_ids(conn: sa.Connection, *, history: bool = True) -> dict[int, str]:
    """Version id -> a deployment that routes (or shadows) traffic to it: in its current
    spec, and with ``history`` in any earlier revision (a rollback goes back to those).
    gc keeps these: a canary pinned to ``m@1.0.0`` lost its bytes to ``keep_last`` while
    it took traffic, and replicas failed at their next reload (a review). Unreadable
    specs are skipped (they route nothing a replica would serve)."""
    specs: list[tuple[str, Any]] = [
        (row.name, _stored_json(row.spec))
        for row in conn.execute(sa.select(deployments.c.name, deployments.c.spec))]
    if history:
        specs += [(row.name, _stored_json(row.spec)) for row in conn.execute(
            sa.select(deployments.c.name, deployment_revisions.c.spec).join(
                deployments, deployments.c.id == deployment_revisions.c.deployment_id))]
    targets: dict[str, str] = {}
    for name, spec in specs:
        try:
            for _endpoint, route in _routes(spec):
                targets.setdefault(str(route["target"]), name)
        except (TypeError, KeyError, AttributeError):
            continue
    out: dict[int, str] = {}
    for target, name in targets.items():
        try:
            out.setdefault(int(resolve_row(conn, parse_reference(target),
                                           records=False)[1].id), name)
        except (NotFound, InvalidInput, InvalidReference):
            continue
    return out


def _lock_and_resolve(conn: sa.Connection, targets: Sequence[str]) -> None:
    """Lock the rows of the models ``targets`` name (by id, after the deployment's row),
    as a promotion, a deletion and gc's marking lock them, then resolve each target
    (NotFound names the one that does not): a deployment resolving a version while gc
    expired it routed traffic to a deleted version (a review, on PostgreSQL)."""
    names = sorted({parse_reference(t).name for t in targets})
    if names:
        conn.execute(sa.select(models.c.id).where(models.c.name.in_(names))
                     .order_by(models.c.id).with_for_update()).all()
    for target in targets:
        resolve_row(conn, parse_reference(target))


def _stored_json(text: str) -> Any:
    """A stored spec or pause list as JSON, or None where it is not (a row written by
    another hand: status and history crashed on it, a review)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def set_weights(registry: Registry, name: str, weights: Mapping[str, float], *,
                endpoint: str | None = None, reason: str = "") -> dict[str, Any]:
    """New weights for some routes of one endpoint (the others keep theirs)."""
    check_reason(reason, "the reason")
    actor = registry.actor
    with registry.write() as conn:
        row = _readable_row(conn, name, actor, lock=True)
        spec, paused = json.loads(row.spec), json.loads(row.paused)
        spec_before = json.loads(row.spec)
        endpoint = _endpoint_of(spec, name, endpoint)
        before = effective_weights(_record(conn, row), endpoint)
        targets = []
        for route, weight in weights.items():
            entry = _route(spec, name, endpoint, route)
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
                    0 <= weight < float("inf")):
                raise InvalidInput(f"route {route!r}: weight {weight!r} is not a finite number "
                                   "of at least 0")
            targets.append(entry["target"])
            for r in spec["endpoints"][endpoint]["routes"]:
                if r["name"] == route:
                    r["weight"] = float(weight)
        _require_roles(conn, actor, targets + _losing_traffic(spec_before, paused, spec,
                                                              paused, endpoint))
        _check_traffic(spec, paused, name)
        _refuse_more_traffic_to_deprecated(conn, spec_before, paused, spec, paused)
        revision = _save(conn, row, name, spec, paused, action="weights", actor=actor,
                         reason=reason)
        after = effective_weights({"spec": spec, "paused": paused}, endpoint)
        append_event(conn, actor=actor, action="deployment.weights", model=_one_model(targets),
                     subject=f"deployment:{name}/{endpoint}", before=before, after=after,
                     details={"deployment": name, "endpoint": endpoint, "revision": revision,
                              "reason": reason})
        return _answer(conn, actor, _row(conn, name), changed=True)


def pause(registry: Registry, name: str, routes: Sequence[str], *, endpoint: str | None = None,
          resume: bool = False, reason: str = "") -> dict[str, Any]:
    """Take routes out of traffic (their weights are kept), or give it back (``resume``)."""
    check_reason(reason, "the reason")
    actor = registry.actor
    if not routes:
        raise InvalidInput("name the routes to pause or resume")
    routes = list(dict.fromkeys(routes))  # each once: one named 100,000 times held the lock
    with registry.write() as conn:
        row = _readable_row(conn, name, actor, lock=True)
        spec, paused = json.loads(row.spec), set(json.loads(row.paused))
        endpoint = _endpoint_of(spec, name, endpoint)
        targets = [_route(spec, name, endpoint, route)["target"] for route in routes]
        keys = {f"{endpoint}/{route}" for route in routes}
        new = paused - keys if resume else paused | keys
        if new == paused:
            return _answer(conn, actor, row, changed=False)
        _require_roles(conn, actor, targets + _losing_traffic(spec, sorted(paused), spec,
                                                              sorted(new), endpoint))
        _check_traffic(spec, sorted(new), name)
        _refuse_more_traffic_to_deprecated(conn, spec, sorted(paused), spec, sorted(new))
        action = "resume" if resume else "pause"
        revision = _save(conn, row, name, spec, sorted(new), action=action, actor=actor,
                         reason=reason)
        append_event(conn, actor=actor, action=f"deployment.{action}", model=_one_model(targets),
                     subject=f"deployment:{name}/{endpoint}", before=sorted(paused),
                     after=sorted(new), details={"deployment": name, "endpoint": endpoint,
                                                 "routes": list(routes), "revision": revision,
                                                 "reason": reason})
        return _answer(conn, actor, _row(conn, name), changed=True)


def _previous_state(conn: sa.Connection, row: sa.Row[Any]) -> int:
    """The newest earlier revision whose spec or pauses differ from the current ones (a
    signature is a revision of its own and changes neither: going back to it would
    change nothing); 0 when there is none."""
    earlier = conn.execute(sa.select(deployment_revisions.c.revision).where(
        deployment_revisions.c.deployment_id == row.id,
        deployment_revisions.c.revision < row.revision,
        sa.or_(deployment_revisions.c.spec != row.spec,
               deployment_revisions.c.paused != row.paused)).order_by(
        deployment_revisions.c.revision.desc()).limit(1)).scalar()
    return int(earlier or 0)


def rollback(registry: Registry, name: str, *, to_revision: int | None = None,
             reason: str = "") -> dict[str, Any]:
    """Make an earlier revision (default: the newest that differs from the current one)
    current again, as a new revision."""
    check_reason(reason, "the reason")
    actor = registry.actor
    with registry.write() as conn:
        row = _readable_row(conn, name, actor, lock=True)
        target = to_revision if to_revision is not None else _previous_state(conn, row)
        if to_revision is None and target == 0:
            raise NotFound(f"deployment {name} has no earlier revision that differs from "
                           f"revision {row.revision}",
                           hint=f"see `tether deploy history {name}`")
        if target < 1 or target >= row.revision:
            raise NotFound(f"deployment {name} has no earlier revision {target}",
                           hint=f"revisions 1 to {row.revision - 1}; see "
                                f"`tether deploy history {name}`")
        old = conn.execute(sa.select(deployment_revisions).where(
            deployment_revisions.c.deployment_id == row.id,
            deployment_revisions.c.revision == target)).one()
        spec, paused = _stored_json(old.spec), _stored_json(old.paused)
        if not (isinstance(spec, dict) and isinstance(spec.get("endpoints"), dict)
                and isinstance(paused, list)):
            raise InvalidInput(f"revision {target} of deployment {name} is unreadable",
                               hint=f"roll back to another: `tether deploy history {name}`")
        check_spec(spec, name)  # as apply does: one stored before a bound came in is refused
        current = _current_spec(conn, actor, row)  # unreadable: an admin's, compared to none
        targets = [r["target"] for _, r in _routes(spec)]
        targets += [r["target"] for _, r in _routes(current)] if current is not None else []
        _may_change(conn, actor, name, targets)  # names no model of its history
        # Each must still resolve, as in apply: a version deleted since was restored.
        _lock_and_resolve(conn, [r["target"] for _, r in _routes(spec)])
        current_paused = _stored_json(row.paused) if current is not None else []
        if current is not None:
            _check_trust_kept(conn, actor, current, spec)
        _check_auth_kept(conn, actor, current, spec)
        _check_safeguards_kept(conn, actor, current, spec)
        _refuse_more_traffic_to_deprecated(conn, current, current_paused or [], spec, paused)
        revision = _save(conn, row, name, spec, paused, action="rollback", actor=actor,
                         reason=reason or f"back to revision {target}")
        append_event(conn, actor=actor, action="deployment.rollback", model=_one_model(targets),
                     subject=f"deployment:{name}", before=row.revision, after=revision,
                     details={"deployment": name, "to_revision": target, "reason": reason})
        return _answer(conn, actor, _row(conn, name), changed=True)


def rollback_route(registry: Registry, name: str, *, endpoint: str | None, route: str,
                   failing: str | None = None, reason: str = "",
                   holder: str | None = None) -> dict[str, Any]:
    """Roll one route back from the version it serves (``failing``, a ``sha:`` digest).

    A route that follows an alias rolls the alias back (``alias.rollback``);
    a pinned route goes back to the target it had in the newest earlier
    revision naming another version, else gives its traffic to the other
    routes (``deployment.rollback``). Nothing happens (``rolled_back: False``)
    when the route no longer serves ``failing``, or when ``holder`` is given
    and does not hold the deployment's lease: a breach seen by every replica
    is acted on once.
    """
    check_reason(reason, "the reason")
    actor = registry.actor
    with registry.write() as conn:
        row = _readable_row(conn, name, actor, lock=True)
        spec, paused = json.loads(row.spec), json.loads(row.paused)
        endpoint = _endpoint_of(spec, name, endpoint)
        entry = _route(spec, name, endpoint, route)
        if holder is not None and not _holds(conn, name, holder):
            return {"rolled_back": False, "why": f"{holder} does not hold the lease"}
        ref = parse_reference(entry["target"])
        _, current = resolve_row(conn, ref)
        digest = f"sha:{current.digest}"
        if failing is not None and failing != digest:
            return {"rolled_back": False, "why": f"{entry['target']} no longer serves {failing}"}
        before = f"{ref.name}@{current.semver}"
        details = {"deployment": name, "endpoint": endpoint, "route": route, "reason": reason}
        if ref.kind is SelectorKind.ALIAS:
            # Only from the version judged above: a promotion of a fix between that look
            # and the model's lock (rollback_in's) was rolled back, putting the failing
            # version back (a review).
            try:
                move = rollback_in(conn, ref.name, ref.value, actor=actor, reason=reason,
                                   details={"deployment": name, "endpoint": endpoint,
                                            "route": route}, from_digest=digest)
            except Conflict:
                return {"rolled_back": False,
                        "why": f"{entry['target']} moved from {before} meanwhile"}
            return {"rolled_back": True, "via": "alias", "from": before,
                    "to": f"{ref.name}@{move.version}", "revision": row.revision}
        require_role(conn, actor, "contributor", ref.name)
        earlier = _earlier_target(conn, row, endpoint, route, current.digest)
        routes = spec["endpoints"][endpoint]["routes"]
        if earlier is not None and spec["endpoints"][endpoint].get("trusted") and not (
                (earlier[2] and _movable(conn, earlier[0]) is None)
                or _may_trust(conn, actor, earlier[0])):
            # Back only to a version this endpoint served while trusted (one a contributor
            # routed there untrusted would become trusted): else traffic goes elsewhere.
            earlier = None
        if earlier is not None:
            # Back to a version the caller may route traffic to: a caller with a role on
            # one model rolled a route onto another's, which it could not even read (a
            # review).
            _may_change(conn, actor, name, [earlier[0]])
            for r in routes:
                if r["name"] == route:
                    r["target"] = earlier[0]
            via, after = "route", earlier[1]
        elif any(r["weight"] > 0 and r["name"] != route
                 and f"{endpoint}/{r['name']}" not in paused for r in routes):
            for r in routes:
                if r["name"] == route:
                    r["weight"] = 0.0
            # Its traffic goes to the other routes: not to a version deprecated since.
            _refuse_more_traffic_to_deprecated(conn, json.loads(row.spec), paused, spec,
                                               paused)
            via, after = "weights", None
        else:
            raise Conflict(f"route {route} of {name}/{endpoint} has no earlier version and no "
                           "other route to give its traffic to",
                           hint="apply a deployment with another version")
        revision = _save(conn, row, name, spec, paused, action="rollback", actor=actor,
                         reason=reason)
        append_event(conn, actor=actor, action="deployment.rollback", model=ref.name,
                     subject=f"deployment:{name}/{endpoint}/{route}", before=before, after=after,
                     details={**details, "revision": revision, "via": via})
        return {"rolled_back": True, "via": via, "from": before, "to": after,
                "revision": revision}


def _earlier_target(conn: sa.Connection, row: sa.Row[Any], endpoint: str, route: str,
                    failing: str) -> tuple[str, str, bool] | None:
    """(target, ref, whether the endpoint was trusted then) of the route in the newest
    earlier revision naming another version."""
    revisions = conn.execute(sa.select(deployment_revisions.c.spec).where(
        deployment_revisions.c.deployment_id == row.id,
        deployment_revisions.c.revision < row.revision).order_by(
        deployment_revisions.c.revision.desc())).scalars()
    for text in revisions:
        body = json.loads(text)["endpoints"].get(endpoint)
        entry = next((r for r in (body or {}).get("routes", []) if r["name"] == route), None)
        if entry is None:
            continue
        ref = parse_reference(entry["target"])
        if ref.kind is SelectorKind.ALIAS:
            continue
        try:
            _, version = resolve_row(conn, ref)
        except NotFound:
            continue
        # Nor back to a version deprecated since, as an alias's rollback passes it over.
        if (version.digest != failing and version.status not in ("deleted", "deprecated")
                and not current_policy(conn, version.model_id).is_deprecated(version.semver)):
            return entry["target"], f"{ref.name}@{version.semver}", bool(body.get("trusted"))
    return None


# -- replicas and the lease -------------------------------------------------------------


def _holds(conn: sa.Connection, name: str, holder: str) -> bool:
    lease = conn.execute(sa.select(deployment_leases).where(
        deployment_leases.c.deployment == name).with_for_update()).first()
    return lease is not None and lease.holder == holder and lease.expires_at >= time.time()


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


#: A replica's id: ASCII, so that two ids that read alike are alike (the serving
#: follower's own are ``host-pid-random``).
_REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")


def heartbeat(registry: Registry, name: str, replica: str, *, host: str, pid: int,
              url: str = "", started_at: str = "", info: Mapping[str, Any] | None = None,
              stats: Mapping[str, Any] | None = None, lead: bool = True,
              ttl: float = REPLICA_TTL, lease_ttl: float = LEASE_TTL) -> dict[str, Any]:
    """Publish a replica's state and window statistics; take or renew the lease if free.

    Returns ``leader`` (whether this replica holds the lease now) and the
    deployment's ``revision``.
    """
    if not isinstance(replica, str) or not _REPLICA_ID.fullmatch(replica):
        raise InvalidInput(
            f"replica id {short_repr(replica)} is not 1 to 128 ASCII letters, digits and "
            ". _ : @ + - starting with a letter or digit",
            hint="ids are shown side by side in `tether deploy status`: one that looks like "
            "another (a Cyrillic letter, a control character) would pass for it")
    if not isinstance(host, str) or not host.isprintable():
        raise InvalidInput(f"host {short_repr(host)} is not printable text")
    ttl, lease_ttl = min(max(ttl, 1.0), 300.0), min(max(lease_ttl, 1.0), 60.0)
    problem = _stats_problem(stats or {})
    actor = registry.actor
    with registry.write() as conn:
        row = _readable_row(conn, name, actor)
        spec = _stored_json(row.spec)
        owner = _owner(conn, name, replica)
        if owner is not None and owner != actor:
            raise Conflict(f"replica {replica[:80]!r} of deployment {name} is another "
                           "caller's", hint="each serving process reports under an id of its own")
        if owner is None and _make_room(conn, name, actor) >= MAX_REPLICAS_PER_CALLER:
            # A reader registered replicas by the thousand, each with megabytes of info,
            # and every status read returned them all for an hour (a review).
            raise Conflict(f"{actor} reports {MAX_REPLICAS_PER_CALLER} live replicas of "
                           f"deployment {name} already",
                           hint="stop some (those that stopped are forgotten)")
        shown = canonical_json({**dict(info or {}), "_principal": actor})
        if len(shown) > MAX_INFO_BYTES:
            shown = canonical_json({"_principal": actor, "info_dropped": len(shown)})
        # The lease holder rolls routes back on the sum of every replica's windows: only
        # a caller who could move that traffic itself is counted, and only such a caller
        # may hold the lease (reviews: a reader's made-up errors rolled production back
        # in the replica's name; a reader took the lease and no rule was judged).
        steers = may_steer(conn, actor, spec)
        counted = steers and problem is None
        now = time.time()
        values = {"host": host[:256], "pid": int(pid), "url": url[:512],
                  "started_at": (started_at or now_iso())[:40], "heartbeat_at": now,
                  "expires_at": now + ttl, "info": shown, "principal": actor[:256],
                  "stats": canonical_json(dict(stats or {}) if counted else {})}
        insert = _insert(conn, deployment_replicas).values(deployment=name, replica=replica,
                                                           **values)
        conn.execute(insert.on_conflict_do_update(index_elements=["deployment", "replica"],
                                                  set_=values))
        conn.execute(deployment_replicas.delete().where(
            deployment_replicas.c.expires_at < now - FORGET_AFTER))
        leader = False
        if lead and steers:
            leader = _take_lease(conn, name, replica, now, lease_ttl)
        return {"leader": leader, "revision": row.revision, "generation": row.revision,
                "stats_counted": counted, "stats_problem": problem}


def may_steer(conn: sa.Connection, actor: str, spec: Mapping[str, Any]) -> bool:
    """Whether ``actor`` may move the traffic of every route of ``spec``: an alias route
    as its protection and policy ask (``aliases.may_move``), any other as a contributor."""
    from .aliases import may_move

    try:
        routes = _routes(spec)
        refs = [parse_reference(route["target"]) for _, route in routes]
    except (KeyError, TypeError, AttributeError, InvalidInput, InvalidReference):
        # A stored spec of the wrong shape (written by another hand): replicas still
        # report, and nobody steers what cannot be read (a review: heartbeats failed).
        return False
    for ref in refs:
        if ref.kind is SelectorKind.ALIAS:
            if not may_move(conn, actor, ref.name, ref.value):
                return False
        elif not has_role(conn, actor, "contributor", ref.name):
            return False
    return True


#: Live replicas one caller may report in one deployment (stopped ones do not count:
#: a fleet that restarts must not lock itself out).
MAX_REPLICAS_PER_CALLER = 1024
#: A replica's reported state (routes, revision) is a few KB; more is not kept.
MAX_INFO_BYTES = 64 * 1024


def _make_room(conn: sa.Connection, name: str, actor: str) -> int:
    """The live replicas ``actor`` reports in deployment ``name``, once its stopped ones
    are forgotten (kept, they let a caller that leaves at once grow the table without
    end: a review; forgotten, a restarting fleet does not lock itself out)."""
    now, live, stopped = time.time(), 0, []
    for replica, expires in conn.execute(sa.select(
            deployment_replicas.c.replica, deployment_replicas.c.expires_at).where(
            deployment_replicas.c.deployment == name,
            deployment_replicas.c.principal == actor)):
        if expires >= now:
            live += 1
        else:
            stopped.append(replica)
    if live + len(stopped) >= MAX_REPLICAS_PER_CALLER and stopped:
        conn.execute(deployment_replicas.delete().where(
            deployment_replicas.c.deployment == name,
            deployment_replicas.c.replica.in_(stopped)))
    return live


def _owner(conn: sa.Connection, name: str, replica: str) -> str | None:
    """The caller that first reported as ``replica`` (while its row is kept)."""
    owner = conn.execute(sa.select(deployment_replicas.c.principal).where(
        deployment_replicas.c.deployment == name,
        deployment_replicas.c.replica == replica)).scalar()
    return str(owner) if owner else None


#: Bounds of what a replica reports per route: a window holds at most this many requests.
_MAX_COUNT = 10**12
_HEX64 = frozenset("0123456789abcdef")


def _stats_problem(stats: Any) -> str | None:
    """What is wrong with a replica's window statistics, or None when they are what
    ``Window.export`` writes: a malformed count stopped the lease holder judging any rule
    (a review). Statistics with a problem are not counted, but the heartbeat is: a
    refused heartbeat took a replica out of the deployment."""
    def count(value: Any) -> bool:
        return type(value) is int and 0 <= value <= _MAX_COUNT

    def problem() -> str | None:
        if not isinstance(stats, dict) or len(stats) > 1000:
            return "not an object of at most 1000 routes"
        for key, entry in stats.items():
            if not isinstance(key, str) or len(key) > 300 or not isinstance(entry, dict):
                return f"route {str(key)[:80]!r}: not an object"
            digest, ref = entry.get("digest"), entry.get("ref")
            if not (isinstance(digest, str) and digest.startswith("sha:") and len(digest) == 68
                    and set(digest[4:]) <= _HEX64):
                return f"route {key[:80]!r}: digest is not sha: and a whole content digest"
            if not isinstance(ref, str) or len(ref) > 300:
                return f"route {key[:80]!r}: ref is not a reference"
            requests, errors = entry.get("requests", 0), entry.get("errors", 0)
            if not (count(requests) and count(errors) and errors <= requests):
                return f"route {key[:80]!r}: requests, errors are not counts (errors <= requests)"
            latency, sums = entry.get("latency") or {}, entry.get("sums") or {}
            if not isinstance(latency, dict) or len(latency) > 64 or not all(
                    isinstance(k, str) and k.isdigit() and len(k) <= 4 and count(v)
                    for k, v in latency.items()):
                return f"route {key[:80]!r}: latency is not a histogram of counts"
            if not isinstance(sums, dict) or len(sums) > 1000 or not all(
                    isinstance(k, str) and len(k) <= 100 and isinstance(v, list) and len(v) == 2
                    and type(v[0]) in (int, float) and math.isfinite(v[0]) and count(v[1])
                    for k, v in sums.items()):
                return f"route {key[:80]!r}: sums are not [total, count] pairs"
        return None

    return problem()


def _take_lease(conn: sa.Connection, name: str, replica: str, now: float, ttl: float) -> bool:
    lease = conn.execute(sa.select(deployment_leases).where(
        deployment_leases.c.deployment == name).with_for_update()).first()
    if lease is None:
        inserted = conn.execute(_insert(conn, deployment_leases).values(
            deployment=name, holder=replica, expires_at=now + ttl, acquired_at=now
        ).on_conflict_do_nothing(index_elements=["deployment"]))
        return bool(inserted.rowcount)
    if lease.holder != replica and lease.expires_at >= now:
        return False
    acquired = lease.acquired_at if lease.holder == replica else now
    conn.execute(deployment_leases.update().where(deployment_leases.c.deployment == name).values(
        holder=replica, expires_at=now + ttl, acquired_at=acquired))
    return True


def leave(registry: Registry, name: str, replica: str) -> None:
    """A replica stops: it is gone at once, and its lease is free for another."""
    with registry.write() as conn:
        _readable_row(conn, name, registry.actor)
        owner = _owner(conn, name, replica)
        if owner is not None and owner != registry.actor:
            # A reader made the lease holder leave, then took the lease (a review).
            raise Conflict(f"replica {replica[:80]!r} of deployment {name} is another "
                           "caller's; it leaves by itself")
        conn.execute(deployment_replicas.update().where(
            deployment_replicas.c.deployment == name,
            deployment_replicas.c.replica == replica).values(expires_at=time.time() - 0.001))
        conn.execute(deployment_leases.delete().where(deployment_leases.c.deployment == name,
                                                      deployment_leases.c.holder == replica))


def status(registry: Registry, name: str) -> dict[str, Any]:
    """The record, every replica seen (live or gone, with its statistics) and the lease."""
    _require_readers(registry)  # first: a hidden deployment and a missing one look alike
    with registry.read() as conn:
        row = _row(conn, name)
        now = time.time()
        replicas = []
        for r in conn.execute(sa.select(deployment_replicas).where(
                deployment_replicas.c.deployment == name).order_by(
                deployment_replicas.c.started_at, deployment_replicas.c.replica)):
            replicas.append({
                "replica": r.replica, "host": r.host, "pid": r.pid, "url": r.url,
                "started_at": r.started_at, "last_heartbeat_s": round(now - r.heartbeat_at, 3),
                "live": r.expires_at >= now, "info": json.loads(r.info),
                "stats": json.loads(r.stats)})
        lease = conn.execute(sa.select(deployment_leases).where(
            deployment_leases.c.deployment == name)).first()
        return {
            "deployment": _record(conn, row),
            "replicas": replicas,
            "lease": None if lease is None or lease.expires_at < now else {
                "holder": lease.holder, "expires_in_s": round(lease.expires_at - now, 3),
                "held_for_s": round(now - lease.acquired_at, 3)},
        }
