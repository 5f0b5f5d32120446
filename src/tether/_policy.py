"""Model policies: who may move which alias, what a version must pass first.

A policy is a small YAML (or JSON) document kept in the registry and versioned
there. Pure logic: parsing refuses anything it does not know (a typo in a rule
must not silently disable it), and evaluation takes plain facts and returns the
rules that failed, each with what to change.

    aliases:
      production:
        roles: [approver]            # who may move it (admin always may)
        approvals: 2                 # distinct `tether approve` before promote
        checks:
          - metric: roc_auc          # absolute threshold
            min: 0.90
          - metric: latency_ms
            max: 40
          - metric: roc_auc          # relative to what the alias points at now
            not_worse_than_current: 0.01
          - schema_compatible: true  # signature compatible with the current target
          - environment: strict      # env policy against the current target's env
          - signed_by: [release-key] # names of trusted keys
    retention:
      keep_last: 10
    deprecated: ["1.0.0", "~0"]      # versions that warn on load, never promoted
    require_signed_by: [release-key] # load, check and serve refuse unsigned versions
    trusted_for_loading: [release-key]  # its signature lets pickle/cloudpickle load untrusted
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._environment.record import UNREADABLE
from ._errors import InvalidInput
from ._humanize import short_repr
from ._plain_yaml import plain_yaml

ROLES = ("reader", "contributor", "approver", "admin")

_CHECK_KEYS = {
    "metric": "a metric threshold: metric + min / max / not_worse_than_current",
    "schema_compatible": "true: the signature must be compatible with the current target's",
    "environment": "an env policy (strict, warn, off, overrides) against the current target",
    "signed_by": "a list of trusted key names; one valid signature from any of them",
}
_METRIC_OPTIONS = {"min", "max", "not_worse_than_current", "higher_is_better"}
_ALIAS_KEYS = {"roles", "approvals", "checks"}
_TOP_KEYS = {"aliases", "retention", "deprecated", "require_signed_by", "trusted_for_loading"}


#: Aliases that only approvers may move unless the ``protected_aliases`` setting says otherwise.
DEFAULT_PROTECTED_ALIASES = ("production",)


def protected_alias_patterns(setting: str | None) -> tuple[str, ...]:
    """The ``protected_aliases`` setting (comma-separated globs) as patterns."""
    if setting is None:
        return DEFAULT_PROTECTED_ALIASES
    return tuple(a.strip() for a in setting.split(",") if a.strip())


def role_to_move(alias: str, protected_setting: str | None) -> str:
    """approver for a protected alias, else contributor (a policy may ask for more).

    The one rule every shell follows: the use cases enforce it, the UI and
    serving only use it to decide what to show or ask for.
    """
    import fnmatch

    protected = protected_alias_patterns(protected_setting)
    return "approver" if any(fnmatch.fnmatchcase(alias, p) for p in protected) else "contributor"


def role_rank(role: str) -> int:
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role[:80]!r}", hint=f"roles: {', '.join(ROLES)}")
    return ROLES.index(role)


def covers(held: Iterable[str], role: str) -> bool:
    """Whether one of the ``held`` roles is ``role`` or above it (reader < contributor <
    approver < admin)."""
    needed = role_rank(role)
    return any(role_rank(r) >= needed for r in held)


@dataclass(frozen=True)
class Check:
    kind: str  # metric | schema_compatible | environment | signed_by
    options: dict[str, Any]

    def describe(self) -> str:
        o = self.options
        if self.kind == "metric":
            parts = [f"{k}={o[k]}" for k in ("min", "max", "not_worse_than_current") if k in o]
            return f"metric {o['metric']} " + ", ".join(parts)
        if self.kind == "signed_by":
            return "signed by " + " or ".join(o["keys"])
        if self.kind == "environment":
            return f"environment {o['policy']} against the current target"
        return "schema compatible with the current target"


@dataclass(frozen=True)
class AliasRule:
    roles: tuple[str, ...] = ()
    approvals: int = 0
    checks: tuple[Check, ...] = ()

    def lets_move(self, held: Iterable[str]) -> bool:
        """Whether roles ``held`` may move the alias: an admin always, else one of its
        ``roles`` or above (any role, when it names none)."""
        held = tuple(held)
        if not self.roles or "admin" in held:
            return True
        needed = min(role_rank(r) for r in self.roles)
        return any(role_rank(r) >= needed for r in held)


@dataclass(frozen=True)
class Policy:
    aliases: dict[str, AliasRule] = field(default_factory=dict)
    keep_last: int | None = None
    deprecated: tuple[str, ...] = ()
    require_signed_by: tuple[str, ...] = ()
    trusted_for_loading: tuple[str, ...] = ()

    def rule_for(self, alias: str) -> AliasRule | None:
        """The rule for ``alias``: its exact name first, then glob patterns such as
        ``prod-*`` (the first one written that matches), then ``"*"``."""
        if alias in self.aliases:
            return self.aliases[alias]
        from fnmatch import fnmatchcase

        for pattern, rule in self.aliases.items():
            if pattern != "*" and any(c in pattern for c in "*?[") and fnmatchcase(alias, pattern):
                return rule
        return self.aliases.get("*")

    def is_deprecated(self, semver: str) -> bool:
        return any(_matches(semver, pattern) for pattern in self.deprecated)


#: What ``deprecated`` lists: a whole version (``1.0.0``, ``v1.0.0``, a pre-release) or a
#: prefix of one (``~1``, ``~1.2``).
_DEPRECATED = re.compile(r"v?\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
                         r"|~\d+(?:\.\d+){0,2}")


def _matches(semver: str, pattern: str) -> bool:
    if pattern.startswith("~"):
        wanted = pattern[1:].split(".")
        return semver.split(".")[: len(wanted)] == wanted
    return semver == pattern.removeprefix("v")


def _fail(where: str, problem: str, hint: str | None = None) -> InvalidInput:
    return InvalidInput(f"policy {where}: {problem}", hint=hint)


#: A policy is a few lines: past these it is refused before it is read.
MAX_POLICY_BYTES = 64 * 1024
MAX_POLICY_DEPTH = 16


def _plain_yaml(text: str) -> Any:
    """``text`` as YAML without anchors or aliases, nested at most MAX_POLICY_DEPTH deep
    (see ``_plain_yaml``: a policy never needs them)."""
    return plain_yaml(text, "policy", max_bytes=MAX_POLICY_BYTES, max_depth=MAX_POLICY_DEPTH,
                      size_hint="a policy is a few lines of YAML")


def parse_policy(text: str) -> Policy:
    """Parse a policy document; raise InvalidInput naming the offending key."""
    data = _plain_yaml(text) if text.strip() else {}
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise _fail("document", "must be a mapping with aliases / retention / deprecated")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _fail(
            "document",
            f"unknown key(s) {sorted(unknown)}",
            hint=f"known keys: {', '.join(sorted(_TOP_KEYS))}",
        )
    listed = data.get("aliases") or {}
    if not isinstance(listed, Mapping):
        raise _fail("aliases", "must be a mapping of alias names to rules",
                    hint="aliases: {production: {roles: [approver]}}")
    aliases = {str(name): _parse_alias(str(name), rule) for name, rule in listed.items()}
    keep_last = None
    retention = data.get("retention") or {}
    if not isinstance(retention, Mapping) or set(retention) - {"keep_last"}:
        raise _fail("retention", "only keep_last is known", hint="retention: {keep_last: 10}")
    if "keep_last" in retention:
        keep_last = retention["keep_last"]
        if not isinstance(keep_last, int) or not 1 <= keep_last <= 1_000_000:
            raise _fail("retention.keep_last", "must be a positive integer (at most 1000000), "
                        f"not {short_repr(keep_last)}")
    deprecated = data.get("deprecated") or []
    if not isinstance(deprecated, list) or not all(isinstance(d, str) for d in deprecated):
        raise _fail("deprecated", "must be a list of versions like '1.0.0' or '~0'")
    for entry in deprecated:  # '~v1' or '1.0' matched nothing, deprecating nothing (a review)
        if not _DEPRECATED.fullmatch(entry):
            raise _fail("deprecated", f"{short_repr(entry)} is neither a version like '1.0.0' "
                        "nor a prefix like '~1' or '~1.2'")
    required = data.get("require_signed_by") or []
    if isinstance(required, str):
        required = [required]
    if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
        raise _fail("require_signed_by", "must be a key name or a list of key names")
    loading = data.get("trusted_for_loading") or []
    if isinstance(loading, str):
        loading = [loading]
    if not isinstance(loading, list) or not all(isinstance(k, str) for k in loading):
        raise _fail("trusted_for_loading", "must be a key name or a list of key names")
    return Policy(
        aliases=aliases,
        keep_last=keep_last,
        deprecated=tuple(deprecated),
        require_signed_by=tuple(required),
        trusted_for_loading=tuple(loading),
    )


def _parse_alias(alias: str, rule: Any) -> AliasRule:
    where = f"aliases.{alias}"
    if not isinstance(rule, Mapping):
        raise _fail(where, "must be a mapping with roles / approvals / checks")
    unknown = set(rule) - _ALIAS_KEYS
    if unknown:
        raise _fail(
            where,
            f"unknown key(s) {sorted(unknown)}",
            hint=f"known keys: {', '.join(sorted(_ALIAS_KEYS))}",
        )
    roles = rule.get("roles") or []
    if not isinstance(roles, list):
        raise _fail(f"{where}.roles", "must be a list of roles")
    for role in roles:
        role_rank(str(role))
    approvals = rule.get("approvals", 0)
    if not isinstance(approvals, int) or isinstance(approvals, bool) or not 0 <= approvals <= 100:
        raise _fail(f"{where}.approvals",
                    f"must be a whole number from 0 to 100, not {short_repr(approvals)}")
    checks = rule.get("checks") or []
    if not isinstance(checks, list):
        raise _fail(f"{where}.checks", "must be a list of rules")
    return AliasRule(
        roles=tuple(str(r) for r in roles),
        approvals=approvals,
        checks=tuple(_parse_check(f"{where}.checks[{i}]", c) for i, c in enumerate(checks)),
    )


def _parse_check(where: str, raw: Any) -> Check:
    if not isinstance(raw, Mapping):
        raise _fail(where, "must be a mapping such as {metric: auc, min: 0.9}")
    kinds = [k for k in raw if k in _CHECK_KEYS]
    if len(kinds) != 1:
        known = "; ".join(f"{k}: {v}" for k, v in _CHECK_KEYS.items())
        raise _fail(where, f"unknown rule {short_repr(dict(raw))}", hint=f"rules: {known}")
    kind = kinds[0]
    if kind == "metric":
        extra = set(raw) - {"metric"} - _METRIC_OPTIONS
        if extra:
            raise _fail(
                where,
                f"unknown option(s) {sorted(extra)} for a metric rule",
                hint=f"options: {', '.join(sorted(_METRIC_OPTIONS))}",
            )
        if not set(raw) & {"min", "max", "not_worse_than_current"}:
            raise _fail(where, "a metric rule needs min, max or not_worse_than_current")
        if not isinstance(raw["metric"], str) or not raw["metric"]:
            raise _fail(where, f"metric must be a metric's name, not {short_repr(raw['metric'])}")
        for key in ("min", "max", "not_worse_than_current"):
            value = raw.get(key)
            if key in raw and (not isinstance(value, int | float) or isinstance(value, bool)
                               or not math.isfinite(value)):
                raise _fail(where, f"{key} must be a finite number, not {short_repr(value)}")
        if "higher_is_better" in raw and not isinstance(raw["higher_is_better"], bool):
            # "false" in quotes was text, and text is true: a latency that rose from 10 to
            # 500 ms passed not_worse_than_current (a review).
            raise _fail(where, "higher_is_better must be true or false (unquoted), not "
                        f"{short_repr(raw['higher_is_better'])}")
        return Check("metric", dict(raw))
    if len(raw) != 1:
        raise _fail(where, f"unknown option(s) {sorted(set(raw) - {kind})} for {kind}")
    value = raw[kind]
    if kind == "schema_compatible":
        if value is not True:
            raise _fail(where, "schema_compatible takes only `true`")
        return Check(kind, {})
    if kind == "environment":
        from ._environment import EnvPolicy

        EnvPolicy.parse(str(value))
        return Check(kind, {"policy": str(value)})
    keys = value if isinstance(value, list) else [value]
    if not keys or not all(isinstance(k, str) for k in keys):
        raise _fail(where, "signed_by takes a key name or a list of key names")
    return Check(kind, {"keys": list(keys)})


@dataclass(frozen=True)
class Facts:
    """What a promotion is judged on; the registry gathers these."""

    semver: str
    metrics: dict[str, float]
    current_semver: str | None
    current_metrics: dict[str, float] | None
    actor_roles: tuple[str, ...]
    approvers: tuple[str, ...]
    signers: tuple[str, ...]  # names of trusted keys with a valid signature
    schema_problem: Callable[[], str | None]  # None when compatible with current
    environment_problem: Callable[[str], str | None]  # given a policy text
    model: str  # named in the commands the failures suggest


def evaluate(policy: Policy, alias: str, facts: Facts) -> list[str]:
    """Every failed rule, as a sentence saying what to change. Empty: allowed."""
    failures: list[str] = []
    if policy.is_deprecated(facts.semver):
        failures.append(f"{facts.semver} is deprecated by the policy; promote a newer version")
    rule = policy.rule_for(alias)
    if rule is None:
        return failures
    if not rule.lets_move(facts.actor_roles):
        failures.append(
            f"moving {alias} needs role {' or '.join(rule.roles)}; you have "
            f"{', '.join(facts.actor_roles) or 'no role'} (ask an admin: tether role grant)"
        )
    if len(facts.approvers) < rule.approvals:
        failures.append(
            f"{alias} needs {rule.approvals} approval(s), {facts.semver} has "
            f"{len(facts.approvers)}{_listed(facts.approvers)}"
            f": run `tether approve {facts.model}@{facts.semver} {alias}` as another approver"
        )
    for check in rule.checks:
        problem = _run_check(check, facts)
        if problem:
            failures.append(problem)
    return failures


def _run_check(check: Check, facts: Facts) -> str | None:
    o = check.options
    if check.kind == "metric":
        return _metric_problem(o, facts)
    if check.kind == "schema_compatible":
        problem = facts.schema_problem()
        return f"schema not compatible with {facts.current_semver}: {problem}" if problem else None
    if check.kind == "environment":
        problem = facts.environment_problem(o["policy"])
        return f"environment check ({o['policy']}) failed: {problem}" if problem else None
    if not set(o["keys"]) & set(facts.signers):
        have = ", ".join(facts.signers) or "no valid signature"
        return (
            f"{facts.semver} must be signed by {' or '.join(o['keys'])} (has {have}): "
            f"run `tether sign {facts.model}@{facts.semver} --key KEYFILE`"
        )
    return None


def _metric_problem(o: dict[str, Any], facts: Facts) -> str | None:
    name = o["metric"]
    higher = bool(o.get("higher_is_better", True))
    for whose, metrics in ((facts.semver, facts.metrics),
                           (facts.current_semver, facts.current_metrics or {})):
        if UNREADABLE in metrics:  # a row changed outside Tether: refuse, never skip
            return (f"the metrics recorded on {whose} are unreadable "
                    f"({metrics[UNREADABLE]}); `tether audit verify` shows what changed")
    value = facts.metrics.get(name)
    if value is None:
        return f"metric {name!r} is not recorded on {facts.semver}; log it with metrics="
    recorded = facts.current_metrics or {}
    for whose, number, present in ((facts.semver, value, True),
                                   (facts.current_semver, recorded.get(name), name in recorded)):
        if present and not (isinstance(number, int | float)
                                       and not isinstance(number, bool)
                                       and math.isfinite(number)):
            # NaN passed every comparison, a string raised (a review): refused instead.
            return (f"metric {name} on {whose} is {number!r}, not a finite number; "
                    "`tether audit verify` shows what changed")
    if "min" in o and value < o["min"]:
        return f"metric {name} = {value:.4g} is below the minimum {o['min']}"
    if "max" in o and value > o["max"]:
        return f"metric {name} = {value:.4g} is above the maximum {o['max']}"
    if "not_worse_than_current" in o and facts.current_metrics is not None:
        current = facts.current_metrics.get(name)
        margin = float(o["not_worse_than_current"])
        if current is not None:
            worse = current - value if higher else value - current
            if worse > margin:
                return (
                    f"metric {name} = {value:.4g} is worse than {facts.current_semver}'s "
                    f"{current:.4g} by {worse:.4g}, more than the allowed {margin}"
                )
    return None


def policy_to_json(policy: Policy) -> str:
    """A canonical JSON view, for `--json` output."""
    return json.dumps(
        {
            "aliases": {
                a: {
                    "roles": list(r.roles),
                    "approvals": r.approvals,
                    "checks": [c.describe() for c in r.checks],
                }
                for a, r in policy.aliases.items()
            },
            "retention": {"keep_last": policy.keep_last},
            "deprecated": list(policy.deprecated),
            "require_signed_by": list(policy.require_signed_by),
        }
    )


def _listed(names: tuple[str, ...]) -> str:
    return f" ({', '.join(names)})" if names else ""
