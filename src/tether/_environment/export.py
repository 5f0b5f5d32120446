"""Writing a recorded environment out with every version pinned."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .._errors import InvalidInput
from .record import PACKAGE_NAME, PACKAGE_VERSION, PYTHON_VERSION, WORD

DEFAULT_EXCLUDE = ("pip", "setuptools", "wheel")


def _shown(environment: dict[str, Any], key: str) -> str:
    """A recorded field for a comment line: itself if of its kind, else '?'."""
    value = environment.get(key)
    pattern = PYTHON_VERSION if key == "python" else WORD
    return value if isinstance(value, str) and pattern.match(value) else "?"


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
        f"# Recorded environment: Python {_shown(environment, 'python')} on "
        f"{_shown(environment, 'platform')}/{_shown(environment, 'machine')}\n" + written
    )
    chosen = sorted(n for n in packages if n not in skip and (wanted is None or n in wanted))
    # Only names and versions of their kind become lines: a version with a line break in
    # it wrote `--extra-index-url` into the file (a review). Stored records are read
    # through record.readable_environment, which marks such values; say what was left.
    unreadable = [n for n in chosen if not (PACKAGE_NAME.match(n)
                                            and PACKAGE_VERSION.match(str(packages[n])))]
    chosen = [n for n in chosen if n not in unreadable]
    notes = [
        f"# {name}=={packages[name]}: an {local[name]} install that no index has; "
        "install it from its source"
        for name in chosen
        if name in local
    ]
    if unreadable:
        notes.append(f"# {len(unreadable)} recorded distribution(s) left out: their recorded "
                     "name or version is not one pip reads as a pin")
    lines = [f"{name}=={packages[name]}" for name in chosen if name not in local]
    body = notes + lines
    return header + "\n".join(body) + ("\n" if body else "")


def export_dockerfile(
    environment: dict[str, Any], *, requirements_file: str = "requirements.txt"
) -> str:
    python = environment.get("python") or "3.11"
    if not isinstance(python, str) or not re.fullmatch(r"\d+\.\d+(\.\d+)?", python):
        # It names the base image (a review: a recorded python of "3.11-slim\nRUN curl
        # ...|sh\n#" added a RUN line to the file).
        raise InvalidInput(f"the recorded Python {_shown(environment, 'python')} is not a "
                           "release a python image is tagged with",
                           hint="write the Dockerfile by hand, FROM the Python you need")
    lines = [
        "# Written by `tether env export --format dockerfile`.",
        f"# Recorded on {_shown(environment, 'platform')}/{_shown(environment, 'machine')}, "
        f"Python {python}.",
    ]
    if environment.get("accelerators"):
        kinds = ", ".join(str(a.get("kind")) for a in environment["accelerators"]
                          if isinstance(a, dict) and WORD.match(str(a.get("kind"))))
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
