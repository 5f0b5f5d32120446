"""Hostile input against a real `tether server` over HTTP: every answer a clear 4xx
JSON error, never a 500, never a hang.

Each test replays a finding the way an attacker sent it (a reader's LIKE filter
that froze the server, bad arguments to /call, absurd limits, 100,000 levels of
JSON nesting on every JSON route, wrong JSON types in the MLflow API, a 20 MiB
description on a route that ignored the body limit).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.server.bodies import MAX_BODY, MAX_DEPTH
from tether.server.mlflow_filter import SEARCH_STEPS, Budget, MlflowError, _like, parse_filter

from .servers import Server, assert_logs_clean, start_server, stop, version_values

ML = "/api/2.0/mlflow"
LONG_NAME = "a" * 80 + "b"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hardening")
    running = start_server(f"sqlite:///{tmp / 'meta.db'}", f"file://{tmp / 'objects'}", tmp)
    created = running.api("POST", f"{ML}/registered-models/create", json={"name": LONG_NAME})
    assert created.status_code == 200, created.text
    version = running.api(
        "POST", f"{ML}/model-versions/create", json={"name": LONG_NAME, "source": "s3://b/1"}
    )
    assert version.status_code == 200, version.text
    yield running
    stop(running)


@pytest.fixture(scope="module")
def reader(server: Server) -> str:
    return str(server.client().create_token("rita", role="reader")["token"])


def tether_error(response: httpx.Response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    for fragment in fragments:
        assert fragment in body["message"], body


def mlflow_error(response: httpx.Response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code, body
    for fragment in fragments:
        assert fragment in body["message"], body


# -- LIKE filters: linear time, off the event loop ------------------------------------------


def _old_like(pattern: str, value: str) -> bool:
    """The matcher the server used to have: LIKE translated into a backtracking regex."""
    regex = (
        "^"
        + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
        + "$"
    )
    return re.match(regex, value) is not None


def test_the_old_regex_translation_really_backtracks() -> None:
    # 16 characters of pattern against 30 characters of name: the regex tries every
    # way to split the name among the seven `.*` (tens of ms here, 18 s at 61
    # characters in the finding); the matcher tries each piece once.
    pattern, value = "%a" * 7 + "%c", "a" * 30
    start = time.perf_counter()
    assert not _old_like(pattern, value)
    old = time.perf_counter() - start
    new = float("inf")
    for _ in range(5):  # the best of a few: one run can lose 4 ms to the scheduler
        start = time.perf_counter()
        assert not _like(pattern, value, case=True)
        new = min(new, time.perf_counter() - start)
    assert old > 0.005 and old > 50 * new, (old, new)


def test_like_matcher_agrees_with_sql_like() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        pattern = "".join(rng.choice("ab%_") for _ in range(rng.randint(0, 7)))
        value = "".join(rng.choice("ab") for _ in range(rng.randint(0, 7)))
        assert _like(pattern, value, case=True) == _old_like(pattern, value), (pattern, value)
    assert _like("FR%", "fraud", case=False) and not _like("FR%", "fraud", case=True)
    assert _like("a.b", "a.b", case=True) and not _like("a.b", "axb", case=True)
    assert _like("x%\n_", "x\n\n", case=True)


def test_a_version_number_filter_takes_integers_only() -> None:
    """`version_number = 1.5` matched version 1 (int(1.5) is 1)."""
    from tether.server.mlflow_filter import VERSIONS, check

    with pytest.raises(MlflowError, match="expected an integer"):
        check(parse_filter("version_number = 1.5"), VERSIONS)
    assert check(parse_filter("version_number = 2.0"), VERSIONS) == [("version_number", "=", 2)]


def test_filter_parser_is_linear_and_refuses_clearly() -> None:
    start = time.perf_counter()
    with pytest.raises(MlflowError, match="expected AND"):
        parse_filter("name = 'a'" + " " * 16000 + "x")
    assert time.perf_counter() - start < 0.5
    assert parse_filter("name = 'it''s' AND tags.`my key` IN ('a', 'b')") == [
        ("name", "=", "it's"),
        ("tags.my key", "IN", ["a", "b"]),
    ]


def test_reader_like_filter_cannot_freeze_the_server(server: Server, reader: str) -> None:
    # The finding: 61 characters from a reader, 18 s with the whole server frozen.
    finding = "name LIKE '" + "%a" * 24 + "c'"
    assert len(finding) == 61
    started = time.perf_counter()
    answer = server.api("GET", f"{ML}/registered-models/search", reader, params={"filter": finding})
    assert answer.status_code == 200 and answer.json() == {"registered_models": []}
    assert time.perf_counter() - started < 1.0

    pattern = "%a" * 80 + "%" * 838 + "%b"  # 80 a's then a b: matches the name
    hopeless = "%a" * 499 + "%b"  # 499 a's: the backtracking regex's worst case
    assert len(pattern) == len(hopeless) == 1000
    for op, pat in (("LIKE", pattern), ("ILIKE", pattern.upper()), ("LIKE", hopeless)):
        started = time.perf_counter()
        answer = server.api(
            "GET",
            f"{ML}/registered-models/search",
            reader,
            params={"filter": f"name {op} '{pat}'"},
        )
        assert time.perf_counter() - started < 1.0
        assert answer.status_code == 200, answer.text
        expected = [] if pat == hopeless else [LONG_NAME]
        assert [m["name"] for m in answer.json().get("registered_models", [])] == expected
    versions = server.api(
        "GET",
        f"{ML}/model-versions/search",
        reader,
        params={"filter": f"name LIKE '{pattern}' AND source_path LIKE 's3:__b/%'"},
    )
    assert [v["version"] for v in versions.json()["model_versions"]] == ["1"]


def test_like_with_many_underscores_over_long_values_is_refused_not_run(
    server: Server, reader: str
) -> None:
    # The finding: a contributor stores a long source, a reader filters it with a
    # pattern of thousands of '_': 122 s of matching in C, holding the GIL, with
    # /health unanswered meanwhile. Here 100 KB and 4,000 characters of pattern.
    long_source = "x" * 100_000
    model = server.api("POST", f"{ML}/registered-models/create", json={"name": "long-source"})
    assert model.status_code == 200, model.text
    created = server.api("POST", f"{ML}/model-versions/create",
                         json={"name": "long-source", "source": long_source})
    assert created.status_code == 200, created.text
    pattern = "%" + "x_" * 2000 + "y%"
    # The harm, the unbounded way: one comparison is 400 million character steps.
    started = time.perf_counter()
    assert not _like(pattern, long_source, case=True)
    unbounded = time.perf_counter() - started
    with pytest.raises(MlflowError, match="costs too much"):
        _like(pattern, long_source, case=True, budget=Budget())
    assert 3 * SEARCH_STEPS < 100_000 * 4000
    # Through the server: refused before the comparison runs, in far less time.
    started = time.perf_counter()
    answer = server.api("GET", f"{ML}/model-versions/search", reader,
                        params={"filter": f"source_path LIKE '{pattern}'"})
    refused = time.perf_counter() - started
    mlflow_error(answer, 400, "INVALID_PARAMETER_VALUE", "costs too much", "fewer '_'")
    assert refused < max(1.0, unbounded), (refused, unbounded)
    # An ordinary pattern over the same long value still answers.
    fine = server.api("GET", f"{ML}/model-versions/search", reader,
                      params={"filter": "source_path LIKE 'xx_x%'"})
    assert fine.status_code == 200, fine.text
    assert [v["source"][:3] for v in fine.json()["model_versions"]] == ["xxx"]


def test_health_stays_fast_while_searches_run(server: Server, reader: str) -> None:
    filter_ = "name LIKE '" + "%a" * 499 + "%c'"
    searches: list[float] = []
    failures: list[str] = []
    stop_at = time.monotonic() + 2.0

    def search() -> None:
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                answer = http.get(
                    f"{server.url}{ML}/registered-models/search",
                    params={"filter": filter_},
                    headers={"Authorization": f"Bearer {reader}"},
                )
                searches.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    failures.append(answer.text)

    workers = [threading.Thread(target=search) for _ in range(4)]
    for worker in workers:
        worker.start()
    health: list[float] = []
    with httpx.Client(timeout=30) as http:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            assert http.get(f"{server.url}/api/v1/health").status_code == 200
            health.append(time.perf_counter() - started)
            time.sleep(0.02)
    for worker in workers:
        worker.join()
    assert not failures, failures[:1]
    assert searches and max(searches) < 1.0, max(searches)
    assert health and max(health) < 0.5, max(health)


def test_filters_too_long_or_malformed_are_400(server: Server, reader: str) -> None:
    huge = server.api(
        "GET",
        f"{ML}/registered-models/search",
        reader,
        params={"filter": "name LIKE '" + "%" * 20000 + "'"},
    )
    mlflow_error(huge, 400, "INVALID_PARAMETER_VALUE", "the limit is 16384")
    broken = server.api(
        "GET", f"{ML}/model-versions/search", reader, params={"filter": "name = 'a' OR name = 'b'"}
    )
    mlflow_error(broken, 400, "INVALID_PARAMETER_VALUE", "Invalid filter")
    order = server.api("GET", f"{ML}/registered-models/search", reader, params={"order_by": " "})
    mlflow_error(order, 400, "INVALID_PARAMETER_VALUE", "order_by")


# -- /call: arguments checked against the use case's signature ------------------------------


def test_call_with_wrong_arguments_is_400(server: Server) -> None:
    cases = [
        ({"args": ["p", "reader", "x", "y"]}, "too many positional arguments"),
        ({"kwargs": {"nope": 1}}, "missing a required argument: 'principal'"),
        ({"args": ["p", "reader"], "kwargs": {"nope": 1}}, "unexpected keyword argument 'nope'"),
        ({"args": [5, "reader"]}, "argument 'principal' must be a string, not a number"),
        ({"args": ["p", "reader"], "kwargs": {"model": ["m"]}}, "'model' must be a string or"),
        ({"args": "p"}, "field 'args' must be a list"),
        ({"kwargs": []}, "field 'kwargs' must be an object"),
    ]
    for body, message in cases:
        answer = server.api("POST", "/api/v1/call/grant", json=body)
        tether_error(answer, 400, "invalid_input", message)
        assert "grant(" in (answer.json()["hint"] or "grant(")
    revision = server.api(
        "POST", "/api/v1/call/get_policy", json={"args": [LONG_NAME], "kwargs": {"revision": True}}
    )
    tether_error(revision, 400, "invalid_input", "'revision' must be an integer or null")
    assert server.api("POST", "/api/v1/call/grants", json={}).status_code == 200
    # A lone surrogate (half of a UTF-16 pair) decodes from JSON but no database takes
    # it: it was a 500 with a traceback (a review). A whole pair is a character.
    for method, rest in (("deployment", b""), ("deployment_history", b""),
                         ("record_deployment_signature", b', {}, "k", "s"')):
        lone = server.api("POST", f"/api/v1/call/{method}",
                          content=b'{"args": ["\\ud800"' + rest + b"]}",
                          headers={"Content-Type": "application/json"})
        tether_error(lone, 400, "invalid_input", "lone surrogate")
    pair = server.api("POST", "/api/v1/call/deployment", content=b'{"args": ["\\ud83d\\ude00"]}',
                      headers={"Content-Type": "application/json"})
    assert pair.status_code in (400, 404) and "surrogate" not in pair.text


# -- limits ----------------------------------------------------------------------------------


def test_absurd_limits_are_400(server: Server, reader: str) -> None:
    for raw, message in [
        (str(10**30), "at most"),
        ("-1", "must not be negative"),
        ("1.5", "must be an integer"),
        ("abc", "must be an integer"),
        ("\u00b2", "must be an integer"),
    ]:
        answer = server.api("GET", "/api/v1/audit", reader, params={"limit": raw})
        tether_error(answer, 400, "invalid_input", "limit", message)
    assert len(server.api("GET", "/api/v1/audit", reader, params={"limit": "1"}).json()) == 1

    for params, message in [
        ({"max_results": str(10**30)}, "max_results must be at most"),
        ({"max_results": "-5"}, "max_results must not be negative"),
        ({"max_results": "x"}, "max_results must be an integer"),
        ({"page_token": "-1"}, "page_token must not be negative"),
        ({"page_token": "9" * 40}, "page_token must be at most"),
    ]:
        for path in ("/registered-models/search", "/model-versions/search"):
            answer = server.api("GET", f"{ML}{path}", reader, params=params)
            mlflow_error(answer, 400, "INVALID_PARAMETER_VALUE", message)
    repeated = server.api("GET", f"{ML}/model-versions/search?max_results=1&max_results=2", reader)
    mlflow_error(repeated, 400, "INVALID_PARAMETER_VALUE", "max_results must be an integer")
    version = server.api(
        "GET", f"{ML}/model-versions/get", reader, params={"name": LONG_NAME, "version": "9" * 30}
    )
    mlflow_error(version, 400, "INVALID_PARAMETER_VALUE", "must be an integer")


# -- JSON nesting on every JSON route ---------------------------------------------------------

REST_JSON_ROUTES = [
    ("POST", f"/api/v1/models/{LONG_NAME}/versions"),
    ("PUT", f"/api/v1/models/{LONG_NAME}/aliases/staging"),
    ("POST", f"/api/v1/models/{LONG_NAME}/aliases/staging/rollback"),
    ("POST", "/api/v1/call/grant"),
    ("POST", "/api/v1/blobs/presign"),
]
MLFLOW_JSON_ROUTES = [
    ("POST", "/registered-models/create"),
    ("POST", "/registered-models/rename"),
    ("PATCH", "/registered-models/update"),
    ("DELETE", "/registered-models/delete"),
    ("POST", "/registered-models/get-latest-versions"),
    ("POST", "/registered-models/set-tag"),
    ("DELETE", "/registered-models/delete-tag"),
    ("POST", "/registered-models/alias"),
    ("DELETE", "/registered-models/alias"),
    ("POST", "/model-versions/create"),
    ("PATCH", "/model-versions/update"),
    ("POST", "/model-versions/transition-stage"),
    ("DELETE", "/model-versions/delete"),
    ("POST", "/model-versions/set-tag"),
    ("DELETE", "/model-versions/delete-tag"),
]


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_nesting_is_400_on_every_json_route(server: Server, opener: bytes) -> None:
    deep = opener * 100_000
    for method, path in REST_JSON_ROUTES:
        answer = server.api(method, path, content=deep)
        tether_error(answer, 400, "too_deep", f"nested deeper than {MAX_DEPTH} levels")
    for method, path in MLFLOW_JSON_ROUTES:
        answer = server.api(method, f"{ML}{path}", content=deep)
        mlflow_error(answer, 400, "MALFORMED_REQUEST", "nested deeper")
    # Just past the limit, as valid JSON, inside a field the handler would walk.
    nested: Any = "x"
    for _ in range(MAX_DEPTH):
        nested = [nested]
    answer = server.api(
        "POST", f"/api/v1/models/{LONG_NAME}/versions", json={"values": {"params": nested}}
    )
    tether_error(answer, 400, "too_deep")


def test_non_json_numbers_and_bytes_are_400(server: Server) -> None:
    path = f"/api/v1/models/{LONG_NAME}/aliases/staging"
    for content, message in [
        (b'{"version": NaN}', "NaN"),
        (b'{"version": 1e400}', "out of range"),
        (b'{"version": ' + b"1" * 5000 + b"}", "not valid JSON"),
        (b'{"version": "\xff"}', "not valid JSON"),
    ]:
        tether_error(server.api("PUT", path, content=content), 400, "invalid_input", message)
    answer = server.api("PATCH", f"{ML}/registered-models/update", content=b'{"name": Infinity}')
    mlflow_error(answer, 400, "MALFORMED_REQUEST", "Infinity")


# -- wrong JSON types ------------------------------------------------------------------------


def test_mlflow_wrong_types_are_400(server: Server) -> None:
    cases = [
        ("POST", "/registered-models/create", {"name": 5}, "Invalid value 5 for parameter 'name'"),
        ("POST", "/registered-models/create", {"name": ["a"]}, "parameter 'name'"),
        ("POST", "/registered-models/create", {"name": {"a": 1}}, "got an object"),
        ("POST", "/registered-models/create", {"name": "t", "tags": [1]}, "Invalid tag"),
        ("POST", "/registered-models/create", {"name": "t", "tags": {"a": "b"}}, "'tags'"),
        (
            "POST",
            "/registered-models/create",
            {"name": "t", "tags": [{"key": "k", "value": 3}]},
            "tags.k.value",
        ),
        ("POST", "/registered-models/create", {"name": "t", "description": 7}, "description"),
        ("PATCH", "/registered-models/update", {"name": LONG_NAME, "description": [1]}, "desc"),
        ("POST", "/registered-models/set-tag", {"name": LONG_NAME, "key": 1, "value": "v"}, "key"),
        (
            "POST",
            "/registered-models/set-tag",
            {"name": LONG_NAME, "key": "k", "value": {"v": 1}},
            "'value'",
        ),
        ("POST", "/model-versions/create", {"name": LONG_NAME, "source": 1}, "'source'"),
        (
            "POST",
            "/model-versions/create",
            {"name": LONG_NAME, "source": "s3://x", "run_id": 5},
            "'run_id'",
        ),
        (
            "POST",
            "/model-versions/set-tag",
            {"name": LONG_NAME, "version": 1, "key": "k", "value": "v"},
            "'version'",
        ),
        (
            "POST",
            "/registered-models/alias",
            {"name": LONG_NAME, "alias": ["x"], "version": "1"},
            "'alias'",
        ),
    ]
    for method, path, body, message in cases:
        answer = server.api(method, f"{ML}{path}", json=body)
        mlflow_error(answer, 400, "INVALID_PARAMETER_VALUE", message)
    for body_ in ([1, 2], "name", 5):
        answer = server.api("POST", f"{ML}/registered-models/create", json=body_)
        mlflow_error(answer, 400, "MALFORMED_REQUEST", "Body must be a JSON object")
    listed = server.api("GET", f"{ML}/registered-models/get?name=a&name=b")
    mlflow_error(listed, 400, "INVALID_PARAMETER_VALUE", "got a list")
    names = [m.name for m in server.client().models()]
    assert "t" not in names  # nothing half-created


def test_rest_wrong_types_are_400(server: Server) -> None:
    alias = f"/api/v1/models/{LONG_NAME}/aliases/staging"
    tether_error(
        server.api("PUT", alias, json={"version": ["1"]}),
        400,
        "invalid_input",
        "field 'version' must be a string or an integer, not a list",
    )
    tether_error(
        server.api("PUT", alias, json={"version": "1", "reason": {"a": 1}}),
        400,
        "invalid_input",
        "field 'reason' must be a string",
    )
    tether_error(
        server.api("POST", alias + "/rollback", json={"reason": 5}),
        400,
        "invalid_input",
        "'reason'",
    )
    tether_error(server.api("PUT", alias, json=[1]), 400, "invalid_input", "must be a JSON object")
    base = version_values()
    versions = f"/api/v1/models/{LONG_NAME}/versions"
    for field, bad, message in [
        ("metrics", {"auc": "high"}, "values.metrics.auc"),
        ("metrics", {"auc": True}, "not a finite number"),
        ("tags", {"team": 1}, "values.tags.team must be a string"),
        ("flavor", {"name": 5}, "values.flavor needs a name"),
        ("signature", {"inputs": 5}, "signature.inputs"),
        ("notes", ["n"], "values.notes has the wrong type"),
    ]:
        answer = server.api("POST", versions, json={"values": {**base, field: bad}})
        tether_error(answer, 400, "invalid_input", message)
    tether_error(
        server.api("POST", versions, json={"values": base, "bump": 2}),
        400,
        "invalid_input",
        "field 'bump'",
    )
    assert [v.seq for v in server.client().versions(LONG_NAME)] == [1]


# -- one body limit for every route ----------------------------------------------------------


def test_a_new_versions_values_may_be_larger_but_are_still_bounded(server: Server) -> None:
    """A new version's manifest lists every chunk (a 70 GB checkpoint's is ~60 MB), so its
    route takes up to MAX_VERSION_BODY; past that, the same 413."""
    from tether.server.bodies import MAX_VERSION_BODY

    padding = "x" * (MAX_BODY + (1 << 20))  # over the general limit, under the version one
    answer = server.api("POST", f"/api/v1/models/{LONG_NAME}/versions",
                        json={"values": {"notes": padding}})
    assert answer.status_code not in (413, 500), answer.text  # read, then refused on content
    assert answer.status_code < 500 and "limit" not in answer.text
    for path in (f"/api/v1/models/{LONG_NAME}/versions", "/api/v1/datasets/d/versions"):
        over = server.api("POST", path, content=_chunks(MAX_VERSION_BODY + (2 << 20)))
        tether_error(over, 413, "payload_too_large", f"over the {MAX_VERSION_BODY} byte limit")
    # Other routes keep the general limit.
    other = server.api("POST", "/api/v1/call/grants", content=_chunks(MAX_BODY + (2 << 20)))
    tether_error(other, 413, "payload_too_large", f"over the {MAX_BODY} byte limit")


def _chunks(total: int) -> Iterator[bytes]:
    block = b'{"name": "' + b"x" * (1 << 20)
    yield block
    sent = len(block)
    while sent < total:
        yield b"x" * (1 << 20)
        sent += 1 << 20


def test_body_limit_applies_to_mlflow_routes(server: Server) -> None:
    big = "d" * (20 << 20)
    for method, path in [
        ("PATCH", "/registered-models/update"),
        ("PATCH", "/model-versions/update"),
        ("POST", "/model-versions/create"),
    ]:
        answer = server.api(
            method,
            f"{ML}{path}",
            json={"name": LONG_NAME, "version": "1", "source": "s", "description": big},
        )
        mlflow_error(answer, 413, "REQUEST_LIMIT_EXCEEDED", f"over the {MAX_BODY} byte limit")
    # Chunked (no Content-Length): cut off once past the limit, whichever route.
    chunked = server.api("PATCH", f"{ML}/registered-models/update", content=_chunks(20 << 20))
    mlflow_error(chunked, 413, "REQUEST_LIMIT_EXCEEDED", "over the")
    rest = server.api("POST", "/api/v1/call/grants", content=_chunks(20 << 20))
    tether_error(rest, 413, "payload_too_large", f"over the {MAX_BODY} byte limit")
    got = server.api("GET", f"{ML}/registered-models/get", params={"name": LONG_NAME}).json()
    assert got["registered_model"]["description"] == ""
    version = server.api(
        "GET", f"{ML}/model-versions/get", params={"name": LONG_NAME, "version": "1"}
    ).json()
    assert version["model_version"]["description"] == ""
    # A body just under the limit is still accepted.
    fits = server.api(
        "PATCH",
        f"{ML}/registered-models/update",
        json={"name": LONG_NAME, "description": "ok" * 1000},
    )
    assert fits.status_code == 200, fits.text
    server.api(
        "PATCH", f"{ML}/registered-models/update", json={"name": LONG_NAME, "description": ""}
    )


def test_unknown_routes_and_methods_answer_json(server: Server) -> None:
    tether_error(server.api("GET", "/api/v1/nope"), 404, "not_found", "no route GET /api/v1/nope")
    wrong = server.api("POST", "/api/v1/health")
    tether_error(wrong, 405, "method_not_allowed", "POST /api/v1/health")
    assert "GET" in wrong.headers["allow"]
    mlflow_error(server.api("GET", f"{ML}/nope"), 404, "ENDPOINT_NOT_FOUND", "no route")
    mlflow_error(
        server.api("PUT", f"{ML}/registered-models/create"), 405, "ENDPOINT_NOT_FOUND", "PUT"
    )
    document = server.api("GET", "/api/v1/openapi.json").json()
    alias_put = document["paths"]["/models/{name}/aliases/{alias}"]["put"]
    assert "413" in alias_put["responses"]


def test_server_log_has_no_tracebacks(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    text = assert_logs_clean(Path(tmp_path_factory.getbasetemp()), "hardening")
    assert " 500 " not in text
