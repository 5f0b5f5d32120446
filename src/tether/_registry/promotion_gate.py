"""The promotion gate: a model's policy judged inside the promote transaction,
so the facts it judges cannot move underneath it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._environment import EnvPolicy, compare_environments, evaluate
from .._errors import PolicyViolation
from .._metadata import repository as repo
from .._policy import Facts
from .._policy import evaluate as evaluate_policy
from .._records import ModelVersion
from .._schema import Signature, check_compatibility
from .policies import approvers, current_policy
from .roles import has_role, roles_of
from .trust import signature_status

if TYPE_CHECKING:
    from .registry import Registry


def promotion_gate(registry: Registry) -> Any:
    """A PromoteCheck enforcing the model's policy; raises PolicyViolation listing failures."""

    def check(
        conn: sa.Connection, version: ModelVersion, alias: str, current: ModelVersion | None
    ) -> None:
        mid = repo.model_id(conn, version.name)
        assert mid is not None
        policy = current_policy(conn, mid)
        valid, _problems = signature_status(conn, version)

        def schema_problem() -> str | None:
            if current is None or current.signature is None:
                return None
            if version.signature is None:
                return "the new version has no signature"
            verdict = check_compatibility(
                Signature.from_dict(current.signature), Signature.from_dict(version.signature)
            )
            return None if verdict.compatible else "; ".join(verdict.reasons)

        def environment_problem(policy_text: str) -> str | None:
            if current is None:
                return None
            frameworks = list(version.flavor.get("framework_packages", []))
            found = compare_environments(current.environment, version.environment, frameworks)
            refusals = evaluate(found, EnvPolicy.parse(policy_text)).refusals
            return "; ".join(str(d) for d in refusals) or None

        facts = Facts(
            model=version.name,
            semver=version.semver,
            metrics=version.metrics,
            current_semver=current.semver if current else None,
            current_metrics=current.metrics if current else None,
            actor_roles=roles_of(conn, registry.actor, version.name),
            # Only approvers who still hold the role: approvals outlived a revoked role
            # and still counted (a review).
            approvers=tuple(a for a in approvers(conn, version.id, alias)
                            if a != version.author and has_role(conn, a, "approver",
                                                                 version.name)),
            signers=tuple(valid),
            schema_problem=schema_problem,
            environment_problem=environment_problem,
        )
        failures = evaluate_policy(policy, alias, facts)
        if failures:
            raise PolicyViolation(
                f"cannot point {version.name}@{alias} at {version.semver}: "
                + f"{len(failures)} policy rule(s) failed:\n  - "
                + "\n  - ".join(failures),
                hint=f"see `tether policy show {version.name}`",
            )

    return check
