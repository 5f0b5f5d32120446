"""Trusted keys and version signatures: what a signature vouches for, and for what.

A signature is verified before it is stored; a refused one is an audit event.
A key may be trusted for loading code-executing formats (``trusted_for_loading``
in a policy, or the ``trust.load_signers`` setting).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._digest import blake3_hex
from .._errors import Conflict, InvalidInput, NotFound, PermissionDenied, PolicyViolation
from .._metadata import repository as repo
from .._metadata.audit_log import append_event
from .._metadata.clock import now_iso
from .._metadata.schema import signatures, trusted_keys
from .._policy import Policy
from .._records import ModelVersion
from .policies import current_policy
from .resolve import resolve_version
from .roles import require_role

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .registry import Registry


#: A key's name: policies and ``trust.load_signers`` list names, comma-separated, and the
#: CLI prints them (a review: a name of escape sequences redrew the terminal, an empty
#: one was reported as "NOT a trusted key", one with a comma could not be listed).
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A key id as ``_signing.key_id`` makes it.
KEY_ID = re.compile(r"[0-9a-f]{16}")


def validate_key_name(name: str) -> str:
    if not isinstance(name, str) or not _KEY_NAME.fullmatch(name):
        shown = repr(name)[:80]
        raise InvalidInput(f"key name {shown} is not a name of 1 to 64 letters, digits, '.', "
                           "'_' or '-' (starting with a letter or digit)",
                           hint="e.g. release, ci-2026")
    return name


def trust_key(registry: Registry, name: str, pem: str) -> str:
    from .. import _signing as signing  # cryptography: only where keys are used

    validate_key_name(name)
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


def remove_key(registry: Registry, name: str) -> dict[str, Any]:
    """Stop trusting the key named ``name`` (a leaked one): every signature by it counts
    for nothing from now on, for policies, loading and checks. The signatures stay
    stored, and say so (by an untrusted key). Admin only; an audit event."""
    with registry.write() as conn:
        require_role(conn, registry.actor, "admin", None)
        row = conn.execute(sa.select(trusted_keys).where(trusted_keys.c.name == name)).first()
        if row is None:
            names = [r[0] for r in conn.execute(sa.select(trusted_keys.c.name))]
            raise NotFound(f"no trusted key named {name[:80]!r}",
                           hint=f"trusted keys: {', '.join(sorted(names)) or 'none'}")
        conn.execute(trusted_keys.delete().where(trusted_keys.c.name == name))
        append_event(conn, actor=registry.actor, action="key.removed", subject=name,
                     before=row.key_id)
    return {"name": name, "key_id": row.key_id}


def list_keys(registry: Registry) -> list[dict[str, Any]]:
    with registry.read() as conn:
        return [
            {"name": r.name, "key_id": r.key_id, "added_by": r.added_by, "created_at": r.created_at}
            for r in conn.execute(sa.select(trusted_keys).order_by(trusted_keys.c.name))
        ]


def sign_version(registry: Registry, ref: str, key_path: str) -> dict[str, Any]:
    """Sign with a local private key: the key never leaves this machine."""
    from .. import _signing as signing  # cryptography: only where keys are used

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
    from .. import _signing as signing  # cryptography: only where keys are used

    if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
        # Before anything is written: a refusal is an audit event, and a 6 MB key id went
        # into it twice (a review).
        raise InvalidInput(f"key id {repr(key_id)[:40]} is not 16 hex digits",
                           hint="tether key list shows the ids of trusted keys")
    if not isinstance(value, str) or len(value) > 256:
        raise InvalidInput("a signature is 128 hex digits")
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


def signature_status(conn: sa.Connection, version: ModelVersion,
                     rows: list[Any] | None = None) -> tuple[list[str], list[str]]:
    """(names of trusted keys with a valid signature, problems such as forged signatures);
    ``rows``: the version's signature rows, when the caller has read them already."""
    from .. import _signing as signing  # cryptography: only where keys are used

    keys = {r.key_id: r for r in conn.execute(sa.select(trusted_keys))}
    valid: list[str] = []
    problems: list[str] = []
    for row in _signature_rows(conn, version) if rows is None else rows:
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


def _signature_rows(conn: sa.Connection, version: ModelVersion) -> list[Any]:
    return list(conn.execute(sa.select(signatures).where(signatures.c.version_id == version.id)))


def trust_facts(conn: sa.Connection, version: ModelVersion) -> dict[str, Any]:
    """What load, check and serve need to know about a version's policy standing, and the
    version's signatures themselves (a client of a server checks them with its own keys:
    see ``vouched_by_pinned_keys``)."""
    mid = repo.model_id(conn, version.name)
    policy = current_policy(conn, mid) if mid is not None else Policy()
    rows = _signature_rows(conn, version)
    valid, problems = signature_status(conn, version, rows)
    return {
        "require_signed_by": list(policy.require_signed_by),
        "load_signers": sorted(set(policy.trusted_for_loading) | set(_setting_list(conn))),
        "valid_signers": valid,
        "signature_problems": problems,
        "deprecated_by_policy": policy.is_deprecated(version.semver),
        "signatures": [{"key_id": r.key_id, "signature": r.signature} for r in rows],
    }


#: Public keys (PEM files, separated as PATH is) a client of a server trusts for loading.
LOAD_KEYS_ENV = "TETHER_LOAD_KEYS"


def own_database(registry: Any) -> bool:
    """Whether ``registry`` reads its database itself (an embedded registry), rather
    than taking a server's answers (``RemoteRegistry``)."""
    from .registry import Registry

    return isinstance(registry, Registry)


def pinned_load_keys() -> dict[str, Ed25519PublicKey]:
    """The public keys this process pins in ``TETHER_LOAD_KEYS``, by key id."""
    paths = [p for p in os.environ.get(LOAD_KEYS_ENV, "").split(os.pathsep) if p.strip()]
    if not paths:
        return {}
    from .. import _signing as signing

    pinned = {}
    for path in paths:
        try:
            text = Path(path).read_bytes()
        except OSError as error:
            raise InvalidInput(f"{LOAD_KEYS_ENV}: cannot read {path}: {error.strerror}",
                               hint="a public key file, as `tether key generate` writes") from None
        public = signing.load_public_key(text, source=path)
        pinned[signing.key_id(public)] = public
    return pinned


def vouched_by_pinned_keys(version: ModelVersion, trust: dict[str, Any]) -> str | None:
    """The id of a key pinned in ``TETHER_LOAD_KEYS`` whose signature on ``version`` this
    process checked itself, or None.

    A client of a server took the server's word that a version was signed by a key
    trusted for loading, and ran its pickle: a compromised server, or anyone between
    client and server over http, chose the code every client ran (a review). The
    server's answer still refuses (a policy's required signature); only a signature
    checked here, by a key the client pins, vouches for running code. ``version`` is
    the one the client checked against its manifest (``require_intact``)."""
    pinned = pinned_load_keys()
    if not pinned:
        return None
    from .. import _signing as signing

    for row in trust.get("signatures") or []:
        if not isinstance(row, dict):
            continue
        key = pinned.get(str(row.get("key_id")))
        if key is not None and signing.verify(key, version, str(row.get("signature"))):
            return signing.key_id(key)
    return None


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
