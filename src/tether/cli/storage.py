"""Storage commands: gc, store stats and store verify, cache stats and cache prune."""

from __future__ import annotations

import sys
from typing import Any

import click

from .._errors import InvalidInput
from .._humanize import human_bytes
from .._store.base import GC_KINDS
from .._store.cache import ChunkCache, parse_size
from .._store.chunkstore import ChunkStore
from ._common import console, emit_json, handle_errors, json_option, registry_from


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
        keep_last=keep_last, grace_seconds=grace_seconds, dry_run=dry_run,
        progress=not as_json,
    )
    if as_json:
        emit_json(result.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    if result.expired:
        console.print(
            f"versions {'to expire' if dry_run else 'expired'}: {', '.join(result.expired)}"
        )
    removed: dict[str, Any] = result.to_dict().get("removed") or {}
    console.print(
        f"{verb} {human_bytes(result.store.removed_bytes)}: "
        f"{'would repack' if dry_run else 'repacked'} {result.store.repacked_packs} packs; "
        f"kept {result.kept_versions} versions, {result.store.kept_chunks} chunks"
    )
    for kind in GC_KINDS:
        item = removed.get(kind) or {"count": 0, "bytes": 0}
        console.print(
            f"  {_KIND_LABELS[kind]:<24} {item['count']:>7}  {human_bytes(item['bytes'])}"
        )


_KIND_LABELS = {
    "unreferenced_chunks": "unreferenced chunks",
    "packs_without_index": "packs without index",
    "partial_uploads": "partial uploads (tmp/)",
    "stale_locks": "stale locks",
    "stale_pins": "stale pins",
    "scratch": "scratch (cache tmp/)",
}


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
    if stats.extra.get("unreferenced_chunks"):
        console.print(
            f"unreferenced: {stats.extra['unreferenced_chunks']} chunks no version uses "
            "(`tether gc` removes them after the grace period)"
        )
    leftovers: dict[str, Any] = stats.extra.get("leftovers") or {}
    found = {k: v for k, v in leftovers.items() if v.get("count")}
    if not found:
        console.print("leftovers:    none")
        return
    console.print("leftovers:    (`tether gc` removes them; `--dry-run` shows what it would)")
    for kind, item in found.items():
        console.print(
            f"  {_KIND_LABELS.get(kind, kind):<24} {item['count']:>7}  {human_bytes(item['bytes'])}"
        )


@store_group.command("verify")
@click.option("--dry-run", is_flag=True, help="Report lying packs; quarantine nothing.")
@json_option
@click.pass_context
@handle_errors
def store_verify(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Read every pack and check its chunks against its index; quarantine packs that lie.

    A quarantined pack and its index move under quarantine/ in the store (with a
    note of what was wrong): no load uses them again, nothing is deleted. Chunks
    they claimed still load from any other pack that holds them. Merged index
    files are checked too (digest order, pack numbers, filter) and a damaged one
    is written again. Exits 1 when --dry-run finds a bad pack or index (nothing
    was fixed), and whenever a file under index/ can be neither read nor fixed
    (a merged index cut short: restore it from a backup).
    """
    registry = registry_from(ctx)
    store = registry.store
    if not isinstance(store, ChunkStore):
        raise InvalidInput(f"the store at {registry.location.store_url} has no packs to verify")
    report = store.verify_packs(dry_run=dry_run, progress=not as_json)
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
        for problem in report.bad_indexes:
            console.print(problem)
        if report.bad_indexes:
            console.print("the merged index files were written again" if
                          report.indexes_rewritten else
                          "(without --dry-run, or `tether gc`, they are written again)")
        for problem in report.unusable:
            console.print(f"not fixed: {problem}")
        console.print(
            f"checked {report.packs} packs, {report.chunks} chunks "
            f"({human_bytes(report.bytes_read)} in {report.reads} reads): "
            f"{len(report.bad)} bad"
            + ("" if not report.bad or dry_run else ", moved under quarantine/")
        )
    if report.unusable or (dry_run and (report.bad or report.bad_indexes)):
        sys.exit(1)


# -- the client's chunk cache -------------------------------------------------------


@click.group("cache")
def cache_group() -> None:
    """The local chunk cache: stats, and prune to a size.

    Bounded by TETHER_CACHE_MAX_BYTES, else the registry's cache.max_bytes setting
    (default 10 GiB): least recently used chunks are evicted first, never chunks a
    running load uses.
    """


def _cache(ctx: click.Context) -> ChunkCache:
    from .._registry.registry import cache_bound

    registry = registry_from(ctx)
    return ChunkCache(registry.cache_dir, max_bytes=cache_bound(registry))


def _print_cache(data: dict[str, Any]) -> None:
    console.print(f"cache:        {data['cache_dir']}")
    console.print(
        f"chunks:       {data['chunks']} ({human_bytes(data['bytes'])} of "
        f"{human_bytes(data['max_bytes'])}), {data['pinned_chunks']} in use"
    )
    left = data["leftovers"]
    console.print(
        f"leftovers:    {left['scratch']['count']} dead scratch files "
        f"({human_bytes(left['scratch']['bytes'])}), {left['pins']['count']} dead pins"
    )
    if data.get("versions_bytes"):
        console.print(f"versions:     {human_bytes(data['versions_bytes'])} materialised")
    if data.get("index_bytes"):
        console.print(f"index copies: {human_bytes(data['index_bytes'])} (network stores' merged "
                      "index files; `prune --max-bytes 0` removes them)")


@cache_group.command("stats")
@json_option
@click.pass_context
@handle_errors
def cache_stats(ctx: click.Context, as_json: bool) -> None:
    """Chunks cached, their size against the bound, and what dead processes left."""
    data = _cache(ctx).stats()
    if as_json:
        emit_json(data)
        return
    _print_cache(data)


@cache_group.command("prune")
@click.option(
    "--max-bytes",
    "max_bytes",
    help="Evict least recently used chunks down to this size (e.g. 2GiB; 0 empties "
    "the cache). Default: the bound.",
)
@json_option
@click.pass_context
@handle_errors
def cache_prune(ctx: click.Context, max_bytes: str | None, as_json: bool) -> None:
    """Evict least recently used chunks and remove what dead processes left.

    Chunks a running load uses are never evicted.
    """
    limit = parse_size(max_bytes) if max_bytes is not None else None
    if limit is not None and limit < 0:
        raise InvalidInput("--max-bytes must not be negative")
    data = _cache(ctx).prune(limit)
    if as_json:
        emit_json(data)
        return
    if data.get("removed_index_bytes"):
        console.print(f"removed the index copies ({human_bytes(data['removed_index_bytes'])})")
    console.print(
        f"evicted {data['evicted_chunks']} chunks ({human_bytes(data['evicted_bytes'])}), "
        f"removed {data['removed_scratch']['count']} dead scratch files "
        f"({human_bytes(data['removed_scratch']['bytes'])}) and "
        f"{data['removed_pins']['count']} dead pins"
    )
    _print_cache(data)
