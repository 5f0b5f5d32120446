"""Alias commands: promote, rollback, alias history/list/delete."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .._humanize import ago
from ._common import console, emit_json, handle_errors, json_option, registry_from, table

if TYPE_CHECKING:
    from .._records import AliasMove


def _say(move: AliasMove) -> None:
    if move.action == "unchanged":
        console.print(
            f"{move.model}@{move.alias} already points at {move.version}; nothing changed"
        )
    elif move.action == "delete":
        console.print(f"{move.model}@{move.alias} deleted (was {move.previous})")
    else:
        was = f" (was {move.previous})" if move.previous else " (new alias)"
        console.print(f"{move.model}@{move.alias} → {move.version}{was}")


@click.command()
@click.argument("ref")
@click.argument("alias")
@click.option("--reason", default="", help="Why; kept in the audit log.")
@click.option(
    "--create", is_flag=True, help="ALIAS is new: create it (without this, a new name is refused)."
)
@json_option
@click.pass_context
@handle_errors
def promote(
    ctx: click.Context, ref: str, alias: str, reason: str, create: bool, as_json: bool
) -> None:
    """Point ALIAS of the model at version REF, after the policy's checks.

    `tether promote fraud@1.2.0 production` moves an existing alias; the first
    time a model gets an alias, add --create.
    """
    registry = registry_from(ctx)
    if create:
        move = registry.promote(ref, alias, reason=reason, create=True)
    else:  # a server client's promote takes no create argument
        move = registry.promote(ref, alias, reason=reason)
    emit_json(move.to_dict()) if as_json else _say(move)


@click.command()
@click.argument("name")
@click.argument("alias")
@click.option("--reason", default="", help="Why; kept in the audit log.")
@json_option
@click.pass_context
@handle_errors
def rollback(ctx: click.Context, name: str, alias: str, reason: str, as_json: bool) -> None:
    """Move NAME@ALIAS back to its previous target. Repeat to go further back."""
    move = registry_from(ctx).rollback(name, alias, reason=reason)
    emit_json(move.to_dict()) if as_json else _say(move)


@click.group("alias")
def alias_group() -> None:
    """Inspect and delete aliases (use promote/rollback to move them)."""


@alias_group.command("history")
@click.argument("name")
@click.argument("alias")
@json_option
@click.pass_context
@handle_errors
def alias_history(ctx: click.Context, name: str, alias: str, as_json: bool) -> None:
    """Every move of NAME@ALIAS, newest first."""
    moves = registry_from(ctx).alias_history(name, alias)
    if as_json:
        emit_json([m.to_dict() for m in moves])
        return
    console.print(
        table(
            ["WHEN", "ACTION", "FROM", "TO", "BY", "REASON", ""],
            [
                (
                    m.moved_at,
                    m.action,
                    m.previous or "-",
                    m.version or "-",
                    m.actor,
                    m.reason,
                    "(rolled back)" if m.undone else "",
                )
                for m in moves
            ],
        )
    )


@alias_group.command("get")
@click.argument("name")
@click.argument("alias")
@json_option
@click.pass_context
@handle_errors
def alias_get(ctx: click.Context, name: str, alias: str, as_json: bool) -> None:
    """Where NAME@ALIAS points now."""
    state = registry_from(ctx).alias(name, alias)
    if as_json:
        emit_json(state)
        return
    console.print(
        f"{name}@{alias} → {state['version']} (#{state['seq']}, {state['digest'][:16]}), "
        f"moved {ago(state['updated_at'])} by {state['updated_by']}"
    )


@alias_group.command("delete")
@click.argument("name")
@click.argument("alias")
@json_option
@click.pass_context
@handle_errors
def alias_delete(ctx: click.Context, name: str, alias: str, as_json: bool) -> None:
    """Remove NAME@ALIAS (its history stays in the audit log)."""
    move = registry_from(ctx).delete_alias(name, alias)
    emit_json(move.to_dict()) if as_json else _say(move)
