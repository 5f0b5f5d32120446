"""Committing a version a remote client prepared: validate, check bytes, number."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

import blake3
import sqlalchemy as sa

from .._digest import canonical_json
from .._errors import Conflict, IntegrityError, InvalidInput
from .._metadata import repository as repo
from .._metadata.clock import now_iso, parse_iso
from .._metadata.schema import idempotency_keys, models
from .._records import ModelVersion
from .._registry.log_version import commit_version
from .._registry.registry import Registry
from .._signature import Signature
from .._store.base import FileEntry
from .bodies import describe

_FIELDS = {
    "manifest": list,
    "flavor": dict,
    "signature": (dict, type(None)),
    "input_example": object,
    "params": dict,
    "metrics": dict,
    "data": dict,
    "lineage": dict,
    "environment": dict,
    "tags": dict,
    "notes": str,
}
_IGNORED = {"author", "digest", "files_digest"}  # recomputed or taken from the token


def check_artifact_path(path: Any) -> str:
    """A manifest path must stay inside the version's folder."""
    if not isinstance(path, str) or not path:
        raise InvalidInput("every file needs a non-empty path")
    pure = PurePosixPath(path)
    if (
        pure.is_absolute()
        or ".." in pure.parts
        or "\\" in path
        or path.startswith("~")
        or any(part in ("", ".") for part in path.split("/"))
    ):
        error = InvalidInput(
            f"artifact path {path!r} escapes the version folder",
            hint="paths are relative POSIX paths without '..'",
        )
        error.code = "invalid_path"
        raise error
    return path


def validate_values(values: Any) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise InvalidInput("values must be a JSON object")
    unknown = set(values) - set(_FIELDS) - _IGNORED
    if unknown:
        error = InvalidInput(f"unknown field(s) in values: {', '.join(sorted(unknown))}")
        error.code = "unknown_field"
        raise error
    checked: dict[str, Any] = {}
    for key, kind in _FIELDS.items():
        if key not in values:
            raise InvalidInput(f"values.{key} is missing")
        if kind is not object and not isinstance(values[key], kind):  # type: ignore[arg-type]
            raise InvalidInput(f"values.{key} has the wrong type")
        checked[key] = values[key]
    files = []
    for raw in checked["manifest"]:
        if not isinstance(raw, dict):
            raise InvalidInput("each manifest entry must be an object")
        check_artifact_path(raw.get("path"))
        try:
            files.append(FileEntry.from_dict(raw))
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInput(
                f"manifest entry {raw.get('path')!r} is malformed: {error}"
            ) from error
    if len({f.path for f in files}) != len(files):
        raise InvalidInput("the manifest lists a path twice")
    checked["manifest"] = [f.to_dict() for f in files]
    for name, info in checked["data"].items():
        if not isinstance(info, dict) or not isinstance(info.get("digest"), str):
            raise InvalidInput(f"values.data.{name} needs a digest")
    if not isinstance(checked["flavor"].get("name"), str) or not checked["flavor"]["name"]:
        raise InvalidInput("values.flavor needs a name (a string)")
    for key, value in checked["metrics"].items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidInput(
                f"values.metrics.{key} is {value!r}, not a finite number",
                hint="metrics are numbers; put text in notes or tags",
            )
    for key, value in checked["tags"].items():
        if not isinstance(value, str):
            raise InvalidInput(f"values.tags.{key} must be a string, not {describe(value)}")
    if checked["signature"] is not None:
        Signature.from_dict(checked["signature"])  # InvalidInput naming the bad field
    return checked


def commit_remote_version(
    registry: Registry, name: str, values: Any, bump: str | None, principal: str
) -> ModelVersion:
    checked = validate_values(values)
    digests = {c[0] for f in checked["manifest"] for c in f["chunks"]}
    missing = registry.store.missing(digests)
    if missing:
        raise IntegrityError(
            f"{len(missing)} chunk(s) of this version are not in the store",
            hint="upload them first (the client does this); nothing was registered",
        )
    checked["author"] = principal
    return commit_version(registry, name, checked, bump)


# -- idempotent commits ----------------------------------------------------------------

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


def _request_digest(name: str, values: Any, bump: str | None) -> str:
    text = canonical_json({"name": name, "values": values, "bump": bump})
    return blake3.blake3(text.encode()).hexdigest()


def _recorded(
    registry: Registry, key: str, principal: str, scope: str, digest: str
) -> ModelVersion | None:
    """The version a commit with ``key`` registered before, or None."""
    with registry.read() as conn:
        row = conn.execute(
            sa.select(idempotency_keys).where(idempotency_keys.c.key == key)
        ).first()
        if row is None:
            return None
        if (row.principal, row.scope, row.request_digest) != (principal, scope, digest):
            raise Conflict(
                "this Idempotency-Key was already used for a different request",
                hint="send a fresh key with every new commit; reuse one only to retry",
            )
        version = repo.version_by_id(conn, row.version_id)
        assert version is not None  # versions are never deleted, only marked
        model = conn.execute(
            sa.select(models.c.name).where(models.c.id == version.model_id)
        ).scalar_one()
        aliases = repo.aliases_by_version(conn, version.model_id).get(version.id, [])
        return repo.row_to_version(version, model, aliases)


def commit_once(
    registry: Registry,
    name: str,
    values: Any,
    bump: str | None,
    principal: str,
    key: str | None,
) -> tuple[ModelVersion, bool]:
    """``commit_remote_version``, at most once per ``key``: (version, replayed).

    The key is recorded after the version, in its own transaction. A server
    killed between the two leaves the key unrecorded; the retry then commits
    again, and the commit itself returns the version already registered with
    the same bytes and metadata, so nothing is registered twice either way.
    """
    if key is None:
        return commit_remote_version(registry, name, values, bump, principal), False
    check_key(key)
    scope = f"POST /models/{name}/versions"
    digest = _request_digest(name, values, bump)
    earlier = _recorded(registry, key, principal, scope, digest)
    if earlier is not None:
        return earlier, True
    version = commit_remote_version(registry, name, values, bump, principal)
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
