"""Reading commands: models, versions, show, diff; and delete."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .._humanize import ago, human_bytes
from ._common import (
    console,
    emit_json,
    fmt_metrics,
    handle_errors,
    json_option,
    registry_from,
    shown,
    table,
)

if TYPE_CHECKING:
    from .._records import ModelInfo, ModelVersion

all_option = click.option(
    "--all", "show_all", is_flag=True, help="Include deleted ones (their records stay)."
)


@click.command()
@all_option
@json_option
@click.pass_context
@handle_errors
def models(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List the models in the registry."""
    registry = registry_from(ctx)
    found: list[tuple[ModelInfo, bool]] = [(m, False) for m in registry.models()]
    if show_all:
        found += [(m, True) for m in registry.deleted_models()]
    if as_json:
        emit_json([{**m.to_dict(), "deleted": gone} for m, gone in found])
        return
    if not found:
        console.print('No models yet. Log one with tether.log_model(model, "name").')
        return
    console.print(
        table(
            ["MODEL", "VERSIONS", "LATEST", "ALIASES", "UPDATED"]
            + (["STATUS"] if show_all else []),
            [
                (
                    m.name,
                    m.version_count,
                    m.latest,
                    " ".join(f"{a}→{v}" for a, v in m.aliases.items()),
                    ago(m.updated_at),
                )
                + (("deleted" if gone else "",) if show_all else ())
                for m, gone in found
            ],
        )
    )


@click.command()
@click.argument("name")
@all_option
@click.option("--branch", default=None, metavar="B",
              help="Only the versions logged from git branch B.")
@json_option
@click.pass_context
@handle_errors
def versions(
    ctx: click.Context, name: str, show_all: bool, branch: str | None, as_json: bool
) -> None:
    """List the versions of model NAME, oldest first."""
    registry = registry_from(ctx)
    found = registry.versions_with_deleted(name) if show_all else registry.versions(name)
    if branch is not None:
        found = [v for v in found if (v.lineage.get("git") or {}).get("branch") == branch]
    if as_json:
        # Large chunk lists as their lengths: `tether show --json` gives one version's.
        emit_json([v.to_dict(with_environment=False, brief_lists=True) for v in found])
        return
    console.print(
        table(
            ["#", "VERSION", "DIGEST", "METRICS", "ALIASES", "STATUS", "AUTHOR", "CREATED"],
            [
                (
                    v.seq,
                    v.semver,
                    v.short_digest,
                    fmt_metrics(v.metrics),
                    ",".join(v.aliases),
                    v.status,
                    v.author,
                    ago(v.created_at),
                )
                for v in found
            ],
        )
    )


def _lines(mapping: Any) -> str:
    if not isinstance(mapping, dict):
        return "  (unreadable)"
    return "\n".join(f"  {shown(k)}: {shown(v)}" for k, v in mapping.items()) or "  (none)"


def _render_version(v: ModelVersion) -> None:
    """Every value here is the registry's (a contributor's, or a server's): shown, never
    read as markup or sent to the terminal raw (a review: a recorded git remote carried
    [link=...] markup and escape sequences that cleared the screen)."""
    from rich.panel import Panel

    git = v.lineage.get("git")
    git = git if isinstance(git, dict) else {}
    env = v.environment
    head = (
        f"[bold]{shown(v.ref)}[/]  #{v.seq}  {v.short_digest}  status={shown(v.status)}\n"
        f"aliases: {shown(', '.join(v.aliases)) or '-'}   author: {shown(v.author)}   "
        f"created: {shown(v.created_at)}"
    )
    if console.is_terminal:
        console.print(Panel(head, expand=False))
    else:  # piped: whole lines (a panel cut its author and time at 80 columns: a review)
        console.print(head, soft_wrap=True)
    console.print(
        f"[bold]flavor[/]  {shown(v.flavor.get('name'))} "
        f"({shown(v.flavor.get('serialization', 'files'))})  "
        f"frameworks: {shown(_pins(v.flavor.get('framework_versions', {})))}"
    )
    console.print(f"[bold]params[/]\n{_lines(v.params)}")
    console.print(f"[bold]metrics[/]\n{_lines(v.metrics)}")
    fields = _signature_fields(v.signature)
    if fields is not None:
        inputs, outputs = fields
        console.print("[bold]signature[/]\n  inputs:  " + shown(", ".join(inputs)))
        console.print("  outputs: " + (shown(", ".join(outputs)) or "-"))
    else:
        console.print("[bold]signature[/]  (none: pass input_example= or signature= when logging)")
    console.print("[bold]lineage[/]")
    if git:
        dirty = (
            " (dirty, diff " + shown(str(git.get("diff_digest", ""))[:12]) + ")"
            if git.get("dirty")
            else ""
        )
        # A repository with no commit yet records commit None (this printed a traceback).
        commit = shown(str(git.get("commit") or "")[:12]) or "(no commit yet)"
        console.print(
            f"  git: {commit} on {shown(git.get('branch') or '-')}{dirty}  "
            f"{shown(git.get('remote') or git.get('repo') or '')}"
        )
    else:
        console.print("  git: (not in a git repository)")
    for key, info in v.data.items():
        info = info if isinstance(info, dict) else {}
        digest = shown(str(info.get("digest") or "")[:16])
        if info.get("dataset"):
            how = {"read": "read in the training process",
                   "use_dataset": "named with use_dataset"}.get(str(info.get("via")), "declared")
            console.print(f"  data {shown(key)}: {digest} dataset {shown(info.get('ref'))} "
                          f"({how})")
        else:
            console.print(f"  data {shown(key)}: {digest} "
                          f"{shown(info.get('path') or info.get('kind') or '')}")
    console.print(
        f"[bold]environment[/]  python {shown(env.get('python'))} on "
        f"{shown(env.get('platform'))}/{shown(env.get('machine'))}, "
        f"{len(env.get('packages', {}))} packages"
    )
    console.print("[bold]files[/]")
    console.print(
        table(
            ["PATH", "SIZE", "DIGEST", "CHUNKS"],
            [(f.path, human_bytes(f.size), f.digest[:16], len(f.chunks)) for f in v.files],
        )
    )
    if v.notes:
        console.print(f"[bold]notes[/]  {shown(v.notes)}")


def _signature_fields(signature: Any) -> tuple[list[str], list[str]] | None:
    """(inputs, outputs) as ``name:type``, or None for no signature; a malformed one reads
    as what can be read of it."""
    if not signature or not isinstance(signature, dict):
        return None

    def named(part: Any) -> list[str]:
        fields = part.get("fields") if isinstance(part, dict) else None
        return [f"{f.get('name')}:{f.get('type')}" for f in fields or [] if isinstance(f, dict)]

    return named(signature.get("inputs")), named(signature.get("outputs"))


@click.command()
@click.argument("ref")
@json_option
@click.pass_context
@handle_errors
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show everything recorded about version REF (e.g. fraud@production)."""
    version = registry_from(ctx).get(ref)
    if as_json:
        emit_json(version.to_dict())
        return
    _render_version(version)


@click.command()
@click.argument("ref")
@json_option
@click.pass_context
@handle_errors
def delete(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Delete version REF: it no longer resolves; its record and audit trail stay.

    Refused while an alias points at REF. `tether versions NAME --all` still
    lists it; `tether gc` reclaims the bytes no kept version shares.
    """
    version = registry_from(ctx).delete_version(ref)
    if as_json:
        emit_json(version.to_dict(with_environment=False))
        return
    console.print(
        f"deleted {version.ref} (#{version.seq}, {version.short_digest}); "
        f"its record and audit trail stay (`tether versions {version.name} --all`)"
    )


@click.command()
@click.argument("old")
@click.argument("new")
@json_option
@click.pass_context
@handle_errors
def diff(ctx: click.Context, old: str, new: str, as_json: bool) -> None:
    """Compare two versions: params, metrics, signature, data, environment, files."""
    result = registry_from(ctx).diff(old, new)
    if as_json:
        emit_json(result)
        return
    render_diff(result)


def render_diff(result: dict[str, Any]) -> None:
    console.print(
        f"[bold]{result['old']}[/] ({result['old_digest']}) → "
        f"[bold]{result['new']}[/] ({result['new_digest']})"
    )
    if result["params"]:
        console.print(
            table(
                ["PARAM", "CHANGE", "OLD", "NEW"],
                [(p["name"], p["change"], p["old"], p["new"]) for p in result["params"]],
                title="params",
            )
        )
    else:
        console.print("params: unchanged")
    if result["metrics"]:
        console.print(
            table(
                ["METRIC", "OLD", "NEW", "DELTA"],
                [
                    (
                        m["name"],
                        _num(m["old"]),
                        _num(m["new"]),
                        f"{m['delta']:+.4g}" if m["delta"] is not None else "",
                    )
                    for m in result["metrics"]
                ],
                title="metrics",
            )
        )
    sig = result["signature"]
    verdict = "compatible" if sig["compatible"] else "[red]INCOMPATIBLE[/]"
    console.print(f"signature: {'changed, ' if sig['changed'] else 'unchanged, '}{verdict}")
    for reason in sig["reasons"]:
        console.print(f"  - {reason}")
    if result["data"]:
        console.print(
            table(
                ["DATA", "CHANGE", "OLD", "NEW"],
                [
                    (d["name"], d["change"], str(d["old"])[:12], str(d["new"])[:12])
                    for d in result["data"]
                ],
                title="data",
            )
        )
    env = result["environment"]
    if env:
        console.print(
            table(
                ["PACKAGE", "KIND", "LEVEL", "OLD", "NEW"],
                [(d["name"], d["kind"], d["level"], d["recorded"], d["current"]) for d in env],
                title="environment",
            )
        )
    else:
        console.print("environment: identical")
    files = result["files"]
    console.print(
        table(
            ["FILE", "CHANGE", "OLD SIZE", "NEW SIZE"],
            [
                (f["path"], f["change"], human_bytes(f["old_size"]), human_bytes(f["new_size"]))
                for f in files["files"]
            ],
            title="files",
        )
    )
    console.print(
        f"bytes: {human_bytes(files['new_bytes'])} new, "
        f"{human_bytes(files['shared_bytes'])} shared with {result['old']}"
    )
    lineage = result["lineage"]
    if lineage["old_commit"] != lineage["new_commit"]:
        console.print(f"git: {str(lineage['old_commit'])[:12]} → {str(lineage['new_commit'])[:12]}")


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4g}"


def _pins(versions: Any) -> str:
    if not isinstance(versions, dict):  # a record of the wrong shape: nothing to list
        return "-"
    return ", ".join(f"{k}=={x}" for k, x in versions.items()) or "-"
