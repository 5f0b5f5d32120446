"""Environment commands: diff a version's recorded environment, export it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ._common import console, emit_json, handle_errors, json_option, registry_from, table

if TYPE_CHECKING:
    from .._environment.compare import Difference


@click.group("env")
def env_group() -> None:
    """Compare and export the environment a version was logged in."""


@env_group.command("diff")
@click.argument("ref")
@click.option("--policy", help="Policy to judge by (default: TETHER_ENV_POLICY, registry, strict).")
@json_option
@click.pass_context
@handle_errors
def env_diff(ctx: click.Context, ref: str, policy: str | None, as_json: bool) -> None:
    """How this environment differs from the one REF was logged in.

    Exits 1 when the policy would refuse to load REF here.
    """
    registry = registry_from(ctx)
    verdict = registry.env_verdict(ref, env_policy=policy)
    differences = registry.env_diff(ref)
    # By value: the verdict and the table come from two calls, and matching them by id()
    # marked every row "ok" (a review). Differences are frozen dataclasses.
    refused = set(verdict.refusals)
    warned = set(verdict.warnings)
    if as_json:
        emit_json(
            {
                "ref": ref,
                "ok": verdict.ok,
                "refusals": [d.to_dict() for d in verdict.refusals],
                "warnings": [d.to_dict() for d in verdict.warnings],
                "differences": [d.to_dict() for d in differences],
            }
        )
    elif not differences:
        console.print(f"environment matches {ref}")
    else:

        def outcome(d: Difference) -> str:
            return "REFUSE" if d in refused else "warn" if d in warned else "ok"

        console.print(
            table(
                ["NAME", "KIND", "LEVEL", "RECORDED", "HERE", "VERDICT"],
                [
                    (d.name, d.kind, d.level, d.recorded or "-", d.current or "-", outcome(d))
                    for d in differences
                    if outcome(d) != "ok" or len(differences) < 40
                ],
            )
        )
        hidden = sum(1 for d in differences if outcome(d) == "ok") if len(differences) >= 40 else 0
        if hidden:
            console.print(
                f"({hidden} differences the policy ignores are not shown; --json lists all)"
            )
        console.print(f"{len(verdict.refusals)} refused, {len(verdict.warnings)} warnings")
    if not verdict.ok:
        sys.exit(1)


@env_group.command("export")
@click.argument("ref")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["requirements", "dockerfile"]),
    default="requirements",
    show_default=True,
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of stdout.",
)
@click.option("--full", is_flag=True,
              help="Every recorded distribution, not only what the model's flavor needs.")
@json_option
@click.pass_context
@handle_errors
def env_export(
    ctx: click.Context, ref: str, fmt: str, output: Path | None, full: bool, as_json: bool
) -> None:
    """Write what REF needs from its recorded environment, every version pinned.

    By default: the flavor's packages (scikit-learn, skops, ...) and everything
    they require, as recorded. Local and editable installs are named in a
    comment, never pinned (no index has them).
    """
    text = registry_from(ctx).env_export(ref, format=fmt, full=full)
    if output:
        output.write_text(text)
    if as_json:
        emit_json(
            {"ref": ref, "format": fmt, "output": str(output) if output else None, "text": text}
        )
    elif output:
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
