"""Audit commands: log and verify the hash-chained event log."""

from __future__ import annotations

import json
import sys

import click

from ._common import (
    COUNT_OR_ALL,
    console,
    emit_json,
    handle_errors,
    json_option,
    registry_from,
    table,
)


@click.group("audit")
def audit_group() -> None:
    """The append-only, hash-chained log of everything that changed."""


@audit_group.command("log")
@click.option("--model", help="Only events about this model.")
@click.option("--action", help="Only actions starting with this (e.g. alias.).")
@click.option("--limit", "-n", type=COUNT_OR_ALL, default=50,
              show_default=True, help="Newest N events (0: all).")
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


@audit_group.command("checkpoint")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              help="Write the checkpoint here (default: standard output).")
@click.pass_context
@handle_errors
def audit_checkpoint(ctx: click.Context, output: str | None) -> None:
    """Export the audit log's signed head, to keep OUTSIDE the registry.

    Keep it where whoever can write the registry's database cannot (a git
    repository, an object-locked bucket). Later, `tether audit verify
    --checkpoint FILE` detects any rewrite of history before it, even one
    whose hash chain was recomputed.
    """
    text = json.dumps(registry_from(ctx).audit_checkpoint(), indent=2) + "\n"
    if output:
        with open(output, "w") as handle:
            handle.write(text)
        console.print(f"checkpoint written to {output}", highlight=False)
    else:
        sys.stdout.write(text)


@audit_group.command("accept")
@click.option("--reason", required=True, help="Why these events are genuine (recorded).")
@json_option
@click.pass_context
@handle_errors
def audit_accept(ctx: click.Context, reason: str, as_json: bool) -> None:
    """Sign events no signature of the audit key covers, after checking them (admin).

    A write never signs the log's head over events its key did not sign (someone
    who could write only the database must not get history vouched for by the
    next honest change): `tether audit verify` names them until they are
    accepted here. Genuine ones come from a new audit key or from before
    signing. Runs where the registry's database and audit key are (on a
    server's host, against its database).
    """
    from .._registry.registry import Registry

    registry = registry_from(ctx)
    if not isinstance(registry, Registry):
        raise click.UsageError("run `tether audit accept` on the server's host, with "
                               "--registry naming its database (the audit key is there)")
    head = registry.sign_audit_head(accept=reason)
    if as_json:
        emit_json(None if head is None else head.to_dict())
    elif head is None:
        console.print("the audit log is empty: nothing to accept")
    else:
        console.print(f"audit head signed at event {head.event_id} (accepted, recorded)",
                      highlight=False)


@audit_group.command("verify")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="A file from `tether audit checkpoint`: history before it must be unchanged.")
@json_option
@click.pass_context
@handle_errors
def audit_verify(ctx: click.Context, checkpoint: str | None, as_json: bool) -> None:
    """Recompute the hash chain and check its signed heads; exit 1 on any tampering.

    Catches edited, inserted and deleted events, a chain recomputed after an
    edit (its heads no longer match the registry key's signatures) and, with
    --checkpoint, deleted or rewritten history up to the checkpoint.
    """
    text = None
    if checkpoint:
        with open(checkpoint) as handle:
            text = handle.read()
    count, problems = registry_from(ctx).verify_audit(checkpoint=text)
    if as_json:
        emit_json({"events": count, "ok": not problems, "problems": problems,
                   "checkpoint": checkpoint})
    elif problems:
        console.print(f"[red]audit log FAILED verification[/] ({count} events checked):")
        for problem in problems:
            console.print(f"  - {problem}")
    else:
        extra = f"; checkpoint {checkpoint} holds" if checkpoint else ""
        console.print(f"audit log OK: {count} events, hash chain intact, signed heads valid{extra}")
    if problems:
        sys.exit(1)
