"""Checking a version's recorded environment against this process.

Which policy applies, most specific first: the ``env_policy=`` argument of the
call, then ``TETHER_ENV_POLICY``, then the registry's ``env_policy`` setting,
then ``strict``.
"""

from __future__ import annotations

import os
from typing import Any

from .._environment import (
    Difference,
    EnvPolicy,
    capture_environment,
    compare_environments,
    evaluate,
)
from .._records import ModelVersion

DEFAULT_POLICY = "strict"


def choose_policy(call: str | None, registry_setting: str | None) -> EnvPolicy:
    text = call or os.environ.get("TETHER_ENV_POLICY") or registry_setting or DEFAULT_POLICY
    return EnvPolicy.parse(text)


def differences(version: ModelVersion, current: dict[str, Any] | None = None) -> list[Difference]:
    frameworks = list(version.flavor.get("framework_packages", []))
    return compare_environments(version.environment, current or capture_environment(), frameworks)


def enforce(
    version: ModelVersion, policy: EnvPolicy, current: dict[str, Any] | None = None
) -> list[Difference]:
    """Refuse (EnvironmentMismatch) or warn per the policy; returns the differences.

    ``current`` is the environment to judge (default: this process), so a CI
    job can check the environment an application will run in.
    """
    found = differences(version, current)
    verdict = evaluate(found, policy)
    verdict.enforce(subject=version.ref)
    return found
