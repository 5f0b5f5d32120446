"""Garbage collection: which versions retention keeps, then which bytes go.

A version is kept when it is among the newest ``keep_last`` of its model, when
an alias points at it now or ever did (so rollback always has bytes to go back
to), when a deployment routes traffic to it now or in an earlier revision, or
when it is younger than the grace period. Versions outside all of these are
marked deleted (their metadata and audit trail stay; their bytes go), then the
store drops every chunk no kept version references.

The choice is made in a read, and the store's plan can wait a minute for the
store lock: the marking checks again, in its own transaction, with the models'
rows locked as a promotion locks them, that no version chosen has been promoted,
deployed or changed since (one promoted meanwhile lost its bytes to the gc and
left its alias pointing at nothing: a review). If one has, nothing is removed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._errors import Conflict, InvalidInput, StoreError
from .._metadata import repository as repo
from .._metadata.audit_log import append_event
from .._metadata.clock import parse_iso
from .._metadata.schema import models
from .._store.base import FileEntry, GcReport
from . import datasets
from .deployments import routed_version_ids
from .policies import current_policy

if TYPE_CHECKING:
    from .registry import Registry

DEFAULT_GRACE_SECONDS = 3600.0


@dataclass
class GcResult:
    expired: list[str]
    store: GcReport
    keep_last: int | None
    grace_seconds: float
    kept_versions: int = 0
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.store.dry_run,
            "keep_last": self.keep_last,
            "grace_seconds": self.grace_seconds,
            "expired_versions": self.expired,
            "kept_versions": self.kept_versions,
            "removed_chunks": self.store.removed_chunks,
            "removed_bytes": self.store.removed_bytes,
            "repacked_packs": self.store.repacked_packs,
            "kept_chunks": self.store.kept_chunks,
            "removed": self.store.removed,
        }


def _setting_number(registry: Registry, key: str) -> float | None:
    text = registry.get_setting(key)
    if text in (None, ""):
        return None
    try:
        return _count(float(text), f"the setting {key}")
    except ValueError:
        raise InvalidInput(f"the setting {key} is {text[:40]!r}, not a number",
                           hint=f"tether config set {key} N") from None


def _count(number: float, what: str) -> float:
    """``number``, refused when not a number or negative: ``nan`` passed every check
    (``nan < 0`` is false) and made every version old enough to remove, so gc deleted
    versions logged seconds before (a review). ``inf`` is "never by age"."""
    if math.isnan(number) or number < 0:
        raise InvalidInput(f"{what} must be a number of at least 0 (inf: never), "
                           f"not {number}")
    return number


def collect(
    registry: Registry,
    *,
    keep_last: int | None,
    grace_seconds: float | None,
    dry_run: bool,
    progress: bool = False,
) -> GcResult:
    if keep_last is None:
        configured = _setting_number(registry, "gc.keep_last")
        keep_last = int(configured) if configured is not None else None
    if grace_seconds is None:  # the setting, checked as it is read
        # 0 is a setting too (it read as "unset" and gc kept an hour).
        configured = _setting_number(registry, "gc.grace_seconds")
        grace_seconds = DEFAULT_GRACE_SECONDS if configured is None else configured
    else:
        grace_seconds = _count(float(grace_seconds), "the grace period")
    now = datetime.now(UTC)
    expired: list[str] = []
    doomed: list[tuple[str, Any, int | None]] = []
    # Decide in a read; mark versions deleted only once the store has done every
    # write it needs (``commit`` below), so a failed gc (a full disk) changes nothing.
    with registry.read() as conn:
        ever_aliased = repo.ever_aliased_version_ids(conn) | set(routed_version_ids(conn))
        rows = repo.all_version_rows(conn, brief=True)
        by_model: dict[str, list[Any]] = {}
        for name, row in rows:
            by_model.setdefault(name, []).append(row)
        for name, model_rows in by_model.items():
            mid = model_rows[0].model_id
            # A model's policy retention overrides the registry-wide number.
            keep = current_policy(conn, mid).keep_last or keep_last
            newest = (
                {r.id for r in sorted(model_rows, key=lambda r: r.seq)[-keep:]}
                if keep
                else {r.id for r in model_rows}
            )
            for row in model_rows:
                age = (now - parse_iso(row.created_at)).total_seconds()
                if row.id in newest or row.id in ever_aliased or age < grace_seconds:
                    continue
                expired.append(f"{name}@{row.semver}")
                doomed.append((name, row, keep))

    def commit() -> None:
        try:
            _mark_deleted(registry, doomed)
        except sa.exc.OperationalError as error:
            if "full" not in str(error).lower():
                raise
            raise StoreError(
                "the disk is full: could not write the registry database",
                hint="free space where the database lives and retry; nothing was removed",
            ) from error

    kept = [row for _, row in rows if f"{_}@{row.semver}" not in expired]
    report = registry.store.gc(
        live_files(registry, skip={row.id for _, row, _ in doomed}),
        grace_seconds=grace_seconds, dry_run=dry_run,
        commit=None if dry_run else commit, progress=progress,
    )
    return GcResult(
        expired=expired,
        store=report,
        keep_last=keep_last,
        grace_seconds=grace_seconds,
        kept_versions=len(kept),
    )


def live_files(registry: Registry, *, skip: set[int] | frozenset[int] = frozenset(),
               ) -> Iterator[FileEntry]:
    """Every file of every version not deleted (but those in ``skip``) and of every
    dataset version, read from the database as the store asks (gc's plan, store
    statistics): one version's chunk lists held at a time, not the registry's."""
    with registry.read() as conn:
        yield from repo.version_files(conn, skip=skip)
        yield from datasets.live_files(conn)  # every dataset version is kept


def _mark_deleted(registry: Registry, doomed: list[tuple[str, Any, int | None]]) -> None:
    with registry.write() as conn:
        mids = sorted({int(row.model_id) for _, row, _ in doomed})
        if mids:  # as a promotion or a deletion does (require_model's lock)
            conn.execute(sa.select(models.c.id).where(models.c.id.in_(mids))
                         .order_by(models.c.id).with_for_update()).all()
        kept = repo.ever_aliased_version_ids(conn) | set(routed_version_ids(conn))
        for name, row, _keep in doomed:
            now = repo.version_by_id(conn, row.id)
            if row.id in kept or now is None or now.status != row.status:
                raise Conflict(
                    f"{name}@{row.semver} was promoted, deployed or changed while the gc "
                    "ran; nothing was removed",
                    hint="run `tether gc` again: it decides anew")
        for name, row, keep in doomed:
            repo.set_version_status(conn, row.id, "deleted")
            append_event(
                conn,
                actor=registry.actor,
                action="version.deleted",
                model=name,
                subject=f"{name}@{row.semver}",
                before=row.status,
                after="deleted",
                details={
                    "reason": f"gc retention: keep_last={keep}",
                    "digest": f"sha:{row.digest}",
                },
            )
