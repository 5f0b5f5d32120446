"""Hostile requests against a real `tether server` over loopback: races, absurd numbers,
principals that are no one, JSON bombs and junk in the store's gateway, manifests that
can never load.

Each test replays a finding as it was sent: a clear 4xx JSON error (or at most one
winner of a race), never a 500, never a change that a refusal should have prevented.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest

import tether
from tether._reference import validate_alias_name, validate_model_name
from tether.server.blobs_api import check_key

from .servers import Server, assert_logs_clean, start_server, stop
from .servers import version_values as values

EMPTY = blake3.blake3(b"").hexdigest()
V1 = "/api/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hostile")
    running = start_server(f"sqlite:///{tmp / 'meta.db'}", f"file://{tmp / 'objects'}", tmp)
    weights = tmp / "w.bin"
    weights.write_bytes(os.urandom(200_000))
    running.client().log_model(weights, "iris")  # chunks, an index and a pin, via the API
    yield running
    stop(running)


def tether_error(response: httpx.Response, status: int, code: str | None, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    if code is not None:
        assert body["error"] == code, body
    for fragment in fragments:
        assert fragment in body["message"], body


def all_at_once(count: int, request: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """``request(i)`` for i in range(count), each on its own thread, released together."""
    barrier = threading.Barrier(count)
    answers: list[httpx.Response | None] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        answers[i] = request(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


def versions_of(server: Server, name: str) -> list[int]:
    answer = server.api("GET", f"{V1}/models/{name}/versions", params={"deleted": "1"})
    if answer.status_code == 404:
        return []
    return sorted(v["seq"] for v in answer.json())


def contributors(server: Server, count: int, prefix: str) -> list[str]:
    admin = server.client()
    return [str(admin.create_token(f"{prefix}{i}@team", role="contributor")["token"])
            for i in range(count)]


# -- 1. one Idempotency-Key, at most one version ---------------------------------------------


def test_one_idempotency_key_commits_at_most_one_version(server: Server) -> None:
    # The finding: six concurrent commits, one key, different values: one 201, five 409,
    # and six versions committed (the key was recorded after each commit).
    idempotency_race(server)


def idempotency_race(server: Server) -> None:
    for round_ in range(3):
        key = uuid.uuid4().hex
        answers = all_at_once(6, lambda i, key=key, round_=round_: server.api(
            "POST", f"{V1}/models/idem/versions", headers={"Idempotency-Key": key},
            json={"values": values(notes=f"round {round_} try {i}")}))
        codes = sorted(a.status_code for a in answers)
        assert codes == [201, 409, 409, 409, 409, 409], [a.text for a in answers]
        for refused in (a for a in answers if a.status_code == 409):
            tether_error(refused, 409, "conflict", "Idempotency-Key was already used")
        assert versions_of(server, "idem") == list(range(1, round_ + 2))
    # A retry with the winner's request gets the winner's version back, not a new one;
    # the same request sent six times at once answers one version six times.
    key = uuid.uuid4().hex
    answers = all_at_once(6, lambda i: server.api(
        "POST", f"{V1}/models/idem/versions", headers={"Idempotency-Key": key},
        json={"values": values(notes="same each time")}))
    assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
    assert len({a.json()["seq"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 5
    assert versions_of(server, "idem") == [1, 2, 3, 4]


# -- 2. an ingest lease has one holder -------------------------------------------------------


def test_concurrent_lease_writers_one_wins(server: Server) -> None:
    # The finding: concurrent PUTs of one lease from different principals all got 201, and
    # the last writer held it. Now one 201, the others 409, and the winner holds it.
    lease_race(server)


def lease_race(server: Server, *, rounds: int = 3, writers: int = 6) -> None:
    tokens = contributors(server, writers, f"leaser-{uuid.uuid4().hex[:6]}-")
    body = json.dumps({"host": "h", "pid": 1, "start": 2, "since": 0.0})
    for _ in range(rounds):
        key = f"{V1}/blobs/locks/ingest-{uuid.uuid4().hex}"
        answers = all_at_once(writers, lambda i, key=key: server.api(
            "PUT", key, token=tokens[i], content=body))
        codes = [a.status_code for a in answers]
        assert sorted(codes) == [201] + [409] * (writers - 1), [a.text for a in answers]
        winner = codes.index(201)
        holder = tokens[winner]
        name = server.api("GET", f"{V1}/whoami", token=holder).json()["principal"]
        for i, answer in enumerate(answers):
            if i != winner:
                tether_error(answer, 409, "conflict", f"held by {name}")
        # Only the winner renews and drops it.
        assert server.api("PUT", key, token=holder, content=body).status_code == 201
        other = server.api("DELETE", key, token=tokens[(winner + 1) % writers])
        tether_error(other, 403, None, f"{name}'s ingest lease")
        assert server.api("DELETE", key, token=holder).status_code == 200


@pytest.fixture
def pg_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    name = f"tether_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {error}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_both_races_across_worker_processes_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    """The same races with four server processes on PostgreSQL: the key is recorded in the
    version's transaction there too, and leases are written under an advisory lock."""
    running = start_server(pg_url, f"file://{tmp_path / 'objects'}", tmp_path, workers=4)
    try:
        idempotency_race(running)
        # Without the advisory lock (each worker's own lock only), 10 rounds of 12 writers
        # over 4 workers had two winners in every one of three runs.
        lease_race(running, rounds=10, writers=12)
    finally:
        stop(running)
    log = "".join(p.read_text(errors="replace") for p in tmp_path.glob("server-*.log"))
    assert "Traceback" not in log, log[-3000:]


# -- 3. principals and model names in tokens and grants ----------------------------------------


BAD_PRINCIPALS = [
    ("", "principal must not be empty"),
    ("   ", "principal must not be empty"),
    ("\u0000", "printable"),
    ("eve\nadmin", "printable"),
    (" eve", "whitespace"),
    ("a" * 100_000, "at most 256"),
]


def test_tokens_and_grants_need_a_real_principal(server: Server) -> None:
    admin = server.client()
    tokens_before, grants_before = len(admin.tokens()), len(admin.grants())
    for principal, message in BAD_PRINCIPALS:
        for method, body in [
            ("create_token", {"args": [principal]}),
            ("create_token", {"args": [principal], "kwargs": {"role": "admin"}}),
            ("grant", {"args": [principal, "reader"]}),
            ("revoke", {"args": [principal, "reader"]}),
        ]:
            answer = server.api("POST", f"{V1}/call/{method}", json=body)
            tether_error(answer, 400, "invalid_input", message)
    for model, message in [("..", "invalid model name"), ("m" * 1000, "invalid model name"),
                           ("", "invalid model name"), ("a/b", "invalid model name")]:
        for method, body in [
            ("grant", {"args": ["eve@team", "reader"], "kwargs": {"model": model}}),
            ("create_token", {"args": ["eve@team"],
                              "kwargs": {"role": "reader", "model": model}}),
        ]:
            answer = server.api("POST", f"{V1}/call/{method}", json=body)
            tether_error(answer, 400, "invalid_reference", message)
    assert (len(admin.tokens()), len(admin.grants())) == (tokens_before, grants_before)
    # The finding's harm: a token for principal "" acted as the server process's own user.
    whoami = server.api("GET", f"{V1}/whoami").json()
    assert whoami["principal"] == "root@team"
    # Real principals still work, any printable text up to 256 characters.
    for principal in ("eve@team", "Ève Müller", "svc:ci/deploy", "x" * 256):
        made = server.api("POST", f"{V1}/call/create_token",
                          json={"args": [principal], "kwargs": {"role": "reader"}})
        assert made.status_code == 200, made.text
        assert server.api("GET", f"{V1}/whoami", token=made.json()["token"]).json()[
            "principal"] == principal


def test_a_token_made_for_no_one_before_the_check_is_refused(server: Server) -> None:
    """Tokens for "" made before principals were checked: refused, not the server's user."""
    import sqlalchemy as sa

    made = server.api("POST", f"{V1}/call/create_token", json={"args": ["ghost@team"]}).json()
    engine = sa.create_engine(server.db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE tokens SET principal = '' WHERE prefix = :p"),
                     {"p": made["prefix"]})
    engine.dispose()
    answer = server.api("GET", f"{V1}/whoami", token=made["token"])
    tether_error(answer, 401, "unauthenticated", "names no principal")


# -- 4. numbers too large for the database -----------------------------------------------------


HUGE_SELECTORS = [
    "99999999999999999999999999",
    "9223372036854775808",
    "~99999999999999999999999999.0",
    "~9223372036854775808",
    "1" * 5000,
]


def test_version_numbers_beyond_any_version_are_404(server: Server) -> None:
    for selector in HUGE_SELECTORS:
        for path in (f"{V1}/models/iris/versions/{selector}",
                     f"{V1}/models/iris/trust/{selector}"):
            tether_error(server.api("GET", path), 404, "not_found", "iris has no version")
    for version in ("9" * 30, "~" + "9" * 30, str(2**63), 2**63 - 1):
        answer = server.api("PUT", f"{V1}/models/iris/aliases/big",
                            json={"version": version, "create": True})
        tether_error(answer, 404, "not_found", "iris has no version")
    for number in (10**26, 2**63, -(2**63)):  # as JSON numbers: past any integer column
        answer = server.api("PUT", f"{V1}/models/iris/aliases/big",
                            json={"version": number, "create": True})
        tether_error(answer, 400, "invalid_input", "field 'version' is out of range")
    for method in ("delete_version", "deprecate", "signatures"):
        for ref in ("iris@" + "9" * 30, "iris@~" + "9" * 30, "iris@" + "1" * 5000):
            answer = server.api("POST", f"{V1}/call/{method}", json={"args": [ref]})
            tether_error(answer, 404, "not_found", "iris has no version")
    # The largest number the database holds is still just a version that does not exist.
    tether_error(server.api("GET", f"{V1}/models/iris/versions/{2**63 - 1}"), 404, "not_found")
    assert server.api("GET", f"{V1}/models/iris/versions/1").status_code == 200


def test_integer_arguments_past_any_column_are_400(server: Server) -> None:
    # The same OverflowError through an argument the use case looks up as an integer.
    moved = server.api("PUT", f"{V1}/models/iris/aliases/staging",
                       json={"version": 1, "create": True})
    assert moved.status_code == 200, moved.text
    for method, body in [
        ("get_policy", {"args": ["iris"], "kwargs": {"revision": 10**30}}),
        ("deployment", {"args": ["d"], "kwargs": {"known_revision": -(2**63) - 1}}),
        ("rollback_deployment", {"args": ["d"], "kwargs": {"to_revision": 2**63}}),
    ]:
        answer = server.api("POST", f"{V1}/call/{method}", json=body)
        tether_error(answer, 400, "invalid_input", "is out of range")
    answer = server.api("POST", f"{V1}/models/iris/aliases/staging/rollback",
                        json={"from_generation": 10**30})
    tether_error(answer, 400, "invalid_input", "field 'from_generation' is out of range")
    assert server.api("POST", f"{V1}/call/get_policy",
                      json={"args": ["iris"], "kwargs": {"revision": 2**63 - 1}}).status_code < 500


def test_numbers_out_of_range_in_bodies_are_400(server: Server) -> None:
    before = versions_of(server, "ranges")
    for metrics in ({"a": 10**400}, {"a": -(10**400)}):
        answer = server.api("POST", f"{V1}/models/ranges/versions",
                            json={"values": values(metrics=metrics)})
        tether_error(answer, 400, "invalid_input", "out of range")
    # Anywhere in any JSON body, as 1e400 already was.
    answer = server.api("POST", f"{V1}/call/grants", content=b'{"kwargs": {"x": 1' + b"0" * 400
                        + b"}}")
    tether_error(answer, 400, "invalid_input", "out of range")
    assert versions_of(server, "ranges") == before
    tokens_before = len(server.client().tokens())
    for expires in ("99999999999999d", "1e9d", "infd", "nand", "-1d", "0s", "1e400s"):
        answer = server.api("POST", f"{V1}/call/create_token",
                            json={"args": ["eve@team"], "kwargs": {"expires_in": expires}})
        tether_error(answer, 400, "invalid_input", "duration")
    assert len(server.client().tokens()) == tokens_before
    fine = server.api("POST", f"{V1}/call/create_token",
                      json={"args": ["eve@team"], "kwargs": {"expires_in": "36500d"}})
    assert fine.status_code == 200 and fine.json()["expires_at"], fine.text


# -- 5. deep JSON into the store's gateway -----------------------------------------------------


def test_deep_json_leases_and_indexes_are_400(server: Server) -> None:
    # The finding: 30,000 levels of nesting, a RecursionError and a 500 on each.
    bomb = b"[" * 30000 + b"]" * 30000
    for key in (f"locks/ingest-{uuid.uuid4().hex}", f"index/{uuid.uuid4().hex}.idx"):
        answer = server.api("PUT", f"{V1}/blobs/{key}", content=bomb)
        tether_error(answer, 400, "too_deep", "nested deeper than")
    for opener in (b"[", b'{"a":'):
        key = f"locks/ingest-{uuid.uuid4().hex}"
        answer = server.api("PUT", f"{V1}/blobs/{key}", content=opener * (60_000 // len(opener)))
        tether_error(answer, 400, "too_deep", "nested deeper than")
    # Past a lease's size, refused for that before any of it is parsed.
    key = f"locks/ingest-{uuid.uuid4().hex}"
    answer = server.api("PUT", f"{V1}/blobs/{key}", content=b"[" * 100_000)
    tether_error(answer, 400, "invalid_input", "over the 65536 byte limit")
    locks = server.api("GET", f"{V1}/blobs?prefix=locks/").json()
    assert not [lock for lock in locks if lock["size"] > 1000]
    pin = server.api("PUT", f"{V1}/blobs/pins/{uuid.uuid4().hex}.json", content=bomb)
    tether_error(pin, 400, "invalid_input", "not a pin")
    # Nested, but shallow enough to parse: still not a lease (one object of fields).
    key = f"{V1}/blobs/locks/ingest-{uuid.uuid4().hex}"
    tether_error(server.api("PUT", key, content=b"[[1]]"), 400, "invalid_input", "JSON object")


# -- 6. pins are pins ------------------------------------------------------------------------


def _pin_key() -> str:
    return f"{V1}/blobs/pins/{uuid.uuid4().hex}.json"


def test_pins_must_be_pins(server: Server) -> None:
    listed = {i["key"] for i in server.api("GET", f"{V1}/blobs?prefix=pins/").json()}
    junk: list[tuple[bytes, str]] = [
        (b"\x00" * 1000, "not a pin"),
        (b"", "not a pin"),
        (b"[]", "not a pin"),
        (b'"chunks"', "not a pin"),
        (b"{}", "chunks"),
        (b'{"chunks": "ab"}', "chunks"),
        (b'{"chunks": ["zz"]}', "chunks"),
        (b'{"chunks": [' + b'"' + b"a" * 63 + b'"]}', "chunks"),
        (b'{"chunks": [1]}', "chunks"),
        (b'{"chunks": [], "created": "yesterday"}', "created"),
        (b'{"chunks": [], "created": NaN}', "created"),
        (b'{"chunks": [], "owner": 5}', "owner"),
        (b'{"chunks": [], "owner": "' + b"o" * 5000 + b'"}', "owner"),
        (b'{"chunks": [], "colour": "red"}', "colour"),
        (b'{"chunks": [], "chunks": []}', "twice"),
        (b'{"chunks": []} {"chunks": []}', "not a pin"),
        (b'{"chunks": [], }', "not a pin"),
        (b'{"chunks": ["' + b"a" * 64 + b'",]}', "chunks"),
    ]
    for content, message in junk:
        answer = server.api("PUT", _pin_key(), content=content)
        tether_error(answer, 400, None, message)
        assert answer.json()["error"] in ("invalid_input", "unknown_field")
    # The finding: 300 MB of NUL bytes, stored as a pin. Now refused, and nothing kept.
    big = server.api("PUT", _pin_key(), content=_zeros(300 << 20))
    tether_error(big, 400, "invalid_input", "not a pin")
    after = {i["key"] for i in server.api("GET", f"{V1}/blobs?prefix=pins/").json()}
    assert after == listed
    # Every form a Tether client has written is a pin: any key order, with or without
    # owner, the list written piece by piece (", "-separated) or at once.
    digests = [blake3.blake3(str(i).encode()).hexdigest() for i in range(3)]
    for pin in (
        {"created": 1.5, "chunks": digests},
        {"created": 1, "chunks": [], "owner": "host~1~2"},
        {"created": 1e9, "owner": "h\u00e9~1~2", "chunks": digests},
        {"chunks": digests},
    ):
        for text in (json.dumps(pin), json.dumps(pin, indent=2),
                     json.dumps(pin, separators=(",", ":"))):
            answer = server.api("PUT", _pin_key(), content=text.encode())
            assert answer.status_code == 201, answer.text


def _zeros(total: int) -> Iterator[bytes]:
    block = b"\x00" * (1 << 20)
    for _ in range(total // len(block)):
        yield block


def test_a_large_pin_is_checked_in_bounded_time(server: Server) -> None:
    # A million chunks (a 64 GB version): what an ingest of a big checkpoint writes.
    digest = blake3.blake3(b"x").hexdigest()
    body = b'{"created": 1.0, "owner": "h~1~2", "chunks": [' + b", ".join(
        [f'"{digest}"'.encode()] * 1_000_000) + b"]}"
    answer = server.api("PUT", _pin_key(), content=body)
    assert answer.status_code == 201, answer.text
    bad = body[:-67] + b"g" * 64 + body[-3:]  # the last digest, not hex
    assert len(bad) == len(body)
    tether_error(server.api("PUT", _pin_key(), content=bad), 400, "invalid_input", "chunks")


# -- 7. manifests that could never load --------------------------------------------------------


def test_manifests_that_could_never_load_are_400(server: Server) -> None:
    def entry(path: str, size: int = 0, **extra: Any) -> dict[str, Any]:
        return {"path": path, "size": size, "digest": EMPTY, "chunks": [], **extra}

    before = versions_of(server, "paths")
    cases: list[tuple[dict[str, Any], str]] = [
        (entry("a" * 100_000), "longer than 4096 bytes"),
        (entry("d/" * 2048 + "f"), "longer than 4096 bytes"),
        (entry("a" * 256), "255 bytes"),
        (entry("dir/" + "\u00e9" * 128 + "/f"), "255 bytes"),  # 256 bytes in UTF-8
        (entry("w.bin", 200_000), "add up to 0 bytes, not its size 200000"),
        (entry("w.bin", 200_000, chunks={}), "add up to 0 bytes, not its size 200000"),
        ({k: v for k, v in entry("w.bin", 200_000).items() if k != "chunks"},
         "add up to 0 bytes"),
    ]
    for item, message in cases:
        answer = server.api("POST", f"{V1}/models/paths/versions",
                            json={"values": values([item])})
        tether_error(answer, 400, None, message)
    # The same through a chunk list that lies about the total.
    real = server.api("GET", f"{V1}/models/iris/versions/1").json()["files"][0]
    lying = {**real, "path": "lying.bin", "size": real["size"] + 1}
    answer = server.api("POST", f"{V1}/models/paths/versions", json={"values": values([lying])})
    tether_error(answer, 400, None, f"add up to {real['size']} bytes")
    assert versions_of(server, "paths") == before
    # At the limits, fine: 255 bytes a component, 4096 in all, sizes that add up.
    edge = "/".join(["a" * 255] * 16)  # 16 * 255 + 15 = 4095 bytes
    for item in (entry("b" * 255), entry(edge), {**real, "path": "copy.bin"}):
        answer = server.api("POST", f"{V1}/models/paths/versions",
                            json={"values": values([item])})
        assert answer.status_code == 201, answer.text


def test_wrong_element_types_are_named_not_the_container(server: Server) -> None:
    """"must be an object or null, not an object" and "must be a list ..., not a list":
    the container was right, one of its elements was not."""
    tags = server.api("POST", f"{V1}/call/create_model",
                      json={"args": ["typed"], "kwargs": {"tags": {"team": "a", "n": 1}}})
    tether_error(tags, 400, "invalid_input", "'n' is a number, not a string")
    assert "not an object" not in tags.json()["message"]
    stages = server.api("POST", "/api/2.0/mlflow/registered-models/get-latest-versions",
                        json={"name": "iris", "stages": ["None", 1]})
    assert stages.status_code == 400, stages.text
    assert "stages[1] must be a stage name, not a number" in stages.json()["message"]


def test_an_s3_server_never_presigns_a_lease(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A presigned PUT of locks/ingest-X let a contributor write a lease naming anyone
    (the server stamps the holder only on its own route)."""
    from .conftest import make_bucket

    make_bucket(s3_endpoint, "models")
    running = start_server(f"sqlite:///{tmp_path / 'meta.db'}", "s3://models/registry", tmp_path)
    try:
        for key in (f"locks/ingest-{uuid.uuid4().hex}", f"pins/{uuid.uuid4().hex}.json"):
            answer = running.api("POST", f"{V1}/blobs/presign", json={"key": key, "method": "PUT"})
            assert answer.status_code == 200 and answer.json()["url"] is None, answer.text
        pack = running.api("POST", f"{V1}/blobs/presign",
                           json={"key": f"packs/{uuid.uuid4().hex}.pack", "method": "PUT"})
        assert pack.json()["url"]  # packs still go straight to the bucket
    finally:
        stop(running)


def test_an_expired_idempotency_key_is_free_again(server: Server) -> None:
    """An expired key was still enforced: a new request with it was a 409."""
    import sqlite3

    key = f"exp-{uuid.uuid4().hex}"
    first = server.api("POST", f"{V1}/models/keyed/versions", json={"values": values()},
                       headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    db = str(server.db_url).removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE idempotency_keys SET created_at = '2020-01-01T00:00:00.000000Z' "
                     "WHERE key = ?", (key,))
    other = server.api("POST", f"{V1}/models/keyed/versions",
                       json={"values": values(notes="another commit")},
                       headers={"Idempotency-Key": key})
    assert other.status_code == 201, other.text


def test_a_very_large_versions_pin_fits() -> None:
    """Pins go through the server on S3 now (to be checked); capped at 1 GiB, the pin of a
    version of about 1 TB of unique chunks (16M chunks, 68 bytes each) was a 413."""
    from tether.server.app import _body_limit
    from tether.server.blobs_api import MAX_OBJECT, _limit_for

    needed = 16_000_000 * 68
    assert needed > MAX_OBJECT
    scope = {"method": "PUT", "path": f"/api/v1/blobs/pins/{uuid.uuid4().hex}.json"}
    assert _body_limit(scope) >= needed and _limit_for("pins/x.json") >= needed
    assert _body_limit({"method": "PUT", "path": "/api/v1/blobs/packs/x.pack"}) == MAX_OBJECT


def test_a_range_starting_past_the_end_says_so() -> None:
    """'bytes=200000-' on a 200,000-byte pack said it "ends before it starts"."""
    from tether.server.blobs_api import RangeNotSatisfiable, parse_range

    with pytest.raises(RangeNotSatisfiable, match="starts past the object"):
        parse_range("bytes=200000-", 200_000)
    assert parse_range("bytes=199999-", 200_000) == (199_999, 199_999)


# -- and none of it was a 500 (last: it reads the logs of every test above) ------------------


def test_server_log_has_no_tracebacks(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert_logs_clean(Path(tmp_path_factory.getbasetemp()), "hostile")


def test_a_name_or_store_key_ending_in_a_newline_is_refused(server: Server) -> None:
    """Python's ``$`` matches before a final newline: 'iris\\n' passed as a model name
    (a look-alike of iris, listed beside it) and 'packs/<hex>.pack\\n' as a store key
    (an object stored under a name no reader asks for)."""
    import re

    assert re.match(r"^[a-z]+$", "iris\n")  # the trap the patterns fell into
    answer = server.api("POST", f"{V1}/call/create_model", json={"args": ["iris\n"]})
    assert answer.status_code == 400, answer.text
    key = f"packs/{uuid.uuid4().hex}.pack%0A"
    answer = server.api("PUT", f"{V1}/blobs/{key}", content=b"x" * 10)
    assert answer.status_code in (400, 404), answer.text  # the router does not match it
    with pytest.raises(tether.InvalidInput, match="is not one a client may write"):
        check_key(f"packs/{uuid.uuid4().hex}.pack\n", write=True)  # nor the gateway
    with pytest.raises(tether.TetherError, match="invalid model name"):
        validate_model_name("iris\n")
    with pytest.raises(tether.TetherError, match="alias"):
        validate_alias_name("production\n")


def test_a_version_holding_infinity_is_answered_and_reads_back_intact(tmp_path: Path) -> None:
    """params={"alpha": inf} (or a missing value in an input example) is accepted when
    logged, but the REST API answered that version, and the model's version list, with a
    500: strict JSON has no infinity (the UI had the same fault, a review)."""
    from .servers import app_in_thread

    registry = tether.init(tmp_path / "reg", actor="t@example.com")
    (tmp_path / "w.bin").write_bytes(b"w" * 10)
    version = registry.log_model(tmp_path / "w.bin", "m", params={"alpha": float("inf")},
                                 progress=False)
    token = registry.create_token("t@example.com")["token"]
    from tether.server.app import create_app

    with app_in_thread(create_app(registry)) as url:
        client = tether.connect(url, token=token)
        try:
            got = client.get(version.ref)  # re-hashed to its digest on the client
            assert got.params["alpha"] == float("inf") and got.digest == version.digest
            assert [v.semver for v in client.versions("m")] == ["1.0.0"]
        finally:
            client.close()


def test_mlflow_latest_alias_reads_no_file_lists_and_query_keys_are_bounded(
        registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The alias `latest` read every version whole (15 versions of 20,000 files: 4 s and
    1 GB a call, by a reader); 32,000 repeats of a query key were collected in quadratic
    time on the event loop before any authentication (a review)."""
    from tether._registry.registry import Registry
    from tether.server import app

    from .servers import app_in_thread

    for i in range(3):
        (tmp_path / "w.bin").write_bytes(b"w%d" % i)
        registry.log_model(tmp_path / "w.bin", "wide", progress=False)
    real = Registry.versions
    asked: list[bool] = []

    def versions(self: Registry, name: str, *, files: bool = True) -> Any:
        asked.append(files)
        return real(self, name, files=files)

    monkeypatch.setattr(Registry, "versions", versions)
    token = registry.create_token("ops@example.com", role="admin")["token"]
    auth = {"Authorization": f"Bearer {token}"}
    with app_in_thread(app.create_app(registry)) as url:
        got = httpx.get(f"{url}/api/2.0/mlflow/registered-models/alias", headers=auth,
                        params={"name": "wide", "alias": "latest"}, timeout=30)
        assert got.status_code == 200, got.text
        assert got.json()["model_version"]["version"] == "3"
        assert asked and not any(asked)
        started = time.perf_counter()
        many = httpx.get(f"{url}/api/2.0/mlflow/registered-models/get?" + "&".join(
            ["x"] * 32_000), timeout=30)
        assert many.status_code == 400 and "over the limit" in many.text
        assert time.perf_counter() - started < 2
