"""Input drift: live feature values against a version's reference statistics.

Per feature, over the last ``window`` records served by a version:

- PSI, population stability index, ``sum((live - ref) * ln(live / ref))``
  over the reference's decile bins (numeric) or its categories (categorical;
  values the reference never saw share one extra bin);
- KS, the two-sample Kolmogorov-Smirnov statistic (numeric only) against the
  reference sample kept at log time.

The usual reading of PSI: under 0.1 stable, 0.1 to 0.25 moderate, above 0.25
a significant shift (``status``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._registry.drift_baseline import OTHER

PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
#: Below this many live values a feature's figures are shown but not judged.
MIN_VALUES = 30
#: Fractions are floored at this before the logarithm, so an empty bin counts, finitely.
_EPSILON = 1e-4
_UNSEEN = "__unseen__"


def status(psi: float | None, n: int = MIN_VALUES) -> str:
    if psi is None:
        return "n/a"
    if n < MIN_VALUES:
        return "too few"
    if psi < PSI_MODERATE:
        return "stable"
    return "moderate" if psi < PSI_SIGNIFICANT else "drift"


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI between two distributions over the same bins (fractions summing to 1)."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, _EPSILON), max(a, _EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def psi_numeric(edges: Sequence[float], fractions: Sequence[float],
                values: Sequence[float]) -> float:
    live = np.asarray(values, dtype=float)
    live = live[np.isfinite(live)]
    if len(live) == 0:
        return 0.0
    counts = np.bincount(np.searchsorted(np.asarray(edges), live, side="right"),
                         minlength=len(edges) + 1)
    return psi(list(fractions), list(counts / len(live)))


def psi_categorical(frequencies: Mapping[str, float], values: Iterable[Any]) -> float:
    counts: dict[str, int] = {}
    total = 0
    for value in values:
        if value is None:
            continue
        key = str(value)
        if key not in frequencies:
            key = OTHER if OTHER in frequencies else _UNSEEN
        counts[key] = counts.get(key, 0) + 1
        total += 1
    if total == 0:
        return 0.0
    bins = [*frequencies, _UNSEEN]
    expected = [frequencies.get(b, 0.0) for b in bins]
    actual = [counts.get(b, 0) / total for b in bins]
    return psi(expected, actual)


def ks_statistic(reference: Sequence[float], values: Sequence[float]) -> float:
    """The largest gap between the two empirical CDFs (0: same, 1: disjoint)."""
    ref = np.sort(np.asarray(reference, dtype=float))
    live = np.asarray(values, dtype=float)
    live = np.sort(live[np.isfinite(live)])
    if len(ref) == 0 or len(live) == 0:
        return 0.0
    points = np.concatenate([ref, live])
    cdf_ref = np.searchsorted(ref, points, side="right") / len(ref)
    cdf_live = np.searchsorted(live, points, side="right") / len(live)
    return float(np.max(np.abs(cdf_ref - cdf_live)))


class DriftMonitor:
    """Recent inputs of one version, compared to its reference statistics on demand."""

    def __init__(self, reference: Mapping[str, Any] | None, *, window: int = 1000,
                 cache_seconds: float = 1.0) -> None:
        self.features: dict[str, Mapping[str, Any]] = dict((reference or {}).get("features", {}))
        self.window = window
        self._values: dict[str, deque[Any]] = {f: deque(maxlen=window) for f in self.features}
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._cache_seconds = cache_seconds

    @property
    def enabled(self) -> bool:
        return bool(self.features)

    def observe(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not self.features:
            return
        with self._lock:
            for name, values in self._values.items():
                values.extend(r.get(name) for r in records)

    def report(self) -> dict[str, dict[str, Any]]:
        """Per feature: kind, psi, ks (numeric), n (values in the window), status."""
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < self._cache_seconds:
            return self._cache[1]
        with self._lock:
            snapshot = {name: list(values) for name, values in self._values.items()}
        out: dict[str, dict[str, Any]] = {}
        for name, stats in self.features.items():
            values = snapshot.get(name, [])
            entry: dict[str, Any] = {"kind": stats.get("kind"), "n": len(values)}
            if not values:
                entry.update(psi=None, ks=None)
            elif stats.get("kind") == "numeric":
                numbers = [_float(v) for v in values]
                entry["psi"] = psi_numeric(stats["edges"], stats["fractions"], numbers)
                entry["ks"] = ks_statistic(stats.get("sample", []), numbers)
            else:
                entry["psi"] = psi_categorical(stats.get("frequencies", {}), values)
                entry["ks"] = None
            entry["status"] = status(entry["psi"], len(values))
            out[name] = entry
        self._cache = (now, out)
        return out


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
