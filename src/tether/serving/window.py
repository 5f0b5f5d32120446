"""Sliding windows of request outcomes, latencies, ratios and feedback values.

A window is a ring of one-second slots; each slot counts requests and errors,
keeps a log-scale latency histogram (p50/p99 within about 4%), and sums of
named ratios (shadow disagreement) and values (feedback metrics). Recording is
O(1); a snapshot merges at most ``seconds`` slots.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Latency histogram: bucket i holds latencies below _LOW * _GROWTH ** i seconds.
_LOW = 1e-5
_GROWTH = 1.08
_BUCKETS = int(math.log(100 / _LOW, _GROWTH)) + 2
_LOG_GROWTH = math.log(_GROWTH)


@dataclass
class _Slot:
    second: int
    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * _BUCKETS)
    sums: dict[str, list[float]] = field(default_factory=dict)  # name -> [sum, count]


class Window:
    """Everything one route (one version) did over the last ``seconds``."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._slots: deque[_Slot] = deque()
        self._lock = threading.Lock()

    def _slot(self) -> _Slot:
        second = int(self._clock())
        slots = self._slots
        if not slots or slots[-1].second != second:
            slots.append(_Slot(second))
            self._prune(second)
        return slots[-1]

    def _prune(self, second: int) -> None:
        oldest = second - math.ceil(self.seconds) + 1
        while self._slots and self._slots[0].second < oldest:
            self._slots.popleft()

    def record_request(self, ok: bool, latency: float) -> None:
        index = 0 if latency <= _LOW else min(int(math.log(latency / _LOW) / _LOG_GROWTH) + 1,
                                                 _BUCKETS - 1)
        with self._lock:
            slot = self._slot()
            slot.requests += 1
            if not ok:
                slot.errors += 1
            slot.latency[index] += 1

    def record_value(self, name: str, value: float, count: int = 1) -> None:
        """Add ``value`` (a sum over ``count`` observations) to the named series."""
        with self._lock:
            pair = self._slot().sums.setdefault(name, [0.0, 0])
            pair[0] += value
            pair[1] += count

    def reset(self) -> None:
        with self._lock:
            self._slots.clear()

    def snapshot(self) -> dict[str, Any]:
        """requests, errors, error_rate, p50/p99_latency_ms, and per series mean and count."""
        with self._lock:
            self._prune(int(self._clock()))
            slots = list(self._slots)
            requests = sum(s.requests for s in slots)
            errors = sum(s.errors for s in slots)
            latency = [sum(column) for column in zip(*(s.latency for s in slots), strict=True)]
            series: dict[str, list[float]] = {}
            for slot in slots:
                for name, (total, count) in slot.sums.items():
                    pair = series.setdefault(name, [0.0, 0])
                    pair[0] += total
                    pair[1] += count
        return _summary(requests, errors, latency, series)

    def export(self) -> dict[str, Any]:
        """The window's counts as JSON (latency buckets sparse), for `merge` elsewhere."""
        with self._lock:
            self._prune(int(self._clock()))
            slots = list(self._slots)
            latency: dict[str, int] = {}
            series: dict[str, list[float]] = {}
            for slot in slots:
                for index, count in enumerate(slot.latency):
                    if count:
                        latency[str(index)] = latency.get(str(index), 0) + count
                for name, (total, n) in slot.sums.items():
                    pair = series.setdefault(name, [0.0, 0])
                    pair[0] += total
                    pair[1] += n
            # A total past the float range (feedback values near it, added) is left out:
            # the registry would not count this replica's window at all.
            series = {k: v for k, v in series.items() if math.isfinite(v[0])}
            return {"requests": sum(s.requests for s in slots),
                    "errors": sum(s.errors for s in slots), "latency": latency, "sums": series}


def merge(exports: list[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot (as `Window.snapshot`) over the exported windows of several replicas."""
    latency = [0] * _BUCKETS
    series: dict[str, list[float]] = {}
    requests = errors = 0
    for export in exports:
        requests += int(export.get("requests", 0))
        errors += int(export.get("errors", 0))
        for index, count in (export.get("latency") or {}).items():
            latency[min(int(index), _BUCKETS - 1)] += int(count)
        for name, (total, count) in (export.get("sums") or {}).items():
            pair = series.setdefault(name, [0.0, 0])
            pair[0] += float(total)
            pair[1] += int(count)
    return _summary(requests, errors, latency, series)


def _summary(requests: int, errors: int, latency: list[int],
             series: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        "p50_latency_ms": _quantile(latency, 0.50) * 1000,
        "p99_latency_ms": _quantile(latency, 0.99) * 1000,
    }
    for name, (total, count) in series.items():
        out[name] = total / count if count else 0.0
        out[f"{name}:count"] = int(count)
    return out


def _quantile(histogram: list[int], q: float) -> float:
    total = sum(histogram)
    if total == 0:
        return 0.0
    rank = q * total
    running = 0
    for index, count in enumerate(histogram):
        running += count
        if running >= rank:
            return _LOW * _GROWTH ** index  # the bucket's upper bound
    return _LOW * _GROWTH ** (len(histogram) - 1)
