"""Web UI page times on a big registry: p50/p95 server time per page.

    .venv/bin/python bench/bench_ui.py [--models 1000] [--versions 100] [--requests 30]
        [--db postgresql://postgres@127.0.0.1:5432/DB] [--json] [--explain] [--no-api]

Fills an embedded registry with ``--models`` models of ``--versions`` versions
each, written straight through the registry's SQL layer (SQLAlchemy Core
bulk inserts into the real schema, every version sealed with its true digest
so resolving re-hashes it as usual), gives every model a ``production`` and
a ``staging`` alias through the public ``promote`` use case (so the audit
chain is real and verifies), then times each page in-process with Starlette's
TestClient (server time: routing, registry calls, rendering; no network).
It then times the REST and MLflow list endpoints and the two ways of listing
every model (``--no-api`` skips them). ``--explain`` prints the database's
plan of every SELECT each page ran (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on
PostgreSQL).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import tether  # noqa: E402
from tether._environment.capture import capture_environment  # noqa: E402
from tether._identity import seal  # noqa: E402
from tether._metadata.schema import models, versions  # noqa: E402

NOW = "2026-01-01T00:00:00.000000Z"
FLAVOR = {"name": "sklearn", "serialization": "skops", "entry": "model.skops"}
SIGNATURE = {
    "inputs": {"fields": [{"name": f"f{i}", "type": "double"} for i in range(8)]},
    "outputs": {"fields": [{"name": "prediction", "type": "long"}]},
}


def fill(registry: tether.Registry, n_models: int, per_model: int) -> float:
    started = time.perf_counter()
    environment = json.dumps(capture_environment(), sort_keys=True)
    signature = json.dumps(SIGNATURE)
    with registry.engine.begin() as conn:
        conn.execute(
            models.insert(),
            [
                {
                    "name": f"model-{m:04d}",
                    "description": f"bench model {m}",
                    "owners": json.dumps([f"team-{m % 17}@example.com"]),
                    "tags": json.dumps({"team": f"team-{m % 17}", "tier": str(m % 3)}),
                    "created_at": NOW,
                    "updated_at": NOW,
                    "deleted": False,
                }
                for m in range(n_models)
            ],
        )
        ids = dict(conn.execute(sa.select(models.c.name, models.c.id)).all())
    batch: list[dict[str, Any]] = []
    for m in range(n_models):
        mid = ids[f"model-{m:04d}"]
        for s in range(1, per_model + 1):
            minor = s - 1
            chunk = f"{m:08x}{s:08x}".ljust(64, "0")
            values = seal(
                {
                    "manifest": [
                        {"path": "model.skops", "size": 4096, "digest": chunk,
                         "chunks": [[chunk, 4096]]}
                    ],
                    "flavor": FLAVOR,
                    "signature": SIGNATURE,
                    "params": {"C": 1.0 / s, "max_iter": 500},
                    "data": {},
                }
            )
            batch.append(
                {
                    "model_id": mid, "seq": s, "semver": f"1.{minor}.0", "major": 1,
                    "minor": minor, "patch": 0, "digest": values["digest"],
                    "files_digest": values["files_digest"],
                    "manifest": json.dumps(values["manifest"]), "flavor": json.dumps(FLAVOR),
                    "signature": signature, "input_example": None,
                    "params": json.dumps(values["params"]),
                    "metrics": json.dumps({"auc": 0.8 + (s % 17) / 100, "latency_ms": 20 + s % 7}),
                    "data": "{}", "lineage": "{}", "environment": environment, "tags": "{}",
                    "notes": "", "author": "bench@example.com", "created_at": NOW,
                    "status": "ready",
                }
            )
            if len(batch) >= 5000:
                with registry.engine.begin() as conn:
                    conn.execute(versions.insert(), batch)
                batch = []
    if batch:
        with registry.engine.begin() as conn:
            conn.execute(versions.insert(), batch)
    for m in range(n_models):
        name = f"model-{m:04d}"
        last = f"1.{per_model - 1}.0"
        previous = f"1.{max(per_model - 2, 0)}.0"
        registry.promote(f"{name}@{previous}", "production", reason="bench", create=True)
        if per_model > 1:
            registry.promote(f"{name}@{last}", "production", reason="bench")
        registry.promote(f"{name}@{last}", "staging", reason="bench", create=True)
    return time.perf_counter() - started


def time_calls(calls: dict[str, Any], n: int) -> dict[str, dict[str, float]]:
    results = {}
    for label, call in calls.items():
        call()
        times = []
        for _ in range(n):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        results[label] = {
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))], 1),
        }
    return results


def time_pages(client: Any, pages: dict[str, str], n: int) -> dict[str, dict[str, float]]:
    results = {}
    for label, url in pages.items():
        response = client.get(url)  # warm-up, and check it works
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
        times = []
        for _ in range(n):
            started = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        results[label] = {
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))], 1),
        }
    return results


def explain(registry: tether.Registry, client: Any, pages: dict[str, str]) -> None:
    """Each page's SELECTs, once each, with the plan the database chose for them."""
    captured: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, parameters))

    sqlite = registry.engine.dialect.name == "sqlite"
    seen: set[str] = set()
    for label, url in pages.items():
        captured.clear()
        sa.event.listen(registry.engine, "before_cursor_execute", grab)
        try:
            client.get(url)
        finally:
            sa.event.remove(registry.engine, "before_cursor_execute", grab)
        print(f"\n== {label}: {url}")
        with registry.engine.connect() as conn:
            for statement, parameters in captured:
                if statement in seen:
                    continue
                seen.add(statement)
                prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
                rows = conn.exec_driver_sql(prefix + statement, parameters).all()
                plan: list[str] = []
                for row in rows:  # one line per step; an OR of 50 lookups is one step x50
                    step = str(row[-1]).strip()
                    if plan and plan[-1].split(" x")[0] == step:
                        count = int(plan[-1].rpartition(" x")[2]) if " x" in plan[-1] else 1
                        plan[-1] = f"{step} x{count + 1}"
                    elif not step.startswith("INDEX "):
                        plan.append(step)
                print("  " + " ".join(statement.split())[:150])
                for line in plan:
                    print("      " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=100, help="versions per model")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--db", help="a PostgreSQL URL (default: SQLite in the registry folder)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--explain", action="store_true", help="print each page's query plans")
    parser.add_argument(
        "--no-api", action="store_true", help="skip timing the REST and MLflow list endpoints"
    )
    args = parser.parse_args()

    from starlette.testclient import TestClient

    from tether.ui import create_ui_app

    with tempfile.TemporaryDirectory() as tmp:
        registry = tether.init(Path(tmp) / ".tether", actor="bench@example.com", db_url=args.db)
        filled = fill(registry, args.models, args.versions)
        if registry.engine.dialect.name == "postgresql":
            # What autovacuum does to a registry that grew over months; a bulk load
            # of seconds is timed before it runs (no statistics, no visibility map).
            # Then a checkpoint, so the load's gigabyte of WAL is not flushed while
            # the pages are timed (best effort: it needs a privileged role).
            with registry.engine.connect() as conn:
                auto = conn.execution_options(isolation_level="AUTOCOMMIT")
                auto.exec_driver_sql("VACUUM ANALYZE")
                with contextlib.suppress(sa.exc.DBAPIError):
                    auto.exec_driver_sql("CHECKPOINT")
        token = registry.create_token("reader@example.com", role="reader")["token"]
        client = TestClient(create_ui_app(lambda: registry))
        client.post("/login", data={"token": token, "next": "/"})
        mid = f"model-{args.models // 2:04d}"
        last = f"1.{args.versions - 1}.0"
        pages = {
            "models (page 1)": "/",
            "models search by name": f"/?q={mid[:-1]}",
            "models search by tag": "/?tag=team=team-3",
            "models search by alias": "/?alias=staging&page=3",
            "models sorted, page 10": "/?sort=-updated&page=10",
            "model (100 versions, chart)": f"/models/{mid}",
            "model JSON": f"/models/{mid}.json",
            "version": f"/models/{mid}/versions/{last}",
            "compare 2 versions, only diffs": f"/compare?v={mid}@1.0.0&v={mid}@{last}&only=1",
            "audit (100 events)": "/audit",
            "audit, verifying the whole chain": "/audit?verify=1",
            "audit filtered by model": f"/audit?model={mid}",
        }
        results = time_pages(client, pages, args.requests)
        api_results: dict[str, dict[str, float]] = {}
        if not args.no_api:
            from tether.server.app import create_app

            api = TestClient(create_app(registry), headers={"authorization": f"Bearer {token}"})
            endpoints = {
                "GET /api/v1/models (every model)": "/api/v1/models",
                "GET /api/v1/models/NAME/versions": f"/api/v1/models/{mid}/versions",
                "MLflow registered-models/search (100)":
                    "/api/2.0/mlflow/registered-models/search?max_results=100",
                "MLflow search name LIKE": "/api/2.0/mlflow/registered-models/search"
                    f"?filter=name%20LIKE%20%27{mid[:-2]}%25%27",
            }
            api_results = time_pages(api, endpoints, max(5, args.requests // 4))
            from tether._registry.model_search import all_models

            api_results.update(
                time_calls(
                    {
                        "every model: Registry.models() (2 queries a model)": registry.models,
                        "every model: model_search.all_models (3 queries)":
                            lambda: all_models(registry),
                    },
                    max(5, args.requests // 4),
                )
            )
        if args.explain:
            explain(registry, client, {k: v for k, v in pages.items() if "verifying" not in k})
        registry.close()
    report = {
        "models": args.models,
        "versions": args.models * args.versions,
        "database": "postgresql" if args.db else "sqlite",
        "fill_seconds": round(filled, 1),
        "pages": results,
        "api": api_results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{report['models']} models, {report['versions']} versions on {report['database']} "
        f"(filled in {report['fill_seconds']} s); {args.requests} requests per page"
    )
    width = max(len(k) for k in results)
    print(f"{'page':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}")
    for label, row in results.items():
        print(f"{label:<{width}}  {row['p50_ms']:>8}  {row['p95_ms']:>8}")
    if api_results:
        width = max(len(k) for k in api_results)
        print(f"\n{'endpoint':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}")
        for label, row in api_results.items():
            print(f"{label:<{width}}  {row['p50_ms']:>8}  {row['p95_ms']:>8}")


if __name__ == "__main__":
    main()
