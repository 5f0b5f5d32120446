"""Serving building blocks without a server: config, router, metrics, drift, windows, rules."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tether import InvalidInput
from tether._registry.drift_baseline import compute, feature_stats
from tether.serving.config import load_deployment, parse_deployment, parse_rule
from tether.serving.drift import DriftMonitor, ks_statistic, psi_categorical, psi_numeric, status
from tether.serving.logs import JsonFormatter
from tether.serving.metrics import MetricSet
from tether.serving.rollback import first_breach
from tether.serving.router import WeightedRouter
from tether.serving.window import Window

DEPLOY = """
server: {port: 9000, poll_interval: 0.5}
endpoints:
  iris:
    routes:
      - {name: stable, target: iris@production, weight: 90}
      - {name: canary, target: iris@1.1.0, weight: 10}
    shadow: [{target: iris@staging, sample: 0.5}]
    sticky_field: customer
    rollback:
      window: 30
      min_requests: 5
      rules: ["error_rate > 0.05", "p99_latency_ms > 250", "feedback.accuracy < 0.8"]
"""


# -- deployment files -----------------------------------------------------------------------


def test_deployment_file_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(DEPLOY)
    deployment = load_deployment(path)
    endpoint = deployment.endpoint("iris")
    assert [(r.name, r.target, r.weight) for r in endpoint.routes] == [
        ("stable", "iris@production", 90.0), ("canary", "iris@1.1.0", 10.0)]
    assert endpoint.shadows[0].target == "iris@staging" and endpoint.shadows[0].sample == 0.5
    assert [r.describe() for r in endpoint.rollback.rules] == [
        "error_rate > 0.05", "p99_latency_ms > 250", "feedback.accuracy < 0.8"]
    assert deployment.server.port == 9000 and deployment.source == str(path)


@pytest.mark.parametrize(("text", "message"), [
    ("endpoints: {iris: {routes: [{target: iris@1.0.0, wieght: 5}]}}", "did you mean 'weight'"),
    ("endpoints: {iris: {routes: [iris@1.0.0], rollbak: {}}}", "unknown key 'rollbak'"),
    ("endpoints: {iris: {routes: [{target: 'iris@'}]}}", "routes[0].target"),
    ("endpoints: {iris: {routes: [{target: iris, weight: -1}]}}", "at least 0"),
    ("endpoints: {iris: {routes: [iris], rollback: {rules: ['errors > 1']}}}", "unknown metric"),
    ("endpoints: {iris: {routes: [iris], rollback: {rules: ['error_rate = 1']}}}", "not a rule"),
    ("endpoints: {}", "endpoints is empty"),
    ("servers: {}", "unknown key 'servers'"),
    ("endpoints: {iris: {routes: [iris], shadow: [{target: iris, sample: 2}]}}", "sample"),
])
def test_bad_deployment_files_are_refused_naming_the_place(text: str, message: str) -> None:
    import yaml

    with pytest.raises(InvalidInput) as info:
        parse_deployment(yaml.safe_load(text), source="deploy.yaml")
    assert message in str(info.value)


def test_rules_compare_both_ways() -> None:
    assert parse_rule("error_rate > 0.05").holds(0.06)
    assert not parse_rule("error_rate > 0.05").holds(0.05)
    assert parse_rule("feedback.accuracy < 0.8").holds(0.7)


# -- routing ----------------------------------------------------------------------------------


def test_weighted_router_splits_and_sticks() -> None:
    router = WeightedRouter({"stable": 90, "canary": 10})
    counts = Counter(router.choose() for _ in range(5000))
    assert 0.07 < counts["canary"] / 5000 < 0.13
    assert len({router.choose("user-42") for _ in range(50)}) == 1
    router.set_weights({"stable": 100, "canary": 0})
    assert {router.choose(f"user-{i}") for i in range(500)} == {"stable"}
    with pytest.raises(InvalidInput):
        router.set_weights({"stable": 0, "canary": 0})


def test_moving_a_weight_moves_only_the_keys_that_change_hands() -> None:
    router = WeightedRouter({"a": 50, "b": 50})
    before = {k: router.choose(f"k{k}") for k in range(2000)}
    router.set_weights({"a": 40, "b": 60})
    after = {k: router.choose(f"k{k}") for k in range(2000)}
    moved = [k for k in before if before[k] != after[k]]
    assert all(before[k] == "a" and after[k] == "b" for k in moved)
    assert 0.05 < len(moved) / 2000 < 0.15


# -- metrics and logs -------------------------------------------------------------------------


def test_prometheus_text_exposition() -> None:
    metrics = MetricSet()
    requests = metrics.counter("t_requests_total", "Requests.", ("version",))
    latency = metrics.histogram("t_latency_seconds", "Latency.", ("version",), (0.1, 1.0))
    requests.inc("1.0.0")
    requests.inc("1.0.0")
    latency.observe(0.05, '1"0')
    latency.observe(2.0, '1"0')
    text = metrics.render()
    assert "# TYPE t_requests_total counter" in text
    assert 't_requests_total{version="1.0.0"} 2' in text
    assert 't_latency_seconds_bucket{version="1\\"0",le="0.1"} 1' in text
    assert 't_latency_seconds_bucket{version="1\\"0",le="+Inf"} 2' in text
    assert 't_latency_seconds_count{version="1\\"0"} 2' in text


def test_json_log_lines_carry_the_extra_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tether.test-json")
    logger.addHandler(handler)
    logger.warning("failed %s", "x", extra={"model": "iris", "version": "1.0.0",
                                            "digest": "sha:ab"})
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "failed x" and entry["level"] == "warning"
    assert (entry["model"], entry["version"], entry["digest"]) == ("iris", "1.0.0", "sha:ab")


# -- drift ------------------------------------------------------------------------------------


def test_reference_stats_and_psi_ks() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, 5000)
    stats = feature_stats(reference)
    assert stats["kind"] == "numeric" and len(stats["edges"]) == 9
    assert abs(sum(stats["fractions"]) - 1) < 1e-9 and len(stats["sample"]) == 1000
    same = rng.normal(0, 1, 2000)
    shifted = rng.normal(1, 1, 2000)
    assert psi_numeric(stats["edges"], stats["fractions"], same) < 0.1
    assert psi_numeric(stats["edges"], stats["fractions"], shifted) > 0.25
    assert ks_statistic(stats["sample"], same) < 0.06
    assert 0.3 < ks_statistic(stats["sample"], shifted) < 0.45  # about Phi(0.5) - Phi(-0.5)
    assert status(0.05) == "stable" and status(0.2) == "moderate" and status(0.3) == "drift"


def test_categorical_psi_counts_unseen_values() -> None:
    stats = feature_stats(["a"] * 50 + ["b"] * 50)
    assert stats["frequencies"] == {"a": 0.5, "b": 0.5}
    assert psi_categorical(stats["frequencies"], ["a", "b"] * 50) < 1e-9
    assert psi_categorical(stats["frequencies"], ["a"] * 50 + ["c"] * 50) > 0.25


def test_reference_stats_follow_the_signature_names() -> None:
    import pandas as pd

    frame = pd.DataFrame({"x": np.arange(100.0), "city": ["a", "b"] * 50, "unused": 1})
    signature: dict[str, Any] = {"inputs": {"fields": [{"name": "x"}, {"name": "city"}]}}
    stats = compute({"train": frame, "test": frame.head(3)}, signature)
    assert stats is not None and stats["dataset"] == "train" and stats["rows"] == 100
    assert set(stats["features"]) == {"x", "city"}
    assert compute(None) is None and compute({"train": "missing.parquet"}) is None
    array = compute(np.ones((10, 2)), {"inputs": {"fields": [{"name": "p"}, {"name": "q"}]}})
    assert array is not None and set(array["features"]) == {"p", "q"}


def test_drift_monitor_reports_per_feature() -> None:
    reference = {"features": {"x": feature_stats(np.arange(1000.0)),
                              "c": feature_stats(["u", "v"] * 100)}}
    monitor = DriftMonitor(reference, window=200, cache_seconds=0)
    monitor.observe([{"x": float(v), "c": "u"} for v in range(900, 1000)])
    report = monitor.report()
    assert report["x"]["status"] == "drift" and report["x"]["ks"] > 0.8
    assert report["c"]["status"] == "drift" and report["c"]["ks"] is None
    assert report["x"]["n"] == 100


# -- windows and rules ------------------------------------------------------------------------


def test_window_slides_and_rules_need_enough_samples() -> None:
    now = [1000.0]
    window = Window(10, clock=lambda: now[0])
    for i in range(20):
        window.record_request(i % 4 != 0, 0.010 if i < 19 else 0.5)
    snapshot = window.snapshot()
    assert snapshot["requests"] == 20 and snapshot["error_rate"] == 0.25
    assert 9.0 < snapshot["p50_latency_ms"] < 11.0 and snapshot["p99_latency_ms"] > 400
    rules = (parse_rule("error_rate > 0.2"),)
    assert first_breach(rules, snapshot, 10) is not None
    assert first_breach(rules, snapshot, 50) is None
    window.record_value("feedback.accuracy", 3, 10)
    breach = first_breach((parse_rule("feedback.accuracy < 0.5"),), window.snapshot(), 10)
    assert breach is not None and breach.value == pytest.approx(0.3)
    assert "feedback.accuracy < 0.5" in breach.reason("iris@1.1.0")
    now[0] += 11
    assert window.snapshot()["requests"] == 0
