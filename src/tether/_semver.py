"""Semantic versions: parsing, and the bump a change needs.

A new version is numbered from what changed against the newest one (see
DESIGN.md, "Semantic versions"): an incompatible signature or a change of
flavor is a major bump; a compatible change of weights, data, params, flavor
details or signature is minor; metadata only is patch. A caller may ask for a
larger bump, never a smaller one. Pure logic, no I/O.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from ._errors import IncompatibleBump, InvalidInput

_SEMVER = re.compile(r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_FIRST = (1, 0, 0)
#: How many changed params a reason spells out before it says "and N more".
_PARAMS_SHOWN = 5


class BumpLevel(enum.IntEnum):
    """How much of a version number a change moves. Ordered: PATCH < MINOR < MAJOR."""

    PATCH = 1
    MINOR = 2
    MAJOR = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> BumpLevel:
        key = text.strip().upper() if isinstance(text, str) else ""
        if key not in cls.__members__:
            raise InvalidInput(
                f"{text!r} is not a bump level",
                hint='use "major", "minor" or "patch", or an explicit version such as "2.0.0"',
            )
        return cls[key]


@dataclass(frozen=True, order=True)
class SemVer:
    """A MAJOR.MINOR.PATCH version; ordered by number, not by text."""

    major: int
    minor: int
    patch: int

    def __post_init__(self) -> None:
        for part in (self.major, self.minor, self.patch):
            if not isinstance(part, int) or isinstance(part, bool) or part < 0:
                raise InvalidInput(f"version parts must be whole numbers >= 0, not {part!r}")

    @classmethod
    def parse(cls, text: str) -> SemVer:
        """Parse ``"1.4.0"`` (a leading ``v`` is tolerated; no pre-release or build tags)."""
        match = _SEMVER.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise InvalidInput(
                f"{text!r} is not a semantic version",
                hint='write MAJOR.MINOR.PATCH, for example "1.4.0"',
            )
        major, minor, patch = (int(part) for part in match.groups())
        return cls(major, minor, patch)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def bump(self, level: BumpLevel) -> SemVer:
        if level is BumpLevel.MAJOR:
            return SemVer(self.major + 1, 0, 0)
        if level is BumpLevel.MINOR:
            return SemVer(self.major, self.minor + 1, 0)
        return SemVer(self.major, self.minor, self.patch + 1)

    def level_from(self, older: SemVer) -> BumpLevel:
        """The bump that leads from ``older`` to this (greater) version."""
        if self.major != older.major:
            return BumpLevel.MAJOR
        if self.minor != older.minor:
            return BumpLevel.MINOR
        return BumpLevel.PATCH


@dataclass(frozen=True)
class VersionFacts:
    """What of a version decides its bump; ``signature`` is in ``Signature.to_dict()`` form."""

    signature: dict[str, Any] | None
    files_digest: str
    params: dict[str, Any]
    data: dict[str, Any]
    flavor: dict[str, Any]
    metadata: dict[str, Any]


def required_bump(previous: VersionFacts | None, new: VersionFacts) -> tuple[BumpLevel, list[str]]:
    """The smallest bump from ``previous`` to ``new``, and why, in words."""
    if previous is None:
        return BumpLevel.MAJOR, ["first version"]
    major: list[str] = []
    minor: list[str] = []
    _signature_change(previous.signature, new.signature, major, minor)
    _flavor_change(previous.flavor, new.flavor, major, minor)
    if previous.files_digest != new.files_digest:
        minor.append("weights changed")
    if previous.params != new.params:
        minor.append("params changed: " + _params_change(previous.params, new.params))
    minor.extend(_data_change(previous.data, new.data))
    if major:
        return BumpLevel.MAJOR, major + minor
    if minor:
        return BumpLevel.MINOR, minor
    changed = sorted(
        key
        for key in set(previous.metadata) | set(new.metadata)
        if previous.metadata.get(key) != new.metadata.get(key)
    )
    if changed:
        return BumpLevel.PATCH, ["metadata only: " + "/".join(changed)]
    return BumpLevel.PATCH, ["nothing changed"]


def _signature_change(
    old: dict[str, Any] | None, new: dict[str, Any] | None, major: list[str], minor: list[str]
) -> None:
    if old == new:
        return
    if new is None:
        major.append("signature removed")
        return
    if old is None:
        minor.append("signature added")
        return
    # Imported here: the schema module brings numpy, which reading versions never needs.
    from ._schema import Signature, check_compatibility

    verdict = check_compatibility(Signature.from_dict(old), Signature.from_dict(new))
    reasons = list(verdict.reasons) or ["signature changed (field order)"]
    (minor if verdict.compatible else major).extend(reasons)


def _flavor_change(
    old: dict[str, Any], new: dict[str, Any], major: list[str], minor: list[str]
) -> None:
    if old == new:
        return
    if old.get("name") != new.get("name"):
        major.append(f"flavor changed: {old.get('name')} -> {new.get('name')}")
        return
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    details = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    minor.append(f"flavor details changed: {details}")


def _params_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        if key not in new:
            parts.append(f"{key} removed")
        elif key not in old:
            parts.append(f"{key} added ({new[key]!r})")
        elif old[key] != new[key]:
            parts.append(f"{key} {old[key]!r} -> {new[key]!r}")
    shown = ", ".join(parts[:_PARAMS_SHOWN])
    more = len(parts) - _PARAMS_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _data_change(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    reasons: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        if key not in new:
            reasons.append(f"data {key!r} removed")
        elif key not in old:
            reasons.append(f"data {key!r} added")
        elif old[key] != new[key]:
            reasons.append(f"data {key!r} changed")
    return reasons


def resolve_bump(
    highest: SemVer | None, level: BumpLevel, bump: str | None, reasons: list[str]
) -> SemVer:
    """The number of a new version.

    ``highest`` is the model's highest existing version (None for the first
    one), ``level`` and ``reasons`` come from `required_bump`, and ``bump`` is
    what the caller asked: None (the required level), ``"major"``, ``"minor"``,
    ``"patch"``, or an explicit version such as ``"2.0.0"``.
    """
    explicit = _explicit_version(bump)
    if highest is None:
        return explicit if explicit is not None else SemVer(*_FIRST)
    if explicit is None:
        asked = level if bump is None else BumpLevel.parse(bump)
        if asked < level:
            _refuse(f'bump="{asked}"', highest, level, reasons)
        return highest.bump(asked)
    if explicit <= highest:
        raise IncompatibleBump(
            f"version {explicit} is not greater than the highest existing version {highest}",
            hint=f'pass a version above {highest}, e.g. bump="{highest.bump(level)}", '
            f'or bump="{level}"',
        )
    implied = explicit.level_from(highest)
    if implied < level:
        _refuse(f'bump="{explicit}" (a {implied} bump)', highest, level, reasons)
    return explicit


def _explicit_version(bump: str | None) -> SemVer | None:
    if bump is None:
        return None
    if not isinstance(bump, str):
        raise InvalidInput(
            f"bump= must be a string, not {type(bump).__name__}",
            hint='use "major", "minor", "patch" or a version such as "2.0.0"',
        )
    if bump.strip().upper() in BumpLevel.__members__:
        return None
    if not any(ch.isdigit() for ch in bump):
        BumpLevel.parse(bump)  # raises with the list of levels
    return SemVer.parse(bump)


def _refuse(asked: str, highest: SemVer, level: BumpLevel, reasons: list[str]) -> None:
    why = "; ".join(reasons) or "the change"
    raise IncompatibleBump(
        f"{asked} is too small: this change needs a {level} bump from {highest} ({why})",
        hint=f'pass bump="{level}" (giving {highest.bump(level)}), or leave bump unset',
    )
