"""Serving commands: serve, deploy status/weights/check, monitor."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import click
import httpx

from .._errors import TetherError
from ..serving.config import Deployment, ServerConfig, load_deployment, single_version
from ..serving.drift import PSI_MODERATE, PSI_SIGNIFICANT
from ._common import console, emit_json, handle_errors, json_option, registry_from, table

url_option = click.option(
    "--url",
    default="http://127.0.0.1:8000",
    envvar="TETHER_SERVE_URL",
    show_default=True,
    help="The serving process to ask ($TETHER_SERVE_URL).",
)


token_option = click.option(
    "--token",
    default=None,
    envvar="TETHER_TOKEN",
    help="Bearer token for the serving process ($TETHER_TOKEN): a registry token with the "
    "role the change needs, or the deployment's serving token.",
)


class ServingUnreachable(TetherError):
    code = "serving_unreachable"
    http_status = 502


def _deployment(
    target: str, *, host: str | None, port: int | None, trusted: bool, env_policy: str | None
) -> Deployment:
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        deployment = load_deployment(target)
        if trusted or env_policy:
            raise click.UsageError(
                "--trusted and --env-policy go in the deployment file "
                "(per endpoint) when serving one"
            )
    else:
        deployment = single_version(target, trusted=trusted, env_policy=env_policy)
    server = deployment.server
    return Deployment(
        deployment.endpoints,
        ServerConfig(
            host=host or server.host,
            port=port if port is not None else server.port,
            poll_interval=server.poll_interval,
            access_log=server.access_log,
        ),
        deployment.source,
        deployment.auth,
    )


@click.command()
@click.argument("target")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", "-p", type=int, default=None, help="Port (default 8000).")
@click.option(
    "--trusted",
    is_flag=True,
    help="Load pickles without the import allow-list (single version only; for a trusted author).",
)
@click.option(
    "--env-policy",
    default=None,
    help="Override the registry's environment policy (single version only).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--threaded",
    is_flag=True,
    help="Predict in a thread pool instead of on the event loop (for slow models).",
)
@click.pass_context
@handle_errors
def serve(
    ctx: click.Context,
    target: str,
    host: str | None,
    port: int | None,
    trusted: bool,
    env_policy: str | None,
    log_level: str,
    threaded: bool,
) -> None:
    """Serve TARGET over HTTP: a version (iris@production) or a deployment file (deploy.yaml).

    Routes that follow an alias switch blue-green when it moves; rollback
    rules, canary weights and shadows come from the deployment file.
    POST /v1/endpoints/NAME/predict with {"records": [...]}.
    """
    from ..serving import serve as run

    deployment = _deployment(target, host=host, port=port, trusted=trusted, env_policy=env_policy)
    server = deployment.server
    names = ", ".join(e.name for e in deployment.endpoints)
    console.print(
        f"serving {names} on http://{server.host}:{server.port} "
        f"(POST /v1/endpoints/NAME/predict, /metrics, /readyz)",
        style="dim",
    )
    run(registry_from(ctx), deployment, log_level=log_level, inline=not threaded)


@click.group("deploy")
def deploy_group() -> None:
    """Look at and steer a running deployment (`tether serve deploy.yaml`)."""


def _get(url: str, path: str, token: str | None = None) -> Any:
    return _call("GET", url, path, token=token)


def _call(method: str, url: str, path: str, body: Any = None, *, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, json=body, headers=headers, timeout=10
        )
    except httpx.HTTPError as error:
        raise ServingUnreachable(
            f"no serving process answers at {url}: {error}",
            hint="start one with `tether serve deploy.yaml`, or pass --url",
        ) from None
    try:
        data = response.json()
    except ValueError:
        data = {"message": response.text}
    if response.status_code >= 400:
        hint = data.get("hint")
        if response.status_code == 401 and not token:
            hint = "pass --token or set TETHER_TOKEN" + (f"; {hint}" if hint else "")
        raise TetherError(str(data.get("message", data)), hint=hint)
    return data


@deploy_group.command("status")
@url_option
@token_option
@json_option
@handle_errors
def deploy_status(url: str, token: str | None, as_json: bool) -> None:
    """Each endpoint's routes, weights, versions, health and recent rollbacks."""
    status = _get(url, "/v1/deployment", token)
    if as_json:
        emit_json(status)
        return
    for endpoint in status["endpoints"]:
        ready = "[green]ready[/]" if endpoint["ready"] else "[red]not ready[/]"
        console.print(
            f"[bold]{endpoint['name']}[/]  {ready}  rules: {'; '.join(endpoint['rules']) or '-'}"
        )
        console.print(
            table(
                [
                    "ROUTE",
                    "TARGET",
                    "WEIGHT",
                    "SERVING",
                    "STATUS",
                    "REQS",
                    "ERR%",
                    "P99 MS",
                    "NOTE",
                ],
                [_route_row(r) for r in endpoint["routes"]]
                + [_route_row(s, shadow=True) for s in endpoint["shadows"]],
            )
        )
        for rollback in endpoint["rollbacks"][:5]:
            console.print(
                f"  [yellow]rollback[/] {rollback['at']} {rollback['route']}: "
                f"{rollback['from']} → {rollback.get('to') or 'other routes'} "
                f"({rollback['reason']})"
            )
    for pair in status.get("shadow_pairs", []):
        console.print(
            f"shadow {pair['shadow']} vs {pair['primary']} on {pair['endpoint']}: "
            f"{pair['rate']:.1%} disagreement over {pair['compared']} records"
        )


def _route_row(route: dict[str, Any], *, shadow: bool = False) -> list[Any]:
    window = route["window"]
    serving = f"{route['version'] or '-'} {str(route['digest'] or '')[4:12]}"
    if shadow:  # a shadow's figures are in the shadow lines below the table
        return [route["name"], route["target"], "shadow", serving, route["status"],
                "-", "-", "-", route["problem"] or ""]
    return [
        route["name"],
        route["target"],
        f"{route['weight']:g}",
        serving,
        route["status"],
        window["requests"],
        f"{100 * window['error_rate']:.1f}",
        f"{window['p99_latency_ms']:.1f}",
        route["problem"] or "",
    ]


@deploy_group.command("weights")
@click.argument("endpoint")
@click.argument("weights", nargs=-1, required=True)
@url_option
@token_option
@json_option
@handle_errors
def deploy_weights(
    endpoint: str, weights: tuple[str, ...], url: str, token: str | None, as_json: bool
) -> None:
    """Set route weights live: `tether deploy weights iris stable=80 canary=20`.

    Needs a token (--token or $TETHER_TOKEN): a registry token whose principal
    may move the endpoint's aliases (approver when a route follows a protected
    alias such as production, else contributor), or the deployment's serving token.
    """
    parsed: dict[str, float] = {}
    for item in weights:
        name, sep, value = item.partition("=")
        try:
            parsed[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"{item!r} is not ROUTE=WEIGHT", param_hint="WEIGHTS")
        if not math.isfinite(parsed[name]) or parsed[name] < 0:
            raise click.BadParameter(
                f"{item!r}: a weight is a finite number of at least 0", param_hint="WEIGHTS"
            )
    result = _call(
        "PUT", url, f"/v1/endpoints/{endpoint}/weights", {"weights": parsed}, token=token
    )
    if as_json:
        emit_json(result)
        return
    total = sum(result["weights"].values()) or 1
    console.print(
        f"{endpoint}: "
        + ", ".join(f"{k}={v:g} ({v / total:.0%})" for k, v in result["weights"].items())
    )


@deploy_group.command("reload")
@url_option
@token_option
@json_option
@handle_errors
def deploy_reload(url: str, token: str | None, as_json: bool) -> None:
    """Re-read the deployment file now and poll every target (needs a token, as weights)."""
    result = _call("POST", url, "/v1/reload", token=token)
    if as_json:
        emit_json(result)
        return
    console.print(f"reloaded {result.get('source')}: {len(result['endpoints'])} endpoint(s)")


@deploy_group.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@json_option
@click.pass_context
@handle_errors
def deploy_check(ctx: click.Context, path: str, as_json: bool) -> None:
    """Check a deployment file: keys, references, and each version's environment verdict."""
    deployment = load_deployment(path)
    registry = registry_from(ctx)
    rows = []
    for endpoint in deployment.endpoints:
        targets = [(r.name, r.target) for r in endpoint.routes]
        targets += [("shadow", s.target) for s in endpoint.shadows]
        for route, ref in targets:
            version = registry.get(ref)
            verdict = registry.env_verdict(version.ref, env_policy=endpoint.env_policy)
            problems = "; ".join(str(d) for d in verdict.refusals) or (
                "warn: " + "; ".join(str(d) for d in verdict.warnings) if verdict.warnings else ""
            )
            rows.append(
                {
                    "endpoint": endpoint.name,
                    "route": route,
                    "target": ref,
                    "version": version.ref,
                    "digest": f"sha:{version.digest}",
                    "loadable": verdict.ok,
                    "problems": problems,
                }
            )
    if as_json:
        emit_json(rows)
    else:
        console.print(
            table(
                ["ENDPOINT", "ROUTE", "TARGET", "RESOLVES TO", "ENV", "PROBLEMS"],
                [
                    (
                        r["endpoint"],
                        r["route"],
                        r["target"],
                        r["version"],
                        "ok" if r["loadable"] else "REFUSED",
                        r["problems"],
                    )
                    for r in rows
                ],
            )
        )
    if not all(r["loadable"] for r in rows):
        raise SystemExit(1)


@click.command()
@click.argument("endpoint")
@url_option
@token_option
@click.option(
    "--watch",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Refresh every SECONDS until interrupted.",
)
@json_option
@handle_errors
def monitor(
    endpoint: str, url: str, token: str | None, watch: float | None, as_json: bool
) -> None:
    """Input drift of ENDPOINT: PSI and KS per feature against the reference statistics.

    PSI under 0.1 is stable, 0.1 to 0.25 moderate, above 0.25 a significant shift.
    """
    while True:
        report = _get(url, f"/v1/endpoints/{endpoint}/drift", token)
        if as_json:
            emit_json(report)
        else:
            _render_drift(report)
        if watch is None:
            return
        time.sleep(watch)


def _render_drift(report: dict[str, Any]) -> None:
    for version in report["versions"]:
        console.print(f"[bold]{report['endpoint']}[/]  {version['ref']}  {version['digest'][:16]}")
        if not version["reference"]:
            console.print("  no reference statistics: log the version with data=... to get them")
            continue
        rows = []
        for feature, entry in version["features"].items():
            psi, ks = entry.get("psi"), entry.get("ks")
            rows.append(
                (
                    feature,
                    entry["kind"],
                    entry["n"],
                    "-" if psi is None else f"{psi:.3f}",
                    "-" if ks is None else f"{ks:.3f}",
                    _colour(entry["status"]),
                )
            )
        console.print(table(["FEATURE", "KIND", "N", "PSI", "KS", "STATUS"], rows))
    console.print(
        f"[dim]PSI < {PSI_MODERATE:g} stable, < {PSI_SIGNIFICANT:g} moderate, above: drift[/]"
    )


def _colour(status: str) -> str:
    return {
        "stable": "[green]stable[/]",
        "moderate": "[yellow]moderate[/]",
        "drift": "[bold red]drift[/]",
    }.get(status, status)
