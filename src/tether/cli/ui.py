"""`tether ui`: the web UI over the embedded registry, for one user, no server set-up."""

from __future__ import annotations

import click

from .._http_deadlines import protocol as deadline_protocol
from ._common import PORT, console, handle_errors, registry_from


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8765, show_default=True, type=PORT)
@click.option(
    "--token/--no-token",
    "make_token",
    default=True,
    show_default=True,
    help="Create a sign-in token for you (admins only; expires with --expires).",
)
@click.option("--expires", default="12h", show_default=True, help="Lifetime of that token.")
@click.pass_context
@handle_errors
def ui(ctx: click.Context, host: str, port: int, make_token: bool, expires: str) -> None:
    """Serve the web UI (models, versions, compare, audit, actions) in a browser.

    Sign in with a Tether token; by default one is created for you and printed.
    Everything you do there goes through the same policies, roles and audit
    log as the CLI.
    """
    import uvicorn

    from ..ui import create_ui_app

    registry = registry_from(ctx)
    app = create_ui_app(lambda: registry)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    console.print(f"Tether UI for {registry.describe()} on {url}", style="bold")
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            f"warning: listening on {host}; anyone who can reach it can try tokens. "
            "Use HTTPS in front of it.",
            style="yellow",
        )
    made: dict[str, str] | None = None
    if make_token:
        made = registry.create_token(
            registry.actor, expires_in=expires, description="tether ui sign-in"
        )
        console.print(
            f"sign in as {registry.actor} with this token (until this command stops, at "
            f"most until {made['expires_at']}):"
        )
        click.echo(made["token"])
    else:
        console.print("sign in with a token from `tether token create NAME --role reader`")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                    http=deadline_protocol())
    finally:
        if made is not None:
            # The token was for this UI: it does not outlive it (an admin's token, left
            # valid for hours after the command ended, in a terminal's scrollback).
            registry.revoke_token(made["prefix"])
