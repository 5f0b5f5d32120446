"""Capturing the environment a model is logged or loaded in."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .record import PACKAGE_NAME, PACKAGE_VERSION, TEXT, storable_accelerators

_cache: dict[str, Any] | None = None
_frozen = ""  # _cache as JSON: what every caller gets a fresh copy of


def canonical_name(name: str) -> str:
    """PEP 503 normalisation: 'Scikit_Learn' -> 'scikit-learn'."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _headers(text: str) -> tuple[str | None, str | None, list[str]]:
    """Name, Version and Requires-Dist of a METADATA file, read up to its body.

    The email parser ``importlib.metadata`` uses costs about 1 ms a
    distribution: hundreds of them made capturing the environment most of the
    time of logging a large model in a fresh process.
    """
    fields: dict[str, list[str]] = {"name": [], "version": [], "requires-dist": []}
    current: list[str] | None = None
    for line in text.splitlines():
        if not line:
            break  # the headers end at the first empty line (a blank one folds)
        if line[0] in " \t":  # a folded header goes on
            if current is not None and current:
                current[-1] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        current = fields.get(key.strip().lower()) if sep else None
        if current is not None:
            current.append(value.strip())
    name, version = fields["name"], fields["version"]
    return (name[0] if name else None, version[0] if version else None,
            fields["requires-dist"])


def _scan() -> tuple[dict[str, str], dict[str, list[str]], dict[str, str]]:
    """(version, requirements, local installs) of every distribution, in one pass.

    Requirements that only an extra asks for are left out; platform markers are
    not evaluated, which is harmless: the export keeps only what is installed.
    A local or editable install has no version an index can serve, so exports
    say so instead of pinning it.
    """
    packages: dict[str, str] = {}
    requires: dict[str, list[str]] = {}
    local: dict[str, str] = {}
    for dist in metadata.distributions():
        text = dist.read_text("METADATA")
        if text is not None:
            raw_name, version, required = _headers(text)
        else:  # an egg-info layout: the library's own parser (and its requires.txt)
            raw_name = dist.metadata.get("Name", None)  # type: ignore[attr-defined]
            version, required = dist.version, list(dist.requires or [])
        if not raw_name:
            continue
        name = canonical_name(raw_name)
        if name in requires:
            continue  # the first one on the path is the one imported
        packages[name] = version or ""
        needed: set[str] = set()
        for text_ in required:
            requirement, _, marker = text_.partition(";")
            if "extra" in marker:
                continue
            match = _REQUIREMENT_NAME.match(requirement)
            if match:
                needed.add(canonical_name(match[1]))
        requires[name] = sorted(needed)
        how = _installed_how(dist.read_text("direct_url.json") or "")
        if how:
            local[name] = how
    return dict(sorted(packages.items())), dict(sorted(requires.items())), local


def _installed_how(direct_url: str) -> str | None:
    """"editable" or "local" from a distribution's ``direct_url.json`` (PEP 610), else
    None. Parsed, not searched: pip writes ``"editable": true``, uv ``"editable":true``
    (uv's editable installs were taken for installs from an index)."""
    try:
        data = json.loads(direct_url) if direct_url.strip() else {}
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    info = data.get("dir_info")
    if isinstance(info, dict) and info.get("editable") is True:
        return "editable"
    url = data.get("url")
    return "local" if isinstance(url, str) and url.startswith("file:") else None


def _accelerators() -> list[dict[str, Any]]:
    """NVIDIA GPUs, found without importing a framework (cheap, no CUDA init)."""
    found: list[dict[str, Any]] = []
    driver = Path("/proc/driver/nvidia/version")
    if driver.exists():
        text = driver.read_text(errors="replace")
        match = re.search(r"Kernel Module\s+(\S+)", text)
        found.append({"kind": "cuda", "driver": match.group(1) if match else None})
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=3,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        gpus = [line.split(",")[0].strip() for line in out.splitlines() if line.strip()]
        if gpus:
            if not found:
                found.append({"kind": "cuda", "driver": None})
            found[0]["devices"] = gpus
    if found and os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        found[0]["visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return found


def _libc() -> str | None:
    name, version = platform.libc_ver()
    return f"{name} {version}" if name else None


def capture_environment() -> dict[str, Any]:
    """Python, platform, accelerators and every installed distribution.

    Cached per process (logging and loading call it often); callers get a copy.
    """
    global _cache, _frozen
    if _cache is None:
        _cache = {
            "python": platform.python_version(),
            "implementation": sys.implementation.name,
            "platform": sys.platform,
            "machine": platform.machine(),
            "os_release": platform.release(),
            "libc": _libc(),
            "accelerators": storable_accelerators(_accelerators()),
        }
        packages, requires, local = _scan()
        # A distribution whose name or version could not be pinned safely (a space, a
        # quote) is left out: a commit refuses a record holding one (see record.py).
        usable = {n: v for n, v in packages.items()
                  if PACKAGE_NAME.match(n) and PACKAGE_VERSION.match(v)}
        _cache["packages"] = usable
        _cache["requires"] = {n: [d for d in needs if d in usable]
                              for n, needs in requires.items() if n in usable}
        _cache["local_installs"] = {n: k for n, k in local.items() if n in usable}
        for key in ("os_release", "libc"):
            if _cache[key] is not None and not TEXT.match(_cache[key]):
                _cache[key] = None
        _frozen = json.dumps(_cache)
    # A copy callers may change: decoding the JSON costs a fraction of deepcopy
    # (hundreds of distributions, on every log and load).
    return dict(json.loads(_frozen))


def clear_cache() -> None:
    """Forget the captured environment (after installing packages, in tests)."""
    global _cache
    _cache = None
