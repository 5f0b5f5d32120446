"""Automatic rollback: when a rule holds over a route's window, and how it is recorded.

A route that follows an alias rolls back through the registry
(`Registry.rollback`, which moves the alias and appends ``alias.rollback``);
a pinned route switches back to the version it served before, or gives its
traffic to the other routes, and records ``deployment.rollback`` through
``RegistryAPI.record_route_rollback`` (so it works against a server too). Either way
the reason names the rule and the value that broke it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Rule

#: Window series names, shared by the recorder (endpoint) and the rules.
DISAGREEMENT = "shadow_disagreement"


@dataclass(frozen=True)
class Breach:
    rule: Rule
    value: float
    samples: int

    def reason(self, version: str) -> str:
        return (f"automatic rollback of {version}: {self.rule.metric} = {self.value:.4g} "
                f"over {self.samples} samples breaks rule '{self.rule.describe()}'")


def metric_value(metric: str, snapshot: Mapping[str, Any]) -> tuple[float | None, int]:
    """A rule metric's value in a window snapshot, and how many samples it rests on."""
    if metric in ("error_rate", "p50_latency_ms", "p99_latency_ms"):
        return float(snapshot[metric]), int(snapshot["requests"])
    count = int(snapshot.get(f"{metric}:count", 0))
    return (float(snapshot[metric]) if count else None), count


def first_breach(rules: Sequence[Rule], snapshot: Mapping[str, Any],
                 min_samples: int) -> Breach | None:
    for rule in rules:
        value, samples = metric_value(rule.metric, snapshot)
        if value is not None and samples >= min_samples and rule.holds(value):
            return Breach(rule, value, samples)
    return None
