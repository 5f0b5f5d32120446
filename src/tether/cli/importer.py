"""``tether import``: bring models from another registry, and data from DVC, into this one."""

from __future__ import annotations

import sys
from typing import Any

import click

from ._common import console, emit_json, handle_errors, json_option, printable, registry_from, shown


@click.group("import")
def import_group() -> None:
    """Import models from another registry (MLflow), and data from a DVC repository."""


class _Bar:
    """A rich bar on stderr, only on a terminal and never with --json."""

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._enabled = enabled and sys.stderr.isatty()

    def planned(self, total: int) -> None:
        if not self._enabled or total == 0:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._bar = Progress(
            TextColumn("[bold]importing[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("", total=total)

    def working(self, label: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=label)

    def finished_one(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@import_group.command("mlflow")
@click.option(
    "--from",
    "uri",
    required=True,
    metavar="URI",
    help="The MLflow tracking/registry URI (http://host:5000, sqlite:///mlflow.db, ...).",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME",
    help="Import this registered model (repeatable; default: every model).",
)
@click.option(
    "--artifacts-from",
    "artifacts_from",
    multiple=True,
    metavar="FOLDER|URI",
    help="A folder, or a URI prefix (s3://bucket/mlflow/), artifacts may be read from "
    "(repeatable). Always allowed: what the tracking server serves itself "
    "(mlflow-artifacts:) and a local store's own folder.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be imported; change nothing.")
@json_option
@click.pass_context
@handle_errors
def mlflow_command(
    ctx: click.Context, uri: str, models: tuple[str, ...], artifacts_from: tuple[str, ...],
    dry_run: bool, as_json: bool
) -> None:
    """Import registered models from the MLflow registry at URI.

    Versions (in MLflow's order, each logged through the registry so digests,
    audit and policies apply), descriptions, tags, the source run's params and
    metrics, artifacts and aliases. Each version records where it came from
    (tags mlflow.registered_model, mlflow.version, mlflow.source, mlflow.run_id);
    running it again imports only what is new. A scikit-learn model saved with
    skops using only types skops trusts is logged natively; anything that would
    need unpickling comes as files. Credentials: MLflow's own environment
    variables (MLFLOW_TRACKING_TOKEN, ...). Exits 1 if anything failed or was refused.

    Where artifacts are is the source's word, so they are read only from the tracking
    server itself (mlflow server --serve-artifacts), a local store's own folder, and
    what --artifacts-from names; never through a symbolic link.
    """
    from .._registry.import_mlflow import import_mlflow

    registry = registry_from(ctx)
    bar = _Bar(enabled=not as_json)
    try:
        report = import_mlflow(registry, uri, models=models, dry_run=dry_run, progress=bar,
                               artifacts_from=artifacts_from)
    finally:
        bar.close()
    if as_json:
        emit_json(report.to_dict())
    else:
        _render(report)
    if report.problems:
        sys.exit(1)


def _render(report: Any) -> None:
    verb = "would import" if report.dry_run else "imported"
    for model in report.models:
        if model.error:
            console.print(f"[bold]{shown(model.name)}[/]: [red]{shown(model.error)}[/]")
            continue
        new = [v for v in model.versions if v.status in ("imported", "planned")]
        present = model.count("present")
        console.print(
            f"[bold]{shown(model.name)}[/]: {len(new)} version(s) {verb}, {present} already here"
        )
        for v in model.versions:
            if v.status == "present":
                continue
            where = f" -> {v.ref} {v.digest[:16]}… {v.flavor}" if v.ref and v.digest else ""
            status = "" if v.status == "imported" else f" [{v.status}]"
            note = f"  ({v.note})" if v.note else ""
            line = f"  MLflow v{v.mlflow_version}{where}{status}{note}"
            # Everything here is the source's word (notes carry its run ids and locations):
            # its control characters are shown escaped, never sent to the terminal.
            console.print(printable(line), style="red" if v.status == "failed" else None,
                          markup=False)
        changed = []
        if model.description_updated:
            changed.append("description")
        if model.tags_updated:
            changed.append("tags " + ", ".join(model.tags_updated))
        if changed:
            console.print(f"  model {'would get' if report.dry_run else 'updated'}: "
                          + shown("; ".join(changed)))
        for a in model.aliases:
            target = a.ref or f"MLflow v{a.mlflow_version}"
            note = f" ({a.note})" if a.note else ""
            console.print(
                printable(f"  alias {a.alias} -> {target}: {a.status}{note}"),
                style="red" if a.status == "refused" else None,
                markup=False,
            )
        for note in model.notes:
            console.print(printable(f"  note: {note}"), markup=False)
    total = sum(
        len([v for v in m.versions if v.status in ("imported", "planned")]) for m in report.models
    )
    problems = f", {report.problems} problem(s)" if report.problems else ""
    console.print(f"{total} version(s) {verb} from {shown(report.source)}{problems}")


_DVC_MARK = {"imported": "+", "unchanged": "=", "planned": "~", "skipped": "-",
             "missing": "?", "failed": "!"}


@import_group.command("dvc")
@click.argument("repo", default=".", type=click.Path(exists=True, file_okay=False))
@click.option("--write-pointers", is_flag=True,
              help="Also write PATH.tether beside each output, for `tether data pull`.")
@click.option("--dry-run", is_flag=True, help="Say what would be imported; change nothing.")
@json_option
@click.pass_context
@handle_errors
def dvc_command(
    ctx: click.Context, repo: str, write_pointers: bool, dry_run: bool, as_json: bool
) -> None:
    """Register what REPO's .dvc files and dvc.lock outputs point to as dataset versions.

    Bytes come from the DVC cache the repository configures (DVC 3's
    files/md5 layout or DVC 2's), else its default remote when that is a local
    folder; every file's MD5 is checked. A dataset is named after the output's
    file name (its path where two share a name). Running it again adds nothing
    new. DVC itself is not needed. Exits 1 if anything is missing or failed.
    """
    from .._registry.import_dvc import import_dvc

    done = import_dvc(registry_from(ctx), repo, dry_run=dry_run, write_pointers=write_pointers)
    problems = [d for d in done if d.status in ("missing", "failed")]
    if as_json:
        emit_json([d.to_dict() for d in done])
    else:
        for d in done:
            line = f"{_DVC_MARK.get(d.status, ' ')} {d.path}  ({d.source})  "
            if d.version:
                line += f"-> {d.dataset}@{d.version} {str(d.digest)[:16]}… {d.files} file(s)"
            elif d.dataset and d.status == "planned":
                line += f"-> {d.dataset}"
            line += f"  {d.status}" + (f": {d.error}" if d.error else "")
            if d.pointer:
                line += f"; wrote {d.pointer}"
            console.print(printable(line), markup=False)  # the repository's names
        counts = {s: sum(1 for d in done if d.status == s) for s in _DVC_MARK}
        console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no DVC outputs",
                      markup=False)
    if problems:
        sys.exit(1)
