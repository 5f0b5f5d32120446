"""Hostile requests against `tether serve`, each replayed the way a review sent it.

- a number too large for a float32 field (``1e39``) became infinity inside the model:
  a 500 that counted toward ``error_rate``, so any caller could roll back production;
- an Open Inference Protocol shape with a zero size (``[10**24, 0]``) passed the
  element limit and built that many empty rows on the event loop;
- values beyond their declared datatype (UINT8 300, FP32 1e39) went through;
- a chunked body was read whole before the size limit said no, and a body that
  never finished held its request forever;
- one stalled upload made every request of a batching endpoint wait the whole
  ``max_wait_ms``;
- a caller reusing another's request id took over that request's feedback;
- an unknown OIP output was refused after the request had been counted as served.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

import tether
from tether import Registry
from tether.serving import BackgroundServer, protocols
from tether.serving import app as serving_app

from .conftest import fast_deployment, wait_until

PREDICT = "/v1/endpoints/{}/predict"
FIELD = "petal width (cm)"
SERVING_TOKEN = "serving-secret-hostile-0123456789"


def _metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}\{{.*\}} (\S+)$",
                                                       text, re.MULTILINE))


def _log32(registry: Registry, iris: tuple[Any, Any], C: float) -> tether.ModelVersion:
    """An iris model fitted on float32 columns: its fields are typed ``float``."""
    from sklearn.linear_model import LogisticRegression

    X, y = iris
    X32 = X.astype("float32")
    model = LogisticRegression(C=C, max_iter=500).fit(X32, y)
    return registry.log_model(model, "iris32", input_example=X32.head(5))


@pytest.fixture
def iris32(registry: Registry, iris: tuple[Any, Any]) -> tuple[Any, Any]:
    v1, v2 = _log32(registry, iris, 1.0), _log32(registry, iris, 0.01)
    registry.promote(v1.ref, "production", create=True)
    registry.promote(v2.ref, "production")
    return v1, v2


ROLLBACK = """
endpoints:
  iris32:
    routes: [iris32@production]
    rollback: {{window: 30, min_requests: 5, rules: ["error_rate > 0.05"]}}{extra}
"""


def _window(c: httpx.Client, endpoint: str) -> dict[str, Any]:
    """The route's window once the supervisor has had ticks to judge the rules."""
    time.sleep(0.5)
    return dict(c.get(f"/v1/endpoints/{endpoint}").json()["routes"][0]["window"])


def _still_serving(registry: Registry, window: dict[str, Any], model: str, semver: str) -> None:
    """Nothing counted against the version, and production not rolled back."""
    assert window["errors"] == 0
    assert registry.get(f"{model}@production").semver == semver
    assert registry.audit_log(action="alias.rollback") == []


def _record(iris: tuple[Any, Any], value: str) -> bytes:
    X, _ = iris
    record = X.iloc[0].to_dict()
    parts = [f'"{k}": {value if k == FIELD else repr(float(v))}' for k, v in record.items()]
    return ('{"records": [{' + ", ".join(parts) + "}]}").encode()


def test_a_number_too_large_for_a_float32_field_is_422_and_cannot_roll_back(
    registry: Registry, iris: tuple[Any, Any], iris32: tuple[Any, Any], tmp_path: Path
) -> None:
    _, v2 = iris32
    assert registry.get(v2.ref).signature["inputs"]["fields"][0]["type"] == "float"
    # The harm, the unsafe way: let through, 1e39 is infinity in float32 and the model
    # fails (no rollback rules: no earlier version kept loaded to say it fails there too).
    unsafe = fast_deployment(tmp_path, "endpoints: {iris32: {routes: [iris32@production], "
                                       "allow_non_finite: true}}")
    with BackgroundServer(registry, unsafe) as server, httpx.Client(base_url=server.url) as c:
        failed = c.post(PREDICT.format("iris32"), content=_record(iris, "1e39"),
                        headers={"content-type": "application/json"})
    assert failed.status_code == 500 and "infinity" in failed.text.lower()

    deployment = fast_deployment(tmp_path, ROLLBACK.format(extra=""))
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        for value in ["1e39", "-3.5e38", str(10**39)] * 10:
            response = c.post(PREDICT.format("iris32"), content=_record(iris, value),
                              headers={"content-type": "application/json"})
            assert response.status_code == 422, (value, response.text)
            assert response.json()["field"] == FIELD and "beyond" in response.json()["message"]
        # The largest float32 itself is a number the model takes.
        ok = c.post(PREDICT.format("iris32"), content=_record(iris, "3.4e38"),
                    headers={"content-type": "application/json"})
        assert ok.status_code == 200, ok.text
        # The same value as an OIP FP32 tensor: refused by its datatype's range.
        oip = c.post("/v2/models/iris32/infer", json={"inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32",
             "data": [5.1, 3.5, 1.4, 1e39]}]})
        assert oip.status_code == 400 and "FP32's range" in oip.json()["error"]
        time.sleep(0.5)  # supervisor ticks: room to judge the rule
        window = c.get("/v1/endpoints/iris32").json()["routes"][0]["window"]
    assert window["requests"] == 1 and window["errors"] == 0
    assert registry.get("iris32@production").semver == v2.semver
    assert registry.audit_log(action="alias.rollback") == []


def test_oip_shapes_with_a_zero_size_are_refused_at_once(
    registry: Registry, iris32: tuple[Any, Any], tmp_path: Path
) -> None:
    # The harm, the old way: no values, yet one empty row per unit of the first size.
    assert len(protocols._split([], [100_000, 0])) == 100_000
    deployment = fast_deployment(tmp_path, "endpoints: {iris32: {routes: [iris32@production]}}")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        for shape in ([10**24, 0], [10**7, 0], [2, 10**100, 0], [0]):
            started = time.perf_counter()
            response = c.post("/v2/models/iris32/infer", json={"inputs": [
                {"name": "input", "shape": shape, "datatype": "FP64", "data": []}]})
            assert time.perf_counter() - started < 1.0, shape
            assert response.status_code == 400 and "holds no values" in response.json()["error"]
        assert c.get("/v2/health/live").status_code == 200


@pytest.mark.parametrize(("datatype", "data", "message"), [
    ("UINT8", [300, 1, 1, 1], "outside UINT8's range [0, 255]"),
    ("INT8", [-129, 1, 1, 1], "outside INT8's range"),
    ("FP16", [1e300, 1.0, 1.0, 1.0], "beyond FP16's range"),
    ("FP32", [-1e39, 1.0, 1.0, 1.0], "beyond FP32's range"),
])
def test_oip_values_beyond_their_datatype_are_400(datatype: str, data: list[Any],
                                                   message: str) -> None:
    with pytest.raises(tether.InvalidInput, match=re.escape(message)):
        protocols.parse_infer(httpx.Request("POST", "http://x", json={"inputs": [
            {"name": "input", "shape": [1, 4], "datatype": datatype, "data": data}]}).read(),
            None)
    fine = protocols.parse_infer(httpx.Request("POST", "http://x", json={"inputs": [
        {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1e39, 1, 1, 1]}]}).read(),
        None)
    assert fine.records == [[1e39, 1, 1, 1]]  # a double holds it: the endpoint judges it


def _streamed(parts: int, size: int) -> tuple[Request, list[int]]:
    """A request whose chunked body (no Content-Length) is ``parts`` pieces of ``size``."""
    pulled = [0]

    async def receive() -> dict[str, Any]:
        pulled[0] += 1
        return {"type": "http.request", "body": b"x" * size, "more_body": pulled[0] < parts}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    return Request(scope, receive), pulled


def test_a_chunked_body_is_refused_as_it_passes_the_limit() -> None:
    piece = 64 * 1024
    limit_pieces = serving_app.MAX_BODY // piece
    request, pulled = _streamed(1500, piece)
    with pytest.raises(tether.InvalidInput, match="over the"):
        asyncio.run(serving_app.read_body(request))
    assert pulled[0] == limit_pieces + 1  # stopped at the first piece past the limit
    # The old way read it all first: 1,500 pieces held (96 MB, 3 times the limit).
    request, pulled = _streamed(1500, piece)
    assert len(asyncio.run(request.body())) == 1500 * piece and pulled[0] == 1500


def _stalled(port: int, path: str) -> socket.socket:
    """A connection that sends its headers and 1 byte of a 100-byte body, then waits."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 100\r\n\r\n{".encode())
    return sock


def test_a_body_that_never_finishes_is_cut_off(
    registry: Registry, iris32: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving_app, "BODY_SECONDS", 1.0)
    deployment = fast_deployment(tmp_path, "endpoints: {iris32: {routes: [iris32@production]}}")
    with BackgroundServer(registry, deployment) as server:
        sock = _stalled(server.port, PREDICT.format("iris32"))
        sock.settimeout(10)
        started = time.perf_counter()
        answer = sock.recv(4096).decode()
        sock.close()
    assert answer.startswith("HTTP/1.1 400") and "no byte of the body arrived for 1 s" in answer
    assert time.perf_counter() - started < 5


def test_a_stalled_upload_does_not_hold_back_a_batching_endpoint(
    registry: Registry, iris: tuple[Any, Any], iris32: tuple[Any, Any], tmp_path: Path
) -> None:
    deployment = fast_deployment(tmp_path, """
endpoints:
  iris32:
    routes: [iris32@production]
    batching: {max_batch: 64, max_wait_ms: 1000}
""")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        good = _record(iris, "0.2")
        headers = {"content-type": "application/json"}
        assert c.post(PREDICT.format("iris32"), content=good, headers=headers).is_success
        stalled = _stalled(server.port, PREDICT.format("iris32"))
        try:
            time.sleep(0.2)
            started = time.perf_counter()
            response = c.post(PREDICT.format("iris32"), content=good, headers=headers)
            took = time.perf_counter() - started
        finally:
            stalled.close()
    assert response.status_code == 200
    # Counted as arriving before its body was read, the stalled request made this one
    # wait the whole max_wait_ms for it (1 s); now it is predicted at once.
    assert took < 0.5, took


def test_a_reused_request_id_takes_over_no_one_elses_feedback(
    registry: Registry, iris: tuple[Any, Any], iris32: tuple[Any, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, _ = iris32
    monkeypatch.setenv("TETHER_SERVING_TOKEN", SERVING_TOKEN)
    deployment = fast_deployment(tmp_path, f"""
auth: {{token_env: TETHER_SERVING_TOKEN}}
endpoints:
  iris32:
    routes:
      - {{name: stable, target: iris32@production, weight: 100}}
      - {{name: canary, target: {v1.ref}, weight: 0}}
""")
    bearer = {"Authorization": f"Bearer {SERVING_TOKEN}"}
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        ids = [c.post(PREDICT.format("iris32"), content=_record(iris, "0.2"),
                      headers={"content-type": "application/json"}).json()["request_id"]
               for _ in range(3)]
        # Generated ids are random, not a per-process prefix and a counter.
        assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids) and len(set(ids)) == 3
        # Another caller reuses the first id on the canary (OIP lets the caller choose it).
        hijack = c.post(f"/v2/models/iris32/versions/{v1.semver}/infer", json={
            "id": ids[0], "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64",
                                      "data": [6.7, 3.0, 5.2, 2.3]}]})
        assert hijack.status_code == 200
        answer = c.post("/v1/endpoints/iris32/feedback", headers=bearer,
                        json=[{"request_id": ids[0], "truth": [0]},
                              {"request_id": ids[1], "truth": [0]}])
        assert answer.json() == {"accepted": 1, "unknown": [], "reused": [ids[0]]}
        routes = {r["name"]: r["window"] for r in c.get("/v1/endpoints/iris32").json()["routes"]}
    # Only the untouched id's truth was booked, on the version that answered it.
    assert routes["stable"].get("feedback.accuracy:count") == 1
    assert routes["canary"].get("feedback.accuracy:count", 0) == 0


def test_an_unknown_output_is_refused_before_the_request_is_counted(
    registry: Registry, iris32: tuple[Any, Any], tmp_path: Path
) -> None:
    deployment = fast_deployment(tmp_path, "endpoints: {iris32: {routes: [iris32@production]}}")
    body = {"id": secrets.token_hex(4), "outputs": [{"name": "nope"}], "inputs": [
        {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        response = c.post("/v2/models/iris32/infer", json=body)
        assert response.status_code == 400 and "no output named 'nope'" in response.text
        window = c.get("/v1/endpoints/iris32").json()["routes"][0]["window"]
        metrics = c.get("/metrics").text
        feedback = server.runtime.endpoint("iris32")._recent
    assert window["requests"] == 0
    assert _metric(metrics, "tether_requests_total") == 0
    assert _metric(metrics, "tether_invalid_requests_total") == 1
    assert body["id"] not in feedback


def test_binary_bytes_beyond_the_shape_are_refused_before_they_are_decoded() -> None:
    """A 4 MB body of a million empty BYTES elements for a shape of one was decoded whole
    (0.7 s of the event loop) before its count was checked."""
    import json
    import struct

    raw = struct.pack("<I", 0) * 1_000_000
    header = json.dumps({"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    started = time.perf_counter()
    with pytest.raises(tether.InvalidInput, match="more than the 1 BYTES element"):
        protocols.parse_infer(header + raw, str(len(header)))
    assert time.perf_counter() - started < 0.1


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` (reads EOF) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_slow_clients_are_let_go(
    registry: Registry, iris32: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that connects and sends nothing, or half its headers, or a body a byte at
    a time was held as long as its sender liked: uvicorn times out only idle keep-alive."""
    from tether import _http_deadlines

    monkeypatch.setattr(_http_deadlines, "HEADER_SECONDS", 0.5)
    monkeypatch.setattr(_http_deadlines, "BODY_IDLE_SECONDS", 0.5)
    monkeypatch.setattr(serving_app, "BODY_SECONDS", 30.0)  # the protocol's deadline first
    deployment = fast_deployment(tmp_path, "endpoints: {iris32: {routes: [iris32@production]}}")
    with BackgroundServer(registry, deployment) as server:
        silent = socket.create_connection(("127.0.0.1", server.port))
        half = socket.create_connection(("127.0.0.1", server.port))
        half.sendall(b"POST /v1/endpoints/iris32/predict HTTP/1.1\r\nHost: x\r\n")
        trickle = _stalled(server.port, PREDICT.format("iris32"))
        assert all(_closed_within(s, 5.0) for s in (silent, half, trickle))
        # A client that keeps sending is not cut off, however slow the whole request.
        steady = socket.create_connection(("127.0.0.1", server.port))
        body = b'{"records": []}'
        steady.sendall(b"POST /v1/endpoints/iris32/predict HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Type: application/json\r\nContent-Length: "
                       + str(len(body)).encode() + b"\r\n\r\n")
        for byte in body:
            time.sleep(0.1)  # 1.5 s in all, a byte every 0.1 s
            steady.sendall(bytes([byte]))
        steady.settimeout(5)
        answer = steady.recv(4096)
        assert answer.startswith(b"HTTP/1.1 422"), answer  # answered: an empty batch
        for sock in (silent, half, trickle, steady):
            sock.close()
    # `tether server` runs the same deadlines (its protocol adds zero-copy sends).
    from tether._http_deadlines import Deadlines
    from tether.server.protocol import BodyProtocol

    assert issubclass(BodyProtocol, Deadlines)


def test_what_a_model_refuses_of_its_inputs_is_the_callers_error(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """1e308 is a finite double, so the guard let it through; a scaler then made it
    infinity and the model's own input check raised: a 500 that rolled production back."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = iris
    for C in (1.0, 0.5):
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=500)).fit(X, y)
        version = registry.log_model(pipe, "pipe", input_example=X.head(5))
        registry.promote(version.ref, "production", create=True)
    deployment = fast_deployment(tmp_path, """
endpoints:
  pipe:
    routes: [pipe@production]
    rollback: {window: 30, min_requests: 5, rules: ["error_rate > 0.05"]}
""")
    body = _record(iris, "1.7e308")  # finite; over the field's spread, infinity
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        for _ in range(10):
            answer = c.post(PREDICT.format("pipe"), content=body,
                            headers={"content-type": "application/json"})
            assert answer.status_code == 422, answer.text
            assert "refused these inputs" in answer.json()["message"]
        window = _window(c, "pipe")
    _still_serving(registry, window, "pipe", "1.1.0")


def test_float32_boundaries_are_where_float32_itself_rounds_to_infinity() -> None:
    from tether.serving.guard import _problem, float_limit

    limit = float_limit("float")
    assert _problem(3.4028235e38, False, limit=limit) is None  # rounds down to the maximum
    assert _problem(3.4028236e38, False, limit=limit) is not None
    half = float_limit("tensor", "float16")
    assert _problem(65519.0, False, limit=half) is None and _problem(65520.0, False, limit=half)
    with pytest.raises(tether.InvalidInput, match="dimensions"):
        protocols.parse_infer(httpx.Request("POST", "http://x", json={"inputs": [
            {"name": "x", "shape": [1] * 65, "datatype": "FP64", "data": [0.5]}]}).read(), None)


def test_a_retried_request_keeps_its_feedback(
    registry: Registry, iris: tuple[Any, Any], iris32: tuple[Any, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client retrying with its own id (the same records) lost its feedback as 'reused'."""
    monkeypatch.setenv("TETHER_SERVING_TOKEN", SERVING_TOKEN)
    deployment = fast_deployment(tmp_path, """
auth: {token_env: TETHER_SERVING_TOKEN}
endpoints: {iris32: {routes: [iris32@production]}}
""")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        body = json.dumps({"records": [dict(iris[0].iloc[0].astype(float))],
                           "request_id": "order-17"})
        for _ in range(2):
            assert c.post(PREDICT.format("iris32"), content=body,
                          headers={"content-type": "application/json"}).status_code == 200
        answer = c.post("/v1/endpoints/iris32/feedback",
                        headers={"Authorization": f"Bearer {SERVING_TOKEN}"},
                        json={"request_id": "order-17", "truth": [0]})
    assert answer.json() == {"accepted": 1, "unknown": []}


def test_a_version_that_makes_infinity_of_ordinary_values_still_counts(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """The other side of the rule above: with ordinary values the same refusal is the
    version's own fault (here 1/x of a zero), a 500 the rules count."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = iris
    pipe = make_pipeline(FunctionTransformer(np.reciprocal),
                         LogisticRegression(max_iter=500)).fit(X, y)
    registry.log_model(pipe, "recip", input_example=X.head(5), serialization="pickle")
    deployment = fast_deployment(tmp_path, "endpoints: {recip: {routes: [recip@latest], "
                                           "trusted: true}}")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        answer = c.post(PREDICT.format("recip"), content=_record(iris, "0.0"),
                        headers={"content-type": "application/json"})
        window = c.get("/v1/endpoints/recip").json()["routes"][0]["window"]
    assert answer.status_code == 500, answer.text
    assert window["errors"] == 1


def test_an_oip_input_the_version_does_not_take_is_named(
    registry: Registry, iris: tuple[Any, Any], iris32: tuple[Any, Any], tmp_path: Path
) -> None:
    """Named inputs a model does not take were dropped without a word (a misspelt one
    went unnoticed)."""
    X, _ = iris
    row = X.iloc[0]
    inputs = [{"name": str(name), "shape": [1], "datatype": "FP32", "data": [float(row[name])]}
              for name in X.columns]
    deployment = fast_deployment(tmp_path, "endpoints: {iris32: {routes: [iris32@production]}}")
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        assert c.post("/v2/models/iris32/infer", json={"inputs": inputs}).status_code == 200
        bogus = c.post("/v2/models/iris32/infer", json={"inputs": [
            *inputs, {"name": "bogus", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
        metrics = c.get("/metrics").text
    assert bogus.status_code == 400 and "no input named 'bogus'" in bogus.json()["error"]
    assert _metric(metrics, "tether_requests_total") == 1


def test_a_large_body_is_decoded_off_the_event_loop_and_counted_first(
    registry: Registry, iris32: tuple[Any, Any], tmp_path: Path
) -> None:
    """30 MB of values for a shape of four were each parsed and type-checked on the event
    loop before the count was compared: every request, health checks included, waited."""
    n = 6_000_000
    body = (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":['
            + b"0," * (n - 1) + b"0]}]}")
    deployment = fast_deployment(tmp_path, "endpoints: {iris32: {routes: [iris32@production]}}")
    finished: dict[str, float] = {}
    with BackgroundServer(registry, deployment) as server:
        def big() -> None:
            answer = httpx.post(f"{server.url}/v2/models/iris32/infer", content=body,
                                timeout=60)
            finished["big"] = time.perf_counter()
            finished["status"] = answer.status_code
            finished["count_first"] = float("data has 6000000" in answer.text)

        import threading

        worker = threading.Thread(target=big)
        worker.start()
        time.sleep(0.3)  # the body is in and being decoded
        started_at = time.perf_counter()
        health = httpx.get(f"{server.url}/v2/health/live", timeout=60)
        finished["health"] = time.perf_counter()
        worker.join()
    assert health.status_code == 200 and finished["status"] == 400
    assert finished["count_first"]
    # Answered while the large body was still being decoded, not just after it (before,
    # the health check waited the whole decode and came back a hair after the refusal).
    assert finished["health"] < finished["big"] - 0.05, (finished, started_at)


def test_an_endpoint_serving_two_models_names_each_version_with_its_model(
    registry: Registry, iris: tuple[Any, Any], iris32: tuple[Any, Any], tmp_path: Path
) -> None:
    """Routes to iris32@1.0.0 and twin@1.0.0: /versions/1.0.0/ always reached the route
    listed first, the other was unreachable, and metadata listed 1.0.0 twice."""
    from sklearn.linear_model import LogisticRegression

    X, y = iris
    X32 = X.astype("float32")
    twin = registry.log_model(LogisticRegression(C=0.1, max_iter=500).fit(X32, y), "twin",
                              input_example=X32.head(5))
    deployment = fast_deployment(tmp_path, f"""
endpoints:
  mixed:
    routes:
      - {{name: a, target: "{iris32[0].ref}", weight: 0}}
      - {{name: b, target: "{twin.ref}", weight: 100}}
""")
    inputs = {"inputs": [{"name": c, "datatype": "FP32", "shape": [1], "data": [float(v)]}
                         for c, v in X32.iloc[0].items()]}
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        meta = c.get("/v2/models/mixed").json()
        assert sorted(meta["versions"]) == ["iris32@1.0.0", "twin@1.0.0"]
        ambiguous = c.post("/v2/models/mixed/versions/1.0.0/infer", json=inputs)
        assert ambiguous.status_code == 409 and "say which" in ambiguous.text
        for model in ("iris32", "twin"):
            answer = c.post(f"/v2/models/mixed/versions/{model}@1.0.0/infer", json=inputs)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"].startswith("1.0.0"), answer.json()
            assert answer.headers["x-model-version"].startswith(f"{model}@1.0.0"), answer.headers


def test_large_bodies_queue_for_a_bounded_time_then_503(
    registry: Registry, iris32: tuple[Any, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client's stream of large bodies queued every other large body without end."""
    import threading

    monkeypatch.setattr(serving_app, "_LARGE_DECODE_WAIT", 0.01)
    body = (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":['
            + b"0," * 3_000_000 + b"0]}]}")
    deployment = fast_deployment(tmp_path, "endpoints: {iris32: {routes: [iris32@production]}}")
    answers: list[httpx.Response] = []
    with BackgroundServer(registry, deployment) as server:
        def post() -> None:
            answers.append(httpx.post(f"{server.url}/v2/models/iris32/infer", content=body,
                                      timeout=60))

        workers = [threading.Thread(target=post) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    codes = sorted(a.status_code for a in answers)
    assert 400 in codes and 503 in codes, [a.text[:100] for a in answers]
    busy = next(a for a in answers if a.status_code == 503)
    assert "busy decoding" in busy.text and busy.headers.get("retry-after")


def _flat4(x: Any) -> Any:
    import numpy as np

    return np.asarray(x).reshape(-1, 4)


@pytest.mark.parametrize("value", ["null", '"nan"', '"inf"', '"1e400"'])
def test_missing_or_text_values_in_a_tensor_are_the_callers_error(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path, value: str
) -> None:
    """null, "nan" or "inf" in a tensor record: numpy's cast made them NaN or infinity
    without a word, the model refused them, and the 500 counted against the version:
    eight requests from anyone rolled production back (a review). Now they are refused
    as the record's own fault (422), before the model sees them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = iris
    X3 = X.to_numpy().astype("float32").reshape(-1, 2, 2)
    _promote_two(registry, "tens", [
        make_pipeline(FunctionTransformer(_flat4), LogisticRegression(C=C, max_iter=500)
                      ).fit(X3, y) for C in (1.0, 0.5)], X3[:3])
    assert registry.get("tens@production").signature["inputs"]["kind"] == "tensor"
    deployment = fast_deployment(tmp_path, ROLLBACK_ON.format(name="tens"))
    body = '{"records": [{"input": [[' + value + ', 1.0], [1.0, 1.0]]}]}'
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        fine = c.post(PREDICT.format("tens"), json={"records": [{"input": X3[0].tolist()}]})
        assert fine.status_code == 200, fine.text
        for _ in range(8):
            answer = c.post(PREDICT.format("tens"), content=body,
                            headers={"content-type": "application/json"})
            assert answer.status_code == 422, answer.text
        window = _window(c, "tens")
    _still_serving(registry, window, "tens", "1.1.0")


def test_a_model_refusing_missing_or_text_values_is_the_callers_error() -> None:
    """Where no signature checks a record, what the model refuses of "nan" or "1e400" sent
    as text is still the caller's doing, not the version's (``_implausible``)."""
    from tether.serving.endpoint import _implausible

    for bad in ("nan", "-inf", "1e400", "1e200"):
        assert _implausible([{"x": [1.0, bad]}]), bad
    # A missing value is normal input (an imputed column): a refusal beside one is judged
    # by the route's earlier version, not taken as the caller's (a later review).
    for fine in (None, "cat", "12.5", "", 3, 2.5, True):
        assert not _implausible([{"x": [1.0, fine]}]), fine


def test_an_oip_request_over_the_record_limit_is_refused_before_decoding() -> None:
    """A 16 MB body declaring four million BYTES records took 4 s of the event loop to
    decode before the endpoint's record limit refused it, slowing every other client
    tenfold (a review); a shape of more elements than the bytes can hold decoded
    every element first too."""
    import json
    import struct

    raw = b"".join([struct.pack("<I", 1) + b"x"] * 1_000_000)
    header = json.dumps({"inputs": [{"name": "s", "shape": [1_000_000], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    started = time.perf_counter()
    with pytest.raises(tether.InvalidInput, match="over this endpoint's limit of 10000"):
        protocols.parse_infer(header + raw, str(len(header)), 10_000)
    short = json.dumps({"inputs": [{"name": "s", "shape": [4_000_000], "datatype": "BYTES",
                                    "parameters": {"binary_data_size": len(raw)}}]}).encode()
    with pytest.raises(tether.InvalidInput, match="cannot hold 4000000 BYTES elements"):
        protocols.parse_infer(short + raw, str(len(short)))
    assert time.perf_counter() - started < 0.2
    odd = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": ["FP64"],
                       "data": [1.0, 2.0, 3.0, 4.0]}]}
    with pytest.raises(tether.InvalidInput, match="unknown datatype"):
        protocols.parse_infer(json.dumps(odd).encode(), None)


def test_answers_are_strict_json_and_nan_keeps_out_of_the_histogram(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """A model predicting infinity answered ``-Infinity``, which only Python reads as JSON
    (a browser's JSON.parse failed on the whole answer), and one NaN prediction made the
    prediction histogram's sum NaN for good (a review)."""
    from sklearn.linear_model import LinearRegression

    X, y = iris
    model = LinearRegression().fit(X, y.astype(float) * 1e6)
    registry.log_model(model, "bigr", input_example=X.head(3))
    deployment = fast_deployment(tmp_path, "endpoints: {bigr: {routes: [bigr@latest]}}")
    huge = X.iloc[:2].copy()
    huge.iloc[0] = 1e305  # finite in, -infinity out
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        rows = huge.to_dict(orient="records")
        answer = c.post(PREDICT.format("bigr"), json={"records": rows})
        oip = c.post("/v2/models/bigr/infer", json={"inputs": [
            {"name": "input", "shape": [2, 4], "datatype": "FP64",
             "data": huge.to_numpy().reshape(-1).tolist()}]})
        metrics = c.get("/metrics").text
    for body in (answer, oip):
        assert body.status_code == 200, body.text
        assert "Infinity" not in body.text and "NaN" not in body.text
        json.loads(body.text, parse_constant=lambda name: pytest.fail(name))
    predictions = answer.json()["predictions"]
    assert predictions[0] is None and isinstance(predictions[1], float)
    assert oip.json()["outputs"][0]["data"][0] is None
    sums = [line for line in metrics.splitlines()
            if line.startswith("tether_prediction_value_sum")]
    assert sums and all("NaN" not in line and "nan" not in line.split()[-1] for line in sums)


def test_mlflow_dataframe_split_refuses_a_column_named_twice() -> None:
    """``{"columns": ["a", "a"], ...}`` kept the last value of the two without a word."""
    body = {"dataframe_split": {"columns": ["a", "b", "a"], "data": [[1, 2, 3]]}}
    with pytest.raises(tether.InvalidInput, match="names 'a' twice"):
        protocols.parse_mlflow(body)


def _promote_two(registry: Registry, name: str, models: list[Any], example: Any) -> None:
    for model in models:
        version = registry.log_model(model, name, input_example=example, serialization="pickle")
        registry.promote(version.ref, "production", create=True)


ROLLBACK_ON = """
endpoints:
  {name}:
    routes: [{name}@production]
    trusted: true
    rollback: {{window: 30, min_requests: 5, rules: ["error_rate > 0.05"]}}
"""


def test_what_every_version_refuses_cannot_roll_production_back(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """1e80 is below the 1e100 of ``_implausible``, yet x**4 of it overflows inside a
    polynomial pipeline: eight such requests from anyone rolled production back to a
    version that refuses them just the same (a review). The route now keeps the alias's
    earlier version loaded; what it refuses too is the records' fault, a 422."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    X, y = iris
    _promote_two(registry, "poly", [
        make_pipeline(StandardScaler(), PolynomialFeatures(4),
                      LogisticRegression(C=C, max_iter=2000)).fit(X, y) for C in (1.0, 0.5)],
        X.head(3))
    deployment = fast_deployment(tmp_path, ROLLBACK_ON.format(name="poly"))
    body = {"records": [dict.fromkeys(X.columns, 1e80)]}
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        for _ in range(8):
            answer = c.post(PREDICT.format("poly"), json=body)
            assert answer.status_code == 422, answer.text
            assert "so does poly@1.0.0, served before it" in answer.json()["message"]
        window = _window(c, "poly")
    _still_serving(registry, window, "poly", "1.1.0")


def test_what_only_the_new_version_refuses_still_rolls_it_back(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """The other side: the earlier version takes the records, so the refusal is the new
    version's own (1/x of a zero), counted, and production goes back to the earlier one,
    kept loaded for it."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = iris
    _promote_two(registry, "recip2", [
        LogisticRegression(max_iter=500).fit(X, y),
        make_pipeline(FunctionTransformer(np.reciprocal), LogisticRegression(max_iter=500)
                      ).fit(X, y)], X.head(3))
    deployment = fast_deployment(tmp_path, ROLLBACK_ON.format(name="recip2"))
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        for _ in range(6):
            answer = c.post(PREDICT.format("recip2"), content=_record(iris, "0.0"),
                            headers={"content-type": "application/json"})
            assert answer.status_code in (500, 200), answer.text
        wait_until(lambda: registry.get("recip2@production").semver == "1.0.0")
    assert [e.action for e in registry.audit_log(action="alias.rollback")] == ["alias.rollback"]


def test_a_version_failing_beside_a_missing_value_still_rolls_back(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """A null in an imputed column made every refusal of the request the caller's fault,
    so a version that overflows on its own (1/x of a zero) was never rolled back (a
    review of the day's fixes). The earlier version takes the same records: counted."""
    import numpy as np
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = iris
    example = X.head(3).copy()
    example.iloc[0, 1] = np.nan  # the column has gaps: a nullable field
    _promote_two(registry, "gaps", [
        make_pipeline(SimpleImputer(), LogisticRegression(max_iter=500)).fit(X, y),
        make_pipeline(SimpleImputer(), FunctionTransformer(np.reciprocal),
                      LogisticRegression(max_iter=500)).fit(X, y)], example)
    deployment = fast_deployment(tmp_path, ROLLBACK_ON.format(name="gaps"))
    record = X.iloc[0].to_dict()
    first, other = list(record)[:2]
    record[first], record[other] = 0.0, None
    with BackgroundServer(registry, deployment) as server, httpx.Client(base_url=server.url) as c:
        for _ in range(6):
            answer = c.post(PREDICT.format("gaps"), json={"records": [record]})
            assert answer.status_code in (500, 200), answer.text
        wait_until(lambda: registry.get("gaps@production").semver == "1.0.0")


def test_finite_text_or_objects_in_a_numeric_tensor_still_convert() -> None:
    """The refusal of null and "nan" in a tensor also refused finite values numpy
    converts: an object array of floats (a mixed frame's to_numpy()), ints past 2**64 in
    a float tensor, numeric text (a review of the day's fixes)."""
    import numpy as np

    from tether._schema.records import _converted
    from tether._schema.types import Field

    field = Field(name="input", type="tensor", dtype="float64", shape=(-1, 2))
    for fine in (np.array([1.0, 2.0], dtype=object), [2**64, 1.0], ["1.5", "2"]):
        assert np.isfinite(_converted(field, fine)).all()
    for bad in ([None, 1.0], ["nan", 1.0], ["1e400", 1.0]):
        with pytest.raises(TypeError):
            _converted(field, bad)
