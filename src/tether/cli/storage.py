"""Storage commands: gc, store stats and store verify."""

from __future__ import annotations

import sys

import click

from .._errors import InvalidInput
from .._store.chunkstore import ChunkStore
from ._common import console, emit_json, handle_errors, human_bytes, json_option, registry_from


@click.command()
@click.option(
    "--keep-last",
    type=click.IntRange(min=1),
    help="Keep only the newest N versions of each model (plus every version an "
    "alias points or ever pointed at). Default: setting gc.keep_last, else all.",
)
@click.option(
    "--grace",
    "grace_seconds",
    type=click.FloatRange(min=0),
    help="Never remove anything younger than this many seconds (default 3600).",
)
@click.option("--dry-run", is_flag=True, help="Report what would be removed; change nothing.")
@json_option
@click.pass_context
@handle_errors
def gc(
    ctx: click.Context,
    keep_last: int | None,
    grace_seconds: float | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Remove stored bytes that no kept version references, and repack."""
    result = registry_from(ctx).gc(
        keep_last=keep_last, grace_seconds=grace_seconds, dry_run=dry_run
    )
    if as_json:
        emit_json(result.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    if result.expired:
        console.print(
            f"versions {'to expire' if dry_run else 'expired'}: {', '.join(result.expired)}"
        )
    console.print(
        f"{verb} {result.store.removed_chunks} chunks ({human_bytes(result.store.removed_bytes)}), "
        f"{'would repack' if dry_run else 'repacked'} {result.store.repacked_packs} packs; "
        f"kept {result.kept_versions} versions, {result.store.kept_chunks} chunks"
    )


@click.group("store")
def store_group() -> None:
    """The artifact store."""


@store_group.command("stats")
@json_option
@click.pass_context
@handle_errors
def store_stats(ctx: click.Context, as_json: bool) -> None:
    """Logical bytes (sum of all versions), stored bytes and the dedup ratio."""
    registry = registry_from(ctx)
    stats = registry.store_stats()
    if as_json:
        emit_json(
            {
                "store": registry.location.store_url,
                "logical_bytes": stats.logical_bytes,
                "stored_bytes": stats.stored_bytes,
                "dedup_ratio": stats.dedup_ratio,
                "chunks": stats.chunks,
                "packs": stats.packs,
                **stats.extra,
            }
        )
        return
    console.print(f"store:        {registry.location.store_url}")
    console.print(f"logical:      {human_bytes(stats.logical_bytes)} (all versions' files)")
    console.print(
        f"stored:       {human_bytes(stats.stored_bytes)} in {stats.packs} packs, "
        f"{stats.chunks} chunks"
    )
    console.print(f"dedup ratio:  {stats.dedup_ratio:.2f}x (dedup and compression)")


@store_group.command("verify")
@click.option("--dry-run", is_flag=True, help="Report lying packs; quarantine nothing.")
@json_option
@click.pass_context
@handle_errors
def store_verify(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Read every pack and check its chunks against its index; quarantine packs that lie.

    A quarantined pack and its index move under quarantine/ in the store (with a
    note of what was wrong): no load uses them again, nothing is deleted. Chunks
    they claimed still load from any other pack that holds them. Exits 1 when
    --dry-run finds a bad pack (nothing was fixed).
    """
    registry = registry_from(ctx)
    store = registry.store
    if not isinstance(store, ChunkStore):
        raise InvalidInput(f"the store at {registry.location.store_url} has no packs to verify")
    report = store.verify_packs(dry_run=dry_run)
    if as_json:
        emit_json({"store": registry.location.store_url, **report.to_dict()})
    else:
        for check in report.bad:
            verb = "quarantined" if check.quarantined else "would quarantine"
            console.print(f"{verb} pack {check.pack}: {len(check.problems)} problem(s)")
            for problem in check.problems[:5]:
                console.print(f"  {problem}")
            if len(check.problems) > 5:
                console.print(f"  ... and {len(check.problems) - 5} more")
        console.print(
            f"checked {report.packs} packs, {report.chunks} chunks "
            f"({human_bytes(report.bytes_read)} in {report.reads} reads): "
            f"{len(report.bad)} bad"
            + ("" if not report.bad or dry_run else ", moved under quarantine/")
        )
    if dry_run and report.bad:
        sys.exit(1)
