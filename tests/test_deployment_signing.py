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
    pool = ModelPool(client, trusted=config.trusted, trusted_digests=config.trusted_digests,
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
        assert pool.trust == (True, frozenset())
        with pytest.raises(UnsafeArtifact, match="TETHER_LOAD_KEYS") as refused:
            pool.load(version)
        assert "tether deploy sign svc" in str(refused.value.hint)
        assert not marker.exists()

        # An admin signs the honest revision; a replica pinning the key loads it trusted,
        # and still refuses the attacker's version the server then names.
        registry.apply_deployment("svc", _spec(good.ref))
        signed = client.sign_deployment("svc", str(key))
        assert signed["signatures"][0]["payload"]["endpoints"] == {"iris": [good.digest]}
        monkeypatch.setenv("TETHER_LOAD_KEYS", str(tmp_path / "release.key.pub"))
        pool, version = _pool_of(client, "svc")
        assert pool.trust == (True, frozenset({good.digest}))
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
        assert pool.trust == (True, frozenset())
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

    def vouched(*entries: dict[str, Any]) -> dict[str, frozenset[str]]:
        return vouched_digests("svc", {"name": "svc", "signatures": list(entries)}, pinned)

    assert vouched(entry()) == {"iris": frozenset({digest})}
    assert vouched(entry(expires=now + timedelta(days=1))) == {"iris": frozenset({digest})}
    assert vouched(entry(expires=now - timedelta(seconds=1))) == {}  # expired
    assert vouched(entry(deployment="other")) == {}  # signed for another deployment
    assert vouched(entry(signer=other)) == {}  # not by the pinned key
    assert vouched(entry(kind="tether.something-else/v1")) == {}
    assert vouched({"key_id": "kid", "payload": "text", "signature": "zz"}, "junk") == {}
    assert vouched_digests("svc", {"signatures": [entry()]}, {}) == {}  # nothing pinned


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
    again = registry.sign_deployment("svc", str(key))
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
        record = mallory.apply_deployment("svc", _spec(evil.ref, trusted=False))
        runtime.apply(deployment_from_record(record, ServerConfig()))
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
