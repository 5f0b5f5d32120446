"""Commands for running a shared registry: server-init, server, token."""

from __future__ import annotations

import os

import click

from ._common import PORT, console, emit_json, handle_errors, json_option, registry_from, table


@click.command("server-init")
@click.option("--db", "db_url", required=True, help="postgresql://user@host/db or sqlite:///path")
@click.option("--store", "store_url", required=True, help="file:///abs/path or s3://bucket/prefix")
@click.option("--admin", required=True, help="The first admin (a user name or email).")
@json_option
@handle_errors
def server_init(db_url: str, store_url: str, admin: str, as_json: bool) -> None:
    """Create a shared registry's schema and its first admin; prints the admin's token once."""
    from .._registry.registry import Registry

    registry, token = Registry.init_server(db_url, store_url, admin)
    registry.close()
    if as_json:
        emit_json(token)
        return
    console.print(f"registry ready (store {store_url}); admin {admin}'s token, shown once:")
    click.echo(token["token"])


@click.command("server")
@click.option(
    "--db",
    "db_url",
    required=True,
    envvar="TETHER_SERVER_DB",
    help="The metadata database (sqlite:///path or postgresql://...).",
)
@click.option(
    "--store",
    "store_url",
    envvar="TETHER_SERVER_STORE",
    help="The artifact store (default: the one recorded by server-init).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=PORT)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--open-access",
    is_flag=True,
    help="No tokens needed (a trusted network only): everyone acts as 'anonymous', which may "
    "read and log; moving aliases and administration follow the roles granted to 'anonymous'.",
)
@handle_errors
def server(
    db_url: str, store_url: str | None, host: str, port: int, workers: int, open_access: bool
) -> None:
    """Serve the registry over HTTP (/api/v1, plus MLflow's /api/2.0/mlflow)."""
    import uvicorn

    from .._registry.registry import Registry
    from ..server.protocol import protocol

    # Refuse a wrong schema or missing store here, before any worker starts.
    Registry.open_server(db_url, store_url).close()
    os.environ["TETHER_SERVER_DB"] = db_url
    if store_url:
        os.environ["TETHER_SERVER_STORE"] = store_url
    os.environ["TETHER_SERVER_OPEN"] = "1" if open_access else "0"
    console.print(f"Tether server on http://{host}:{port} ({workers} worker(s))", style="bold")
    uvicorn.run(
        "tether.server.asgi:app",
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        http=protocol(),
    )


@click.group("token")
def token_group() -> None:
    """API tokens for a shared registry (admin only)."""


@token_group.command("create")
@click.argument("principal")
@click.option(
    "--role",
    type=click.Choice(["reader", "contributor", "approver", "admin"]),
    help="Also grant this role.",
)
@click.option("--model", help="Grant the role on this model only.")
@click.option("--expires", help="Lifetime such as 90d or 12h (default: no expiry).")
@click.option("--description", default="")
@json_option
@click.pass_context
@handle_errors
def token_create(
    ctx: click.Context,
    principal: str,
    role: str | None,
    model: str | None,
    expires: str | None,
    description: str,
    as_json: bool,
) -> None:
    """Create a token for PRINCIPAL; it is shown once and stored hashed."""
    result = registry_from(ctx).create_token(
        principal, role=role, model=model, expires_in=expires, description=description
    )
    if as_json:
        emit_json(result)
        return
    console.print(f"token for {principal} (expires {result['expires_at'] or 'never'}), shown once:")
    click.echo(result["token"])


@token_group.command("list")
@json_option
@click.pass_context
@handle_errors
def token_list(ctx: click.Context, as_json: bool) -> None:
    """Tokens (their prefixes; secrets are never stored)."""
    rows = registry_from(ctx).tokens()
    if as_json:
        emit_json(rows)
        return
    console.print(
        table(
            ["PREFIX", "PRINCIPAL", "CREATED BY", "EXPIRES", "REVOKED"],
            [
                (
                    r["prefix"],
                    r["principal"],
                    r["created_by"],
                    r["expires_at"] or "never",
                    "yes" if r["revoked"] else "",
                )
                for r in rows
            ],
        )
    )


@token_group.command("revoke")
@click.argument("prefix")
@json_option
@click.pass_context
@handle_errors
def token_revoke(ctx: click.Context, prefix: str, as_json: bool) -> None:
    """Revoke the token starting with PREFIX."""
    registry_from(ctx).revoke_token(prefix)
    if as_json:
        emit_json({"prefix": prefix, "revoked": True})
    else:
        console.print(f"revoked {prefix}…")
