"""Serving over real HTTP on loopback: a real server, real sklearn models, a real registry."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import tether
from tether import EnvironmentMismatch, Registry
from tether.cli import cli
from tether.serving import BackgroundServer
from tether.serving.logs import JsonFormatter

from .conftest import fast_deployment, fit_logreg, wait_until

PREDICT = "/v1/endpoints/{}/predict"


def _records(iris: tuple[Any, Any], n: int = 3, start: int = 0) -> list[dict[str, Any]]:
    X, _ = iris
    return list(X.iloc[start:start + n].to_dict(orient="records"))


def _log_iris(registry: Registry, iris: tuple[Any, Any], C: float) -> tether.ModelVersion:
    X, _ = iris
    return registry.log_model(fit_logreg(iris, C=C), "iris", input_example=X.head(5),
                              data={"train": X}, params={"C": C})




@pytest.fixture
def two_versions(registry: Registry, iris: tuple[Any, Any]) -> tuple[Any, Any]:
    v1 = _log_iris(registry, iris, 1.0)
    v2 = _log_iris(registry, iris, 0.001)  # heavily regularised: predicts differently
    registry.promote(v1.ref, "production", create=True)
    return v1, v2


def _flaky_model(fail_after: int | None, delay: float = 0.0) -> Any:
    """A python-flavor model that starts raising after ``fail_after`` calls."""

    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        def predict(self, frame: Any) -> list[int]:
            self.calls += 1
            if delay:
                time.sleep(delay)
            if fail_after is not None and self.calls > fail_after:
                raise RuntimeError("model backend unavailable")
            return [1] * len(frame)

    return Flaky()


def _constant_model(value: int) -> Any:
    class Constant:
        def predict(self, frame: Any) -> list[int]:
            return [value] * len(frame)

    return Constant()


# -- the request path ---------------------------------------------------------------------------


def test_predict_returns_version_and_refuses_bad_records(
    registry: Registry, iris: tuple[Any, Any], two_versions: tuple[Any, Any], tmp_path: Path
) -> None:
    v1, _ = two_versions
    deployment = fast_deployment(tmp_path, "endpoints: {iris: {routes: [iris@production]}}")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        response = c.post(PREDICT.format("iris"), json={"records": _records(iris)})
        assert response.status_code == 200
        body = response.json()
        assert body["predictions"] == [0, 0, 0]
        assert (body["ref"], body["digest"]) == (v1.ref, f"sha:{v1.digest}")
        assert response.headers["x-model-version"] == f"{v1.ref}; digest=sha:{v1.digest}"
        bad = _records(iris, 2)
        bad[1]["petal width (cm)"] = "wide"
        response = c.post(PREDICT.format("iris"), json={"records": bad})
        assert response.status_code == 422
        assert response.json()["field"] == "petal width (cm)" and response.json()["index"] == 1
        del bad[1]["petal width (cm)"]
        assert c.post(PREDICT.format("iris"), json={"records": bad}).status_code == 422
        assert c.post(PREDICT.format("iris"), content=b"{nope").status_code == 400
        assert c.post(PREDICT.format("iris"), json={"records": [], "x": 1}).status_code == 400
        assert c.post(PREDICT.format("nope"), json={"records": bad}).status_code == 404
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        metrics = c.get("/metrics").text
        labels = f'endpoint="iris",model="iris",version="1.0.0",digest="sha:{v1.digest}"'
        assert f"tether_requests_total{{{labels},route=\"production\"}} 1" in metrics
        assert f"tether_request_latency_seconds_bucket{{{labels},le=\"+Inf\"}} 1" in metrics
        assert f'tether_predictions_total{{{labels},class="0"}} 3' in metrics
        invalid = 'tether_invalid_requests_total{endpoint="iris",field="petal width (cm)"} 2'
        assert invalid in metrics


@pytest.mark.slow
def test_blue_green_switch_under_load_loses_no_request(
    registry: Registry, iris: tuple[Any, Any], two_versions: tuple[Any, Any], tmp_path: Path
) -> None:
    v1, v2 = two_versions
    deployment = fast_deployment(tmp_path, "endpoints: {iris: {routes: [iris@production]}}")
    stop = threading.Event()
    seen: list[list[tuple[int, str]]] = [[], [], []]

    def hammer(log: list[tuple[int, str]], url: str) -> None:
        with httpx.Client(base_url=url) as client:
            while not stop.is_set():
                r = client.post(PREDICT.format("iris"), json={"records": _records(iris, 5)})
                log.append((r.status_code, r.headers.get("x-model-version", "").split(";")[0]))

    with BackgroundServer(registry, deployment) as server:
        threads = [threading.Thread(target=hammer, args=(log, server.url)) for log in seen]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        registry.promote(v2.ref, "production", reason="blue-green test", create=True)
        wait_until(lambda: all(log and log[-1][1] == v2.ref for log in seen))
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
    total = sum(len(log) for log in seen)
    assert total > 100
    assert all(code == 200 for log in seen for code, _ in log)
    for log in seen:  # each client sees the old version, then only the new one
        versions = [v for _, v in log]
        switch = versions.index(v2.ref)
        assert set(versions[:switch]) == {v1.ref} and set(versions[switch:]) == {v2.ref}


def test_canary_weights_sticky_keys_and_live_weight_changes(
    registry: Registry, iris: tuple[Any, Any], two_versions: tuple[Any, Any], tmp_path: Path
) -> None:
    v1, v2 = two_versions
    deployment = fast_deployment(tmp_path, f"""
endpoints:
  iris:
    routes:
      - {{name: stable, target: {v1.ref}, weight: 50}}
      - {{name: canary, target: {v2.ref}, weight: 50}}
""")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        def ref(**kw: Any) -> str:
            body = {"records": _records(iris, 1), **kw}
            return str(c.post(PREDICT.format("iris"), json=body).json()["ref"])

        split = [ref() for _ in range(200)]
        assert 0.3 < split.count(v2.ref) / 200 < 0.7
        assert len({ref(key="customer-7") for _ in range(20)}) == 1
        header = {c.post(PREDICT.format("iris"), json={"records": _records(iris, 1)},
                         headers={"X-Request-Key": "customer-9"}).json()["route"]
                  for _ in range(10)}
        assert len(header) == 1
        runner = CliRunner()
        token = registry.create_token("ops@example.com", role="contributor", model="iris")
        result = runner.invoke(cli, ["deploy", "weights", "iris", "stable=100", "canary=0",
                                     "--url", server.url, "--token", token["token"]])
        assert result.exit_code == 0, result.output
        assert "stable=100 (100%)" in result.output
        assert {ref() for _ in range(50)} == {v1.ref}
        # Editing the deployment file changes weights without a restart.
        path = Path(deployment.source)
        time.sleep(0.05)
        path.write_text(path.read_text().replace("weight: 50}\n      - ", "weight: 0}\n      - ")
                        .replace("canary, target: " + v2.ref + ", weight: 50",
                                 "canary, target: " + v2.ref + ", weight: 100"))
        wait_until(lambda: ref() == v2.ref)
        assert {ref() for _ in range(30)} == {v2.ref}
        status = runner.invoke(cli, ["deploy", "status", "--url", server.url])
        assert status.exit_code == 0 and "canary" in status.output and "100" in status.output


def test_shadow_is_compared_off_the_request_path(
    registry: Registry, iris: tuple[Any, Any], two_versions: tuple[Any, Any], tmp_path: Path
) -> None:
    v1, v2 = two_versions
    registry.promote(v2.ref, "staging", create=True)
    registry.log_model(_flaky_model(0, delay=0.2), "broken")
    deployment = fast_deployment(tmp_path, """
endpoints:
  iris:
    routes: [iris@production]
    shadow: [iris@staging]
  slowshadow:
    routes: [iris@production]
    shadow: [broken]
    trusted: true
""")
    X, _ = iris
    records = list(X.to_dict(orient="records"))
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        for start in range(0, 150, 5):
            assert c.post(PREDICT.format("iris"),
                          json={"records": records[start:start + 5]}).status_code == 200
        began = time.perf_counter()
        for _ in range(10):  # the shadow sleeps 0.2 s and raises; callers never notice
            assert c.post(PREDICT.format("slowshadow"),
                          json={"records": records[:1]}).status_code == 200
        assert time.perf_counter() - began < 1.5  # not 10 x 0.2 s
        # A spawned shadow process: slow to start on a busy CI machine.
        wait_until(server.runtime.mirror.idle, timeout=60)
        pairs = {(p["endpoint"], p["shadow"]): p for p in c.get("/v1/deployment").json()
                 ["shadow_pairs"]}
        pair = pairs[("iris", v2.ref)]
        assert pair["primary"] == v1.ref and pair["compared"] == 150
        assert 0 < pair["rate"] < 1
        metrics = c.get("/metrics").text
        assert (f'tether_shadow_disagreement_ratio{{endpoint="iris",primary="{v1.ref}",'
                f'shadow="{v2.ref}"}}') in metrics
        assert 'tether_shadow_errors_total{endpoint="slowshadow",shadow="broken@1.0.0"}' in metrics


# -- automatic rollback --------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tether.serving")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.slow
def test_a_version_that_starts_failing_is_rolled_back_through_its_alias(
    registry: Registry, tmp_path: Path, json_logs: io.StringIO
) -> None:
    good = registry.log_model(_flaky_model(None), "scorer")
    bad = registry.log_model(_flaky_model(5), "scorer", notes="new backend")
    registry.promote(good.ref, "production", create=True)
    registry.promote(bad.ref, "production", create=True)
    deployment = fast_deployment(tmp_path, """
endpoints:
  scorer:
    routes: [scorer@production]
    trusted: true
    rollback: {window: 30, min_requests: 10, rules: ["error_rate > 0.2"]}
""")
    codes = []
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        def send() -> str:
            r = c.post(PREDICT.format("scorer"), json={"records": [{"x": 1.0}]})
            codes.append(r.status_code)
            return r.headers.get("x-model-version", "")

        for _ in range(15):
            send()
        wait_until(lambda: send().startswith(good.ref))
        status = c.get("/v1/endpoints/scorer").json()
    assert codes[:5] == [200] * 5 and 500 in codes
    assert registry.get("scorer@production").semver == good.semver
    event = registry.audit_log(action="alias.rollback")[0]
    assert event.before == bad.semver and event.after == good.semver
    assert "error_rate" in event.details["reason"] and "error_rate > 0.2" in event.details["reason"]
    assert status["rollbacks"][0]["from"] == bad.ref and status["rollbacks"][0]["to"] == good.ref
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    about_predictions = [e for e in lines if "predict" in e["message"] or "rolled back" in e[
        "message"] or "automatic rollback" in e["message"]]
    assert any(e["message"].startswith("prediction failed") for e in about_predictions)
    assert any(e["message"].startswith("rolled back") for e in about_predictions)
    for entry in about_predictions:
        assert {"model", "version", "digest"} <= set(entry), entry


@pytest.mark.slow
def test_two_processes_that_see_the_same_failure_roll_the_alias_back_once(
    registry: Registry, tmp_path: Path
) -> None:
    """Serving from a file (as the rendered Kubernetes pods and --workers do), every
    process rolled back on its own: production went 1.2.0 -> 1.1.0 -> 1.0.0, one version
    past the last good one. A rollback now happens only from the version that failed."""
    from tether.serving.config import load_deployment

    oldest = registry.log_model(_flaky_model(None), "scorer")
    good = registry.log_model(_flaky_model(None), "scorer", notes="good")
    bad = registry.log_model(_flaky_model(3), "scorer", notes="new backend")
    for version in (oldest, good, bad):
        registry.promote(version.ref, "production", create=True)
    # The supervisors tick once a minute: the test judges each process itself, in turn.
    (tmp_path / "deploy.yaml").write_text("""
server: {poll_interval: 60}
endpoints:
  scorer:
    routes: [scorer@production]
    trusted: true
    rollback: {window: 30, min_requests: 6, rules: ["error_rate > 0.2"]}
""")
    deployment = load_deployment(tmp_path / "deploy.yaml")
    other = tether.open(registry.location.root, actor=registry.actor)  # its own connection
    try:
        with BackgroundServer(registry, deployment) as one, \
                BackgroundServer(other, deployment) as two, \
                httpx.Client() as client:
            for _ in range(10):  # both see 1.2.0 fail
                for server in (one, two):
                    client.post(server.url + PREDICT.format("scorer"),
                                json={"records": [{"x": 1.0}]})
            for server in (one, two):  # one's rule fires first, then two's
                endpoint = server.runtime.endpoints["scorer"]
                endpoint.check()
                endpoint._loader.submit(lambda: None).result(timeout=30)
                served = client.post(server.url + PREDICT.format("scorer"),
                                     json={"records": [{"x": 1.0}]})
                assert served.headers["x-model-version"].startswith(good.ref)
    finally:
        other.close()
    assert registry.get("scorer@production").semver == good.semver
    events = registry.audit_log(action="alias.rollback")
    assert [(e.before, e.after) for e in events] == [(bad.semver, good.semver)]


@pytest.mark.slow
def test_pinned_canary_is_drained_on_latency_and_feedback_rules(
    registry: Registry, tmp_path: Path
) -> None:
    good = registry.log_model(_flaky_model(None), "scorer")
    slow = registry.log_model(_flaky_model(None, delay=0.1), "scorer", notes="slow")
    contrary = registry.log_model(_constant_model(0), "scorer", notes="always 0")
    deployment = fast_deployment(tmp_path, f"""
endpoints:
  scorer:
    routes:
      - {{name: stable, target: {good.ref}, weight: 50}}
      - {{name: canary, target: {slow.ref}, weight: 50}}
    trusted: true
    rollback: {{window: 30, min_requests: 8, rules: ["p99_latency_ms > 60"]}}
  judged:
    routes:
      - {{name: stable, target: {good.ref}, weight: 50}}
      - {{name: canary, target: {good.ref}, weight: 50}}
    trusted: true
    rollback: {{window: 30, min_requests: 8, rules: ["feedback.accuracy < 0.5"]}}
  compared:
    routes:
      - {{name: stable, target: {good.ref}, weight: 50}}
      - {{name: canary, target: {contrary.ref}, weight: 50}}
    shadow: [{good.ref}]
    trusted: true
    rollback: {{window: 30, min_requests: 8, rules: ["shadow_disagreement > 0.5"]}}
""")
    token = registry.create_token("feedback@example.com", role="contributor")["token"]
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        for i in range(30):
            c.post(PREDICT.format("scorer"), json={"records": [{"x": i}], "key": f"k{i}"})
        wait_until(lambda: server.runtime.endpoint("scorer").router.weights["canary"] == 0
                       and len(server.runtime.endpoint("scorer").rollbacks) > 0)
        # Ground truth says the canary route of "judged" is always wrong.
        for i in range(60):
            body = c.post(PREDICT.format("judged"), json={"records": [{"x": i}]}).json()
            truth = 0 if body["route"] == "canary" else 1
            feedback = c.post("/v1/endpoints/judged/feedback",
                              json={"request_id": body["request_id"], "truth": [truth]},
                              headers={"Authorization": f"Bearer {token}"})
            assert feedback.json() == {"accepted": 1, "unknown": []}
        wait_until(lambda: server.runtime.endpoint("judged").router.weights["canary"] == 0
                       and len(server.runtime.endpoint("judged").rollbacks) > 0)
        # The canary of "compared" disagrees with its shadow on every record.
        for i in range(40):
            c.post(PREDICT.format("compared"), json={"records": [{"x": i}]})
        wait_until(lambda: server.runtime.endpoint("compared").router.weights["canary"] == 0
                       and len(server.runtime.endpoint("compared").rollbacks) > 0)
        status = c.get("/v1/deployment").json()
        metrics = c.get("/metrics").text
    scorer, judged, compared = status["endpoints"]
    assert "shadow_disagreement = 1" in compared["rollbacks"][0]["reason"]
    assert compared["routes"][0]["weight"] == 50
    assert scorer["rollbacks"][0]["via"] == "weights"
    assert "p99_latency_ms" in scorer["rollbacks"][0]["reason"]
    assert "feedback.accuracy" in judged["rollbacks"][0]["reason"]
    events = registry.audit_log(action="deployment.rollback")
    assert {e.subject for e in events} == {"scorer/canary", "judged/canary", "compared/canary"}
    assert 'tether_feedback_total{endpoint="judged"' in metrics
    assert 'tether_rollbacks_total{endpoint="scorer",route="canary"} 1' in metrics


# -- environments, drift, the command line -------------------------------------------------------


def test_a_version_whose_environment_differs_is_refused(
    registry: Registry, iris: tuple[Any, Any], two_versions: tuple[Any, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tether._registry.log_version as log_version

    v1, _ = two_versions
    real = log_version.capture_environment

    def elsewhere() -> dict[str, Any]:
        env = real()
        env["packages"]["scikit-learn"] = "0.24.2"
        return env

    monkeypatch.setattr(log_version, "capture_environment", elsewhere)
    foreign = _log_iris(registry, iris, 0.3)
    monkeypatch.setattr(log_version, "capture_environment", real)
    with pytest.raises(EnvironmentMismatch, match="scikit-learn"):
        text = f"endpoints: {{iris: {{routes: [{foreign.ref}]}}}}"
        BackgroundServer(registry, fast_deployment(tmp_path, text))
    deployment = fast_deployment(tmp_path, "endpoints: {iris: {routes: [iris@production]}}")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        registry.promote(foreign.ref, "production", create=True)
        wait_until(lambda: c.get("/v1/endpoints/iris").json()["routes"][0]["problem"] is not None)
        route = c.get("/v1/endpoints/iris").json()["routes"][0]
        assert route["ref"] == v1.ref and "scikit-learn" in route["problem"]
        response = c.post(PREDICT.format("iris"), json={"records": _records(iris)})
        assert response.json()["ref"] == v1.ref
    result = CliRunner().invoke(cli, ["--registry", str(registry.location.root), "deploy",
                                      "check", str(deployment.source)])
    assert result.exit_code == 1 and "REFUSED" in result.output


def test_drift_is_measured_and_shown_by_monitor(
    registry: Registry, iris: tuple[Any, Any], two_versions: tuple[Any, Any], tmp_path: Path
) -> None:
    X, _ = iris
    shifted = X.sample(120, random_state=0).copy()
    shifted["petal length (cm)"] += 3.0
    deployment = fast_deployment(tmp_path, "endpoints: {iris: {routes: [iris@production]}}")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        c.post(PREDICT.format("iris"), json={"records": shifted.to_dict(orient="records")})
        result = CliRunner().invoke(cli, ["monitor", "iris", "--url", server.url, "--json"])
        text = CliRunner().invoke(cli, ["monitor", "iris", "--url", server.url]).output
        metrics = c.get("/metrics").text
    features = json.loads(result.output)["versions"][0]["features"]
    assert features["petal length (cm)"]["status"] == "drift"
    assert features["petal length (cm)"]["ks"] > 0.5
    assert features["sepal width (cm)"]["psi"] < 0.25
    assert "petal length (cm)" in text and "drift" in text and "PSI" in text
    assert "[/]" not in text and "[green]" not in text  # a status is styled, not markup
    assert 'tether_drift_psi{endpoint="iris",model="iris"' in metrics
    assert 'feature="petal length (cm)"' in metrics


@pytest.mark.slow
def test_tether_serve_command_serves_a_version(
    registry: Registry, iris: tuple[Any, Any], two_versions: tuple[Any, Any]
) -> None:
    import subprocess

    from tether.serving.server import free_port

    from .conftest import subprocess_env, tether_exe

    v1, _ = two_versions
    port = free_port()
    root = str(registry.location.root)
    process = subprocess.Popen(
        [tether_exe(), "--registry", root, "serve", "iris@production", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(),
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(url + "/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=30)
        response = httpx.post(url + PREDICT.format("iris"), json={"records": _records(iris)})
        assert response.json()["ref"] == v1.ref
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    logs = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert any(e.get("digest") == f"sha:{v1.digest}" for e in logs)
