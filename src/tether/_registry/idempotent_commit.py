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
from .._metadata.clock import iso, now_iso, parse_iso
from .._metadata.schema import idempotency_keys, models, versions
from .._records import ModelVersion, VersionValues
from . import log_version

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
        if row.created_at < _expired_before():
            return None  # expired: gone for every purpose (deleted by the next keyed commit)
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


def _commit(registry: Registry, name: str, checked: VersionValues, bump: str | None,
            record_with: log_version.RecordWith | None = None) -> ModelVersion:
    return log_version.commit(registry, name, replace(checked, author=registry.actor), bump,
                              record_with=record_with)


def _expired_before(now: str | None = None) -> str:
    """Keys recorded before this time (ISO text, as stored: it sorts as time) expired."""
    return iso(parse_iso(now or now_iso()) - KEY_LIFETIME)


class _KeyTaken(Exception):
    """Another request recorded the key first; the version this one made is rolled back."""


def _record_key(key: str, principal: str, scope: str,
                digest: str) -> log_version.RecordWith:
    """Records ``key`` for the version, in the transaction that records the version."""

    def record(conn: sa.Connection, version_id: int) -> None:
        now = now_iso()
        conn.execute(sa.delete(idempotency_keys).where(
            idempotency_keys.c.created_at < _expired_before(now)))
        try:
            conn.execute(
                sa.insert(idempotency_keys).values(
                    key=key,
                    principal=principal,
                    scope=scope,
                    request_digest=digest,
                    version_id=version_id,
                    created_at=now,
                )
            )
        except sa.exc.IntegrityError as error:
            raise _KeyTaken(key) from error

    return record


def commit_once(
    registry: Registry, name: str, values: Any, bump: str | None, key: str | None
) -> tuple[ModelVersion, bool]:
    """``Registry.commit`` as the registry's actor, at most once per ``key``: (version,
    replayed).

    The key is recorded in the transaction that records the version: both or neither.
    Requests racing with one key (a retry that overtook the first try, or a client
    reusing a key for another commit) each try; the first to record the key keeps its
    version, the others' are rolled back and they answer as a later request would: the
    same version for the same request, 409 for another, with nothing registered.
    """
    if key is not None:
        check_key(key)
    # JSON is checked here (InvalidInput naming the field); checked values (a packed
    # request's, see server/packed.py) are as they came.
    checked = (values if isinstance(values, VersionValues)
               else log_version.checked_values(values))
    if key is None:
        return _commit(registry, name, checked, bump), False
    principal = registry.actor
    scope = f"POST /models/{name}/versions"
    digest = _request_digest(name, checked, bump)
    legacy = _legacy_digest(name, values, bump)
    earlier = _recorded(registry, key, principal, scope, digest, legacy)
    if earlier is not None:
        return earlier, True
    try:
        version = _commit(registry, name, checked, bump,
                          _record_key(key, principal, scope, digest))
    except _KeyTaken:
        earlier = _recorded(registry, key, principal, scope, digest, legacy)
        if earlier is None:  # recorded, then expired within the moment: unheard of
            raise Conflict("this Idempotency-Key was being used by another request",
                           hint="retry with the same key") from None
        return earlier, True
    return version, False
