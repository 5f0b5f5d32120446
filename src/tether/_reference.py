"""The one parser for model references, used by every layer.

NAME              the newest version (same as NAME@latest)
NAME@latest       the newest version
NAME@7            sequence number 7
NAME@1.4.0        semantic version 1.4.0 (a leading ``v`` is allowed)
NAME@~1.4         the newest 1.4.x
NAME@~1           the newest 1.x.y
NAME@sha:ab12     the version whose content digest starts with ab12
NAME@production   whatever the alias ``production`` points at
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from ._errors import InvalidReference

#: Model names: what is safe in a URL path, a file name and a shell word.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
#: Alias names: like model names, but they may not look like a version.
ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}\Z")
_SEMVER = re.compile(r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)\Z")
_TILDE = re.compile(r"^~v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?\Z")
_SEQUENCE = re.compile(r"^[1-9]\d*\Z")
_DIGEST = re.compile(r"^sha:([0-9a-f]{4,64})\Z")
#: Aliases that cannot be set because they mean something already.
RESERVED_ALIASES = frozenset({"latest"})


class SelectorKind(StrEnum):
    LATEST = "latest"
    SEQUENCE = "sequence"
    SEMVER = "semver"
    SEMVER_RANGE = "semver_range"
    DIGEST = "digest"
    ALIAS = "alias"


@dataclass(frozen=True)
class Reference:
    """A parsed reference. ``value`` depends on ``kind``:

    - SEQUENCE: the number as text; SEMVER: ``"1.4.0"``; SEMVER_RANGE: ``"1.4"``
      or ``"1"``; DIGEST: the hex prefix; ALIAS: the alias name; LATEST: ``""``.
    """

    name: str
    kind: SelectorKind
    value: str = ""

    @property
    def selector(self) -> str:
        return {
            SelectorKind.LATEST: "latest",
            SelectorKind.SEQUENCE: self.value,
            SelectorKind.SEMVER: self.value,
            SelectorKind.SEMVER_RANGE: f"~{self.value}",
            SelectorKind.DIGEST: f"sha:{self.value}",
            SelectorKind.ALIAS: self.value,
        }[self.kind]

    def __str__(self) -> str:
        return f"{self.name}@{self.selector}"

    @property
    def whole_digest(self) -> bool:
        """Whether it names one version's bytes by themselves (a whole content digest):
        any other selector is what a registry's answer makes it."""
        return self.kind is SelectorKind.DIGEST and len(self.value) == 64


def validate_model_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidReference(
            f"invalid model name {name!r}",
            hint="use letters, digits, '.', '_' and '-' (up to 128), "
            "starting with a letter or digit",
        )
    return name


def validate_alias_name(alias: str) -> str:
    if not ALIAS_PATTERN.match(alias) or alias in RESERVED_ALIASES:
        raise InvalidReference(
            f"invalid alias name {alias!r}",
            hint="an alias starts with a letter, uses letters, digits, '.', '_' and '-', "
            "and may not be 'latest'",
        )
    return alias


def refuse_a_version_name(alias: str) -> None:
    """Refuse a new alias that reads as a version: NAME@v2.0.0 selects semantic version
    2.0.0, so such an alias could be set but never read, and its reference would load
    another version than the alias names. (Checked when an alias is made: one made
    before this check can still be moved, rolled back and deleted.)"""
    if _SEMVER.match(alias):
        raise InvalidReference(
            f"alias {alias!r} reads as a version: NAME@{alias} selects semantic version "
            f"{alias.removeprefix('v')}, never an alias",
            hint=f"name it as a word, such as release-{alias.removeprefix('v')}",
        )


def parse_reference(text: str) -> Reference:
    """Parse ``text`` or raise ``InvalidReference`` saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReference(
            "empty model reference",
            hint="write NAME, NAME@ALIAS, NAME@1.2.0, NAME@~1.2, NAME@7 or NAME@sha:ab12",
        )
    text = text.strip()
    name, sep, selector = text.partition("@")
    validate_model_name(name)
    if not sep or selector == "latest":
        return Reference(name, SelectorKind.LATEST)
    if not selector:
        raise InvalidReference(
            f"reference {text!r} has nothing after '@'",
            hint=f"write {name}@latest, {name}@1.0.0, {name}@production ...",
        )
    if match := _SEMVER.match(selector):
        return Reference(name, SelectorKind.SEMVER, ".".join(match.groups()))
    if match := _TILDE.match(selector):
        major, minor = match.groups()
        return Reference(
            name, SelectorKind.SEMVER_RANGE, major if minor is None else f"{major}.{minor}"
        )
    if _SEQUENCE.match(selector):
        return Reference(name, SelectorKind.SEQUENCE, selector)
    if selector.startswith("sha:"):
        if match := _DIGEST.match(selector.lower()):
            return Reference(name, SelectorKind.DIGEST, match.group(1))
        raise InvalidReference(
            f"bad digest in {text!r}",
            hint="a digest is 'sha:' followed by 4 to 64 hex digits",
        )
    if ALIAS_PATTERN.match(selector):
        return Reference(name, SelectorKind.ALIAS, selector)
    raise InvalidReference(
        f"cannot read {selector!r} in {text!r} as a version, a range, a digest or an alias",
        hint="write NAME@ALIAS, NAME@1.2.0, NAME@~1.2, NAME@7 or NAME@sha:ab12",
    )
