"""Serving against anonymous abuse, over real HTTP on loopback.

The attacks: non-finite numbers (NaN, Infinity, 1e999, 10**400) sent to a
``double`` field failed in the model with a 500, counted toward ``error_rate``
and so let any client roll back a production alias; weights, feedback and
reload took changes from anyone. Now a bad record is a 4xx that never reaches
a rule's window, and every change needs a registry token with the right role
or the deployment's serving token.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import tether
from tether import Registry
from tether.cli import cli
from tether.serving import BackgroundServer
from tether.serving.server import start_runtime

from .conftest import fast_deployment, fit_logreg

PREDICT = "/v1/endpoints/{}/predict"
FIELD = "petal width (cm)"
SERVING_TOKEN = "serving-secret-0123456789abcdef"
JSON = {"content-type": "application/json"}


def _records(iris: tuple[Any, Any], n: int = 1) -> list[dict[str, Any]]:
    X, _ = iris
    return list(X.iloc[:n].to_dict(orient="records"))


def _log_iris(registry: Registry, iris: tuple[Any, Any], C: float) -> tether.ModelVersion:
    X, _ = iris
    return registry.log_model(fit_logreg(iris, C=C), "iris", input_example=X.head(5),
                              params={"C": C})




def _raw_record(iris: tuple[Any, Any], literal: str) -> bytes:
    """A predict body whose FIELD holds ``literal`` as written (NaN, 1e999, 10**400 ...)."""
    record = _records(iris)[0]
    parts = [f'"{k}": {literal if k == FIELD else repr(float(v))}' for k, v in record.items()]
    return ('{"records": [{' + ", ".join(parts) + "}]}").encode()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def production(registry: Registry, iris: tuple[Any, Any]) -> tuple[Any, Any]:
    """iris@production on v2, with v1 before it: a rollback would move it back to v1."""
    v1 = _log_iris(registry, iris, 1.0)
    v2 = _log_iris(registry, iris, 0.001)
    registry.promote(v1.ref, "production", create=True)
    registry.promote(v2.ref, "production", create=True)
    return v1, v2


ROLLBACK_ON_ERRORS = """
endpoints:
  iris:
    routes: [iris@production]
    rollback: {window: 30, min_requests: 10, rules: ["error_rate > 0.05"]}
"""

ATTACKS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", str(10**400)]


# -- non-finite numbers: 422, not counted, no rollback --------------------------------------------


def test_a_flood_of_non_finite_numbers_is_refused_and_cannot_roll_back_production(
    registry: Registry, iris: tuple[Any, Any], production: tuple[Any, Any], tmp_path: Path
) -> None:
    _, v2 = production
    deployment = fast_deployment(tmp_path, ROLLBACK_ON_ERRORS)
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        for _ in range(5):
            assert c.post(PREDICT.format("iris"), json={"records": _records(iris)}).is_success
        for i in range(200):
            literal = ATTACKS[i % len(ATTACKS)]
            response = c.post(PREDICT.format("iris"), content=_raw_record(iris, literal),
                              headers=JSON)
            assert response.status_code == 422, (literal, response.text)
            body = response.json()
            assert body["field"] == FIELD and body["index"] == 0
            assert FIELD in body["message"] and "finite" in body["message"]
        # Other client errors are not counted either.
        other = [
            c.post(PREDICT.format("iris"), content=b"{nope", headers=JSON),
            c.post(PREDICT.format("iris"), content=b"[" * 100_000, headers=JSON),
            c.post(PREDICT.format("iris"), content=b'{"records": [{"a": 1' + b"0" * 5000
                   + b"}]}", headers=JSON),
            c.post(PREDICT.format("iris"), json={"records": [1, 2]}),
            c.post(PREDICT.format("iris"), json={"records": [{FIELD: "wide"}]}),
            c.post(PREDICT.format("iris"), json={"records": []}),
            c.post(PREDICT.format("iris"), json={"records": _records(iris), "request_id": [1]}),
            c.post(PREDICT.format("iris"), json={"records": _records(iris),
                                                 "request_id": "a\r\nSet-Cookie: x=1"}),
            c.post(PREDICT.format("nope"), json={"records": _records(iris)}),
        ]
        assert [r.status_code for r in other] == [400, 400, 400, 422, 422, 422, 400, 400, 404]
        time.sleep(0.6)  # six supervisor ticks: room to judge the rule
        status = c.get("/v1/endpoints/iris").json()
        metrics = c.get("/metrics").text
    window = status["routes"][0]["window"]
    # Without the 4xx fix these 200 requests were 500s: error_rate 200/205, a breach.
    assert window["requests"] == 5 and window["errors"] == 0 and window["error_rate"] == 0
    assert status["rollbacks"] == []
    assert registry.get("iris@production").semver == v2.semver
    assert registry.audit_log(action="alias.rollback") == []
    assert f'tether_invalid_requests_total{{endpoint="iris",field="{FIELD}"}} 200' in metrics
    assert "tether_request_errors_total{" not in metrics


def test_the_same_flood_let_through_is_refused_by_the_model_and_still_not_counted(
    registry: Registry, iris: tuple[Any, Any], production: tuple[Any, Any], tmp_path: Path
) -> None:
    """Let through (allow_non_finite), NaN reaches a model that cannot take it. It used to
    be a 500 that counted (20 of them rolled production back); the model's own refusal
    of its inputs is now the caller's error, a 422 the rules never see."""
    _, v2 = production
    deployment = fast_deployment(tmp_path, ROLLBACK_ON_ERRORS.replace(
        "routes: [iris@production]", "routes: [iris@production]\n    allow_non_finite: true"))
    codes = []
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        for _ in range(20):
            response = c.post(PREDICT.format("iris"), content=_raw_record(iris, "NaN"),
                              headers=JSON)
            codes.append(response.status_code)
        time.sleep(0.6)  # six supervisor ticks: room to judge the rule
        window = c.get("/v1/endpoints/iris").json()["routes"][0]["window"]
    assert set(codes) == {422}
    assert window["errors"] == 0
    assert registry.get("iris@production").semver == v2.semver
    assert registry.audit_log(action="alias.rollback") == []


def test_allow_non_finite_names_the_fields_that_take_them(
    registry: Registry, tmp_path: Path
) -> None:
    import pandas as pd

    class NanAware:
        def predict(self, frame: Any) -> list[int]:
            return [int(math.isnan(v)) for v in frame["a"]]

    example = pd.DataFrame({"a": [1.0, 2.0], "b": [0.5, 1.5], "n": [1, 2]})
    registry.log_model(NanAware(), "nanny", input_example=example)
    deployment = fast_deployment(tmp_path, """
endpoints:
  nanny: {routes: [nanny@latest], trusted: true, allow_non_finite: [a]}
  strict: {routes: [nanny@latest], trusted: true}
""")

    def post(c: httpx.Client, endpoint: str, a: str, b: str = "1.0", n: str = "3") -> Any:
        body = f'{{"records": [{{"a": {a}, "b": {b}, "n": {n}}}]}}'.encode()
        return c.post(PREDICT.format(endpoint), content=body, headers=JSON)

    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        assert post(c, "nanny", "NaN").json()["predictions"] == [1]
        assert post(c, "nanny", "Infinity").json()["predictions"] == [0]
        refused = post(c, "nanny", "1.0", b="NaN")
        assert refused.status_code == 422 and refused.json()["field"] == "b"
        assert post(c, "strict", "NaN").json()["field"] == "a"
        assert post(c, "strict", "1.0", b="1e999").json()["field"] == "b"
        # A long beyond 64 bits (fine as a float, fatal as int64) and beyond floats.
        assert post(c, "strict", "1.0", n=str(2**70)).json()["field"] == "n"
        assert post(c, "strict", "1.0", n=str(10**400)).json()["field"] == "n"
        assert post(c, "strict", "1.0").json()["predictions"] == [0]


def test_a_model_without_a_signature_gets_finite_numbers_too(
    registry: Registry, tmp_path: Path
) -> None:
    class Echo:
        def predict(self, frame: Any) -> list[int]:
            return [1] * len(frame)

    registry.log_model(Echo(), "echo")
    deployment = fast_deployment(
        tmp_path, "endpoints: {echo: {routes: [echo@latest], trusted: true}}"
    )
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        refused = c.post(PREDICT.format("echo"), content=b'{"records": [{"x": 1, "y": NaN}]}',
                         headers=JSON)
        assert refused.status_code == 422 and refused.json()["field"] == "y"
        many = c.post(PREDICT.format("echo"),
                      content=b'{"records": [{"x": 1}, {"x": [1, [2, 1e999]]}]}', headers=JSON)
        assert many.status_code == 422 and many.json()["index"] == 1
        metrics = c.get("/metrics").text
    # A caller's own field names never become metric labels.
    assert 'tether_invalid_requests_total{endpoint="echo",field=""} 2' in metrics


# -- tokens for every change -----------------------------------------------------------------------


@pytest.fixture
def tokens(registry: Registry) -> dict[str, str]:
    return {
        "reader": registry.create_token("reader@example.com", role="reader")["token"],
        "contributor": registry.create_token("dev@example.com", role="contributor",
                                             model="iris")["token"],
        "approver": registry.create_token("lead@example.com", role="approver",
                                          model="iris")["token"],
        "other-model": registry.create_token("else@example.com", role="approver",
                                             model="fraud")["token"],
        "serving": SERVING_TOKEN,
    }


CANARY = """
auth: {{token_env: TETHER_SERVING_TOKEN}}
endpoints:
  iris:
    routes:
      - {{name: stable, target: iris@production, weight: 90}}
      - {{name: canary, target: {canary}, weight: 10}}
"""


@pytest.fixture
def canary(registry: Registry, production: tuple[Any, Any], tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TETHER_SERVING_TOKEN", SERVING_TOKEN)
    v1, _ = production
    return fast_deployment(tmp_path, CANARY.format(canary=v1.ref))


def test_weights_need_the_role_that_moves_production(
    registry: Registry, canary: Any, tokens: dict[str, str]
) -> None:
    path = "/v1/endpoints/iris/weights"
    with BackgroundServer(registry, canary) as server, httpx.Client(base_url=server.url) as c:
        router = server.runtime.endpoint("iris").router

        def put(token: str | None, weights: Any = None) -> httpx.Response:
            return c.put(path, json={"weights": weights or {"canary": 50}},
                         headers=_bearer(token) if token else {})

        anonymous = put(None)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        body = anonymous.json()
        assert body["error"] == "unauthenticated"
        assert "Authorization: Bearer" in body["message"] and "approver" in body["message"]
        assert "$TETHER_SERVING_TOKEN" in body["message"]
        assert put("tth_not-a-real-token").status_code == 401
        for who in ("reader", "contributor", "other-model"):
            refused = put(tokens[who])
            assert refused.status_code == 403, who
            assert "needs role approver on model iris" in refused.json()["message"]
        assert "tether role grant dev@example.com approver --model iris" in put(
            tokens["contributor"]).json()["hint"]
        assert router.weights == {"stable": 90, "canary": 10}
        assert put(tokens["approver"]).json()["weights"] == {"stable": 90, "canary": 50}
        assert put(tokens["serving"], {"canary": 20}).json()["weights"]["canary"] == 20
        assert c.put(path, json={"weights": {"canary": 30}},
                     headers={"Authorization": "bearer " + SERVING_TOKEN}).is_success
        assert router.weights == {"stable": 90, "canary": 30}


def test_a_pinned_only_endpoint_takes_weights_from_a_contributor(
    registry: Registry, production: tuple[Any, Any], tokens: dict[str, str], tmp_path: Path
) -> None:
    v1, v2 = production
    deployment = fast_deployment(tmp_path, f"""
endpoints:
  iris:
    routes:
      - {{name: stable, target: {v2.ref}, weight: 90}}
      - {{name: canary, target: {v1.ref}, weight: 10}}
""")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        put = c.put("/v1/endpoints/iris/weights", json={"weights": {"canary": 50}},
                    headers=_bearer(tokens["contributor"]))
        assert put.status_code == 200
        # No serving token declared: only registry tokens are accepted.
        assert c.put("/v1/endpoints/iris/weights", json={"weights": {"canary": 5}},
                     headers=_bearer(SERVING_TOKEN)).status_code == 401


@pytest.mark.parametrize("weights", [
    '{"canary": NaN}', '{"canary": Infinity}', '{"canary": 1e999}', '{"canary": -5}',
    '{"canary": "10"}', '{"canary": true}', '{"canary": null}', f'{{"canary": {10**400}}}',
    '{"stable": 0, "canary": 0}', '{"stable": 1e308, "canary": 1e308}',
])
def test_weights_must_be_finite_non_negative_and_add_up_to_more_than_zero(
    registry: Registry, canary: Any, weights: str
) -> None:
    with BackgroundServer(registry, canary) as server, httpx.Client(base_url=server.url) as c:
        response = c.put("/v1/endpoints/iris/weights",
                         content=f'{{"weights": {weights}}}'.encode(),
                         headers={**JSON, **_bearer(SERVING_TOKEN)})
        assert response.status_code == 422, response.text
        assert server.runtime.endpoint("iris").router.weights == {"stable": 90, "canary": 10}


def test_feedback_needs_a_contributor_and_finite_values(
    registry: Registry, iris: tuple[Any, Any], canary: Any, tokens: dict[str, str]
) -> None:
    with BackgroundServer(registry, canary) as server, httpx.Client(base_url=server.url) as c:
        request_id = c.post(PREDICT.format("iris"),
                            json={"records": _records(iris)}).json()["request_id"]
        item = {"request_id": request_id, "truth": [0]}

        def send(token: str | None, body: Any = item) -> httpx.Response:
            return c.post("/v1/endpoints/iris/feedback", json=body,
                          headers=_bearer(token) if token else {})

        anonymous = send(None)
        assert anonymous.status_code == 401 and "contributor" in anonymous.json()["message"]
        refused = send(tokens["reader"])
        assert refused.status_code == 403
        assert "needs role contributor on model iris" in refused.json()["message"]
        assert send(tokens["contributor"]).json() == {"accepted": 1, "unknown": []}
        assert send(tokens["serving"]).json() == {"accepted": 1, "unknown": []}
        for bad in ('{"revenue": NaN}', '{"revenue": 1e999}', f'{{"revenue": {10**400}}}'):
            response = c.post("/v1/endpoints/iris/feedback", headers={
                **JSON, **_bearer(SERVING_TOKEN)},
                content=f'{{"request_id": "{request_id}", "metrics": {bad}}}'.encode())
            assert response.status_code == 422, bad
        truth = c.post("/v1/endpoints/iris/feedback", headers={**JSON, **_bearer(SERVING_TOKEN)},
                       content=f'{{"request_id": "{request_id}", "truth": [NaN]}}'.encode())
        assert truth.status_code == 422
        window = c.get("/v1/endpoints/iris").json()["routes"]
    accuracy = [r["window"].get("feedback.accuracy:count", 0) for r in window]
    assert sum(accuracy) == 2  # the two accepted items only


def test_reload_needs_the_role_that_moves_production(
    registry: Registry, canary: Any, tokens: dict[str, str]
) -> None:
    with BackgroundServer(registry, canary) as server, httpx.Client(base_url=server.url) as c:
        router = server.runtime.endpoint("iris").router
        assert c.post("/v1/reload").status_code == 401
        refused = c.post("/v1/reload", headers=_bearer(tokens["contributor"]))
        assert refused.status_code == 403 and "approver" in refused.json()["message"]
        c.put("/v1/endpoints/iris/weights", json={"weights": {"canary": 0}},
              headers=_bearer(SERVING_TOKEN)).raise_for_status()
        assert router.weights["canary"] == 0
        reloaded = c.post("/v1/reload", headers=_bearer(tokens["approver"]))
        assert reloaded.status_code == 200 and reloaded.json()["source"] == canary.source
        assert router.weights == {"stable": 90, "canary": 10}  # the file's weights again
        assert c.post("/v1/reload", headers=_bearer(SERVING_TOKEN)).status_code == 200
        args = ["deploy", "reload", "--url", server.url]
        assert CliRunner().invoke(cli, args, env={"TETHER_TOKEN": ""}).exit_code == 1
        done = CliRunner().invoke(cli, [*args, "--token", tokens["approver"]])
        assert done.exit_code == 0 and "reloaded" in done.output, done.output


def test_reads_stay_open_unless_the_deployment_protects_them(
    registry: Registry, iris: tuple[Any, Any], production: tuple[Any, Any], tmp_path: Path,
    tokens: dict[str, str]
) -> None:
    reads = ["/v1/deployment", "/v1/endpoints/iris", "/v1/endpoints/iris/drift", "/metrics"]
    deployment = fast_deployment(tmp_path, "endpoints: {iris: {routes: [iris@production]}}")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        assert all(c.get(path).status_code == 200 for path in reads)
        assert c.post(PREDICT.format("iris"), json={"records": _records(iris)}).is_success
    deployment = fast_deployment(tmp_path, """
auth: {protect_reads: true}
endpoints: {iris: {routes: [iris@production]}}
""")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        for path in reads:
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=_bearer(tokens["reader"])).status_code == 200, path
        predict = c.post(PREDICT.format("iris"), json={"records": _records(iris)})
        assert predict.status_code == 401 and "reader" in predict.json()["message"]
        assert c.post(PREDICT.format("iris"), json={"records": _records(iris)},
                      headers=_bearer(tokens["contributor"])).is_success
        assert c.post(PREDICT.format("iris"), json={"records": _records(iris)},
                      headers=_bearer(tokens["other-model"])).status_code == 403
        unknown = c.post(PREDICT.format("secret"), json={"records": []})
        assert unknown.status_code == 401 and "iris" not in unknown.text
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


# -- the deployment file and the command line ------------------------------------------------------


def test_the_serving_token_comes_from_the_environment_never_the_file(
    registry: Registry, production: tuple[Any, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(tether.InvalidInput, match="token_env"):
        fast_deployment(
            tmp_path, "auth: {token: s3cret}\nendpoints: {iris: {routes: [iris@production]}}"
        )
    with pytest.raises(tether.InvalidInput, match="allow_non_finite"):
        fast_deployment(
            tmp_path, "endpoints: {iris: {routes: [iris@production], allow_non_finite: 1}}"
        )
    # The registry's own token's variable: clients would have been asked for that token,
    # and a rendered pod got two TETHER_TOKEN entries (a review).
    for taken in ("TETHER_TOKEN", "TETHER_URI", "TETHER_CACHE_DIR"):
        with pytest.raises(tether.InvalidInput, match="one of Tether's own settings"):
            fast_deployment(tmp_path, f"auth: {{token_env: {taken}}}\n"
                            "endpoints: {iris: {routes: [iris@production]}}")
    deployment = fast_deployment(tmp_path, "auth: {token_env: SERVE_TOKEN}\n"
                                   "endpoints: {iris: {routes: [iris@production]}}")
    monkeypatch.delenv("SERVE_TOKEN", raising=False)
    with pytest.raises(tether.InvalidInput, match=r"\$SERVE_TOKEN, which is not set"):
        start_runtime(registry, deployment)
    monkeypatch.setenv("SERVE_TOKEN", "short")
    with pytest.raises(tether.InvalidInput, match="shorter than"):
        start_runtime(registry, deployment)


def test_deploy_weights_sends_the_token(
    registry: Registry, canary: Any, tokens: dict[str, str]
) -> None:
    runner = CliRunner()
    with BackgroundServer(registry, canary) as server:
        args = ["deploy", "weights", "iris", "stable=70", "canary=30", "--url", server.url]
        refused = runner.invoke(cli, args, env={"TETHER_TOKEN": ""})
        assert refused.exit_code == 1
        assert "needs a token" in refused.output and "--token" in refused.output
        wrong = runner.invoke(cli, [*args, "--token", tokens["contributor"]])
        assert wrong.exit_code == 1 and "needs role approver" in wrong.output
        by_option = runner.invoke(cli, [*args, "--token", tokens["approver"]])
        assert by_option.exit_code == 0, by_option.output
        assert "canary=30 (30%)" in by_option.output
        by_env = runner.invoke(cli, [*args[:3], "stable=60", "canary=40", *args[5:]],
                               env={"TETHER_TOKEN": SERVING_TOKEN})
        assert by_env.exit_code == 0, by_env.output
        assert server.runtime.endpoint("iris").router.weights == {"stable": 60, "canary": 40}
        nan = runner.invoke(cli, [*args[:3], "canary=nan", *args[5:]],
                            env={"TETHER_TOKEN": SERVING_TOKEN})
        assert nan.exit_code != 0 and "finite" in nan.output
