"""Registry management: init, verify, deprecate, config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .._registry.registry import SETTINGS, Registry
from ._common import State, console, emit_json, handle_errors, json_option, registry_from, table


@click.command()
@click.argument("path", required=False)
@click.option("--db", "db_url", help="Database URL (default: a SQLite file inside the folder).")
@click.option("--store", "store_url", help="Artifact store URL (default: a folder inside it).")
@json_option
@click.pass_context
@handle_errors
def init(
    ctx: click.Context, path: str | None, db_url: str | None, store_url: str | None, as_json: bool
) -> None:
    """Create a registry in PATH (default: --registry, $TETHER_URI, else ./.tether)."""
    state = ctx.find_object(State)
    target = path or (state.registry_uri if state else None) or ".tether"
    with Registry.init(target, db_url=db_url, store_url=store_url) as registry:
        where = registry.describe()
    if as_json:
        emit_json({"registry": where})
    else:
        console.print(f"Created a Tether registry in {where}")
        console.print(
            'Log a model with tether.log_model(model, "name"), then `tether versions name`.'
        )


@click.command()
@click.argument("ref")
@click.option("--bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also check this OpenSSF model-signing bundle against REF's files "
              "(needs --public-key; the same as `tether bundle verify`).")
@click.option("--public-key", "public_key",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM EC public key the bundle must be signed by.")
@json_option
@click.pass_context
@handle_errors
def verify(ctx: click.Context, ref: str, bundle: Path | None, public_key: Path | None,
           as_json: bool) -> None:
    """Re-read every stored byte of REF in the store (not a cached copy) against its digest."""
    if bundle is not None and public_key is None:
        raise click.UsageError("--bundle needs --public-key (the key the bundle is signed by)")
    registry = registry_from(ctx)
    problems = registry.verify(ref)
    where = f"the store at {registry.store.url}"  # the store's own copy, never the local cache
    report = None
    if bundle is not None and public_key is not None:
        from .._openssf_bundle import verify_bundle

        report = verify_bundle(registry, ref, bundle, public_key)
        problems += [f"OpenSSF bundle {bundle}: {p}" for p in report["problems"]]
    if as_json:
        emit_json({"ref": ref, "ok": not problems, "problems": problems, "checked": where,
                   **({"bundle": report} if report is not None else {})})
    elif problems:
        console.print(f"[red]{ref}: {len(problems)} problem(s) in {where}[/]")
        for problem in problems:
            console.print(f"  - {problem}", markup=False)
    else:
        console.print(f"{ref}: every byte verified in {where}", markup=False)
        if report is not None:
            console.print(f"{ref}: OpenSSF bundle {bundle} verified: signed by key "
                          f"sha256:{report['key_hint'][:16]}, {report['files_checked']} "
                          f"file(s) match", markup=False)
    if problems:
        sys.exit(1)


@click.command()
@click.argument("ref")
@click.option("--reason", default="", help="Why; kept in the audit log.")
@click.option("--undo", is_flag=True, help="Mark the version usable again.")
@json_option
@click.pass_context
@handle_errors
def deprecate(ctx: click.Context, ref: str, reason: str, undo: bool, as_json: bool) -> None:
    """Deprecate REF: loading it warns and it cannot be promoted."""
    version = registry_from(ctx).deprecate(ref, reason=reason, undo=undo)
    if as_json:
        emit_json(version.to_dict(with_environment=False))
    else:
        console.print(f"{version.ref} is now {version.status}")


@click.group("config")
def config_group() -> None:
    """Registry settings (kept in the registry, changes are audited)."""


@config_group.command("set")
@click.argument("key", type=click.Choice(sorted(SETTINGS)))
@click.argument("value")
@json_option
@click.pass_context
@handle_errors
def config_set(ctx: click.Context, key: str, value: str, as_json: bool) -> None:
    """Set KEY to VALUE (e.g. `tether config set env_policy warn,framework-minor=strict`)."""
    registry_from(ctx).set_setting(key, value)
    if as_json:
        emit_json({"key": key, "value": value})
    else:
        console.print(f"{key} = {value}")


@config_group.command("list")
@json_option
@click.pass_context
@handle_errors
def config_list(ctx: click.Context, as_json: bool) -> None:
    """Show every setting, its value and what it does."""
    values = registry_from(ctx).settings()
    if as_json:
        emit_json({key: values.get(key) for key in SETTINGS})
        return
    console.print(
        table(
            ["SETTING", "VALUE", "MEANING"],
            [(k, values.get(k, "(default)"), doc) for k, doc in SETTINGS.items()],
        )
    )


@click.group("db")
def db_group() -> None:
    """The metadata database's schema."""


def _log_head(engine: Any) -> tuple[int, str]:
    """The audit log's head before a migration; (0, genesis) when it is empty or the schema
    predates signed heads (every event is then the migration's to sign)."""
    import sqlalchemy as sa

    from .._audit import GENESIS

    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT count(*) FROM audit_signatures"))
            row = conn.execute(sa.text("SELECT last_id, last_hash FROM audit_head")).first()
    except sa.exc.DBAPIError:
        return (0, GENESIS)
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)


@db_group.command("upgrade")
@click.option("--db", "db_url", help="Database URL (default: the registry's).")
@json_option
@click.pass_context
@handle_errors
def db_upgrade(ctx: click.Context, db_url: str | None, as_json: bool) -> None:
    """Apply schema migrations (back up the database first)."""
    from .._metadata.engine import create_engine, current_revision, head_revision, upgrade
    from .._registry.location import RegistryLocation, default_cache_dir
    from .._registry.registry import Registry

    if db_url is None:
        location = registry_location(ctx)
    else:
        location = RegistryLocation(None, db_url, "file:///nonexistent", default_cache_dir())
    engine = create_engine(location.db_url)
    before = current_revision(engine)
    since = _log_head(engine)
    upgrade(engine)
    engine.dispose()
    # A migration may append events (recomputed digests): sign the new head, if the key
    # signed the one before (never over events it did not sign: `tether audit accept`).
    with Registry(location) as registry:
        head = registry.sign_audit_head(since=since)
    if as_json:
        emit_json(
            {
                "before": before,
                "after": head_revision(),
                "audit_head": None
                if head is None
                else {"event_id": head.event_id, "key_id": head.key_id},
            }
        )
        return
    console.print(f"schema: {before or 'empty'} → {head_revision()}")
    if head is not None:
        console.print(
            f"audit head {head.event_id} signed by key {head.key_id} ({registry.audit_key_path})"
        )


def registry_location(ctx: click.Context) -> Any:
    from .._registry.location import find_location

    state = ctx.find_object(State)
    return find_location(state.registry_uri if state else None)


@click.command()
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=Path))
@json_option
@click.pass_context
@handle_errors
def download(ctx: click.Context, ref: str, dest: Path, as_json: bool) -> None:
    """Write REF's files (every byte verified) into the new folder DEST."""
    registry = registry_from(ctx)
    version = registry.get(ref)
    # By digest: an alias moved meanwhile must not change what is written.
    where = registry.download(f"{version.name}@sha:{version.digest}", dest,
                              progress=not as_json)
    if as_json:
        emit_json(
            {"ref": version.ref, "path": str(where), "files": [f.path for f in version.files]}
        )
    else:
        console.print(f"{version.ref}: {len(version.files)} file(s) verified into {where}")
