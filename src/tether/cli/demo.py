"""`tether demo`: the main job end to end, in a throwaway registry."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import click

from .._errors import EnvironmentMismatch
from .._humanize import human_bytes
from .._records import ModelVersion
from .._registry.registry import Registry
from ._common import console, handle_errors, table
from .inspect import render_diff


def _step(number: int, text: str) -> None:
    console.print(f"\n[bold cyan]{number}. {text}[/]")


def _train(C: float, max_iter: int = 2000) -> tuple[Any, Any, Any, dict[str, float]]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_breast_cancer(as_frame=True)
    X_train, X_test, y_train, y_test = train_test_split(
        frame.data, frame.target, test_size=0.25, random_state=7, stratify=frame.target
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    model.fit(X_train, y_train)
    metrics = {
        "accuracy": float(accuracy_score(y_test, model.predict(X_test))),
        "roc_auc": float(roc_auc_score(y_test, model.predict_proba(X_test)[:, 1])),
    }
    return model, X_train, X_test, metrics


def run_demo(folder: Path) -> None:
    _step(1, f"Create an embedded registry (SQLite + local store) in {folder}")
    registry = Registry.init(folder / ".tether", actor="demo@tether")
    try:
        _run(registry)
    finally:
        registry.close()


def _log(registry: Registry, C: float, notes: str) -> tuple[Any, ModelVersion]:
    """Train with regularisation ``C`` and log the pipeline with its lineage."""
    model, X_train, X_test, metrics = _train(C=C)
    version = registry.log_model(
        model,
        "cancer-detector",
        params={"C": C, "max_iter": 2000},
        metrics=metrics,
        data={"train": X_train},
        input_example=X_test.head(5),
        notes=notes,
    )
    return X_test, version


def _run(registry: Registry) -> None:
    _step(2, "Train a scikit-learn pipeline on the breast-cancer data and log it")
    X_test, v1 = _log(registry, 1.0, "baseline")
    console.print(
        f"logged {v1.ref}  #{v1.seq}  {v1.short_digest}  "
        f"({human_bytes(v1.size)}, {_input_count(v1)} input columns)"
    )

    _step(3, "Retrain with stronger regularisation and log again: Tether proposes the version")
    _, v2 = _log(registry, 0.05, "stronger regularisation")
    console.print(
        f"logged {v2.ref}  #{v2.seq}  {v2.short_digest}  (new weights, same schema: a minor bump)"
    )
    _, again = _log(registry, 0.05, "stronger regularisation")
    if again.seq == v2.seq:
        console.print(
            f"retraining gives identical bytes: logging returns {again.ref}, no duplicate"
        )
    else:  # pragma: no cover - a non-deterministic build of scikit-learn
        console.print(f"retraining changed the bytes, so it was logged as {again.ref}")

    _step(4, f"tether diff {v1.ref} {v2.ref}")
    render_diff(registry.diff(v1.ref, v2.ref))

    _step(5, "Promote: create production → 1.0.0, then move it → 1.1.0")
    for ref in (v1.ref, v2.ref):
        # A new alias is made only on request, so a typo never creates one.
        move = registry.promote(ref, "production", reason="demo", create=ref == v1.ref)
        console.print(
            f"cancer-detector@production → {move.version} (was {move.previous or 'unset'})"
        )

    _step(6, "Load by alias: every byte verified, environment checked")
    loaded = registry.load("cancer-detector@production")
    predictions = loaded.predict(X_test.head(5))
    console.print(
        f"cancer-detector@production predicts {list(map(int, predictions))} for 5 patients"
    )

    _step(7, "Simulate a deployment whose environment does not match")
    from .._environment import capture_environment

    other = capture_environment()
    other["packages"]["scikit-learn"] = "1.3.2"
    other["packages"]["numpy"] = "1.26.4"
    try:
        registry.load("cancer-detector@production", environment=other)
    except EnvironmentMismatch as error:
        console.print("[red]refused, as it should be:[/]")
        console.print(str(error), markup=False)
    else:  # pragma: no cover - the demo shows a refusal; getting here is a bug
        raise click.ClickException("the mismatched environment was not refused")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.load("cancer-detector@production", environment=other, env_policy="warn")
    console.print(f"with env_policy='warn' it loads and warns ({len(caught)} warning)")

    _step(8, "Roll production back, and look at its history")
    move = registry.rollback("cancer-detector", "production", reason="demo rollback")
    console.print(f"cancer-detector@production → {move.version} (was {move.previous})")
    console.print(
        table(
            ["WHEN", "ACTION", "FROM", "TO", "BY"],
            [
                (m.moved_at, m.action, m.previous or "-", m.version, m.actor)
                for m in registry.alias_history("cancer-detector", "production")
            ],
        )
    )

    _step(9, "Verify the audit log's hash chain")
    count, problems = registry.verify_audit()
    console.print(f"audit log: {count} events, {problems if problems else 'chain intact'}")
    stats = registry.store_stats()
    console.print(
        f"store: {human_bytes(stats.logical_bytes)} logical, "
        f"{human_bytes(stats.stored_bytes)} stored ({stats.dedup_ratio:.2f}x)"
    )
    console.print(
        "\n[bold green]Demo complete.[/] Try it on your own registry: `tether init`, "
        "then tether.log_model(...) from Python."
    )


@click.command()
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="Create the registry in this new folder and keep it (default: a temp folder).",
)
@handle_errors
def demo(keep: Path | None) -> None:
    """Run Tether's main job end to end on scikit-learn's bundled data."""
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        run_demo(keep)
        console.print(
            f"\nThe registry is kept: TETHER_URI={keep / '.tether'} tether versions cancer-detector"
        )
        return
    with tempfile.TemporaryDirectory(prefix="tether-demo-") as tmp:
        run_demo(Path(tmp))


def _input_count(version: Any) -> int:
    return len(version.signature["inputs"]["fields"]) if version.signature else 0
