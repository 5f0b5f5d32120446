"""Application-side commands: lock, check, reproduce."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .._lockfile import LOCK_NAME, find_lock, read_lock
from ._common import (
    console,
    emit_json,
    escape,
    handle_errors,
    json_option,
    registry_from,
    shown,
    table,
)

lock_option = click.option(
    "--lock",
    "lock_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"The lock file (default: $TETHER_LOCK, else the nearest {LOCK_NAME}, "
    f"else ./{LOCK_NAME}).",
)


@click.group("lock")
def lock_group() -> None:
    """Pin the model versions an application uses in tether.lock."""


@lock_group.command("add")
@click.argument("ref")
@lock_option
@click.option(
    "--sends",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON schema of what the application sends ({"age": "long", ...}).',
)
@json_option
@click.pass_context
@handle_errors
def lock_add(
    ctx: click.Context, ref: str, lock_path: Path | None, sends: Path | None, as_json: bool
) -> None:
    """Pin REF (e.g. fraud@production) at the version it resolves to now."""
    declared = json.loads(sends.read_text()) if sends else None
    lock, entry = registry_from(ctx).lock_add(ref, path=lock_path, sends=declared)
    if as_json:
        emit_json({"lock": str(lock.path), **entry.to_dict()})
    else:
        console.print(
            f"pinned {entry.ref} = {entry.semver} (sha:{entry.digest[:12]}) in {lock.path}"
        )


@lock_group.command("update")
@click.argument("names", nargs=-1)
@lock_option
@json_option
@click.pass_context
@handle_errors
def lock_update(
    ctx: click.Context, names: tuple[str, ...], lock_path: Path | None, as_json: bool
) -> None:
    """Move pins forward to what their references resolve to now (all, or NAMES)."""
    moves = registry_from(ctx).lock_update(names, path=lock_path)
    if as_json:
        emit_json([{"model": m, "from": a, "to": b} for m, a, b in moves])
    elif moves:
        for model, old, new in moves:
            console.print(f"{model}: {old} → {new}")
    else:
        console.print("every pin is current")


@lock_group.command("remove")
@click.argument("names", nargs=-1, required=True)
@lock_option
@json_option
@handle_errors
def lock_remove(names: tuple[str, ...], lock_path: Path | None, as_json: bool) -> None:
    """Stop pinning the models NAMES (the application no longer loads them)."""
    from .._registry.pinning import lock_remove as remove_pins

    where = remove_pins(names, path=lock_path)
    if as_json:
        emit_json({"lock": str(where), "removed": list(names)})
    else:
        console.print(f"unpinned {', '.join(names)} in {where}", markup=False)


@lock_group.command("list")
@lock_option
@json_option
@handle_errors
def lock_list(lock_path: Path | None, as_json: bool) -> None:
    """Show the pins."""
    path = lock_path or find_lock()
    if path is None:
        raise click.ClickException(f"no {LOCK_NAME} here; create one with `tether lock add REF`")
    lock = read_lock(path)
    if as_json:
        emit_json({n: e.to_dict() for n, e in lock.models.items()})
        return
    console.print(
        table(
            ["MODEL", "REF", "VERSION", "DIGEST", "PYTHON", "FRAMEWORKS"],
            [
                (
                    n,
                    e.ref,
                    e.semver,
                    e.digest[:12],
                    e.requires.get("python"),
                    " ".join(f"{k}=={v}" for k, v in e.requires.get("packages", {}).items()),
                )
                for n, e in sorted(lock.models.items())
            ],
        )
    )


@click.command()
@lock_option
@click.option(
    "--requirements",
    "requirements_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The application's requirements: a requirements file, uv.lock, poetry.lock, "
    "pylock.toml or Pipfile.lock; default: the first of those (requirements.lock, then "
    "requirements.txt, then the lock files) beside tether.lock.",
)
@click.option("--python", help="Python version the application runs (default: this one).")
@click.option("--policy", "env_policy",
              help="Environment policy (default: strict; the gate does not follow "
              "TETHER_ENV_POLICY or the registry's env_policy, which are for loads).")
@click.option("--no-environment", is_flag=True,
              help="Skip the environment check on purpose (without a requirements file it "
              "fails: a gate that compared nothing passed).")
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a JUnit XML report here.",
)
@click.option(
    "--require-signature",
    is_flag=True,
    help="Every pinned version must be signed, whatever its policy says; through a server "
    "(or with TETHER_LOAD_KEYS set) by a key pinned in TETHER_LOAD_KEYS, checked here. "
    "Through a server the policy itself is the server's word.",
)
@json_option
@click.pass_context
@handle_errors
def check(
    ctx: click.Context,
    lock_path: Path | None,
    requirements_path: Path | None,
    python: str | None,
    env_policy: str | None,
    junit: Path | None,
    require_signature: bool,
    no_environment: bool,
    as_json: bool,
) -> None:
    """CI gate: refuse to ship models that do not match the application.

    Checks every pin in tether.lock: the version exists and its bytes verify,
    the application's pinned dependencies satisfy its environment, the schema
    the application sends is compatible, and the model's policy holds.
    Exits 1 with a report of what to change.
    """
    path = lock_path or find_lock()
    if path is None:
        raise click.ClickException(f"no {LOCK_NAME} here; pin models with `tether lock add REF`")
    if requirements_path is None:
        for name in ("requirements.lock", "requirements.txt", "uv.lock", "poetry.lock",
                     "pylock.toml", "Pipfile.lock"):
            if (path.parent / name).is_file():
                requirements_path = path.parent / name
                break
    report = registry_from(ctx).check(
        lock_path=path, requirements_path=requirements_path, python=python,
        env_policy=env_policy, require_signature=require_signature,
        check_environment=not no_environment,
    )
    if junit:
        junit.write_text(report.to_junit())
    if as_json:
        emit_json(report.to_dict())
    else:
        console.print(
            table(
                ["MODEL", "CHECK", "RESULT", "DETAIL", "FIX"],
                [
                    (r.model, r.check, "ok" if r.ok else "FAIL", r.message, r.fix or "")
                    for r in report.results
                ],
            )
        )
        failed = sum(not r.ok for r in report.results)
        console.print(
            f"{'FAILED' if failed else 'passed'}: {len(report.results) - failed} ok, "
            f"{failed} failed (lock {path}, requirements {requirements_path or 'none'})"
        )
    if not report.ok:
        sys.exit(1)


@click.command()
@click.argument("ref")
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write requirements.txt, Dockerfile, params.json and REPRODUCE.md here, and the "
    "dataset versions the model was trained on under data/<role>/.",
)
@click.option("--no-data", is_flag=True, help="With -o: do not download the dataset versions.")
@json_option
@click.pass_context
@handle_errors
def reproduce(
    ctx: click.Context, ref: str, output: Path | None, no_data: bool, as_json: bool
) -> None:
    """What it takes to rebuild REF: commit, data digests, pinned environment, params."""
    registry = registry_from(ctx)
    if output:
        from .._registry.reproduce import fetch_data, write_recipe

        version = registry.get(ref)
        written = write_recipe(version, output)
        problems = [] if no_data else fetch_data(registry, version, output)
        fetched = sorted(str(p) for p in (output / "data").iterdir()) if (
            not no_data and (output / "data").is_dir()) else []
        if as_json:
            emit_json({"ref": version.ref, "wrote": [str(p) for p in written],
                       "data": fetched, "problems": problems})
        else:
            console.print("wrote " + ", ".join(str(p) for p in written))
            for path in fetched:
                console.print(f"data: {path} (every byte verified)", markup=False)
            for problem in problems:
                console.print(f"[red]could not fetch {escape(problem)}[/]")
        if problems:
            sys.exit(1)
        return
    info = registry.reproduce(ref)
    if as_json:
        emit_json(info)
        return
    console.print(  # the record's word: shown, never read as markup (a review)
        f"[bold]Reproducing {shown(info['ref'])}[/] ({shown(info['digest'][:16])}), "
        f"python {shown(info['python'])} on {shown(info['platform'])}"
    )
    for number, step in enumerate(info["steps"], 1):
        console.print(f"{number}. {step}", markup=False)
    console.print(
        f"(`tether reproduce {ref} -o DIR` writes the files; "
        f"`tether env export {ref}` prints the requirements)"
    )
