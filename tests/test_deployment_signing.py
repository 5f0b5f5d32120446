"""Signed deployments: a replica of a server honours ``trusted: true`` only for versions a
signature it checks itself, by a key it pins, lists (``_registry/deployment_signing.py``).

The attacks are real: a version whose pickle writes a marker file when it is loaded, a
server database edited to point a trusted endpoint at it, signatures forged, moved to
another deployment or expired. Each is shown doing harm the way replicas loaded before,
then failing.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import tether
from tether import Registry
from tether._deployment import ServerConfig
from tether._errors import InvalidInput, PermissionDenied, UnsafeArtifact
from tether._metadata.clock import iso
from tether._metadata.schema import deployment_signatures, deployments
from tether._registry.deployment_signing import KIND, payload_bytes, vouched_digests
from tether._signing import generate_key, load_private_key
from tether.serving.follower import deployment_from_record, load_from_registry
from tether.serving.pool import ModelPool

from .conftest import fit_logreg
from .servers import app_in_thread


class Exploit:
    """Unpickles as ``os.system("touch MARKER")``: whoever loads it trusted runs it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def predict(self, rows: Any) -> Any:  # pragma: no cover - never gets that far
        return rows

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _spec(target: str, *, trusted: bool = True) -> dict[str, Any]:
    return {"endpoints": {"iris": {"routes": [{"name": "main", "target": target,
                                               "weight": 100}], "trusted": trusted}}}


def _edit_spec(registry: Registry, name: str, target: str) -> None:
    """What whoever writes the server's database (or answers in its place) can do."""
    with registry.engine.begin() as conn:
        conn.execute(deployments.update().where(deployments.c.name == name).values(
            spec=json.dumps(_spec(target)), revision=deployments.c.revision + 1))


def _key(registry: Registry, tmp_path: Path, name: str = "release") -> Path:
    key, public, _ = generate_key(tmp_path / f"{name}.key")
    registry.trust_key(name, public.read_text())
    return key


@contextmanager
def _server(registry: Registry) -> Iterator[Any]:
    from tether.server.app import create_app

    token = registry.create_token("ops@example.com", role="admin")["token"]
    with app_in_thread(create_app(registry)) as url:
        client = tether.connect(url, token=token)
        try:
            yield client
        finally:
            client.close()


def _pool_of(client: Any, name: str) -> tuple[ModelPool, Any]:
    """The pool a replica of ``client`` following deployment ``name`` loads with, and
    the version its only route names."""
    deployment, _ = load_from_registry(client, name, ServerConfig())
    config = deployment.endpoints[0]
    pool = ModelPool(client, trusted=config.trusted, trusted_until=config.trusted_until,
                     deployment=name)
    return pool, client.get(config.routes[0].target)


def test_a_replica_of_a_server_runs_only_pickles_a_pinned_key_signed_for_the_deployment(
        registry: Registry, tmp_path: Path, iris: tuple[Any, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    good = registry.log_model(fit_logreg(iris), "iris", serialization="pickle", progress=False)
    evil = registry.log_model(Exploit(marker), "iris", progress=False)
    registry.apply_deployment("svc", _spec(good.ref))
    key = _key(registry, tmp_path)
    with _server(registry) as client:
        # The harm, as replicas loaded before: the server (its database edited) says the
        # trusted endpoint serves the attacker's version, and the replica unpickles it.
        _edit_spec(registry, "svc", evil.ref)
        _, version = _pool_of(client, "svc")
        with contextlib.suppress(Exception):  # os.system's 0 is no model
            ModelPool(client, trusted=True).load(version)
        assert marker.exists()
        marker.unlink()

        # Now: no signature this replica checked lists it, so it loads untrusted: refused.
        pool, version = _pool_of(client, "svc")
        assert pool.trust == (True, {})
        with pytest.raises(UnsafeArtifact, match="TETHER_LOAD_KEYS") as refused:
            pool.load(version)
        assert "tether deploy sign svc" in str(refused.value.hint)
        assert not marker.exists()

        # An admin signs the honest revision; a replica pinning the key loads it trusted,
        # and still refuses the attacker's version the server then names.
        registry.apply_deployment("svc", _spec(good.ref))
        with pytest.raises(InvalidInput, match="answers name the versions to sign"):
            client.sign_deployment("svc", str(key))  # what iris@1.0.0 is: the server's word
        signed = client.sign_deployment("svc", str(key), confirm=lambda shown: True)
        assert signed["signatures"][0]["payload"]["endpoints"] == {"iris": [good.digest]}
        monkeypatch.setenv("TETHER_LOAD_KEYS", str(tmp_path / "release.key.pub"))
        pool, version = _pool_of(client, "svc")
        assert pool.trust[0] and set(pool.trust[1] or ()) == {good.digest}
        assert pool.load(version).predict(iris[0][:3].to_dict("records"))
        _edit_spec(registry, "svc", evil.ref)
        pool, version = _pool_of(client, "svc")
        with pytest.raises(UnsafeArtifact, match="no signature this replica checked"):
            pool.load(version)
        assert not marker.exists()

        # Forged: the stored statement edited to list the attacker's digest too.
        with registry.engine.begin() as conn:
            row = conn.execute(sa.select(deployment_signatures)).one()
            payload = json.loads(row.payload)
            payload["endpoints"]["iris"].append(evil.digest)
            conn.execute(deployment_signatures.update().values(payload=json.dumps(payload)))
        pool, version = _pool_of(client, "svc")
        assert pool.trust == (True, {})
        with pytest.raises(UnsafeArtifact):
            pool.load(version)
        assert not marker.exists()


def test_signatures_count_only_for_their_deployment_unexpired_and_by_pinned_keys(
        tmp_path: Path) -> None:
    key = load_private_key(generate_key(tmp_path / "k")[0])
    other = load_private_key(generate_key(tmp_path / "o")[0])
    pinned = {"kid": key.public_key()}
    digest = "ab" * 32
    now = datetime.now(UTC)

    def entry(deployment: str = "svc", expires: datetime | None = None,
              signer: Any = key, kind: str = KIND) -> dict[str, Any]:
        payload = {"kind": kind, "deployment": deployment, "endpoints": {"iris": [digest]},
                   "signed_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                   "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if expires else None}
        return {"key_id": "kid", "payload": payload,
                "signature": signer.sign(payload_bytes(payload)).hex()}

    def vouched(*entries: dict[str, Any]) -> dict[str, set[str]]:
        found = vouched_digests("svc", {"name": "svc", "signatures": list(entries)}, pinned,
                                seen={})
        return {endpoint: set(until) for endpoint, until in found.items()}

    assert vouched(entry()) == {"iris": {digest}}
    assert vouched(entry(expires=now + timedelta(days=1))) == {"iris": {digest}}
    assert vouched(entry(expires=now - timedelta(seconds=1))) == {}  # expired
    assert vouched(entry(deployment="other")) == {}  # signed for another deployment
    assert vouched(entry(signer=other)) == {}  # not by the pinned key
    assert vouched(entry(kind="tether.something-else/v1")) == {}
    assert vouched({"key_id": "kid", "payload": "text", "signature": "zz"}, "junk") == {}
    assert vouched_digests("svc", {"signatures": [entry()]}, {}) == {}  # nothing pinned
    for junk in (5, 1.5, True, "text", {"a": 1}):  # what a hostile server sends: no crash
        assert vouched_digests("svc", {"signatures": junk}, pinned) == {}
    # A payload with no canonical bytes (a lone surrogate, stored in the database) made a
    # replica exit with a traceback at start, dropping the valid signature beside it too.
    broken = entry()
    broken["payload"] = {**broken["payload"], "note": "\ud800"}
    assert vouched(broken, entry()) == {"iris": {digest}}

    # A key's newest statement is the one that counts: a version it no longer lists is
    # not added back by an older signature the server still offers.
    newer = entry()
    newer["payload"] = {**newer["payload"], "endpoints": {"iris": ["cd" * 32]},
                        "signed_at": (now + timedelta(seconds=5)).strftime(
                            "%Y-%m-%dT%H:%M:%S.%fZ")}
    newer["signature"] = key.sign(payload_bytes(newer["payload"])).hex()
    assert vouched(entry(), newer) == vouched(newer, entry()) == {"iris": {"cd" * 32}}
    until = vouched_digests("svc", {"signatures": [entry(expires=now + timedelta(days=1))]},
                            pinned, seen={})["iris"][digest]
    assert abs(until - (now + timedelta(days=1)).timestamp()) < 1


def test_a_replica_does_not_go_back_to_an_older_signature_once_it_saw_a_newer(
        tmp_path: Path) -> None:
    """A server withholding a key's newest signature (which dropped a version) and offering
    the older one again (which listed it) got the withdrawn version trusted again."""
    key = load_private_key(generate_key(tmp_path / "k")[0])
    pinned = {"kid": key.public_key()}
    withdrawn, current = "ab" * 32, "cd" * 32
    start = datetime.now(UTC)

    def signed(seconds: int, digest: str) -> dict[str, Any]:
        payload = {"kind": KIND, "deployment": "svc", "endpoints": {"iris": [digest]},
                   "signed_at": iso(start + timedelta(seconds=seconds)), "expires_at": None}
        return {"key_id": "kid", "payload": payload,
                "signature": key.sign(payload_bytes(payload)).hex()}

    def vouched(seen: dict[tuple[str, str], float], *entries: dict[str, Any]) -> set[str]:
        found = vouched_digests("svc", {"signatures": list(entries)}, pinned, seen=seen)
        return set(found.get("iris", {}))

    older, newer = signed(0, withdrawn), signed(60, current)
    replica: dict[tuple[str, str], float] = {}
    assert vouched(replica, older) == {withdrawn}
    assert vouched(replica, newer) == {current}  # the admin re-signed without it
    # The server now offers only the older statement: a process that never saw the newer
    # one cannot tell (the harm, bounded by the older one's expiry) ...
    assert vouched({}, older) == {withdrawn}
    # ... this replica can, and trusts nothing of that key's until a newer one comes.
    assert vouched(replica, older) == set()
    assert vouched(replica, signed(120, withdrawn)) == {withdrawn}  # re-signed for real
    # Another deployment's or key's memory is its own.
    assert replica == {("svc", "kid"): (start + timedelta(seconds=120)).timestamp()}


def test_a_deployment_signature_is_checked_before_it_is_stored(
        registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"a" * 100)
    first = registry.log_model(tmp_path / "a.bin", "m", progress=False)
    spec = {"endpoints": {"m": {"routes": [{"name": "main", "target": first.ref,
                                            "weight": 100}], "trusted": True},
                          "plain": {"routes": [{"name": "main", "target": first.ref,
                                                "weight": 100}]}}}
    registry.apply_deployment("svc", spec)
    untrusted_key = generate_key(tmp_path / "stranger.key")[0]
    with pytest.raises(PermissionDenied, match="is not trusted by this registry"):
        registry.sign_deployment("svc", str(untrusted_key))
    key = _key(registry, tmp_path)
    private = load_private_key(key)
    from tether._signing import key_id

    kid = key_id(private.public_key())

    def statement(**changes: Any) -> dict[str, Any]:
        return {"kind": KIND, "deployment": "svc", "endpoints": {"m": [first.digest]},
                "signed_at": "2026-11-28T00:00:00.000000Z", "expires_at": None, **changes}

    for payload, why in ((statement(endpoints={"plain": [first.digest]}),
                          "'plain' is not a trusted endpoint"),
                         (statement(deployment="other"), "names deployment 'other'"),
                         (statement(endpoints={"m": ["abc"]}), "not whole content digests"),
                         (statement(extra=1), "fields are not")):
        with pytest.raises(PermissionDenied, match=why):
            registry.record_deployment_signature(
                "svc", payload, kid, private.sign(payload_bytes(payload)).hex())
    with pytest.raises(PermissionDenied, match="not a valid signature"):
        registry.record_deployment_signature("svc", statement(), kid, "00" * 64)
    refused = registry.audit_log(action="deployment.signature_refused")
    assert len(refused) == 6
    valid = private.sign(payload_bytes(statement())).hex()
    for bad_kid, bad_sig, why in (("k" * 200_000, valid, "is not a key id"),
                                  (kid, valid + " ", "128 hex digits"),
                                  (kid, valid.upper(), "128 hex digits")):
        with pytest.raises(InvalidInput, match=why) as error:
            registry.record_deployment_signature("svc", statement(), bad_kid, bad_sig)
        assert len(error.value.message) < 300  # the caller's input is not echoed whole
    many = statement(endpoints={"m": [f"{n:064x}" for n in range(1001)]})
    with pytest.raises(PermissionDenied, match="more than 1000"):
        registry.record_deployment_signature("svc", many, kid,
                                             private.sign(payload_bytes(many)).hex())

    registry.create_token("mallory@example.com", role="contributor", model="m")
    mallory = registry.as_actor("mallory@example.com", enforce_roles=True)
    with pytest.raises(PermissionDenied, match="needs role admin"):  # even a valid one
        mallory.record_deployment_signature(
            "svc", statement(), kid, private.sign(payload_bytes(statement())).hex())

    registry.apply_deployment("plain", {"endpoints": {"m": spec["endpoints"]["plain"]}})
    with pytest.raises(InvalidInput, match="no trusted endpoint"):
        registry.sign_deployment("plain", str(key))

    before = registry.deployment("svc")["revision"]
    record = registry.sign_deployment("svc", str(key), expires_in="30d")
    assert record["revision"] == before + 1  # replicas re-read the record
    assert record["signatures"][0]["payload"]["expires_at"] is not None
    again = registry.sign_deployment("svc", str(key), expires_in="never")
    assert len(again["signatures"]) == 1  # a key keeps its newest signature
    assert again["signatures"][0]["payload"]["expires_at"] is None
    assert [e.action for e in registry.audit_log(action="deployment.sign")].count(
        "deployment.sign") == 2
    # Going back a revision skips the signatures' revisions (they change nothing).
    registry.apply_deployment("svc", {**spec, "endpoints": {
        **spec["endpoints"], "plain": {"routes": [
            {"name": "main", "target": first.ref, "weight": 50}]}}})
    registry.sign_deployment("svc", str(key))
    rolled = registry.rollback_deployment("svc")
    assert rolled["spec"]["endpoints"]["plain"]["routes"][0]["weight"] == 100


def test_a_revision_that_drops_trusted_stops_trusted_loads_on_a_running_replica(
        registry: Registry, tmp_path: Path, iris: tuple[Any, Any]) -> None:
    """The harm (found writing this): a replica's pool kept the trust it started with,
    so after an admin dropped ``trusted``, the next target any contributor routed to
    loaded trusted: its pickle ran on every replica."""
    from tether.serving.runtime import ServingRuntime

    marker = tmp_path / "pwned"
    good = registry.log_model(fit_logreg(iris), "iris", serialization="pickle", progress=False)
    registry.create_token("mallory@example.com", role="contributor", model="iris")
    mallory = registry.as_actor("mallory@example.com", enforce_roles=True)
    evil = mallory.log_model(Exploit(marker), "iris", progress=False)
    record = registry.apply_deployment("svc", _spec(good.ref))
    runtime = ServingRuntime(registry, deployment_from_record(record, ServerConfig()),
                             follow=("svc", record["revision"]))
    runtime.start()
    try:
        endpoint = runtime.endpoints["iris"]
        assert endpoint.pool.trust == (True, None)
        registry.apply_deployment("svc", _spec(good.ref, trusted=False))  # an admin drops it
        mallory.apply_deployment("svc", _spec(evil.ref, trusted=False))
        runtime.apply(deployment_from_record(registry.deployment("svc"), ServerConfig()))
        slot = endpoint.slots["main"]
        deadline = time.monotonic() + 10  # the route's reload, on the loader thread
        while (slot.problem is None and not marker.exists()
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert not marker.exists()
        assert "pickle" in str(slot.problem)  # refused, shown in the replica's status
        assert slot.current is not None and slot.current.ref == good.ref  # still serving
        assert endpoint.pool.trust == (False, None)
        with pytest.raises(UnsafeArtifact):
            endpoint.pool.load(registry.get(evil.ref))
    finally:
        runtime.stop()


def test_signing_through_a_server_shows_what_the_server_named_and_asks(
        registry: Registry, tmp_path: Path, iris: tuple[Any, Any]) -> None:
    """The harm (a review): the signer signed whatever the server said an alias named;
    a server that moved ``production`` to a contributor's pickle got it signed. Now the
    versions the server's answers chose are shown, and signing needs a yes; a whole
    digest names its version itself."""
    from tether._metadata.schema import aliases

    good = registry.log_model(fit_logreg(iris), "iris", serialization="pickle", progress=False)
    evil = registry.log_model(Exploit(tmp_path / "pwned"), "iris", progress=False)
    registry.promote(good.ref, "production", create=True)
    registry.set_setting("protected_aliases", "production")
    registry.apply_deployment("svc", _spec("iris@production"))
    key = _key(registry, tmp_path)
    with registry.engine.begin() as conn:  # the server's database, edited
        conn.execute(aliases.update().where(aliases.c.name == "production").values(
            version_id=evil.id))
    with _server(registry) as client:
        seen: list[Any] = []
        with pytest.raises(InvalidInput, match="nothing signed"):
            client.sign_deployment("svc", str(key), confirm=lambda shown: seen.extend(shown)
                                   or False)
        assert [(v.target, v.digest, v.chosen_by_registry) for v in seen] == [
            ("iris@production", evil.digest, True)]  # the signer sees the server's pick
        assert registry.deployment("svc")["signatures"] == []
        # A whole digest in the record is its answer too (a second review: the server
        # rewrote the route to its pickle's digest); only one the signer typed is not.
        _edit_spec(registry, "svc", f"iris@sha:{evil.digest}")
        seen.clear()
        with pytest.raises(InvalidInput, match="nothing signed"):
            client.sign_deployment("svc", str(key), confirm=lambda shown: seen.extend(shown)
                                   or False)
        assert [(v.digest, v.chosen_by_registry) for v in seen] == [(evil.digest, True)]
        registry.apply_deployment("svc", _spec(f"iris@sha:{good.digest}"))
        named = f"iris@sha:{good.digest}"  # the signer types the digest it checked
        signed = client.sign_deployment("svc", str(key), versions=[named])
        assert signed["signatures"][0]["payload"]["endpoints"] == {"iris": [good.digest]}


def test_a_refused_or_removed_endpoint_still_loses_its_trust_and_expiry_counts_at_load(
        registry: Registry, tmp_path: Path, iris: tuple[Any, Any]) -> None:
    """The harm (a review): a revision that dropped ``trusted`` was refused as a whole
    (it also added an endpoint) or removed the endpoint, and the running pool went on
    trusting; an expired signature went on counting until the record changed."""
    from tether.serving.runtime import ServingRuntime

    good = registry.log_model(fit_logreg(iris), "iris", serialization="pickle", progress=False)
    spec = _spec(good.ref)
    record = registry.apply_deployment("svc", spec)
    runtime = ServingRuntime(registry, deployment_from_record(record, ServerConfig()),
                             follow=("svc", record["revision"]))
    runtime.start()
    try:
        endpoint = runtime.endpoints["iris"]
        # The new endpoint sorts first: refused before "iris" was reached.
        grown = {"endpoints": {**spec["endpoints"], "abc": spec["endpoints"]["iris"]}}
        grown["endpoints"]["iris"] = {**spec["endpoints"]["iris"], "trusted": False}
        record = registry.apply_deployment("svc", grown)
        with pytest.raises(InvalidInput, match="is new; restart"):
            runtime.apply(deployment_from_record(record, ServerConfig()))
        assert endpoint.pool.trust[0] is False
        registry.apply_deployment("svc", spec)
        runtime.apply(deployment_from_record(registry.deployment("svc"), ServerConfig()))
        assert endpoint.pool.trust[0] is True
        record = registry.apply_deployment("svc", {"endpoints": {"other": spec["endpoints"][
            "iris"]}})
        with contextlib.suppress(InvalidInput):
            runtime.apply(deployment_from_record(record, ServerConfig()))
        assert endpoint.pool.trust == (False, {})
    finally:
        runtime.stop()

    pool = ModelPool(registry, trusted=True, trusted_until={good.digest: time.time() + 0.5})
    time.sleep(0.6)
    with pytest.raises(UnsafeArtifact, match="no signature this replica checked"):
        pool.load(good)


def test_an_embedded_replica_with_pinned_keys_checks_signatures_too(
        registry: Registry, tmp_path: Path, iris: tuple[Any, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry opened on a shared database takes its rows as they are; with keys
    pinned in TETHER_LOAD_KEYS its replicas check deployment signatures as a client of
    a server does (a review: an edited spec made an embedded replica unpickle)."""
    marker = tmp_path / "pwned"
    good = registry.log_model(fit_logreg(iris), "iris", serialization="pickle", progress=False)
    evil = registry.log_model(Exploit(marker), "iris", progress=False)
    registry.apply_deployment("svc", _spec(good.ref))
    registry.sign_deployment("svc", str(_key(registry, tmp_path)))
    assert registry.vouched_deployment_digests("svc", registry.deployment("svc")) is None
    monkeypatch.setenv("TETHER_LOAD_KEYS", str(tmp_path / "release.key.pub"))
    _edit_spec(registry, "svc", evil.ref)
    pool, version = _pool_of(registry, "svc")
    assert version.digest == evil.digest and set(pool.trust[1] or ()) == {good.digest}
    with pytest.raises(UnsafeArtifact):
        pool.load(version)
    assert not marker.exists()
    # Nor by the database's own keys (a third review): whoever writes it trusts a key of
    # their own for loading and signs the pickle with it; only pinned keys count now.
    mallory, public, _ = generate_key(tmp_path / "mallory.key")
    registry.trust_key("mallory", public.read_text())
    registry.set_setting("trust.load_signers", "mallory")
    registry.sign(evil.ref, str(mallory))
    with pytest.raises(UnsafeArtifact):
        pool.load(version)
    with pytest.raises(UnsafeArtifact):
        registry.load(evil.ref)
    assert not marker.exists()


def test_a_version_loaded_trusted_is_not_served_again_once_its_signature_is_gone(
        registry: Registry, tmp_path: Path, iris: tuple[Any, Any]) -> None:
    """The harm (a third review): a replica switched back, from memory, to a version it
    had loaded while a signature listed it, after that signature was withdrawn."""
    good = registry.log_model(fit_logreg(iris), "iris", serialization="pickle", progress=False)
    pool = ModelPool(registry, trusted=True, trusted_until={good.digest: time.time() + 60})
    loaded = pool.load(good)
    assert loaded.loaded_trusted and pool.reuse(loaded) is loaded
    assert pool.load(good) is loaded  # the cache, while the signature stands
    pool.set_trust(True, {})  # withdrawn
    assert pool.reuse(loaded) is None
    with pytest.raises(UnsafeArtifact):
        pool.load(good)


def test_only_callers_who_could_move_the_traffic_count_in_rollbacks(
        registry: Registry, tmp_path: Path, iris: tuple[Any, Any]) -> None:
    """The harm (a third review): a reader's heartbeat with made-up errors made the lease
    holder roll production back, in its own name; a malformed count stopped it judging."""
    good = registry.log_model(fit_logreg(iris), "iris", serialization="pickle", progress=False)
    registry.apply_deployment("svc", _spec(good.ref, trusted=False))
    registry.create_token("rita@example.com", role="reader")
    rita = registry.as_actor("rita@example.com", enforce_roles=True)
    made_up = {"iris/main": {"digest": f"sha:{good.digest}", "ref": good.ref, "requests": 1000,
                             "errors": 1000, "latency": {}, "sums": {}}}
    answer = rita.replica_heartbeat("svc", "fake", host="h", pid=1, stats=made_up,
                                    lead=False)
    assert answer["stats_counted"] is False
    replicas = registry.deployment_status("svc")["replicas"]
    assert [r["stats"] for r in replicas] == [{}]  # seen, not counted
    assert registry.replica_heartbeat("svc", "real", host="h", pid=2, stats=made_up,
                                      lead=False)["stats_counted"] is True
    for junk, why in (({"iris/main": {**made_up["iris/main"], "requests": "lots"}},
                       "not counts"),
                      ({"iris/main": {**made_up["iris/main"], "errors": 2000}}, "not counts"),
                      ({"iris/main": {**made_up["iris/main"], "digest": "x"}}, "digest"),
                      ({"iris/main": {**made_up["iris/main"], "sums": {"a": [1e400, 1]}}},
                       "sums"),
                      ([1, 2], "not an object")):
        # Not counted, but the replica stays in (a refused heartbeat took a real replica
        # out when a contributor's feedback made its window odd: a second review).
        answer = registry.replica_heartbeat("svc", "real", host="h", pid=2, stats=junk)
        assert answer["stats_counted"] is False and why in answer["stats_problem"]
        live = {r["replica"]: r for r in registry.deployment_status("svc")["replicas"]}
        assert live["real"]["live"] and live["real"]["stats"] == {}

    # A reader can neither hold the lease (no rule would be judged) nor make the holder
    # leave (a second review: leave, then a heartbeat, and the reader led).
    assert registry.replica_heartbeat("svc", "real", host="h", pid=2)["leader"] is True
    with pytest.raises(tether.Conflict, match="is another caller's"):
        rita.leave_deployment("svc", "real")
    with pytest.raises(tether.Conflict, match="is another caller's"):
        rita.replica_heartbeat("svc", "real", host="h", pid=3)
    registry.leave_deployment("svc", "real")
    assert rita.replica_heartbeat("svc", "fake", host="h", pid=1)["leader"] is False

    # Nor flood the deployment with replicas (a third review: thousands of ids, each
    # with megabytes of info, returned by every status read for an hour).
    from tether._registry import deployments as deployment_records

    big = rita.replica_heartbeat("svc", "big", host="h", pid=1, lead=False,
                                 info={"junk": "x" * 200_000})
    assert big["leader"] is False
    kept = {r["replica"]: r for r in registry.deployment_status("svc")["replicas"]}["big"]
    assert "junk" not in kept["info"] and kept["info"]["info_dropped"] > 200_000
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deployment_records, "MAX_REPLICAS_PER_CALLER", 2)  # fake, big
        with pytest.raises(tether.Conflict, match="live replicas of deployment svc already"):
            rita.replica_heartbeat("svc", "one-more", host="h", pid=1, lead=False)
        # Nor by leaving at once and coming back under a new id, again and again (a
        # review: 1300 rows of 60 KB in 11 s): its stopped rows are forgotten instead.
        rita.leave_deployment("svc", "big")
        rita.leave_deployment("svc", "fake")
        for n in range(10):
            rita.replica_heartbeat("svc", f"churn-{n}", host="h", pid=1, lead=False)
            rita.leave_deployment("svc", f"churn-{n}")
        rows = registry.deployment_status("svc")["replicas"]
        assert sum(1 for r in rows if r["info"].get("_principal") == "rita@example.com") <= 2

    # A caller with a role on another model only is told nothing of the deployment:
    # not its name among others, its endpoints, routes or targets (a third review).
    registry.create_token("olga@example.com", role="contributor", model="other")
    olga = registry.as_actor("olga@example.com", enforce_roles=True)
    with pytest.raises(tether.PermissionDenied):
        olga.rollback_route("svc", endpoint="iris", route="hidden",
                            failing=f"sha:{'0' * 64}")
    with pytest.raises(tether.PermissionDenied):
        olga.set_deployment_weights("svc", {"main": 1.0})
    # A missing deployment and one she may not read answer alike, naming nothing.
    refusals = []
    for name in ("nosuch", "svc"):
        with pytest.raises(PermissionDenied) as refused:
            olga.rollback_deployment(name)
        refusals.append(refused.value.message.replace(name, "NAME"))
        assert "iris" not in refused.value.message
    assert refusals[0] == refusals[1]

    # Who may move an alias route by its policy counts, not the protected setting alone.
    registry.promote(good.ref, "staging", create=True)
    registry.set_policy("iris", "aliases:\n  staging:\n    roles: [approver]\n")
    registry.apply_deployment("svc", _spec("iris@staging", trusted=False))
    registry.create_token("carl@example.com", role="contributor", model="iris")
    carl = registry.as_actor("carl@example.com", enforce_roles=True)
    # A change by a caller who may not read deployments answers the revision, not the
    # record (its signatures and every route: a review).
    answer = carl.set_deployment_weights("svc", {"main": 50.0})
    assert {"name", "revision", "changed"} <= set(answer) and "spec" not in answer
    staged = {"iris/main": {**made_up["iris/main"], "ref": "iris@1.0.0"}}
    assert carl.replica_heartbeat("svc", "carl-1", host="h", pid=4, stats=staged,
                                  lead=False)["stats_counted"] is False


def test_tether_deploy_sign_through_a_server_shows_the_versions_and_needs_a_yes(
        registry: Registry, tmp_path: Path, iris: tuple[Any, Any]) -> None:
    from click.testing import CliRunner

    from tether._metadata.schema import versions
    from tether.cli import cli
    from tether.server.app import create_app

    good = registry.log_model(fit_logreg(iris), "iris", serialization="pickle", progress=False)
    registry.apply_deployment("svc", _spec(good.ref))
    key = _key(registry, tmp_path)
    token = registry.create_token("ops@example.com", role="admin")["token"]
    # What a hostile server can answer: an author that erases the row shown and draws
    # another before the question (a second review). Shown escaped, never acted on.
    with registry.engine.begin() as conn:
        conn.execute(versions.update().where(versions.c.id == good.id).values(
            author="\x1b[2K\x1b[1Gsha:fake\x1b[8m"))

    with app_in_thread(create_app(registry)) as url:
        command = ["-r", url, "deploy", "sign", "svc", "--key", str(key)]
        asked = CliRunner().invoke(cli, command, env={"TETHER_TOKEN": token})
        assert asked.exit_code == 2, asked.output
        assert good.digest in asked.output and "registry's answer" in asked.output
        assert "--yes" in asked.output and registry.deployment("svc")["signatures"] == []
        assert "\x1b" not in asked.output and "\\x1b[2K" in asked.output
        done = CliRunner().invoke(cli, [*command, "--yes", "--json"],
                                  env={"TETHER_TOKEN": token})
        assert done.exit_code == 0, done.output
        assert json.loads(done.output)["signatures"][0]["payload"]["endpoints"] == {
            "iris": [good.digest]}


def test_a_refused_revision_gives_no_more_trust_than_the_one_before(
        registry: Registry, tmp_path: Path, iris: tuple[Any, Any]) -> None:
    """The harm (a second review): a revision that made an endpoint trusted but was
    refused (it also added an endpoint) left the pool trusting while its slot still
    followed the old, unprotected alias: a contributor's next promotion loaded trusted."""
    from tether.serving.runtime import ServingRuntime, _less_trust

    good = registry.log_model(fit_logreg(iris), "iris", serialization="pickle", progress=False)
    registry.promote(good.ref, "staging", create=True)
    plain = _spec("iris@staging", trusted=False)
    record = registry.apply_deployment("svc", plain)
    runtime = ServingRuntime(registry, deployment_from_record(record, ServerConfig()),
                             follow=("svc", record["revision"]))
    endpoint = runtime.endpoints["iris"]
    raised = {"endpoints": {"abc": _spec(good.ref)["endpoints"]["iris"],
                            "iris": _spec(good.ref)["endpoints"]["iris"]}}
    with pytest.raises(InvalidInput, match="is new; restart"):
        runtime.apply(deployment_from_record(registry.apply_deployment("svc", raised),
                                             ServerConfig()))
    assert endpoint.pool.trust == (False, None)
    assert endpoint.slots["main"].target == "iris@staging"

    d1, d2 = "a" * 64, "b" * 64
    assert _less_trust((True, None), (True, {d1: 5.0})) == (True, {d1: 5.0})
    assert _less_trust((True, {d1: 9.0, d2: 1.0}), (True, {d1: 5.0})) == (True, {d1: 5.0})
    assert _less_trust((True, {d1: 5.0}), (False, None)) == (False, {d1: 5.0})


def test_a_signature_by_a_removed_key_is_shown_as_such(
        registry: Registry, tmp_path: Path, iris: tuple[Any, Any]) -> None:
    good = registry.log_model(fit_logreg(iris), "iris", serialization="pickle", progress=False)
    registry.apply_deployment("svc", _spec(good.ref))
    registry.sign_deployment("svc", str(_key(registry, tmp_path)))
    assert registry.deployment("svc")["signatures"][0]["key"] == "release"
    registry.remove_key("release")
    assert registry.deployment("svc")["signatures"][0]["key"] is None


def test_a_token_scoped_to_a_model_learns_nothing_of_deployments(
        registry: Registry, tmp_path: Path, iris: tuple[Any, Any]) -> None:
    """Reading a deployment takes reader registry-wide: reading it by the models it
    routes to now leaked those it routed to before (history, replicas' reports,
    signatures: a review), and a refusal named a hidden deployment's models."""
    good = registry.log_model(fit_logreg(iris), "iris", serialization="pickle", progress=False)
    (tmp_path / "o.bin").write_bytes(b"o")
    other = registry.log_model(tmp_path / "o.bin", "payroll", progress=False)
    registry.apply_deployment("svc", {"endpoints": {"o": {"routes": [
        {"name": "main", "target": other.ref, "weight": 100}]}}})
    registry.apply_deployment("svc", _spec(good.ref, trusted=False))
    registry.create_token("ai@team", role="approver", model="iris")
    scoped = registry.as_actor("ai@team", enforce_roles=True)
    for read in (lambda: scoped.deployment("svc"), lambda: scoped.deployment_status("svc"),
                 lambda: scoped.deployment_history("svc"), scoped.deployments,
                 lambda: scoped.deployment("nosuch")):
        with pytest.raises(PermissionDenied) as refused:
            read()
        assert "payroll" not in str(refused.value)  # hidden and missing look alike
    from tether._errors import UnknownName
    from tether._registry.access import redacted

    missing = UnknownName("no deployment named 'x'", kind="deployments", names=["svc"])
    assert redacted(scoped, missing).hint.startswith("deployments you may read: none")
    # Changing its own model's routes stays possible (weights of a route to iris).
    assert scoped.set_deployment_weights("svc", {"main": 50.0})["revision"] == 3
