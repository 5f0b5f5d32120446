"""`tether hooks`: git hooks that keep large files out of git and models in step."""

from __future__ import annotations

import sys

import click

from ._common import console, emit_json, handle_errors, json_option

_SIZE_HELP = "Largest file a commit may add to git (e.g. 5MB, 500KB; K/M/G are 1024-based)."


@click.group("hooks")
def hooks_group() -> None:
    """Git hooks: refuse large untracked files on commit, run `tether check` on push."""


@hooks_group.command("install")
@click.option("--max-size", default="5MB", show_default=True, help=_SIZE_HELP)
@click.option("--force", is_flag=True,
              help="Replace hooks that are not Tether's (default: keep them, run them first).")
@json_option
@handle_errors
def install(max_size: str, force: bool, as_json: bool) -> None:
    """Install pre-commit and pre-push hooks in this git repository (idempotent).

    pre-commit refuses staged files over --max-size, naming the
    `tether data track PATH` that keeps them in Tether instead; pre-push runs
    `tether check` when the work tree has a tether.lock. A hook already there
    that is not Tether's is kept as NAME.pre-tether and run first.
    """
    from .._registry.git_hooks import install as install_hooks
    from .._registry.git_hooks import parse_size

    done = install_hooks(max_size=parse_size(max_size), force=force)
    if as_json:
        emit_json([item.to_dict() for item in done])
        return
    for item in done:
        chained = f" (runs {item.chained} first)" if item.chained else ""
        console.print(f"{item.hook}: {item.action}  {item.path}{chained}", markup=False)


@hooks_group.command("pre-commit")
@click.option("--max-size", default="5MB", show_default=True, help=_SIZE_HELP)
@json_option
@handle_errors
def pre_commit(max_size: str, as_json: bool) -> None:
    """Refuse (exit 1) if the index adds files over --max-size (what the hook runs)."""
    from .._registry.git_hooks import parse_size, staged_too_large

    limit = parse_size(max_size)
    refused = staged_too_large(max_size=limit)
    if as_json:
        emit_json([item.to_dict() for item in refused])
    elif refused:
        click.echo("tether: this commit adds large files to git:", err=True)
        for item in refused:
            click.echo("  " + item.message(limit), err=True)
        click.echo("(or commit anyway with git commit --no-verify)", err=True)
    if refused:
        sys.exit(1)
