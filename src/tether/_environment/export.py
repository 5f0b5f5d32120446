"""Writing a recorded environment out with every version pinned."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

DEFAULT_EXCLUDE = ("pip", "setuptools", "wheel")


def export_requirements(
    environment: dict[str, Any], *, exclude: Iterable[str] = DEFAULT_EXCLUDE
) -> str:
    skip = set(exclude)
    packages = environment.get("packages") or {}
    header = (
        f"# Recorded environment: Python {environment.get('python', '?')} on "
        f"{environment.get('platform', '?')}/{environment.get('machine', '?')}\n"
        "# Written by `tether env export`; every version pinned as it was recorded.\n"
    )
    lines = [f"{name}=={version}" for name, version in sorted(packages.items()) if name not in skip]
    return header + "\n".join(lines) + ("\n" if lines else "")


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
