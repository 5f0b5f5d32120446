"""Deployments stored in the registry, followed by real replica processes on loopback.

The use cases (apply, weights, pause, resume, rollback, roles, audit) run on
SQLite and PostgreSQL; the replica tests start `tether serve --deployment`
processes (one of them with two workers) against both, and check that a change
reaches every replica, that a failing version is rolled back once (one audit
event) with no failed request besides the failing version's own, and that a
replica that stops is marked gone while another takes the lease.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tether import PermissionDenied, Registry
from tether._errors import InvalidInput, NotFound

from .conftest import fit_logreg, subprocess_env, tether_exe, wait_until
from .servers import app_in_thread

USER = "tester@example.com"


def Good() -> Any:
    class Good:
        def predict(self, frame: Any) -> list[int]:
            return [1] * len(frame)

    return Good()


def Failing() -> Any:
    class Failing:
        def predict(self, frame: Any) -> list[int]:
            raise RuntimeError("model backend unavailable")

    return Failing()


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> float:
    return wait_until(condition, timeout, ignoring=(httpx.HTTPError,))


def _spec(target: str = "iris@production", canary: str | None = None,
          rules: list[str] | None = None) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [{"name": "stable", "target": target, "weight": 90}]
    if canary:
        routes.append({"name": "canary", "target": canary, "weight": 10})
    body: dict[str, Any] = {"routes": routes}
    if rules:
        body["rollback"] = {"window": 20, "min_requests": 10, "rules": rules}
        body["trusted"] = True
    return {"endpoints": {"iris": body}}


# -- the record ------------------------------------------------------------------------


def test_deployment_record_is_versioned_audited_and_guarded(
    any_registry: Registry, iris: tuple[Any, Any]
) -> None:
    registry = any_registry
    v1 = registry.log_model(fit_logreg(iris), "iris", progress=False)
    v2 = registry.log_model(fit_logreg(iris, C=0.05), "iris", progress=False)
    registry.promote(v1.ref, "production", create=True)
    first = registry.apply_deployment("web", _spec(canary=v2.ref), reason="first rollout")
    assert first["revision"] == 1 and first["changed"]
    assert registry.apply_deployment("web", _spec(canary=v2.ref))["changed"] is False
    with pytest.raises(NotFound, match="iris has no"):
        registry.apply_deployment("web", _spec(canary="iris@9.9.9"))
    with pytest.raises(InvalidInput, match="unknown key"):
        registry.apply_deployment("web", {"endpoints": {"iris": {"routs": []}}})

    record = registry.set_deployment_weights("web", {"stable": 50, "canary": 50})
    assert record["revision"] == 2
    assert [r["weight"] for r in record["spec"]["endpoints"]["iris"]["routes"]] == [50, 50]
    assert registry.pause_routes("web", ["canary"])["paused"] == ["iris/canary"]
    with pytest.raises(InvalidInput, match="no traffic"):
        registry.pause_routes("web", ["stable"])
    assert registry.pause_routes("web", ["canary"], resume=True)["paused"] == []
    back = registry.rollback_deployment("web", to_revision=1)
    assert back["revision"] == 5
    assert [r["weight"] for r in back["spec"]["endpoints"]["iris"]["routes"]] == [90, 10]
    assert registry.deployment("web", known_revision=5) == {
        "name": "web", "revision": 5, "generation": 5, "unchanged": True}
    history = registry.deployment_history("web")
    assert [h["action"] for h in history] == ["rollback", "resume", "pause", "weights", "apply"]
    actions = [e.action for e in registry.audit_log() if e.action.startswith("deployment.")]
    assert actions == ["deployment.rollback", "deployment.resume", "deployment.pause",
                       "deployment.weights", "deployment.apply"]

    # A route following production needs an approver; a pinned one a contributor, as
    # long as its change takes no traffic from production (weights are relative).
    registry.grant("dev@example.com", "contributor", model="iris")
    dev = registry.as_actor("dev@example.com")
    with pytest.raises(PermissionDenied, match="approver"):
        dev.set_deployment_weights("web", {"stable": 10})
    with pytest.raises(PermissionDenied, match="approver"):
        dev.set_deployment_weights("web", {"canary": 20})
    assert dev.set_deployment_weights("web", {"canary": 5})["revision"] == 6

    # A pinned route rolled back goes to its target in an earlier revision.
    registry.apply_deployment("pinned", _spec(target=v1.ref))
    registry.apply_deployment("pinned", _spec(target=v2.ref))
    result = registry.rollback_route("pinned", endpoint=None, route="stable",
                                     failing=f"sha:{v2.digest}", reason="test")
    assert result["rolled_back"] and result["to"] == v1.ref and result["via"] == "route"
    again = registry.rollback_route("pinned", endpoint=None, route="stable",
                                    failing=f"sha:{v2.digest}", reason="test")
    assert again["rolled_back"] is False  # it no longer serves the failing version
    # Only the lease holder's breach acts.
    beat = registry.replica_heartbeat("pinned", "a", host="h", pid=1)
    assert beat["leader"] is True
    assert registry.replica_heartbeat("pinned", "b", host="h", pid=2)["leader"] is False
    registry.apply_deployment("pinned", _spec(target=v2.ref))
    refused = registry.rollback_route("pinned", endpoint=None, route="stable",
                                      failing=f"sha:{v2.digest}", holder="b")
    assert refused["rolled_back"] is False and "lease" in refused["why"]
    registry.leave_deployment("pinned", "a")
    assert registry.replica_heartbeat("pinned", "b", host="h", pid=2)["leader"] is True
    status = registry.deployment_status("pinned")
    assert {r["replica"]: r["live"] for r in status["replicas"]} == {"a": False, "b": True}
    assert status["lease"]["holder"] == "b"


# -- replica processes -----------------------------------------------------------------


class Replica:
    def __init__(self, root: str, name: str, port: int, workers: int = 1) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [tether_exe(), "--registry", root, "serve", "--deployment", name, "--port",
             str(port), "--workers", str(workers), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=subprocess_env(TETHER_USER=USER))

    def routes(self, endpoint: str = "iris") -> dict[str, Any]:
        body = httpx.get(f"{self.url}/v1/endpoints/{endpoint}", timeout=5).json()
        return {r["name"]: r for r in body["routes"]}

    def ready(self) -> bool:
        return httpx.get(self.url + "/readyz", timeout=5).status_code == 200

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err.decode(errors="replace")


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.stop()


def _start(started: list[Replica], root: str, name: str, count: int,
           workers: tuple[int, ...] = ()) -> list[Replica]:
    from tether.serving.server import free_port

    new = [Replica(root, name, free_port(), workers[i] if i < len(workers) else 1)
           for i in range(count)]
    started.extend(new)
    _wait(lambda: all(r.ready() for r in new), timeout=90)
    return new


@pytest.mark.slow
def test_replicas_follow_the_record_and_roll_back_once(
    any_registry: Registry, iris: tuple[Any, Any], replicas: list[Replica]
) -> None:
    registry = any_registry
    root = str(registry.location.root)  # type: ignore[attr-defined]
    v1 = registry.log_model(fit_logreg(iris), "iris", progress=False)
    v2 = registry.log_model(fit_logreg(iris, C=0.05), "iris", progress=False)
    registry.promote(v1.ref, "production", create=True)
    registry.apply_deployment("web", _spec(canary=v2.ref))
    group = _start(replicas, root, "web", 3, workers=(2,))

    # A weight change and an alias move reach every replica within a second or two.
    registry.set_deployment_weights("web", {"stable": 40, "canary": 60})
    took = _wait(lambda: all(r.routes()["canary"]["weight"] == 60 for r in group))
    assert took < 5
    registry.pause_routes("web", ["canary"])
    _wait(lambda: all(r.routes()["canary"]["weight"] == 0 for r in group))
    registry.promote(v2.ref, "production")
    took = _wait(lambda: all(r.routes()["stable"]["ref"] == v2.ref for r in group))
    assert took < 5

    # Every replica (each worker of the first) reports; one holds the lease.
    status = registry.deployment_status("web")
    live = [r for r in status["replicas"] if r["live"]]
    assert len(live) == 4 and status["lease"]["holder"] in {r["replica"] for r in live}

    # Prometheus: the two workers' counters are summed on either of them.
    record = {k: float(v) for k, v in iris[0].iloc[0].items()}
    for _ in range(40):
        httpx.post(group[0].url + "/v1/endpoints/iris/predict", json={"records": [record]})

    def total() -> float:
        text = httpx.get(group[0].url + "/metrics").text
        return sum(float(v) for v in re.findall(r"^tether_requests_total\{.*\} (\S+)$", text,
                                                re.MULTILINE))
    _wait(lambda: total() == 40, timeout=10)
    assert total() == 40

    # A stopped replica is gone; the others keep the lease.
    group[2].stop()
    _wait(lambda: sum(r["live"] for r in registry.deployment_status("web")["replicas"]) == 3)


@pytest.mark.slow
def test_a_failing_version_is_rolled_back_once_across_replicas(
    any_registry: Registry, replicas: list[Replica]
) -> None:
    registry = any_registry
    root = str(registry.location.root)  # type: ignore[attr-defined]
    good = registry.log_model(Good(), "scorer", progress=False)
    bad = registry.log_model(Failing(), "scorer", progress=False)
    pinned_bad = registry.log_model(Failing(), "scorer", progress=False, notes="pinned")
    registry.promote(good.ref, "production", create=True)
    spec = {"endpoints": {"scorer": {
        "routes": [{"name": "main", "target": "scorer@production", "weight": 90},
                   {"name": "canary", "target": good.ref, "weight": 10}],
        "trusted": True,
        "rollback": {"window": 20, "min_requests": 10, "rules": ["error_rate > 0.2"]}}}}
    registry.apply_deployment("scoring", spec)
    group = _start(replicas, root, "scoring", 3)
    outcomes: list[tuple[int, str]] = []
    stop = threading.Event()

    def send(replica: Replica) -> None:
        with httpx.Client(base_url=replica.url, timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.post("/v1/endpoints/scorer/predict",
                                    json={"records": [{"x": 1.0}]})
                    outcomes.append((r.status_code, r.headers.get("x-model-version", "")))
                except httpx.HTTPError as error:
                    outcomes.append((0, type(error).__name__))
                time.sleep(0.01)

    threads = [threading.Thread(target=send, args=(r,)) for r in group]
    for t in threads:
        t.start()
    try:
        # An alias route: the alias is rolled back once, every replica follows.
        registry.promote(bad.ref, "production")
        _wait(lambda: registry.get("scorer@production").digest == good.digest, timeout=60)
        _wait(lambda: all(r.routes("scorer")["main"]["ref"] == good.ref for r in group))
        # A pinned route: the record goes back to the earlier target, once.
        spec["endpoints"]["scorer"]["routes"][1]["target"] = pinned_bad.ref
        registry.apply_deployment("scoring", spec)
        _wait(lambda: all(r.routes("scorer")["canary"]["ref"] == pinned_bad.ref for r in group))
        _wait(lambda: all(r.routes("scorer")["canary"]["ref"] == good.ref for r in group),
              timeout=60)
        time.sleep(2)  # any second rollback would happen now
    finally:
        stop.set()
        for t in threads:
            t.join()
    alias_events = registry.audit_log(action="alias.rollback")
    route_events = registry.audit_log(action="deployment.rollback")
    assert len(alias_events) == 1 and len(route_events) == 1
    assert "error_rate > 0.2" in alias_events[0].details["reason"]
    assert alias_events[0].details["deployment"] == "scoring"
    assert route_events[0].before == pinned_bad.ref and route_events[0].after == good.ref
    failing = (bad.ref, pinned_bad.ref)
    others = [o for o in outcomes if o[0] != 200 and not o[1].startswith(failing)]
    assert others == [] and len(outcomes) > 100
    history = registry.deployment_history("scoring")
    assert [h["action"] for h in history[:2]] == ["rollback", "apply"]


@pytest.mark.slow
def test_replicas_against_a_shared_server(
    registry: Registry, tmp_path: Path, replicas: list[Replica]
) -> None:
    """Every serving action through the server: following, heartbeats, the lease and a
    pinned route's rollback (its audit event is no longer lost)."""
    from tether.server.app import create_app
    from tether.serving.server import free_port

    good = registry.log_model(Good(), "scorer", progress=False)
    bad = registry.log_model(Failing(), "scorer", progress=False)
    spec = {"endpoints": {"scorer": {
        "routes": [{"name": "main", "target": good.ref, "weight": 100}], "trusted": True,
        "rollback": {"window": 20, "min_requests": 10, "rules": ["error_rate > 0.2"]}}}}
    registry.apply_deployment("remote", spec)
    # Replicas of a server load pickles trusted only as a deployment signature by a key
    # they pin says (test_deployment_signing.py): sign for the good and the next version.
    from tether._signing import generate_key

    key, public, _ = generate_key(tmp_path / "release.key")
    registry.trust_key("release", public.read_text())
    registry.sign_deployment("remote", str(key), versions=[bad.ref])
    token = registry.create_token("replica@example.com", role="contributor")["token"]
    with app_in_thread(create_app(registry)) as url:
        group = []
        for _ in range(2):
            replica = Replica.__new__(Replica)
            rport = free_port()
            replica.url = f"http://127.0.0.1:{rport}"
            replica.process = subprocess.Popen(
                [tether_exe(), "--registry", url, "serve", "--deployment", "remote", "--port",
                 str(rport), "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env=subprocess_env(TETHER_TOKEN=token, TETHER_LOAD_KEYS=str(public)))
            group.append(replica)
        replicas.extend(group)
        _wait(lambda: all(r.ready() for r in group), timeout=90)
        spec["endpoints"]["scorer"]["routes"][0]["target"] = bad.ref
        registry.apply_deployment("remote", spec)
        for _ in range(60):
            for replica in group:
                httpx.post(replica.url + "/v1/endpoints/scorer/predict",
                           json={"records": [{"x": 1.0}]})
            if registry.audit_log(action="deployment.rollback"):
                break
            time.sleep(0.05)
        _wait(lambda: all(r.routes("scorer")["main"]["ref"] == good.ref for r in group))
        events = registry.audit_log(action="deployment.rollback")
        assert len(events) == 1 and events[0].actor == "replica@example.com"


def test_a_route_moved_and_moved_back_during_a_load_serves_what_the_record_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two revisions a second apart moved a pinned route to 1.3.0 and back to 1.1.0: the
    second re-pin was dropped while the first loaded, the first switched to 1.3.0, and
    the replica served a version no revision routed to, for good (a review)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from tether.serving import runtime, targets
    from tether.serving.endpoint import Endpoint

    slot = SimpleNamespace(name="canary", target="iris@1.3.0", busy=False, pending=[])
    loads: list[str] = []
    switched: list[str] = []

    def load(endpoint: Any, s: Any, version: str) -> str:
        loads.append(version)
        if len(loads) == 1:
            s.target = "iris@1.1.0"  # the next revision arrives while this one loads
        return version

    monkeypatch.setattr(targets, "load_or_report", load)
    monkeypatch.setattr(targets, "switch", lambda e, s, loaded: switched.append(loaded))
    endpoint = SimpleNamespace(registry=SimpleNamespace(get=lambda ref: ref))
    runtime._repin(endpoint, slot)  # type: ignore[arg-type]
    assert loads == ["iris@1.3.0", "iris@1.1.0"] and switched == ["iris@1.1.0"]

    # A job asked for while another runs is run after it, not dropped.
    gate, ran = threading.Event(), []
    fake = SimpleNamespace(name="e", _loader=ThreadPoolExecutor(1),
                           _submitting=threading.Lock())
    fake._start = lambda s, job: Endpoint._start(fake, s, job)  # type: ignore[arg-type]
    slot2 = SimpleNamespace(name="r", busy=False, pending=[])
    import functools

    def poll(name: str) -> None:
        ran.append(name)

    Endpoint.submit(fake, slot2, lambda: (gate.wait(5), ran.append("first")))  # type: ignore[arg-type]
    Endpoint.submit(fake, slot2, lambda: ran.append("repin"))  # type: ignore[arg-type]
    for _ in range(3):  # a tick's poll, asked for again and again: queued once, after
        Endpoint.submit(fake, slot2, functools.partial(poll, "poll"))  # type: ignore[arg-type]
    gate.set()
    deadline = time.monotonic() + 5
    while len(ran) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert ran == ["first", "repin", "poll"] and not slot2.busy
    fake._loader.shutdown()


def test_an_unreadable_revision_is_refused_and_the_replica_keeps_reporting(
        registry: Registry, iris: tuple[Any, Any]) -> None:
    """A revision whose stored spec had the wrong shape escaped the follower's poll: its
    heartbeat stopped, it showed as gone and lost the lease, and status, history and
    `serve --deployment` printed tracebacks (a review)."""
    import json as _json

    from click.testing import CliRunner

    from tether._deployment import ServerConfig
    from tether._errors import InvalidInput
    from tether._metadata.schema import deployments
    from tether.cli import cli
    from tether.serving.follower import load_from_registry
    from tether.serving.server import start_runtime

    from .conftest import fit_logreg

    version = registry.log_model(fit_logreg(iris), "iris")
    registry.apply_deployment("web", {"endpoints": {"iris": {"routes": [
        {"name": "main", "target": version.ref, "weight": 100}]}}})
    deployment, _ = load_from_registry(registry, "web", ServerConfig())
    runtime = start_runtime(registry, deployment, follow="web")
    try:
        with registry.engine.begin() as conn:  # a revision written by another hand
            conn.execute(deployments.update().values(
                spec=_json.dumps({"endpoints": {"iris": {"routes": {"main": 1}}}}),
                revision=deployments.c.revision + 1))
        follower = runtime.follower
        assert follower is not None
        follower.tick()
        follower.beat()
        assert follower.revision == 1 and follower.refused_revision == 2
        assert "unreadable" in str(follower.refusal)
        status = registry.deployment_status("web")
        (replica,) = status["replicas"]
        assert replica["live"] and replica["info"]["refused"]["revision"] == 2
        assert runtime.endpoints["iris"].slots["main"].current is not None  # still serving
    finally:
        runtime.stop()
    root = str(registry.location.root)
    for args in (["deploy", "status", "web"], ["deploy", "history", "web"]):
        result = CliRunner().invoke(cli, ["--registry", root, *args])
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    with pytest.raises(InvalidInput, match="stored record of the deployment is unreadable"):
        load_from_registry(registry, "web", ServerConfig())
    # What its hint says recovers it: an admin rolls back to a readable revision.
    assert registry.rollback_deployment("web", to_revision=1)["revision"] == 3
    load_from_registry(registry, "web", ServerConfig())


def test_a_heartbeat_never_decodes_other_replicas_reports(
        registry: Registry, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new replica's heartbeat counted its caller's replicas by decoding every row's
    info (64 KB each): a thousand rows held the write lock 3.9 s per 200-byte heartbeat
    (a review). The caller is a column of its own now (migration 0014)."""
    import json as _json

    from tether._metadata.schema import deployment_replicas

    (tmp_path / "w.bin").write_bytes(b"w")
    version = registry.log_model(tmp_path / "w.bin", "m", progress=False)
    registry.apply_deployment("svc", {"endpoints": {"m": {"routes": [
        {"name": "main", "target": version.ref, "weight": 100}]}}})
    big = _json.dumps({"_principal": "other@example.com", "pad": "x" * 60_000})
    with registry.engine.begin() as conn:
        conn.execute(deployment_replicas.insert(), [
            {"deployment": "svc", "replica": f"r{i}", "host": "h", "pid": 1, "url": "",
             "started_at": "2026-11-28T00:00:00Z", "heartbeat_at": 0.0,
             "expires_at": 10.0**12, "info": big, "stats": "{}",
             "principal": "other@example.com"} for i in range(200)])
    decoded: list[int] = []
    real = _json.loads

    def counting(text: Any, *args: Any, **kwargs: Any) -> Any:
        decoded.append(len(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(_json, "loads", counting)
    registry.replica_heartbeat("svc", "mine", host="h", pid=2)
    monkeypatch.setattr(_json, "loads", real)
    assert sum(decoded) < 60_000, (len(decoded), sum(decoded))  # no other report read


def test_migration_0014_fills_the_principal_of_kept_replicas(any_registry: Registry,
                                                             tmp_path: Any) -> None:
    from alembic import command

    from tether._metadata.engine import _alembic_config, upgrade
    from tether._metadata.schema import deployment_replicas

    registry = any_registry
    (tmp_path / "w.bin").write_bytes(b"w")
    version = registry.log_model(tmp_path / "w.bin", "m", progress=False)
    registry.apply_deployment("svc", {"endpoints": {"m": {"routes": [
        {"name": "main", "target": version.ref, "weight": 100}]}}})
    registry.replica_heartbeat("svc", "r1", host="h", pid=1)
    with registry.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0013")
    upgrade(registry.engine)
    with registry.engine.begin() as conn:
        owner = conn.execute(sa.select(deployment_replicas.c.principal)).scalar()
    assert owner == registry.actor
    assert registry.replica_heartbeat("svc", "r1", host="h", pid=1)["revision"] == 1


def test_a_replica_id_that_looks_like_another_is_refused(registry: Registry,
                                                         tmp_path: Any) -> None:
    """Any text of 1 to 128 characters was an id: "wеb-1" (a Cyrillic е) reported beside
    "web-1" read as the same replica in `tether deploy status`, and a newline in one drew
    a line of its own. Ids are ASCII now; a host is printable."""
    (tmp_path / "w.bin").write_bytes(b"w")
    version = registry.log_model(tmp_path / "w.bin", "m", progress=False)
    registry.apply_deployment("svc", {"endpoints": {"m": {"routes": [
        {"name": "main", "target": version.ref, "weight": 100}]}}})
    registry.replica_heartbeat("svc", "web-1", host="node-a.example", pid=1)
    registry.replica_heartbeat("svc", "node-a_7:8@pod+2", host="h", pid=1)
    for look_alike in ["w\u0435b-1", "web-1\n  web-2 live", "", "-web", "x" * 129, "web 1"]:
        with pytest.raises(InvalidInput, match="replica id"):
            registry.replica_heartbeat("svc", look_alike, host="h", pid=2)
    with pytest.raises(InvalidInput, match="host"):
        registry.replica_heartbeat("svc", "web-2", host="h\x1b[2Kweb-1", pid=2)
    assert sorted(r["replica"] for r in registry.deployment_status("svc")["replicas"]) == [
        "node-a_7:8@pod+2", "web-1"]
