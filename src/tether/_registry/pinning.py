"""Pinning models in an application's tether.lock, and loading through the pins."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import NotFound
from .._lockfile import LockEntry, LockFile, find_lock, open_or_create, read_lock
from .._metadata.clock import now_iso
from .._records import ModelVersion
from .._reference import SelectorKind, parse_reference
from .._schema import schema_from_declared
from .._warnings import warn_caller

if TYPE_CHECKING:
    from .registry import Registry


class PinnedVersionWarning(UserWarning):
    """The reference has moved on since the lock pinned it; the pin was loaded."""


def requirements_of(version: ModelVersion) -> dict[str, Any]:
    """What an application must provide to run ``version``: Python and frameworks."""
    packages = version.environment.get("packages", {})
    names = [*version.flavor.get("framework_packages", []), "numpy"]
    return {
        "python": version.environment.get("python"),
        "platform": version.environment.get("platform"),
        "packages": {n: packages[n] for n in dict.fromkeys(names) if n in packages},
    }


def _entry(version: ModelVersion, ref: str, sends: dict[str, Any] | None) -> LockEntry:
    return LockEntry(
        ref=ref,
        semver=version.semver,
        seq=version.seq,
        digest=version.digest,
        requires=requirements_of(version),
        sends=sends,
        locked_at=now_iso(),
    )


def lock_add(
    registry: Registry, ref: str, *, path: Path | None = None, sends: Any = None
) -> tuple[LockFile, LockEntry]:
    parsed = parse_reference(ref)
    declared = None
    if sends is not None:
        declared = schema_from_declared(sends).to_dict()
    version = registry.get(ref)
    lock = open_or_create(path)
    previous = lock.models.get(parsed.name)
    if declared is None and previous is not None:
        declared = previous.sends
    lock.models[parsed.name] = _entry(version, str(parsed), declared)
    lock.save()
    return lock, lock.models[parsed.name]


def lock_update(
    registry: Registry, names: list[str], *, path: Path | None = None
) -> list[tuple[str, str, str]]:
    """Re-resolve each pin's reference; returns (name, old semver, new semver) per move."""
    lock = read_lock(path or _required_lock())
    targets = names or sorted(lock.models)
    moves = []
    for name in targets:
        entry = lock.models.get(name)
        if entry is None:
            raise NotFound(
                f"{name} is not pinned in {lock.path}",
                hint=f"pinned: {', '.join(sorted(lock.models)) or 'nothing'}",
            )
        version = registry.get(entry.ref)
        if version.digest != entry.digest:
            moves.append((name, entry.semver, version.semver))
        lock.models[name] = _entry(version, entry.ref, entry.sends)
    lock.save()
    return moves


def lock_remove(names: Sequence[str], *, path: Path | None = None) -> Path:
    """Drop the pins of ``names`` (every one must be pinned, or nothing changes)."""
    lock = read_lock(path or _required_lock())
    unknown = [name for name in names if name not in lock.models]
    if unknown:
        raise NotFound(
            f"not pinned in {lock.path}: {', '.join(unknown)}",
            hint=f"pinned: {', '.join(sorted(lock.models)) or 'nothing'}",
        )
    for name in names:
        del lock.models[name]
    lock.save()
    return lock.path


def _required_lock() -> Path:
    found = find_lock()
    if found is None:
        raise NotFound(
            "no tether.lock here or in any parent folder",
            hint="create one with `tether lock add NAME@ALIAS`",
        )
    return found


def pinned_version(registry: Registry, name: str, entry: LockEntry) -> ModelVersion:
    """The version ``entry`` pins: by its number, and only while it holds the pinned
    bytes (NotFound otherwise). By digest alone, another version logged with the same
    bytes (newer, not deprecated, another environment recorded) was loaded and checked
    in its place (a review). Used by loading through the pins and by ``tether check``."""
    version = registry.get(f"{name}@{entry.seq}")
    if version.digest != entry.digest:
        raise NotFound(f"#{entry.seq} is {version.semver} ({version.short_digest})")
    return version


def pinned_reference(registry: Registry, ref: str) -> str:
    """The digest reference the lock pins for ``ref``, or ``ref`` itself.

    A pin applies when the caller names the pinned reference (or just the model
    name); an explicit other version (``fraud@1.0.0``) is taken as asked.
    """
    path = find_lock()
    if path is None:
        return ref
    lock = read_lock(path)
    parsed = parse_reference(ref)
    entry = lock.models.get(parsed.name)
    if entry is None:
        return ref
    if str(parsed) != entry.ref and not (parsed.kind is SelectorKind.LATEST and "@" not in ref):
        return ref
    try:
        pinned_version(registry, parsed.name, entry)
    except NotFound as error:
        raise NotFound(
            f"{path} pins {parsed.name} {entry.semver} (#{entry.seq}, sha:{entry.digest[:12]}), "
            f"which this registry does not hold: {error.message}",
            hint=f"`tether lock update {parsed.name}` pins what {entry.ref} names now",
        ) from error
    try:
        now = registry.get(entry.ref)
    except NotFound:
        now = None
    if now is None or now.digest != entry.digest:
        moved = f"now points at {now.semver} ({now.short_digest})" if now else "no longer resolves"
        warn_caller(
            f"{entry.ref} {moved}; loading {entry.semver} (sha:{entry.digest[:12]}) as pinned in "
            f"{path}. Run `tether lock update {parsed.name}` to move the pin.",
            PinnedVersionWarning,
        )
    return f"{parsed.name}@{entry.seq}"  # the pinned version itself, by its number
