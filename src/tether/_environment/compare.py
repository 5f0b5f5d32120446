"""Classifying how two environments differ."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .capture import canonical_name

KINDS = ("python", "platform", "machine", "accelerator", "framework", "numpy", "package")
#: "unpinned": an application's requirements allow a range of versions (``tether check``).
LEVELS = ("major", "minor", "patch", "other", "missing", "unpinned", "added")

#: Lower sorts first: the differences most likely to break a model.
_SEVERITY = {"major": 0, "missing": 1, "unpinned": 2, "minor": 2, "other": 3, "patch": 4,
             "added": 5}
_KIND_ORDER = {kind: i for i, kind in enumerate(KINDS)}


@dataclass(frozen=True)
class Difference:
    kind: str
    name: str
    recorded: str | None
    current: str | None
    level: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        old, new = self.recorded or "(none)", self.current or "(none)"
        return f"{self.name} {old} -> {new} ({self.kind}, {self.level})"


def _release(version: str) -> tuple[int, ...] | None:
    try:
        from packaging.version import InvalidVersion, Version

        try:
            return tuple(Version(version).release)
        except InvalidVersion:
            return None
    except ImportError:  # pragma: no cover - packaging is nearly always present
        parts = []
        for piece in version.split("."):
            digits = "".join(c for c in piece if c.isdigit())
            if not digits:
                break
            parts.append(int(digits))
        return tuple(parts) or None


def version_level(recorded: str, current: str) -> str | None:
    """The first component that differs (major/minor/patch), 'other', or None if equal."""
    if recorded == current:
        return None
    a, b = _release(recorded), _release(current)
    if a is None or b is None:
        # Unreadable ("1.26.4-custom", UNREADABLE): as far apart as versions get. As
        # "other" a strict policy only warned, and numpy 1 loaded under numpy 2.
        return "major"
    a, b = a + (0,) * (3 - len(a)), b + (0,) * (3 - len(b))
    for level, x, y in zip(("major", "minor", "patch"), a, b, strict=False):
        if x != y:
            return level
    return "other"  # same release, different pre/post/local tag


def compare_environments(
    recorded: dict[str, Any], current: dict[str, Any], framework_packages: list[str]
) -> list[Difference]:
    """Every way ``current`` differs from ``recorded``, most severe first."""
    recorded = recorded or {}
    current = current or {}
    found: list[Difference] = []
    rp, cp = recorded.get("python"), current.get("python")
    if rp and cp:
        level = version_level(rp, cp)
        if level:
            found.append(Difference("python", "python", rp, cp, level))
    for key in ("platform", "machine"):
        a, b = recorded.get(key), current.get(key)
        if a and b and a != b:
            found.append(Difference(key, key, a, b, "other"))
    ra = {a.get("kind") for a in recorded.get("accelerators") or []}
    ca = {a.get("kind") for a in current.get("accelerators") or []}
    for kind in sorted(k for k in ra - ca if k):
        found.append(Difference("accelerator", kind, kind, None, "missing"))
    frameworks = {canonical_name(n) for n in framework_packages} - {"numpy"}
    rpk = {canonical_name(k): v for k, v in (recorded.get("packages") or {}).items()}
    cpk = {canonical_name(k): v for k, v in (current.get("packages") or {}).items()}
    if rpk and cpk:
        for name in sorted(set(rpk) | set(cpk)):
            kind = "numpy" if name == "numpy" else "framework" if name in frameworks else "package"
            a, b = rpk.get(name), cpk.get(name)
            if a is None:
                found.append(Difference(kind, name, None, b, "added"))
            elif b is None:
                found.append(Difference(kind, name, a, None, "missing"))
            else:
                level = version_level(a, b)
                if level:
                    found.append(Difference(kind, name, a, b, level))
    found.sort(
        key=lambda d: (
            d.kind == "package" or d.level == "added",
            _SEVERITY[d.level],
            _KIND_ORDER[d.kind],
            d.name,
        )
    )
    return found
