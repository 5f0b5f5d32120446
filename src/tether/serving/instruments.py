"""The metric families a serving process exposes on ``/metrics``.

Per-version families carry ``endpoint, model, version, digest`` labels (the
``VERSION`` tuple), so a dashboard splits every figure by what served it.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import MetricSet

VERSION = ("endpoint", "model", "version", "digest")
PREDICTION_BUCKETS = (-100.0, -10.0, -1.0, 0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 10.0, 100.0)
#: Distinct predicted classes counted per version before the rest become "other".
MAX_CLASSES = 50


class Instruments:
    def __init__(self) -> None:
        m = self.set = MetricSet()
        self.requests = m.counter("tether_requests_total", "Prediction requests served.",
                                  (*VERSION, "route"))
        self.errors = m.counter("tether_request_errors_total",
                                "Prediction requests that failed, by kind.",
                                (*VERSION, "route", "kind"))
        self.latency = m.histogram("tether_request_latency_seconds",
                                   "Time to validate and predict, per version.", VERSION)
        self.records = m.counter("tether_records_total", "Records predicted.", VERSION)
        self.classes = m.counter("tether_predictions_total",
                                 "Predictions by predicted class.", (*VERSION, "class"))
        self.values = m.histogram("tether_prediction_value", "Numeric predictions.", VERSION,
                                  PREDICTION_BUCKETS)
        self.invalid = m.counter("tether_invalid_requests_total",
                                 "Requests refused before prediction (bad JSON or schema).",
                                 ("endpoint", "field"))
        self.weights = m.gauge("tether_route_weight", "Current weight of each route.",
                               ("endpoint", "route"))
        self.route_version = m.gauge("tether_route_info",
                                     "1 for the version each route serves.",
                                     ("endpoint", "route", "model", "version", "digest"))
        self.shadow_compared = m.counter("tether_shadow_comparisons_total",
                                         "Records compared between a version and its shadow.",
                                         ("endpoint", "primary", "shadow"))
        self.shadow_disagreed = m.counter("tether_shadow_disagreements_total",
                                          "Records on which the shadow disagreed.",
                                          ("endpoint", "primary", "shadow"))
        self.shadow_disagreement = m.gauge("tether_shadow_disagreement_ratio",
                                           "Share of compared records that disagreed.",
                                           ("endpoint", "primary", "shadow"))
        self.shadow_errors = m.counter("tether_shadow_errors_total", "Shadow predictions that "
                                       "failed.", ("endpoint", "shadow"))
        self.shadow_dropped = m.counter("tether_shadow_dropped_total",
                                        "Requests not mirrored because the queue was full.",
                                        ("endpoint",))
        self.shadow_latency = m.histogram("tether_shadow_latency_seconds",
                                          "Shadow prediction time per batch.",
                                          ("endpoint", "shadow"))
        self.feedback = m.counter("tether_feedback_total", "Feedback observations.",
                                  (*VERSION, "metric"))
        self.feedback_sum = m.counter("tether_feedback_sum", "Sum of feedback values.",
                                      (*VERSION, "metric"))
        self.drift_psi = m.gauge("tether_drift_psi", "Population stability index per feature.",
                                 (*VERSION, "feature"))
        self.drift_ks = m.gauge("tether_drift_ks", "Kolmogorov-Smirnov statistic per feature.",
                                (*VERSION, "feature"))
        self.rollbacks = m.counter("tether_rollbacks_total", "Automatic rollbacks.",
                                   ("endpoint", "route"))
        self.swaps = m.counter("tether_version_switches_total",
                               "Times a route switched version.", ("endpoint", "route"))
        self.batch_rows = m.histogram("tether_batch_records", "Records per batch predicted "
                                      "together (server-side batching).", ("endpoint",),
                                      (1, 2, 4, 8, 16, 32, 64, 128, 256))
        self._classes_seen: dict[tuple[str, ...], set[str]] = {}
        self._lock = threading.Lock()

    #: Folder where each worker of ``tether serve --workers N`` writes its counts
    #: (``worker-PID.json``), so any worker answers /metrics for all of them.
    shared_dir: Path | None = None

    def render(self) -> str:
        if self.shared_dir is None:
            return self.set.render()
        self.publish()
        others = []
        mine = self._own_file()
        for path in sorted(self.shared_dir.glob("worker-*.json")):
            if path == mine:
                continue
            try:
                others.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # being replaced, or gone: skip this scrape
                continue
        return self.set.render(others)

    def publish(self) -> None:
        """Write this worker's counts for the others (every tick, and before a scrape).

        Files of stopped workers stay, so every counter keeps rising (as in the
        Prometheus client's multiprocess mode); the parent removes the folder.
        """
        if self.shared_dir is None:
            return
        target = self._own_file()
        scratch = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
        scratch.write_text(json.dumps(self.set.export(), separators=(",", ":")))
        os.replace(scratch, target)

    def _own_file(self) -> Path:
        assert self.shared_dir is not None
        return self.shared_dir / f"worker-{os.getpid()}.json"

    def predictions(self, labels: tuple[str, ...], predictions: Sequence[Any]) -> None:
        """Count classes of discrete predictions; histogram numeric ones."""
        for value in predictions:
            if isinstance(value, float) and not math.isfinite(value):
                # Counted as a class ("nan", "inf", "-inf"): in the histogram, one NaN
                # made its sum NaN for good and landed in the lowest bucket.
                self.classes.inc(*labels, self._class(labels, str(value)))
            elif isinstance(value, float):
                self.values.observe(value, *labels)
            elif isinstance(value, str | int | bool):
                self.classes.inc(*labels, self._class(labels, str(value)))

    def _class(self, labels: tuple[str, ...], value: str) -> str:
        seen = self._classes_seen.get(labels)
        if seen is None:
            with self._lock:
                seen = self._classes_seen.setdefault(labels, set())
        if value in seen:
            return value
        if len(seen) >= MAX_CLASSES:
            return "other"
        seen.add(value)
        return value
