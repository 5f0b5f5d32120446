"""Serving commands: serve, deploy status/weights/check, monitor."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx

from .._errors import TetherError
from ..serving.config import Deployment, ServerConfig, load_deployment, single_version
from ..serving.drift import PSI_MODERATE, PSI_SIGNIFICANT
from ._common import (
    COUNT,
    PORT,
    State,
    console,
    emit_json,
    err_console,
    handle_errors,
    json_option,
    registry_from,
    shown,
    table,
)

#: Deployment files looked for in the current folder when neither --url nor --file is given.
DEPLOYMENT_FILES = ("deploy.yaml", "deploy.yml", "deployment.yaml", "deployment.yml")


def _url_options(func: Any) -> Any:
    func = click.option(
        "--file",
        "-f",
        "deployment_file",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="The deployment file the process serves: it is asked at that file's server "
        "host and port (default: ./deploy.yaml when there is one).",
    )(func)
    return click.option(
        "--url",
        default=None,
        envvar="TETHER_SERVE_URL",
        help="The serving process to ask ($TETHER_SERVE_URL); default: from the deployment "
        "file, else http://127.0.0.1:8000.",
    )(func)


def serving_url(url: str | None, deployment_file: str | None) -> tuple[str, str]:
    """(URL of the serving process, where it came from): --url or $TETHER_SERVE_URL,
    else the deployment file's ``server`` host and port, else ``tether serve``'s default."""
    if url:
        return url, "--url or TETHER_SERVE_URL"
    path = deployment_file or next((p for p in DEPLOYMENT_FILES if Path(p).is_file()), None)
    if path is None:
        server = ServerConfig()
        return f"http://{server.host}:{server.port}", "the default of `tether serve`"
    server = load_deployment(path).server
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.port}", f"the server section of {path}"


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
@click.argument("target", required=False)
@click.option(
    "--deployment",
    "follow",
    default=None,
    metavar="NAME",
    help="Serve the deployment NAME stored in the registry (`tether deploy apply`) and follow "
    "its changes live, as one of any number of replicas.",
)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Serving processes sharing the port (each a replica of its own).",
)
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", "-p", type=PORT, default=None, help="Port (default 8000).")
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
    target: str | None,
    follow: str | None,
    workers: int,
    host: str | None,
    port: int | None,
    trusted: bool,
    env_policy: str | None,
    log_level: str,
    threaded: bool,
) -> None:
    """Serve TARGET over HTTP: a version (iris@production) or a deployment file (deploy.yaml),
    or (--deployment NAME) a deployment stored in the registry.

    Routes that follow an alias switch blue-green when it moves; rollback
    rules, canary weights and shadows come from the deployment. A replica of a
    stored deployment follows every change to it within a second or two, and
    the replicas judge the rules together (one of them, holding a lease).
    POST /v1/endpoints/NAME/predict with {"records": [...]}.
    """
    from ..serving import serve as run

    if (target is None) == (follow is None):
        raise click.UsageError("give a TARGET (a version or a deployment file) or "
                               "--deployment NAME")
    if follow is not None:
        if trusted or env_policy:
            raise click.UsageError("--trusted and --env-policy are part of the stored "
                                   "deployment (per endpoint)")
        server = ServerConfig(host=host or "127.0.0.1", port=port if port is not None else 8000,
                              poll_interval=0.5)
        deployment = Deployment((), server)
        names = f"deployment {follow}"
    else:
        assert target is not None
        deployment = _deployment(target, host=host, port=port, trusted=trusted,
                                 env_policy=env_policy)
        server = deployment.server
        names = ", ".join(e.name for e in deployment.endpoints)
    console.print(
        f"serving {names} on http://{server.host}:{server.port}"
        + (f" with {workers} workers" if workers > 1 else "")
        + " (POST /v1/endpoints/NAME/predict, /metrics, /readyz)",
        style="dim",
    )
    state = ctx.find_object(State)
    assert state is not None
    if workers > 1:
        import tether

        uri = state.registry_uri
        run(lambda: tether.open(uri), deployment, log_level=log_level, inline=not threaded,
            follow=follow, workers=workers)
    else:
        run(registry_from(ctx), deployment, log_level=log_level, inline=not threaded,
            follow=follow)


@click.group("deploy")
def deploy_group() -> None:
    """Deployments stored in the registry (apply, weights, pause, resume, rollback, status,
    history), and a running serving process (--url)."""


def _get(url: str, path: str, token: str | None = None, *, source: str = "--url") -> Any:
    return _call("GET", url, path, token=token, source=source)


def _call(
    method: str,
    url: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    source: str = "--url",
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, json=body, headers=headers, timeout=10
        )
    except httpx.HTTPError as error:
        raise ServingUnreachable(
            f"no serving process answers at {url} (from {source}): {error}",
            hint="start one with `tether serve deploy.yaml`; point at it with --file "
            "deploy.yaml (its server host and port), --url URL or TETHER_SERVE_URL",
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
@click.argument("name", required=False)
@_url_options
@token_option
@json_option
@click.pass_context
@handle_errors
def deploy_status(ctx: click.Context, name: str | None, url: str | None,
                  deployment_file: str | None, token: str | None, as_json: bool) -> None:
    """A stored deployment's replicas and windows over all of them (NAME), or a serving
    process's endpoints (--url, or --file: routes, weights, versions, health, recent
    rollbacks)."""
    if name is not None:
        _registry_status(registry_from(ctx), name, as_json)
        return
    where, source = serving_url(url, deployment_file)
    status = _get(where, "/v1/deployment", token, source=source)
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
@click.argument("name")
@click.argument("weights", nargs=-1, required=True)
@click.option("--endpoint", "-e", default=None,
              help="The endpoint (when the deployment has more than one).")
@click.option("--reason", default="", help="Why (kept in the revision and the audit log).")
@click.option(
    "--url",
    default=None,
    envvar="TETHER_SERVE_URL",
    help="Change one serving process (served from a file) instead of a stored deployment.",
)
@token_option
@json_option
@click.pass_context
@handle_errors
def deploy_weights(
    ctx: click.Context, name: str, weights: tuple[str, ...], endpoint: str | None, reason: str,
    url: str | None, token: str | None, as_json: bool
) -> None:
    """Set route weights: `tether deploy weights iris-prod stable=80 canary=20`.

    Changes the stored deployment NAME (a new revision and an audit event);
    every replica takes it within a second or two. Needs the role to move the
    routes' traffic: approver when a route follows a protected alias such as
    production, else contributor. With --url, NAME is an endpoint of the one
    serving process there (a registry token or the deployment's serving token).
    """
    parsed = _parse_weights(weights)
    if url is None:
        record = registry_from(ctx).set_deployment_weights(name, parsed, endpoint=endpoint,
                                                           reason=reason)
        if as_json:
            emit_json(record)
            return
        _print_record(record, f"revision {record['revision']}")
        return
    endpoint = name
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


def _parse_weights(weights: tuple[str, ...]) -> dict[str, float]:
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
    return parsed


@deploy_group.command("reload")
@_url_options
@token_option
@json_option
@handle_errors
def deploy_reload(url: str | None, deployment_file: str | None, token: str | None,
                  as_json: bool) -> None:
    """Re-read the deployment file now and poll every target (needs a token, as weights)."""
    where, source = serving_url(url, deployment_file)
    result = _call("POST", where, "/v1/reload", token=token, source=source)
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
@_url_options
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
    endpoint: str,
    url: str | None,
    deployment_file: str | None,
    token: str | None,
    watch: float | None,
    as_json: bool,
) -> None:
    """Input drift of ENDPOINT: PSI and KS per feature against the reference statistics.

    PSI under 0.1 is stable, 0.1 to 0.25 moderate, above 0.25 a significant shift.
    The serving process is found from --url, else the deployment file (--file, or
    ./deploy.yaml), else http://127.0.0.1:8000.
    """
    where, source = serving_url(url, deployment_file)
    while True:
        report = _get(where, f"/v1/endpoints/{endpoint}/drift", token, source=source)
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


def _colour(status: str) -> Any:
    """A drift status as a table cell: coloured on a terminal, plain text elsewhere."""
    from rich.text import Text

    return Text(status, style={"stable": "green", "moderate": "yellow",
                               "drift": "bold red"}.get(status, ""))


# -- deployments stored in the registry ---------------------------------------------------


def _revision_note(record: dict[str, Any]) -> str:
    """What a change did to the stored record: a new revision, or none."""
    if record["changed"]:
        return f"revision {record['revision']}"
    return f"unchanged at revision {record['revision']}"


def _print_record(record: dict[str, Any], note: str) -> None:
    if "spec" not in record:  # a caller who may change it but not read deployments
        console.print(f"[bold]{shown(record['name'])}[/]  {note}")
        return
    console.print(f"[bold]{shown(record['name'])}[/]  {note}  "
                  f"(by {shown(record['updated_by'])})")
    try:
        rows = _route_rows(record["spec"], record.get("paused") or [])
    except (KeyError, TypeError, AttributeError, ValueError):  # a row of another hand
        console.print("its stored spec is unreadable (changed outside Tether); "
                      "`tether deploy rollback NAME` makes a readable revision current")
        rows = []
    if rows:
        console.print(table(["ENDPOINT", "ROUTE", "TARGET", "WEIGHT", "TRAFFIC"], rows))
    for entry in record.get("signatures") or []:
        payload = entry["payload"]
        vouched = ", ".join(f"{e}: {len(d)} version(s)" for e, d in payload["endpoints"].items())
        expiry = f", expires {payload['expires_at'][:19]}" if payload.get("expires_at") else ""
        key = (f"key {entry['key']} ({entry['key_id']})" if entry.get("key")
               else f"key {entry['key_id']}, which the registry no longer trusts")
        console.print(shown(f"signed by {key} ({entry['signer']}, "
                             f"{entry['created_at'][:19]}{expiry}): {vouched}"))


def _route_rows(spec: Any, paused_list: Any) -> list[tuple[Any, ...]]:
    paused = set(paused_list)
    rows: list[tuple[Any, ...]] = []
    for endpoint, body in spec["endpoints"].items():
        total = sum(r["weight"] for r in body["routes"]
                    if f"{endpoint}/{r['name']}" not in paused) or 1
        for r in body["routes"]:
            is_paused = f"{endpoint}/{r['name']}" in paused
            share = "paused" if is_paused else f"{r['weight'] / total:.0%}"
            rows.append((endpoint, r["name"], r["target"], f"{r['weight']:g}", share))
        for shadow in body.get("shadow", []):
            rows.append((endpoint, "shadow", shadow["target"], "-",
                         f"{shadow.get('sample', 1.0):.0%}"))
    return rows


@deploy_group.command("apply")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", "-n", default=None,
              help="Deployment name (default: the file's name without .yaml).")
@click.option("--reason", default="", help="Why (kept in the revision and the audit log).")
@json_option
@click.pass_context
@handle_errors
def deploy_apply(ctx: click.Context, path: str, name: str | None, reason: str,
                 as_json: bool) -> None:
    """Store the deployment file PATH in the registry as the next revision of NAME.

    Every target must resolve; you need the role to move each route's traffic.
    Replicas (`tether serve --deployment NAME`) take the new revision live:
    weights, targets, shadows' samples and rules; new routes need a restart.
    """
    import yaml

    load_deployment(path)  # the file's own errors, with its name
    with open(path) as handle:
        spec = yaml.safe_load(handle)
    name = name or Path(path).stem
    record = registry_from(ctx).apply_deployment(name, spec, reason=reason)
    if as_json:
        emit_json(record)
        return
    _print_record(record, _revision_note(record))


@deploy_group.command("sign")
@click.argument("name")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
              help="Your private key (Ed25519 PEM, from `tether key generate`); an admin "
              "trusted it in the registry with `tether key trust`. It never leaves this "
              "machine.")
@click.option("--version", "versions", multiple=True, metavar="REF",
              help="Also vouch for this version on every trusted endpoint (e.g. the release "
              "a protected alias will move to next); NAME@sha:<whole digest> names it "
              "without asking the server. Repeatable.")
@click.option("--expires-in", default=None, metavar="DURATION",
              help="Replicas stop honouring the signature after this long: e.g. 30d, 12h, "
              "or `never` (default 90d).")
@click.option("--yes", "-y", is_flag=True,
              help="Through a server, sign the versions it names without asking (its answer "
              "decides what an alias or a version number names).")
@json_option
@click.pass_context
@handle_errors
def deploy_sign(ctx: click.Context, name: str, key_path: str, versions: tuple[str, ...],
                expires_in: str | None, yes: bool, as_json: bool) -> None:
    """Sign which versions the trusted endpoints of deployment NAME may load as trusted.

    `trusted: true` lets an endpoint's targets unpickle on every replica. A replica of a
    registry server does not take the server's word for it: it honours `trusted` only for
    a version the newest unexpired signature by a key it pins (TETHER_LOAD_KEYS, the
    public key files) lists for that endpoint. This signs the content digests the trusted
    endpoints' targets name now, plus any --version; sign again after moving a trusted
    alias or for a new release. Through a server, what an alias or a version number
    names is the server's answer: the versions are shown and you are asked first (compare
    the digests with the ones you checked). Needs an admin.
    """
    def confirm(shown: list[Any]) -> bool:
        if yes:
            return True
        rows = [(v.endpoint, v.target, v.ref, f"sha:{v.digest}", v.author, v.created_at[:19],
                 "registry's answer" if v.chosen_by_registry else "the reference")
                for v in shown]
        err_console.print(table(["ENDPOINT", "TARGET", "VERSION", "DIGEST", "LOGGED BY", "AT",
                                 "NAMED BY"], rows))
        if not sys.stdin.isatty():
            raise click.UsageError("the registry's answers named these versions; review them "
                                   "on a terminal, or pass --yes to sign what they named")
        return click.confirm(f"Sign these {len({v.digest for v in shown})} version(s) for "
                             f"{name}?", default=False, err=True)

    record = registry_from(ctx).sign_deployment(name, key_path, versions=list(versions),
                                                expires_in=expires_in, confirm=confirm)
    if as_json:
        emit_json(record)
        return
    _print_record(record, f"revision {record['revision']} (signed)")


@deploy_group.command("pause")
@click.argument("name")
@click.argument("routes", nargs=-1, required=True)
@click.option("--endpoint", "-e", default=None,
              help="The endpoint (when the deployment has more than one).")
@click.option("--reason", default="", help="Why (kept in the revision and the audit log).")
@json_option
@click.pass_context
@handle_errors
def deploy_pause(ctx: click.Context, name: str, routes: tuple[str, ...], endpoint: str | None,
                 reason: str, as_json: bool) -> None:
    """Take ROUTES of deployment NAME out of traffic; their weights are kept for resume."""
    _pause(ctx, name, routes, endpoint, reason, as_json, resume=False)


@deploy_group.command("resume")
@click.argument("name")
@click.argument("routes", nargs=-1, required=True)
@click.option("--endpoint", "-e", default=None,
              help="The endpoint (when the deployment has more than one).")
@click.option("--reason", default="", help="Why (kept in the revision and the audit log).")
@json_option
@click.pass_context
@handle_errors
def deploy_resume(ctx: click.Context, name: str, routes: tuple[str, ...], endpoint: str | None,
                  reason: str, as_json: bool) -> None:
    """Give paused ROUTES of deployment NAME their weights back."""
    _pause(ctx, name, routes, endpoint, reason, as_json, resume=True)


def _pause(ctx: click.Context, name: str, routes: tuple[str, ...], endpoint: str | None,
           reason: str, as_json: bool, *, resume: bool) -> None:
    record = registry_from(ctx).pause_routes(name, list(routes), endpoint=endpoint,
                                             resume=resume, reason=reason)
    if as_json:
        emit_json(record)
        return
    _print_record(record, _revision_note(record))


@deploy_group.command("rollback")
@click.argument("name")
@click.option("--route", "-r", default=None,
              help="Roll this route back from the version it serves (an alias route moves its "
              "alias back) instead of the whole deployment.")
@click.option("--endpoint", "-e", default=None,
              help="The route's endpoint (when the deployment has more than one).")
@click.option("--to", "to_revision", type=COUNT, default=None,
              help="The revision to go back to (default: the one before).")
@click.option("--reason", default="", help="Why (kept in the revision and the audit log).")
@json_option
@click.pass_context
@handle_errors
def deploy_rollback(ctx: click.Context, name: str, route: str | None, endpoint: str | None,
                    to_revision: int | None, reason: str, as_json: bool) -> None:
    """Make an earlier revision of deployment NAME current again (as a new revision), or
    roll one route back (--route)."""
    registry = registry_from(ctx)
    if route is not None:
        if to_revision is not None:
            raise click.UsageError("--to goes back a whole revision; leave out --route")
        result = registry.rollback_route(name, endpoint=endpoint, route=route, reason=reason)
        if as_json:
            emit_json(result)
            return
        console.print(f"{name}: route {route} rolled back from {result['from']} to "
                      f"{result.get('to') or 'the other routes'} (via {result['via']})")
        return
    record = registry.rollback_deployment(name, to_revision=to_revision, reason=reason)
    if as_json:
        emit_json(record)
        return
    _print_record(record, f"revision {record['revision']} (rolled back)")


@deploy_group.command("history")
@click.argument("name")
@json_option
@click.pass_context
@handle_errors
def deploy_history(ctx: click.Context, name: str, as_json: bool) -> None:
    """Every revision of deployment NAME, newest first."""
    revisions = registry_from(ctx).deployment_history(name)
    if as_json:
        emit_json(revisions)
        return
    rows = []
    for r in revisions:
        try:
            paused = set(r["paused"] or [])
            parts = []
            for e, body in r["spec"]["endpoints"].items():
                routes = " ".join(
                    f"{x['name']}=" + ("paused" if f"{e}/{x['name']}" in paused
                                       else format(x["weight"], "g"))
                    for x in body["routes"])
                parts.append(f"{e}: {routes}")
            weights = "; ".join(parts)
        except (KeyError, TypeError, AttributeError, ValueError):  # a row of another hand
            weights = "(unreadable)"
        rows.append((r["revision"], r["action"], r["actor"], r["at"][:19], weights,
                     r["reason"]))
    console.print(table(["REV", "ACTION", "BY", "AT", "WEIGHTS", "REASON"], rows))


@deploy_group.command("list")
@json_option
@click.pass_context
@handle_errors
def deploy_list(ctx: click.Context, as_json: bool) -> None:
    """Deployments stored in the registry."""
    found = registry_from(ctx).deployments()
    if as_json:
        emit_json(found)
        return
    console.print(table(["NAME", "REVISION", "ENDPOINTS", "UPDATED", "BY"], [
        (d["name"], d["revision"], ", ".join(d["endpoints"]), d["updated_at"][:19],
         d["updated_by"]) for d in found]))


def _registry_status(registry: Any, name: str, as_json: bool) -> None:
    from ..serving.window import merge

    status = registry.deployment_status(name)
    record = status["deployment"]
    live = [r for r in status["replicas"] if r["live"]]
    windows: dict[str, dict[str, Any]] = {}
    for key in sorted({k for r in live for k in (r["stats"] or {})}):
        by_ref: dict[str, list[dict[str, Any]]] = {}
        for replica in live:
            entry = (replica["stats"] or {}).get(key)
            if entry:
                by_ref.setdefault(entry["ref"], []).append(entry)
        windows[key] = {ref: merge(exports) for ref, exports in by_ref.items()}
    status["windows"] = windows
    if as_json:
        emit_json(status)
        return
    lease = status["lease"]
    _print_record(record, f"revision {record['revision']}")
    console.print(table(
        ["REPLICA", "HOST", "URL", "REVISION", "READY", "HEARTBEAT", "STATE"],
        [(r["replica"] + (" (leader)" if lease and lease["holder"] == r["replica"] else ""),
          r["host"], r["url"], r["info"].get("revision", "-"),
          "yes" if r["info"].get("ready") else "no", f"{r['last_heartbeat_s']:.1f}s ago",
          "live" if r["live"] else "gone") for r in status["replicas"]]))
    for r in status["replicas"]:  # a revision a replica refused as a whole, and why
        refused = r["info"].get("refused")
        if r["live"] and isinstance(refused, dict):
            console.print(shown(f"{r['replica']} refused revision {refused.get('revision')}: "
                                f"{refused.get('why')}"))
    rows = []
    for key, snapshots in windows.items():
        for ref, snap in snapshots.items():
            rows.append((key, ref, snap["requests"], f"{100 * snap['error_rate']:.1f}",
                         f"{snap['p99_latency_ms']:.1f}",
                         f"{snap.get('shadow_disagreement', 0):.1%}"
                         if snap.get("shadow_disagreement:count") else "-"))
    console.print(table(["ROUTE", "SERVING", "REQS (ALL REPLICAS)", "ERR%", "P99 MS",
                         "SHADOW DISAGREE"], rows))
