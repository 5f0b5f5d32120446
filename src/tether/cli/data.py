"""Dataset commands: `tether data add/list/versions/show/diff/promote`, and git: track,
checkout, push, pull."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .._humanize import ago, human_bytes
from ._common import (
    console,
    emit_json,
    handle_errors,
    json_option,
    registry_from,
    table,
)
from ._common import shown as shown_text

if TYPE_CHECKING:
    from .._registry.datasets import DatasetVersion

#: Files listed by `data show` before "and N more".
_SHOWN_FILES = 20


@click.group("data")
def data_group() -> None:
    """Versioned datasets: add, list, show, diff, promote, download, track in git."""


def _tags(pairs: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--tag")
        tags[key] = value
    return tags


def _added(version: DatasetVersion) -> None:
    if not version.bump_reasons:  # the same bytes were registered before
        console.print(f"{version.ref}  #{version.seq}  {version.short_digest}  unchanged: "
                      "these bytes are this version already")
        return
    stored = version.source.get("stored_bytes")
    console.print(
        f"{version.ref}  #{version.seq}  {version.short_digest}  "
        f"{len(version.files)} file(s), {human_bytes(version.size)}"
        + (f", {human_bytes(stored)} new in the store" if stored is not None else "")
    )
    if version.bump_reasons:
        console.print("  why " + version.semver + ": " + "; ".join(version.bump_reasons))


@data_group.command("add")
@click.argument("path", type=click.Path(exists=True))
@click.argument("name")
@click.option("--notes", default="", help="Free text kept with the version.")
@click.option("--bump", default=None, help="major, minor, patch or an explicit version.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@json_option
@click.pass_context
@handle_errors
def add(
    ctx: click.Context,
    path: str,
    name: str,
    notes: str,
    bump: str | None,
    tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Store file or folder PATH as the next version of dataset NAME.

    Content-defined chunks mean a grown or edited file costs about the
    changed bytes; adding the same bytes again returns the existing version.
    """
    version = registry_from(ctx).add_dataset(
        path, name, notes=notes, bump=bump, tags=_tags(tags), progress=not as_json
    )
    if as_json:
        emit_json(version.to_dict(with_files=False))
    else:
        _added(version)


@data_group.command("list")
@json_option
@click.pass_context
@handle_errors
def list_(ctx: click.Context, as_json: bool) -> None:
    """List the datasets in the registry."""
    found = registry_from(ctx).list_datasets()
    if as_json:
        emit_json([d.to_dict() for d in found])
        return
    if not found:
        console.print("No datasets yet. Add one with `tether data add PATH NAME`.")
        return
    console.print(
        table(
            ["DATASET", "VERSIONS", "LATEST", "ALIASES", "UPDATED"],
            [
                (
                    d.name,
                    d.version_count,
                    d.latest,
                    " ".join(f"{a}→{v}" for a, v in d.aliases.items()),
                    ago(d.updated_at),
                )
                for d in found
            ],
        )
    )


@data_group.command("versions")
@click.argument("name")
@json_option
@click.pass_context
@handle_errors
def versions(ctx: click.Context, name: str, as_json: bool) -> None:
    """List the versions of dataset NAME, oldest first."""
    found = registry_from(ctx).dataset_versions(name)
    if as_json:
        emit_json([v.to_dict(with_files=False) for v in found])
        return
    console.print(
        table(
            ["#", "VERSION", "DIGEST", "FILES", "SIZE", "ALIASES", "AUTHOR", "CREATED"],
            [
                (
                    v.seq,
                    v.semver,
                    v.short_digest,
                    len(v.files),
                    human_bytes(v.size),
                    ",".join(v.aliases),
                    v.author,
                    ago(v.created_at),
                )
                for v in found
            ],
        )
    )


@data_group.command("show")
@click.argument("ref")
@click.option("--all-files", is_flag=True, help=f"List every file (default: {_SHOWN_FILES}).")
@json_option
@click.pass_context
@handle_errors
def show(ctx: click.Context, ref: str, all_files: bool, as_json: bool) -> None:
    """Show dataset version REF: files, tables, aliases, and the models trained on it."""
    v = registry_from(ctx).get_dataset(ref)
    if as_json:
        emit_json(v.to_dict())
        return
    git = v.source.get("git")
    git = git if isinstance(git, dict) else {}
    # A repository with no commit yet records no commit: say so, not "(git )".
    commit = str(git.get("commit") or "")[:10] or "no commit yet"
    # The registry's words (a contributor's, or a server's): shown as text, never as
    # markup or escape sequences (notes cleared the screen and drew a link: a review).
    console.print(
        f"{shown_text(v.ref)}  #{v.seq}  {v.short_digest}  status={shown_text(v.status)}\n"
        f"aliases: {shown_text(', '.join(v.aliases)) or '-'}   author: "
        f"{shown_text(v.author)}   created: {shown_text(v.created_at)}\n"
        f"source: {shown_text(v.source.get('path', '?'))}"
        + (f"  (git {shown_text(commit)}{' dirty' if git.get('dirty') else ''})" if git else "")
    )
    if v.notes:
        console.print(f"notes: {shown_text(v.notes)}")
    shown = v.files if all_files else v.files[:_SHOWN_FILES]
    rows = []
    for f in shown:
        facts = v.tables.get(f.path) or {}
        shape = f"{facts.get('rows')} rows × {len(facts['columns'])} cols" if facts else ""
        rows.append((f.path, human_bytes(f.size), f"{len(f.chunks)}", shape))
    console.print(
        table(["FILE", "SIZE", "CHUNKS", "TABLE"], rows,
              title=f"files ({len(v.files)}, {human_bytes(v.size)})")
    )
    if len(shown) < len(v.files):
        console.print(f"  … and {len(v.files) - len(shown)} more (--all-files)")
    if v.used_by:
        console.print(
            table(["MODEL VERSION", "AS", "DIGEST", "STATUS"],
                  [(u["ref"], u["role"], u["digest"][:16], u["status"]) for u in v.used_by],
                  title="models trained on it")
        )
    else:
        console.print("models trained on it: none recorded")


@data_group.command("diff")
@click.argument("old_ref")
@click.argument("new_ref")
@json_option
@click.pass_context
@handle_errors
def diff(ctx: click.Context, old_ref: str, new_ref: str, as_json: bool) -> None:
    """Compare two dataset versions: files added, removed, changed; rows and columns."""
    result = registry_from(ctx).diff_datasets(old_ref, new_ref)
    if as_json:
        emit_json(result)
        return
    summary = result["summary"]
    console.print(
        f"{result['old']} → {result['new']}: {summary['added']} added, "
        f"{summary['removed']} removed, {summary['changed']} changed, "
        f"{result['unchanged']} unchanged; {human_bytes(summary['new_chunk_bytes'])} of new "
        "chunks"
    )
    for item in result["added"]:
        console.print(f"  + {shown_text(item['path'])}  {human_bytes(item['size'])}")
    for item in result["removed"]:
        console.print(f"  - {shown_text(item['path'])}  {human_bytes(item['size'])}")
    for item in result["changed"]:
        console.print(
            f"  ~ {shown_text(item['path'])}  {human_bytes(item['old_size'])} → "
            f"{human_bytes(item['new_size'])} ({human_bytes(item['new_bytes'])} new)"
        )
        if "table" in item:
            console.print("      " + _table_line(item["table"]))


def _table_line(change: dict[str, Any]) -> str:
    parts = [f"rows {change['old_rows']} → {change['new_rows']}"]
    if change.get("rows_compared"):
        parts.append(f"+{change['rows_added']} / -{change['rows_removed']} rows")
    elif change.get("why"):
        parts.append(f"rows not compared: {change['why']}")
    if change["columns_added"]:
        parts.append("columns added: " + ", ".join(change["columns_added"]))
    if change["columns_removed"]:
        parts.append("columns removed: " + ", ".join(change["columns_removed"]))
    for retyped in change["columns_retyped"]:
        parts.append(f"{retyped['column']}: {retyped['old']} → {retyped['new']}")
    return "; ".join(parts)


@data_group.command("promote")
@click.argument("ref")
@click.argument("alias")
@click.option("--reason", default="", help="Why; kept in the audit log.")
@json_option
@click.pass_context
@handle_errors
def promote(ctx: click.Context, ref: str, alias: str, reason: str, as_json: bool) -> None:
    """Point dataset alias ALIAS at version REF (audited)."""
    move = registry_from(ctx).promote_dataset(ref, alias, reason=reason)
    if as_json:
        emit_json(move.to_dict())
    elif move.action == "unchanged":
        console.print(f"{move.model}@{alias} already points at {move.version}")
    else:
        was = f" (was {move.previous})" if move.previous else " (new alias)"
        console.print(f"{move.model}@{alias} → {move.version}{was}")


@data_group.command("track")
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", default=None, help="Dataset name (default: from PATH's name).")
@click.option("--notes", default="", help="Free text kept with the version.")
@json_option
@click.pass_context
@handle_errors
def track(ctx: click.Context, path: str, name: str | None, notes: str, as_json: bool) -> None:
    """Add PATH as a dataset version, write PATH.tether for git, and git-ignore PATH."""
    from .._registry.datasets_io import track as track_path

    pointer, version = track_path(registry_from(ctx), path, name=name, notes=notes)
    if as_json:
        emit_json({"pointer": str(pointer), **version.to_dict(with_files=False)})
        return
    _added(version)
    shown = _relative(pointer)
    ignore = _relative(pointer.parent / ".gitignore")
    console.print(f"wrote {shown}; commit it: git add {shown} {ignore}")


def _relative(path: Path) -> str:
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


@data_group.command("checkout")
@click.argument("path", type=click.Path())
@json_option
@click.pass_context
@handle_errors
def checkout(ctx: click.Context, path: str, as_json: bool) -> None:
    """Write the bytes PATH.tether points at to PATH (every byte verified)."""
    from .._registry.datasets_io import checkout as checkout_path

    version = checkout_path(registry_from(ctx), path)
    if as_json:
        emit_json({"path": path, **version.to_dict(with_files=False)})
    else:
        console.print(f"{path} ← {version.ref} ({human_bytes(version.size)})")


@data_group.command("download")
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=Path))
@json_option
@click.pass_context
@handle_errors
def download(ctx: click.Context, ref: str, dest: Path, as_json: bool) -> None:
    """Write dataset version REF's files (every byte verified) into the new folder DEST."""
    registry = registry_from(ctx)
    version = registry.get_dataset(ref)
    # By digest: an alias moved meanwhile must not change what is written.
    where = registry.download_dataset(f"{version.name}@sha:{version.digest}", dest,
                                      progress=not as_json)
    if as_json:
        emit_json({"ref": version.ref, "digest": f"sha:{version.digest}", "path": str(where),
                   "files": [f.path for f in version.files]})
    else:
        console.print(f"{version.ref}: {len(version.files)} file(s), "
                      f"{human_bytes(version.size)}, verified into {where}")



_SYNC_MARK = {"pushed": "↑", "pulled": "↓", "up-to-date": "=", "missing": "?", "failed": "!"}


def _render_sync(done: list[Any], verb: str) -> None:
    import sys

    if not done:
        console.print("no pointers here: track data with `tether data track PATH`")
        return
    for item in done:
        line = f"{_SYNC_MARK.get(item.status, ' ')} {item.path}  {item.dataset}@{item.version}"
        if item.status == "pushed":
            line += f"  (was {item.previous}; commit {item.path}.tether)"
        elif item.status == "missing":
            line += "  (not in the working tree: nothing to push)"
        elif item.status == "failed":
            line += f"  FAILED: {item.error}"
        else:
            line += f"  {item.status}"
        console.print(line, markup=False)
    moved = sum(1 for item in done if item.status in ("pushed", "pulled"))
    failed = sum(1 for item in done if item.status == "failed")
    console.print(f"{moved} {verb}, {len(done) - moved - failed} unchanged"
                  + (f", {failed} failed" if failed else ""))
    if failed:
        sys.exit(1)


@data_group.command("push")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--notes", default="", help="Free text kept with each new version.")
@click.option("--adopt", is_flag=True,
              help="Add PATHS even if this clone never tracked, pulled or checked them out "
              "(their bytes are yours to add).")
@json_option
@click.pass_context
@handle_errors
def push(ctx: click.Context, paths: tuple[Path, ...], notes: str, adopt: bool,
         as_json: bool) -> None:
    """Add each tracked path whose bytes changed as a new version; rewrite its pointer.

    Looks at every *.tether pointer git knows in this work tree (or only those
    of PATHS); a path still holding the bytes its pointer names is left alone.
    Only paths this clone tracked, pulled, checked out or pushed are added: a
    pointer that came with the repository beside bytes of yours (a committed
    .env.tether beside your .env) is refused unless you --adopt PATHS.
    Commit the rewritten pointers afterwards. Exits 1 if any push failed.
    """
    from .._registry.data_sync import push as push_pointers

    done = push_pointers(registry_from(ctx), only=list(paths) or None, notes=notes,
                         adopt=adopt)
    if as_json:
        emit_json([item.to_dict() for item in done])
        if any(item.status == "failed" for item in done):
            raise SystemExit(1)
        return
    _render_sync(done, "pushed")


@data_group.command("pull")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True,
              help="Replace paths holding changes no version has (edited since they were "
              "last pulled or pushed here); without it they are left alone and reported.")
@json_option
@click.pass_context
@handle_errors
def pull(ctx: click.Context, paths: tuple[Path, ...], force: bool, as_json: bool) -> None:
    """Write every tracked path that is missing or stale from the version its pointer names.

    Like `tether data checkout` for every *.tether pointer at the current git
    revision (or only those of PATHS), each byte verified; paths already holding
    those bytes are re-hashed and left alone. After `git switch`, this brings
    that branch's data. A path you changed since it was last pulled or pushed
    here is not replaced (push it first, or --force). Exits 1 if any pull failed.
    """
    from .._registry.data_sync import pull as pull_pointers

    done = pull_pointers(registry_from(ctx), only=list(paths) or None, force=force)
    if as_json:
        emit_json([item.to_dict() for item in done])
        if any(item.status == "failed" for item in done):
            raise SystemExit(1)
        return
    _render_sync(done, "pulled")
