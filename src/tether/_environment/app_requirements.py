"""What an application says it installs: a requirements file or a lock file, read.

`tether check --requirements FILE` compares each pinned model's recorded
environment with this. It used to read only ``name==version`` lines, so a
``uv.lock`` or a requirements file of ranges (``scikit-learn>=1.0``) gave no
pins at all, the comparison compared nothing, and the gate passed a model
logged with scikit-learn 1.9.1 beside an application locked to 1.2.0.

Read here: requirements files (pins and ranges; ``-r``/``-c`` includes and
options are skipped), ``uv.lock`` and ``poetry.lock`` (``[[package]]``),
``pylock.toml`` (PEP 751, ``[[packages]]``) and ``Pipfile.lock`` (its
``default`` section). A file none of them can read, or one that names no
package, is an error rather than an empty answer.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import InvalidInput
from .capture import canonical_name

FORMATS = "requirements.txt, uv.lock, poetry.lock, pylock.toml or Pipfile.lock"


@dataclass(frozen=True)
class AppRequirements:
    """Exact pins (name -> version) and ranges (name -> specifier text), by canonical name."""

    pins: dict[str, str] = field(default_factory=dict)
    ranges: dict[str, str] = field(default_factory=dict)

    def admits(self, name: str, version: str) -> bool | None:
        """Whether the range for ``name`` admits ``version`` (None: no range for it)."""
        spec = self.ranges.get(name)
        if spec is None:
            return None
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            return SpecifierSet(spec).contains(version, prereleases=True)
        except InvalidSpecifier:
            return False


def read_requirements(path: Path) -> AppRequirements:
    """The application's requirements in ``path``, whichever of the formats it is in."""
    try:
        text = path.read_text()
    except OSError as error:
        raise InvalidInput(f"cannot read {path}: {error.strerror or error}",
                           hint="pass the application's requirements or lock file") from None
    name = path.name.lower()
    if name == "pipfile.lock":
        found = _pipfile_lock(text, path)
    elif name.endswith(".lock") or name.endswith(".toml"):
        found = _toml_lock(text, path)
    else:
        found = parse_requirements_text(text, source=str(path))
    if not found.pins and not found.ranges:
        raise InvalidInput(
            f"{path} names no package Tether can read",
            hint=f"pass the application's {FORMATS}; without one, a check compares nothing",
        )
    return found


def _logical_lines(text: str) -> list[str]:
    """Requirement lines with ``\\`` continuations joined and ``--hash`` options (pip's
    hash-checking mode, pip-compile and uv ``--generate-hashes``) dropped."""
    joined: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0]  # a comment (a URL's #fragment: skipped below anyway)
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    if pending:
        joined.append(pending)
    return [" ".join(t for t in line.split() if not t.startswith("--hash")) for line in joined]


def parse_requirements_text(text: str, *, source: str) -> AppRequirements:
    """Pins and ranges from requirements-file lines, for this machine: a line whose
    environment marker does not hold here is not installed here, so it is left out
    (a ``scikit-learn==1.2.0; sys_platform == "linux"`` beside ``==1.9.1; sys_platform ==
    "win32"`` read as 1.9.1 on Linux, where pip installs 1.2.0: a review); a package
    pinned twice for this machine is an error, never the last one silently."""
    from packaging.requirements import InvalidRequirement, Requirement

    pins: dict[str, str] = {}
    ranges: dict[str, str] = {}
    for line in _logical_lines(text):
        line = line.strip()
        if not line or line.startswith(("-", "git+", "http")) or "://" in line:
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            raise InvalidInput(f"{source}: cannot read {line[:200]!r}",
                               hint="one requirement per line, e.g. scikit-learn==1.9.1") from None
        try:
            if requirement.marker is not None and not requirement.marker.evaluate():
                continue  # not for this machine
        except Exception:  # an unknown marker variable: judged as written, not dropped
            pass
        package = canonical_name(requirement.name)
        specs = list(requirement.specifier)
        exact = [s.version for s in specs if s.operator in ("==", "===") and "*" not in s.version]
        if exact:
            if package in pins and not _same_version(pins[package], exact[0]):
                raise InvalidInput(
                    f"{source}: {package} is pinned twice for this machine "
                    f"({pins[package]} and {exact[0]})",
                    hint="one pin per package (environment markers may choose between them)")
            pins[package] = exact[0]
        else:
            ranges[package] = str(requirement.specifier)  # "" : any version
    return AppRequirements(pins, ranges)


def _same_version(a: str, b: str) -> bool:
    """Whether two pins name one version (``2.4.6`` and ``2.4.6.0`` do)."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _toml_lock(text: str, path: Path) -> AppRequirements:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput(f"{path} is not a TOML lock file: {error}",
                           hint=f"pass the application's {FORMATS}") from None
    entries: Any = data.get("package") or data.get("packages") or []
    # A uv.lock resolved for several platforms lists a package once per fork, each with
    # the `resolution-markers` it applies under: the last one read won, whichever this
    # machine installs (a review). The fork whose markers hold here is taken; a package
    # listed at several versions with nothing to choose between them is an error.
    found: dict[str, set[str]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") and entry.get("version"):
            if not _applies_here(entry.get("resolution-markers") or entry.get("marker")):
                continue
            found.setdefault(canonical_name(str(entry["name"])), set()).add(
                str(entry["version"]))
    twice = sorted(name for name, versions in found.items() if len(versions) > 1)
    if twice:
        raise InvalidInput(
            f"{path} locks {twice[0]} at {' and '.join(sorted(found[twice[0]]))} for this "
            "machine: Tether cannot tell which one is installed",
            hint="pass the requirements exported for the deployment's platform "
            "(uv export, poetry export)")
    return AppRequirements({name: next(iter(versions)) for name, versions in found.items()})


def _applies_here(markers: Any) -> bool:
    """Whether an entry's markers (one, or a list of which any may hold) hold here;
    none: it applies everywhere. A marker that cannot be read counts as holding."""
    if not markers:
        return True
    from packaging.markers import InvalidMarker, Marker

    for text in markers if isinstance(markers, list) else [markers]:
        try:
            if Marker(str(text)).evaluate():
                return True
        except (InvalidMarker, Exception):
            return True
    return False


def _pipfile_lock(text: str, path: Path) -> AppRequirements:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise InvalidInput(f"{path} is not a Pipfile.lock: {error}",
                           hint=f"pass the application's {FORMATS}") from None
    section = data.get("default") if isinstance(data, dict) else None
    pins = {}
    for name, entry in (section or {}).items() if isinstance(section, dict) else []:
        version = str(entry.get("version") or "") if isinstance(entry, dict) else ""
        if version.startswith("=="):
            pins[canonical_name(name)] = version[2:]
    return AppRequirements(pins)
