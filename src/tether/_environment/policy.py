"""Environment policies: which differences refuse a load, which warn.

A policy is a base, optionally followed by overrides, e.g.
``strict``, ``warn``, ``off``, ``warn,framework-minor=strict,python=strict``
or ``strict,package=off``. An override names a kind (python, platform,
machine, accelerator, framework, numpy, package) and optionally a level
(major, minor, patch, other, missing, added).

What the bases do:

==========================  ========  ======  =====
difference                  strict    warn    off
==========================  ========  ======  =====
python major/minor          refuse    warn    -
python patch                warn      warn    -
platform, machine           refuse    warn    -
accelerator missing         refuse    warn    -
framework major/minor/miss  refuse    warn    -
framework patch/other       warn      warn    -
numpy major/minor/missing   refuse    warn    -
numpy patch/other           warn      warn    -
package major/minor/miss    warn      warn    -
package patch/other, added  -         -       -
==========================  ========  ======  =====
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._errors import EnvironmentMismatch, InvalidInput
from .._warnings import warn_caller
from .compare import KINDS, LEVELS, Difference
from .record import PACKAGE_NAME, PACKAGE_VERSION

ACTIONS = ("strict", "warn", "off")


class EnvironmentWarning(UserWarning):
    """A loaded model was logged in a (slightly) different environment."""


def _strict_default(d: Difference) -> str:
    if d.level == "added":
        return "off"
    if d.kind == "python":
        return "strict" if d.level in ("major", "minor") else "warn"
    if d.kind in ("platform", "machine", "accelerator"):
        return "strict"
    if d.kind in ("framework", "numpy"):
        return "strict" if d.level in ("major", "minor", "missing", "unpinned") else "warn"
    return "warn" if d.level in ("major", "minor", "missing") else "off"


@dataclass(frozen=True)
class EnvPolicy:
    base: str = "strict"
    overrides: tuple[tuple[str, str | None, str], ...] = field(default=())

    @classmethod
    def parse(cls, text: str) -> EnvPolicy:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts or parts[0] not in ACTIONS:
            raise InvalidInput(
                f"environment policy {text!r} must start with strict, warn or off",
                hint="e.g. strict, warn, off, or warn,framework-minor=strict",
            )
        overrides = []
        for part in parts[1:]:
            target, sep, action = part.partition("=")
            kind, _, level = target.partition("-")
            if (
                not sep
                or action not in ACTIONS
                or kind not in KINDS
                or (level and level not in LEVELS)
            ):
                raise InvalidInput(
                    f"cannot read {part!r} in environment policy {text!r}",
                    hint=f"write KIND[-LEVEL]=ACTION; kinds: {', '.join(KINDS)}; "
                    f"levels: {', '.join(LEVELS)}; actions: {', '.join(ACTIONS)}",
                )
            overrides.append((kind, level or None, action))
        return cls(parts[0], tuple(overrides))

    def __str__(self) -> str:
        tail = [f"{k}{'-' + lv if lv else ''}={a}" for k, lv, a in self.overrides]
        return ",".join([self.base, *tail])

    def action(self, d: Difference) -> str:
        chosen = None
        for kind, level, action in self.overrides:  # later overrides win
            if kind == d.kind and (level is None or level == d.level):
                chosen = action
        if chosen is not None:
            return chosen
        default = _strict_default(d)
        if self.base == "off":
            return "off"
        if self.base == "warn":
            return "warn" if default != "off" else "off"
        return default


def recorded_pins(differences: list[Difference]) -> list[str]:
    """``name==version`` of each package difference whose recorded name and version are
    of their kind (a record's word: one with a quote became a shell command in the hint
    a refused load printed, a review)."""
    return [f"{d.name}=={d.recorded}" for d in differences
            if d.kind in ("framework", "numpy", "package") and d.recorded
            and PACKAGE_NAME.match(d.name) and PACKAGE_VERSION.match(d.recorded)]


def fix_command(differences: list[Difference]) -> str | None:
    """The pip command that installs the recorded versions of these packages."""
    pins = recorded_pins(differences)  # no quote can be in one: safe inside '...'
    return "pip install " + " ".join(f"'{pin}'" for pin in pins) if pins else None


@dataclass
class Verdict:
    refusals: list[Difference]
    warnings: list[Difference]

    @property
    def ok(self) -> bool:
        return not self.refusals

    def enforce(self, *, subject: str) -> None:
        if self.refusals:
            lines = [f"  - {d}" for d in self.refusals]
            hints = []
            command = fix_command(self.refusals)
            if command:
                hints.append(f"run: {command}")
            for d in self.refusals:
                if d.kind == "python":
                    hints.append(f"use Python {d.recorded} (this is {d.current})")
                elif d.kind in ("platform", "machine"):
                    hints.append(f"run on {d.recorded} (this is {d.current})")
                elif d.kind == "accelerator":
                    hints.append(f"run where a {d.recorded} accelerator is present")
            hints.append('or accept the risk: env_policy="warn" / TETHER_ENV_POLICY=warn')
            raise EnvironmentMismatch(
                f"refusing to load {subject}: this environment differs from the one it was "
                f"logged in:\n" + "\n".join(lines),
                hint="; ".join(hints),
            )
        if self.warnings:
            listed = "; ".join(str(d) for d in self.warnings[:10])
            more = f" (+{len(self.warnings) - 10} more)" if len(self.warnings) > 10 else ""
            warn_caller(
                f"{subject} was logged in a different environment: {listed}{more}",
                EnvironmentWarning,
            )


def evaluate(differences: list[Difference], policy: EnvPolicy) -> Verdict:
    refusals, warns = [], []
    for d in differences:
        action = policy.action(d)
        if action == "strict":
            refusals.append(d)
        elif action == "warn":
            warns.append(d)
    return Verdict(refusals, warns)
