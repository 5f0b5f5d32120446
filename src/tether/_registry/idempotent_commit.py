"""Committing a version at most once per ``Idempotency-Key``.

A client that lost the answer to a commit sends it again with the same key
and gets the version the first attempt registered, never a second one. The
author is always the registry's actor (on a server: the authenticated caller),
whatever the values say.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import blake3
import sqlalchemy as sa

from .._digest import canonical_json
from .._errors import Conflict, InvalidInput
from .._identity import manifest_digest
from .._metadata import repository as repo
from .._metadata.clock import now_iso, parse_iso
from .._metadata.schema import idempotency_keys, models, versions
from .._records import ModelVersion, VersionValues

if TYPE_CHECKING:
    from .registry import Registry

#: What a client may send as ``Idempotency-Key`` (a UUID is typical).
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")
#: How long a key is remembered; a retry comes within seconds, a day is generous.
KEY_LIFETIME = timedelta(days=1)


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise InvalidInput(
            "Idempotency-Key must be 8 to 128 letters, digits, '.', '_', ':' or '-'",
            hint="send a fresh random value (a UUID) per commit, the same one with each retry",
        )
    return key


def _request_digest(name: str, values: VersionValues, bump: str | None) -> str:
    """What identifies a request: its fields, and its manifest by ``manifest_digest``
    (hashed a piece at a time, not written out as text), whichever form it came in."""
    text = canonical_json({"name": name, "values": values.to_dict(manifest=False),
                           "bump": bump})
    hasher = blake3.blake3(text.encode())
    hasher.update(manifest_digest(values.manifest).encode())
    return hasher.hexdigest()


def _legacy_digest(name: str, values: Any, bump: str | None) -> str | None:
    """The digest servers before the packed form recorded (of the JSON as sent), so a
    retry across an upgrade still finds its key's version; None for checked values."""
    if isinstance(values, VersionValues):
        return None
    text = canonical_json({"name": name, "values": values, "bump": bump})
    return blake3.blake3(text.encode()).hexdigest()


def _recorded(
    registry: Registry, key: str, principal: str, scope: str, digest: str,
    legacy: str | None = None,
) -> ModelVersion | None:
    """The version a commit with ``key`` registered before, or None."""
    with registry.read() as conn:
        row = conn.execute(
            sa.select(idempotency_keys).where(idempotency_keys.c.key == key)
        ).first()
        if row is None:
            return None
        if ((row.principal, row.scope) != (principal, scope)
                or row.request_digest not in (digest, legacy)):
            raise Conflict(
                "this Idempotency-Key was already used for a different request",
                hint="send a fresh key with every new commit; reuse one only to retry",
            )
        version = repo.version_by_id(conn, row.version_id, records=False)
        assert version is not None  # versions are never deleted, only marked
        model = conn.execute(
            sa.select(models.c.name).where(models.c.id == version.model_id)
        ).scalar_one()
        aliases = repo.aliases_by_version(conn, version.model_id).get(version.id, [])
        return repo.row_to_version(version, model, aliases, lists_in_file=True,
                                   records=repo.stored_records(conn, versions, version.id))


def _commit(registry: Registry, name: str, checked: VersionValues,
            bump: str | None) -> ModelVersion:
    return registry.commit(name, replace(checked, author=registry.actor), bump)


def commit_once(
    registry: Registry, name: str, values: Any, bump: str | None, key: str | None
) -> tuple[ModelVersion, bool]:
    """``Registry.commit`` as the registry's actor, at most once per ``key``: (version,
    replayed).

    The key is recorded after the version, in its own transaction. A server
    killed between the two leaves the key unrecorded; the retry then commits
    again, and the commit itself returns the version already registered with
    the same bytes and metadata, so nothing is registered twice either way.
    """
    if key is not None:
        check_key(key)
    # JSON is checked here (InvalidInput naming the field); checked values (a packed
    # request's, see server/packed.py) are as they came.
    checked = values if isinstance(values, VersionValues) else VersionValues.from_dict(values)
    if key is None:
        return _commit(registry, name, checked, bump), False
    principal = registry.actor
    scope = f"POST /models/{name}/versions"
    digest = _request_digest(name, checked, bump)
    earlier = _recorded(registry, key, principal, scope, digest,
                        _legacy_digest(name, values, bump))
    if earlier is not None:
        return earlier, True
    version = _commit(registry, name, checked, bump)
    now = now_iso()
    expired = (parse_iso(now) - KEY_LIFETIME).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        with registry.write() as conn:
            conn.execute(sa.delete(idempotency_keys).where(idempotency_keys.c.created_at < expired))
            conn.execute(
                sa.insert(idempotency_keys).values(
                    key=key,
                    principal=principal,
                    scope=scope,
                    request_digest=digest,
                    version_id=version.id,
                    created_at=now,
                )
            )
    except sa.exc.IntegrityError:
        # The same request, running at once (a retry that overtook the first try):
        # both committed the same content, so the commit answered the same version.
        earlier = _recorded(registry, key, principal, scope, digest)
        if earlier is not None:
            return earlier, True
        raise
    return version, False
