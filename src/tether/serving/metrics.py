"""Counters, gauges and histograms in the Prometheus text format (version 0.0.4).

Small on purpose: labelled families, thread-safe updates, one ``render()``.
Gauges can also be computed at scrape time (``Gauge.set_function``), which is
how drift and shadow-disagreement figures are exposed.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
#: Content type of ``/metrics``.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelValues = tuple[str, ...]
_F = TypeVar("_F", bound="Family")
Sample = tuple[str, dict[str, str], float]


class Family:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, values: Sequence[str]) -> LabelValues:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(values)}")
        return tuple(str(v) for v in values)

    def samples(self) -> Iterable[Sample]:
        raise NotImplementedError

    def export(self) -> Any:
        """This process's counts as JSON, summed by `render` in other workers (None: not
        summed; a gauge is the answering worker's own)."""
        return None

    def absorb(self, data: Any) -> Family:
        """A copy of this family with another worker's exported counts added."""
        return self

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        lines.extend(f"{name}{_labels(labels)} {_number(value)}"
                     for name, labels, value in self.samples())
        return "\n".join(lines)


class Counter(Family):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def export(self) -> Any:
        with self._lock:
            return [[list(k), v] for k, v in self._values.items()]

    def absorb(self, data: Any) -> Family:
        merged = Counter(self.name, self.help, self.labels)
        with self._lock:
            merged._values = dict(self._values)
        for key, value in data:
            k = tuple(key)
            merged._values[k] = merged._values.get(k, 0.0) + float(value)
        return merged

    def samples(self) -> Iterable[Sample]:
        with self._lock:
            items = list(self._values.items())
        for key, value in items:
            yield self.name, dict(zip(self.labels, key, strict=True)), value


class Gauge(Family):
    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {}
        self._function: Callable[[], Iterable[tuple[LabelValues, float]]] | None = None

    def set(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value

    def remove(self, *labels: str) -> None:
        with self._lock:
            self._values.pop(self._key(labels), None)

    def set_function(self, function: Callable[[], Iterable[tuple[LabelValues, float]]]) -> None:
        """Compute the samples at scrape time instead of storing them."""
        self._function = function

    def samples(self) -> Iterable[Sample]:
        with self._lock:
            items = list(self._values.items())
        if self._function is not None:
            items.extend(self._function())
        for key, value in items:
            yield self.name, dict(zip(self.labels, key, strict=True)), value


class Histogram(Family):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0] * (len(self.buckets) + 1)
                self._sums[key] = 0.0
            counts[index] += 1
            self._sums[key] += value

    def export(self) -> Any:
        with self._lock:
            return [[list(k), list(c), self._sums[k]] for k, c in self._counts.items()]

    def absorb(self, data: Any) -> Family:
        merged = Histogram(self.name, self.help, self.labels, self.buckets)
        with self._lock:
            merged._counts = {k: list(c) for k, c in self._counts.items()}
            merged._sums = dict(self._sums)
        for key, counts, total in data:
            k = tuple(key)
            if len(counts) != len(self.buckets) + 1:
                continue  # another version's buckets: not comparable
            mine = merged._counts.setdefault(k, [0] * (len(self.buckets) + 1))
            merged._counts[k] = [a + int(b) for a, b in zip(mine, counts, strict=True)]
            merged._sums[k] = merged._sums.get(k, 0.0) + float(total)
        return merged

    def samples(self) -> Iterable[Sample]:
        with self._lock:
            items = [(key, list(counts), self._sums[key]) for key, counts in self._counts.items()]
        for key, counts, total in items:
            labels = dict(zip(self.labels, key, strict=True))
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                yield f"{self.name}_bucket", {**labels, "le": _number(bound)}, running
            yield f"{self.name}_sum", labels, total
            yield f"{self.name}_count", labels, running


class MetricSet:
    """The families one server exposes, rendered in the order they were added."""

    def __init__(self) -> None:
        self._families: list[Family] = []

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels))

    def histogram(self, name: str, help: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, labels, buckets))

    def _add(self, family: _F) -> _F:
        self._families.append(family)
        return family

    def render(self, others: Sequence[dict[str, Any]] = ()) -> str:
        """The text format; ``others`` (other workers' `export`) are summed into counters
        and histograms."""
        families: list[Family] = []
        for family in self._families:
            for other in others:
                data = other.get(family.name)
                if data is not None:
                    family = family.absorb(data)
            families.append(family)
        return "\n".join(family.render() for family in families) + "\n"

    def export(self) -> dict[str, Any]:
        out = {}
        for family in self._families:
            data = family.export()
            if data is not None:
                out[family.name] = data
        return out


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape_value(value: str) -> str:
    # A lone surrogate (a model echoing "\ud800" from JSON) made every later /metrics
    # render fail with a 500 (a review): written as its escape instead.
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
