"""What of an environment record Tether compares, prints and writes into files.

A version's environment is the logger's word (any contributor, or a server): a
package version with a newline put ``--extra-index-url`` into an exported
requirements file, one with a quote put a shell command into the ``pip install``
hint a refused load prints, a ``python`` value put a ``RUN`` line into an exported
Dockerfile, and a list where a mapping belongs made loads crash (a review). So:

- a new record is refused at commit unless every field is of its kind
  (``environment_problem``), and capturing leaves out what could not be stored;
- a stored one is read through ``readable_environment``: a name that is not a
  package name is dropped, a value that is not a version of its kind becomes
  ``UNREADABLE`` (which compares as the largest difference, never as a match).
"""

from __future__ import annotations

import re
from typing import Any

from .._humanize import short_repr

#: What a malformed recorded value reads as: never a version, never equal to one.
UNREADABLE = "(unreadable)"

#: A distribution name (PEP 508), up to 200 characters.
PACKAGE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?\Z")
#: A version as installed distributions report them: no spaces, quotes, ``;``, ``@``,
#: ``/``, ``=`` or line breaks (what pip or a shell could read as more than a version).
PACKAGE_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]{0,63}\Z")
#: ``platform.python_version()``: 3.11.7, 3.13.0rc1, 3.12.0+.
PYTHON_VERSION = re.compile(r"\d{1,2}\.\d{1,3}(?:\.\d{1,3})?(?:[a-z]{1,2}\d{0,3})?\+?\Z")
#: ``sys.platform``, ``platform.machine()``, an implementation, an install kind.
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")
#: Free text of a line (a kernel release, a libc): printable ASCII, no markup brackets.
TEXT = re.compile(r"[ -Z\\^-z|~]{0,128}\Z")
#: What an accelerator entry carries (a driver, GPU names, CUDA_VISIBLE_DEVICES: eight
#: GPU UUIDs are 330 characters, which Slurm and device plugins set).
DEVICE_TEXT = re.compile(r"[ -Z\\^-z|~]{0,4096}\Z")

_FIELDS = {"python": PYTHON_VERSION, "platform": WORD, "machine": WORD,
           "implementation": WORD, "os_release": TEXT, "libc": TEXT}
MAX_PACKAGES = 10_000


def _fits(value: Any, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, str) and pattern.match(value) is not None


def readable_environment(env: Any) -> dict[str, Any]:
    """``env`` as Tether may use it: see the module's docstring. Keys it does not know
    are left out (nothing reads them)."""
    if not isinstance(env, dict):
        return {}
    out: dict[str, Any] = {}
    for key, pattern in _FIELDS.items():
        if env.get(key) is not None:
            out[key] = env[key] if _fits(env[key], pattern) else UNREADABLE
    accelerators = env.get("accelerators")
    if accelerators is not None:
        # One that is not a mapping still reads as an accelerator (of unknown kind): it
        # must not vanish from the comparison.
        out["accelerators"] = [
            {"kind": a["kind"] if _fits(a.get("kind"), WORD) else UNREADABLE}
            | {k: v for k, v in a.items() if k != "kind" and _fits(k, WORD) and _plain(v)}
            if isinstance(a, dict) else {"kind": UNREADABLE}
            for a in (accelerators if isinstance(accelerators, list) else [None])]
    packages = env.get("packages")
    if packages is not None:
        items = packages.items() if isinstance(packages, dict) else ()
        out["packages"] = {name: version if _fits(version, PACKAGE_VERSION) else UNREADABLE
                           for name, version in items if _fits(name, PACKAGE_NAME)}
    requires = env.get("requires")
    if isinstance(requires, dict):
        out["requires"] = {name: [d for d in needs if _fits(d, PACKAGE_NAME)]
                           for name, needs in requires.items()
                           if _fits(name, PACKAGE_NAME) and isinstance(needs, list)}
    local = env.get("local_installs")
    if isinstance(local, dict):
        out["local_installs"] = {name: kind for name, kind in local.items()
                                 if _fits(name, PACKAGE_NAME) and _fits(kind, WORD)}
    return out


def _plain(value: Any) -> bool:
    """A value an accelerator entry may carry (a driver, device names)."""
    if value is None:
        return True
    if isinstance(value, list):
        return len(value) <= 64 and all(_fits(v, DEVICE_TEXT) for v in value)
    return _fits(value, DEVICE_TEXT)


def storable_accelerators(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What capture records of the accelerators it found: whatever a commit would refuse
    is left out (a log never fails for what this machine's driver reports)."""
    kept = []
    for entry in found:
        if _fits(entry.get("kind"), WORD):
            kept.append({"kind": entry["kind"]} | {
                k: v for k, v in entry.items() if k != "kind" and _fits(k, WORD) and _plain(v)})
    return kept


def environment_problem(env: Any) -> str | None:
    """What in ``env`` a new version may not record, or None: any field
    ``readable_environment`` would drop or read as ``UNREADABLE``."""
    if not isinstance(env, dict):
        return "is not a mapping"
    for key, pattern in _FIELDS.items():
        if env.get(key) is not None and not _fits(env[key], pattern):
            return f"{key} {short_repr(env[key], 60)} is not a {key.replace('_', ' ')} value"
    packages = env.get("packages")
    if packages is not None:
        if not isinstance(packages, dict) or len(packages) > MAX_PACKAGES:
            return f"packages is not a mapping of at most {MAX_PACKAGES} names to versions"
        for name, version in packages.items():
            if not _fits(name, PACKAGE_NAME):
                return f"packages names {short_repr(name, 60)}, not a distribution name"
            if not _fits(version, PACKAGE_VERSION):
                return f"package {name}'s version {short_repr(version, 60)} is not a version"
    readable = readable_environment(env)
    for key in ("accelerators", "requires", "local_installs"):
        if env.get(key) is not None and readable.get(key) != env[key]:
            return f"{key} is not of its kind (see a captured environment)"
    return None
