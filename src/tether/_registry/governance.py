"""Governance use cases: policies, role grants, approvals, keys and signatures.

The promotion gate is a ``PromoteCheck`` built here and run by ``promote``
inside its transaction, so the facts it judges cannot move underneath it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .. import _signing as signing
from .._digest import blake3_hex
from .._environment import EnvPolicy, compare_environments, evaluate
from .._errors import Conflict, InvalidInput, NotFound, PermissionDenied, PolicyViolation
from .._metadata import repository as repo
from .._metadata.audit_log import append_event
from .._metadata.clock import now_iso
from .._metadata.schema import approvals, grants, policies, signatures, trusted_keys
from .._policy import ROLES, Facts, Policy, parse_policy, role_rank
from .._policy import evaluate as evaluate_policy
from .._records import ModelVersion
from .._reference import validate_alias_name
from .._schema import Signature, check_compatibility
from .resolve import require_model, resolve_version

if TYPE_CHECKING:
    from .registry import Registry


# -- policies -------------------------------------------------------------------


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


# -- roles ------------------------------------------------------------------------


def roles_of(conn: sa.Connection, principal: str, model: str | None) -> tuple[str, ...]:
    query = sa.select(grants.c.role).where(
        grants.c.principal == principal,
        sa.or_(grants.c.model.is_(None), grants.c.model == model)
        if model
        else grants.c.model.is_(None),
    )
    return tuple(sorted(set(conn.execute(query).scalars()), key=role_rank))


def has_role(conn: sa.Connection, principal: str, role: str, model: str | None) -> bool:
    needed = role_rank(role)
    return any(role_rank(r) >= needed for r in roles_of(conn, principal, model))


def require_role(conn: sa.Connection, principal: str, role: str, model: str | None) -> None:
    if not has_role(conn, principal, role, model):
        scope = f" on {model}" if model else ""
        have = ", ".join(roles_of(conn, principal, model)) or "none"
        raise PermissionDenied(
            f"{principal} needs role {role}{scope} (has: {have})",
            hint=f"an admin can run `tether role grant {principal} {role}"
            f"{' --model ' + model if model else ''}`",
        )


def grant(
    registry: Registry, principal: str, role: str, model: str | None, *, bootstrap: bool = False
) -> None:
    role_rank(role)
    with registry.write() as conn:
        if not bootstrap:
            require_role(conn, registry.actor, "admin", None)
        exists = conn.execute(
            sa.select(grants.c.id).where(
                grants.c.principal == principal,
                grants.c.role == role,
                grants.c.model.is_(None) if model is None else grants.c.model == model,
            )
        ).first()
        if exists:
            return
        conn.execute(
            grants.insert().values(
                principal=principal,
                role=role,
                model=model,
                granted_by=registry.actor,
                created_at=now_iso(),
            )
        )
        append_event(
            conn,
            actor=registry.actor,
            action="role.granted",
            model=model,
            subject=principal,
            after=role,
        )


def revoke(registry: Registry, principal: str, role: str, model: str | None) -> None:
    with registry.write() as conn:
        require_role(conn, registry.actor, "admin", None)
        result = conn.execute(
            grants.delete().where(
                grants.c.principal == principal,
                grants.c.role == role,
                grants.c.model.is_(None) if model is None else grants.c.model == model,
            )
        )
        if result.rowcount == 0:
            raise NotFound(f"{principal} has no grant {role}" + (f" on {model}" if model else ""))
        append_event(
            conn,
            actor=registry.actor,
            action="role.revoked",
            model=model,
            subject=principal,
            before=role,
        )


def list_grants(registry: Registry) -> list[dict[str, Any]]:
    with registry.read() as conn:
        rows = conn.execute(sa.select(grants).order_by(grants.c.principal, grants.c.role))
        return [
            {
                "principal": r.principal,
                "role": r.role,
                "model": r.model,
                "granted_by": r.granted_by,
                "created_at": r.created_at,
            }
            for r in rows
        ]


# -- approvals --------------------------------------------------------------------


def approve(registry: Registry, ref: str, alias: str, *, comment: str = "") -> list[str]:
    validate_alias_name(alias)
    with registry.write() as conn:
        version = resolve_version(conn, ref)
        require_role(conn, registry.actor, "approver", version.name)
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


# -- keys and signatures ----------------------------------------------------------


def trust_key(registry: Registry, name: str, pem: str) -> str:
    public = signing.load_public_key(pem, source=f"key {name!r}")
    kid = signing.key_id(public)
    with registry.write() as conn:
        require_role(conn, registry.actor, "admin", None)
        clash = conn.execute(
            sa.select(trusted_keys).where(
                sa.or_(trusted_keys.c.name == name, trusted_keys.c.key_id == kid)
            )
        ).first()
        if clash is not None:
            raise Conflict(
                f"key {clash.name} ({clash.key_id}) is already trusted",
                hint="remove it first with `tether key remove`",
            )
        conn.execute(
            trusted_keys.insert().values(
                key_id=kid,
                name=name,
                public_key=signing.public_pem(public),
                added_by=registry.actor,
                created_at=now_iso(),
            )
        )
        append_event(conn, actor=registry.actor, action="key.trusted", subject=name, after=kid)
    return kid


def list_keys(registry: Registry) -> list[dict[str, Any]]:
    with registry.read() as conn:
        return [
            {"name": r.name, "key_id": r.key_id, "added_by": r.added_by, "created_at": r.created_at}
            for r in conn.execute(sa.select(trusted_keys).order_by(trusted_keys.c.name))
        ]


def sign_version(registry: Registry, ref: str, key_path: str) -> dict[str, Any]:
    """Sign with a local private key: the key never leaves this machine."""
    key = signing.load_private_key(key_path)
    version = registry.get(ref)
    return registry.record_signature(
        version.ref, signing.key_id(key.public_key()), signing.sign(key, version)
    )


def record_signature(registry: Registry, ref: str, key_id: str, value: str) -> dict[str, Any]:
    """Store a signature, after checking it: only a valid signature by a trusted key is kept.

    A refused signature leaves what was stored untouched and is itself an
    audit event (``version.signature_refused``), so an attempt to replace a
    release signature with garbage is visible.
    """
    with registry.read() as conn:
        version = resolve_version(conn, ref)
        require_role(conn, registry.actor, "contributor", version.name)
        key = conn.execute(sa.select(trusted_keys).where(trusted_keys.c.key_id == key_id)).first()
    problem = None
    if key is None:
        problem = f"key {key_id} is not trusted by this registry"
        hint = "an admin trusts it first: tether key trust NAME KEY.pub"
    elif not signing.verify(signing.load_public_key(key.public_key, source=key.name),
                            version, value):
        problem = f"the signature is not a valid signature by {key.name} over {version.ref}"
        hint = "sign again with the private key of that trusted key: tether sign REF --key FILE"
    if problem is not None:
        with registry.write() as conn:
            append_event(
                conn, actor=registry.actor, action="version.signature_refused",
                model=version.name, subject=version.ref, after=key_id,
                details={"reason": problem},
            )
        raise PermissionDenied(f"signature refused: {problem}", hint=hint)
    assert key is not None
    with registry.write() as conn:
        version = resolve_version(conn, ref)
        existing = conn.execute(
            sa.select(signatures).where(
                signatures.c.version_id == version.id, signatures.c.key_id == key_id
            )
        ).first()
        if existing is not None and signing.verify(
            signing.load_public_key(key.public_key, source=key.name), version, existing.signature
        ):
            # A valid signature by this key is never replaced (Ed25519 is deterministic anyway).
            return {"ref": version.ref, "key_id": key_id, "trusted_as": key.name, "new": False}
        if existing is not None:
            conn.execute(signatures.delete().where(signatures.c.id == existing.id))
        conn.execute(
            signatures.insert().values(
                version_id=version.id,
                key_id=key_id,
                signature=value,
                payload_digest=blake3_hex(signing.signing_payload(version)),
                signer=registry.actor,
                created_at=now_iso(),
            )
        )
        append_event(
            conn,
            actor=registry.actor,
            action="version.signed",
            model=version.name,
            subject=version.ref,
            after=key_id,
            details={"trusted_key": key.name},
        )
        return {"ref": version.ref, "key_id": key_id, "trusted_as": key.name, "new": True}


def signature_status(conn: sa.Connection, version: ModelVersion) -> tuple[list[str], list[str]]:
    """(names of trusted keys with a valid signature, problems such as forged signatures)."""
    keys = {r.key_id: r for r in conn.execute(sa.select(trusted_keys))}
    valid: list[str] = []
    problems: list[str] = []
    for row in conn.execute(sa.select(signatures).where(signatures.c.version_id == version.id)):
        key = keys.get(row.key_id)
        if key is None:
            problems.append(f"signature by untrusted key {row.key_id}")
            continue
        public = signing.load_public_key(key.public_key, source=key.name)
        if signing.verify(public, version, row.signature):
            valid.append(key.name)
        else:
            problems.append(
                f"signature by {key.name} does not match {version.ref} (forged or "
                "the version's metadata changed)"
            )
    return sorted(valid), problems


def trust_facts(conn: sa.Connection, version: ModelVersion) -> dict[str, Any]:
    """What load, check and serve need to know about a version's policy standing."""
    mid = repo.model_id(conn, version.name)
    policy = current_policy(conn, mid) if mid is not None else Policy()
    valid, problems = signature_status(conn, version)
    return {
        "require_signed_by": list(policy.require_signed_by),
        "load_signers": sorted(set(policy.trusted_for_loading) | set(_setting_list(conn))),
        "valid_signers": valid,
        "signature_problems": problems,
        "deprecated_by_policy": policy.is_deprecated(version.semver),
    }


#: Registry setting: trusted keys whose signature lets pickle-based versions load.
LOAD_SIGNERS_SETTING = "trust.load_signers"


def _setting_list(conn: sa.Connection) -> list[str]:
    value = repo.get_setting(conn, LOAD_SIGNERS_SETTING) or ""
    return [name.strip() for name in value.split(",") if name.strip()]


def signed_for_loading(trust: dict[str, Any]) -> str | None:
    """The trusted key whose valid signature vouches for running this version's code."""
    chosen = set(trust.get("load_signers") or ()) & set(trust.get("valid_signers") or ())
    return min(chosen) if chosen else None


def enforce_signatures(version: ModelVersion, trust: dict[str, Any]) -> None:
    """Refuse a version whose policy asks for signatures it does not carry."""
    required = trust["require_signed_by"]
    if required and not set(trust["valid_signers"]) & set(required):
        detail = "; ".join(trust["signature_problems"]) or "it has no signature"
        raise PolicyViolation(
            f"the policy of {version.name} requires a signature by "
            f"{' or '.join(required)} on {version.ref}: {detail}",
            hint=f"sign it: tether sign {version.ref} --key KEYFILE (with a trusted key)",
        )


# -- the promotion gate -----------------------------------------------------------


def promotion_gate(registry: Registry) -> Any:
    """A PromoteCheck enforcing the model's policy; raises PolicyViolation listing failures."""

    def check(
        conn: sa.Connection, version: ModelVersion, alias: str, current: ModelVersion | None
    ) -> None:
        mid = repo.model_id(conn, version.name)
        assert mid is not None
        policy = current_policy(conn, mid)
        valid, _problems = signature_status(conn, version)

        def schema_problem() -> str | None:
            if current is None or current.signature is None:
                return None
            if version.signature is None:
                return "the new version has no signature"
            verdict = check_compatibility(
                Signature.from_dict(current.signature), Signature.from_dict(version.signature)
            )
            return None if verdict.compatible else "; ".join(verdict.reasons)

        def environment_problem(policy_text: str) -> str | None:
            if current is None:
                return None
            frameworks = list(version.flavor.get("framework_packages", []))
            found = compare_environments(current.environment, version.environment, frameworks)
            refusals = evaluate(found, EnvPolicy.parse(policy_text)).refusals
            return "; ".join(str(d) for d in refusals) or None

        facts = Facts(
            semver=version.semver,
            metrics=version.metrics,
            current_semver=current.semver if current else None,
            current_metrics=current.metrics if current else None,
            actor_roles=roles_of(conn, registry.actor, version.name),
            approvers=tuple(a for a in approvers(conn, version.id, alias) if a != version.author),
            signers=tuple(valid),
            schema_problem=schema_problem,
            environment_problem=environment_problem,
        )
        failures = evaluate_policy(policy, alias, facts)
        if failures:
            raise PolicyViolation(
                f"cannot point {version.name}@{alias} at {version.semver}: "
                + f"{len(failures)} policy rule(s) failed:\n  - "
                + "\n  - ".join(failures),
                hint=f"see `tether policy show {version.name}`",
            )

    return check


def check_deprecated_by_policy(conn: sa.Connection, version: ModelVersion) -> bool:
    mid = repo.model_id(conn, version.name)
    return mid is not None and current_policy(conn, mid).is_deprecated(version.semver)


__all__ = ["ROLES", "InvalidInput"]
