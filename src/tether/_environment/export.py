"""Writing a recorded environment out with every version pinned."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

DEFAULT_EXCLUDE = ("pip", "setuptools", "wheel")


def roots_for_flavor(flavor: dict[str, Any]) -> list[str] | None:
    """The distributions a version's flavor loads with; None when that cannot be known.

    A Python callable (cloudpickle) may reference any module of the training
    environment, so its export stays complete.
    """
    if flavor.get("name") == "python":
        return None
    return [str(p) for p in flavor.get("framework_packages") or []]


def needed_packages(environment: dict[str, Any], roots: Iterable[str]) -> set[str] | None:
    """``roots`` and everything they require, by the recorded dependency graph.

    None when the environment was recorded without its graph (older versions).
    """
    graph = environment.get("requires")
    if not isinstance(graph, dict):
        return None
    packages = environment.get("packages") or {}
    todo = [r for r in roots if r in packages]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(d for d in graph.get(name, []) if d in packages and d not in seen)
    return seen


def export_requirements(
    environment: dict[str, Any],
    *,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    roots: Iterable[str] | None = None,
) -> str:
    """Pinned requirements: what ``roots`` need (their dependency closure), or everything.

    Local and editable installs are never pinned (no index has them); the
    export names them in a comment so the reader installs them from source.
    """
    skip = set(exclude)
    packages = environment.get("packages") or {}
    local = environment.get("local_installs") or {}
    wanted = needed_packages(environment, roots) if roots is not None else None
    scope = "every recorded distribution"
    if roots is not None and wanted is None:
        scope = "every recorded distribution (this version has no dependency graph)"
    elif wanted is not None:
        scope = f"what {', '.join(sorted(set(roots or [])))} need (use --full for everything)"
    written = f"# Written by `tether env export`: {scope}, pinned as recorded.\n"
    if wanted is not None and not set(roots or []):
        # A files-only version loads with no framework (this said "what  need").
        written = ("# Written by `tether env export`: this version loads with no framework, so "
                   "nothing is pinned (use --full for every recorded distribution).\n")
    header = (
        f"# Recorded environment: Python {environment.get('python', '?')} on "
        f"{environment.get('platform', '?')}/{environment.get('machine', '?')}\n" + written
    )
    chosen = sorted(n for n in packages if n not in skip and (wanted is None or n in wanted))
    notes = [
        f"# {name}=={packages[name]}: an {local[name]} install that no index has; "
        "install it from its source"
        for name in chosen
        if name in local
    ]
    lines = [f"{name}=={packages[name]}" for name in chosen if name not in local]
    body = notes + lines
    return header + "\n".join(body) + ("\n" if body else "")


def export_dockerfile(
    environment: dict[str, Any], *, requirements_file: str = "requirements.txt"
) -> str:
    python = environment.get("python") or "3.11"
    lines = [
        "# Written by `tether env export --format dockerfile`.",
        f"# Recorded on {environment.get('platform', '?')}/{environment.get('machine', '?')}, "
        f"Python {python}.",
    ]
    if environment.get("accelerators"):
        kinds = ", ".join(str(a.get("kind")) for a in environment["accelerators"])
        lines.append(
            f"# WARNING: recorded with accelerators ({kinds}); for GPU inference use a "
            "CUDA base image (e.g. nvidia/cuda) with this Python instead."
        )
    lines += [
        f"FROM python:{python}-slim",
        "WORKDIR /app",
        f"COPY {requirements_file} /app/requirements.txt",
        "RUN pip install --no-cache-dir -r /app/requirements.txt",
    ]
    return "\n".join(lines) + "\n"
