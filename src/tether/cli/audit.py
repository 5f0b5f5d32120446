"""Audit commands: log and verify the hash-chained event log."""

from __future__ import annotations

import json
import sys

import click

from ._common import console, emit_json, handle_errors, json_option, registry_from, table


@click.group("audit")
def audit_group() -> None:
    """The append-only, hash-chained log of everything that changed."""


@audit_group.command("log")
@click.option("--model", help="Only events about this model.")
@click.option("--action", help="Only actions starting with this (e.g. alias.).")
@click.option("--limit", "-n", type=int, default=50, show_default=True, help="Newest N events.")
@json_option
@click.pass_context
@handle_errors
def audit_log(
    ctx: click.Context, model: str | None, action: str | None, limit: int, as_json: bool
) -> None:
    """List events, newest first."""
    events = registry_from(ctx).audit_log(model=model, action=action, limit=limit or None)
    if as_json:
        emit_json([e.to_dict() for e in events])
        return
    console.print(
        table(
            ["#", "WHEN", "WHO", "ACTION", "SUBJECT", "BEFORE", "AFTER"],
            [
                (
                    e.id,
                    e.ts[:19].replace("T", " "),
                    e.actor,
                    e.action,
                    e.subject or e.model or "",
                    _short(e.before),
                    _short(e.after),
                )
                for e in events
            ],
        )
    )


def _short(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dict) and "semver" in value:
        return str(value["semver"])
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:39] + "…"


@audit_group.command("verify")
@json_option
@click.pass_context
@handle_errors
def audit_verify(ctx: click.Context, as_json: bool) -> None:
    """Recompute the hash chain; exit 1 if any event was edited, inserted or deleted."""
    count, problems = registry_from(ctx).verify_audit()
    if as_json:
        emit_json({"events": count, "ok": not problems, "problems": problems})
    elif problems:
        console.print(f"[red]audit log FAILED verification[/] ({count} events checked):")
        for problem in problems:
            console.print(f"  - {problem}")
    else:
        console.print(f"audit log OK: {count} events, hash chain intact")
    if problems:
        sys.exit(1)
