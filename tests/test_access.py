"""Who may read and log is decided by the registry's use cases, not by the shells.

The same rule holds whether a caller reaches the registry embedded, through the
REST API, through the MLflow API or through the web UI, because the shells only
authenticate and hand the use cases an actor that enforces roles.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tether._errors import InvalidInput, PermissionDenied
from tether._registry.registry import Registry
from tether.server.app import create_app


def _model(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"{text}.txt"
    path.write_text(text)
    return path


def _read(loaded: Path) -> str:
    return loaded.read_text()


def _registry(tmp_path: Path) -> Registry:
    registry = Registry.init(tmp_path / ".tether", actor="owner")
    registry.log_model(_model(tmp_path, "w1"), "fraud", progress=False)
    registry.log_model(_model(tmp_path, "w2"), "churn", progress=False)
    return registry


def test_an_embedded_registry_trusts_its_local_user_by_default(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    colleague = registry.as_actor("colleague")  # no grant at all
    assert len(colleague.versions("fraud")) == 1
    colleague.log_model(_model(tmp_path, "w3"), "fraud", progress=False)
    assert [v.author for v in registry.versions("fraud")] == ["owner", "colleague"]
    with pytest.raises(PermissionDenied):  # admin-only rules hold in every mode
        colleague.grant("colleague", "admin")


def test_access_roles_makes_every_read_and_log_need_a_role(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    registry.set_setting("access", "roles")
    stranger = registry.as_actor("stranger")
    with pytest.raises(PermissionDenied, match="reading versions needs role reader on model fraud"):
        stranger.versions("fraud")
    with pytest.raises(PermissionDenied, match="tether role grant stranger reader"):
        stranger.get("fraud@latest")
    with pytest.raises(PermissionDenied, match="listing models needs role reader"):
        stranger.models()
    with pytest.raises(PermissionDenied):
        stranger.load("fraud@latest", progress=False)
    registry.grant("stranger", "reader", model="fraud")
    assert _read(stranger.load("fraud@latest", progress=False)) == "w1"
    with pytest.raises(PermissionDenied, match="on model churn"):
        stranger.load("churn@latest", progress=False)  # the grant is scoped to fraud
    with pytest.raises(PermissionDenied, match="logging a version needs role contributor"):
        stranger.log_model(_model(tmp_path, "w9"), "fraud", progress=False)
    registry.grant("stranger", "contributor", model="fraud")
    assert stranger.log_model(_model(tmp_path, "w9"), "fraud", progress=False).author == "stranger"
    # The owner, an admin, is unaffected.
    assert len(registry.models()) == 2


def test_unknown_access_modes_are_refused(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    with pytest.raises(InvalidInput, match="access must be one of open, roles"):
        registry.set_setting("access", "everyone")


def test_an_unauthenticated_shell_would_leak_and_the_registry_does_not(tmp_path: Path) -> None:
    """The attack: a shell that forgets its permission check (a new route, a
    new UI page) would serve any model to any token holder. With the decision
    in the use case, the actor a shell hands over is refused all the same."""
    registry = _registry(tmp_path)
    token = registry.create_token("intern", role="reader", model="churn")["token"]
    intern = registry.authenticate(token)
    careless = registry.as_actor(intern, enforce_roles=False)  # the unsafe way
    assert _read(careless.load("fraud@latest", progress=False)) == "w1"  # harm: read
    guarded = registry.as_actor(intern, enforce_roles=True)  # what every shell does
    with pytest.raises(PermissionDenied, match="on model fraud; intern has only reader on churn"):
        guarded.load("fraud@latest", progress=False)
    assert _read(guarded.load("churn@latest", progress=False)) == "w2"


def test_rest_mlflow_and_rpc_routes_answer_with_the_use_case_decision(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    token = registry.create_token("intern", role="reader", model="churn")["token"]
    app = TestClient(create_app(registry))
    auth = {"Authorization": f"Bearer {token}"}
    assert app.get("/api/v1/models/churn/versions", headers=auth).status_code == 200
    refused = app.get("/api/v1/models/fraud/versions", headers=auth)
    assert refused.status_code == 403
    assert refused.json()["message"] == (
        "reading versions needs role reader on model fraud; intern has only reader on churn"
    )
    mlflow = app.get(
        "/api/2.0/mlflow/registered-models/get", params={"name": "fraud"}, headers=auth
    )
    assert mlflow.status_code == 403 and mlflow.json()["error_code"] == "PERMISSION_DENIED"
    rpc = app.post("/api/v1/call/delete_version", json={"args": ["churn@latest"]}, headers=auth)
    assert rpc.status_code == 403 and "needs role admin on model churn" in rpc.json()["message"]
    log = app.post("/api/v1/models/churn/versions", json={"values": {}}, headers=auth)
    assert log.status_code == 403  # refused before the values are even decoded
    assert "logging a version needs role contributor" in log.json()["message"]
    alias = app.get("/api/v1/models/fraud/aliases/production", headers=auth)
    assert alias.status_code == 403
    blobs = app.get("/api/v1/blobs", params={"prefix": "index/"}, headers=auth)
    assert blobs.status_code == 403 and "reading the store" in blobs.text
    assert "the store holds the bytes of every model" in blobs.text
    assert app.get("/api/v1/models", headers={}).status_code == 401
    registry.close()


def test_an_open_server_lets_anonymous_read_and_log_but_not_administer(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    app = TestClient(create_app(registry, open_access=True))
    assert app.get("/api/v1/models/fraud/versions").status_code == 200
    grant = app.post("/api/v1/call/grant", json={"args": ["anonymous", "admin"]})
    assert grant.status_code == 403
    # Approving and administering take anonymous's roles too (it has none): it deleted
    # models and versions, undeprecated and collected garbage (a review).
    registry.deprecate("fraud@latest", reason="bad")
    for method, args, kwargs in (("deprecate", ["fraud@latest"], {"undo": True}),
                                 ("delete_version", ["fraud@latest"], {}),
                                 ("delete_model", ["fraud"], {}),
                                 ("gc", [], {"grace_seconds": 0}),
                                 ("tokens", [], {})):
        answer = app.post(f"/api/v1/call/{method}", json={"args": args, "kwargs": kwargs})
        assert answer.status_code == 403, (method, answer.text)
    assert registry.get("fraud@latest").status == "deprecated"
    registry.grant("anonymous", "approver", model="fraud")
    answer = app.post("/api/v1/call/deprecate", json={"args": ["fraud@latest"],
                                                      "kwargs": {"undo": True}})
    assert answer.status_code == 200, answer.text  # the roles granted to anonymous
    registry.close()



def test_protected_aliases_is_a_setting_with_patterns(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    registry.grant("carl", "contributor", model="fraud")
    carl = registry.as_actor("carl")
    registry.promote("fraud@latest", "production", create=True)  # owner: admin
    carl.promote("fraud@latest", "prod-eu", create=True)  # default: only production
    registry.set_setting("protected_aliases", "production,prod-*")
    with pytest.raises(PermissionDenied, match="needs role approver on fraud"):
        carl.promote("fraud@latest", "prod-us", create=True)
    with pytest.raises(PermissionDenied, match="needs role approver on fraud"):
        carl.rollback("fraud", "prod-eu")
    carl.promote("fraud@latest", "staging", create=True)  # unprotected: contributors may
    registry.grant("carl", "approver", model="fraud")
    assert carl.promote("fraud@latest", "prod-us", create=True).alias == "prod-us"


def test_mlflow_reads_of_a_models_versions_decode_no_file_lists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Versions listing 100,000 files each: every small read (an MLflow search for one
    result, a model's JSON, its latest version) decoded every version's file list, 515 MB
    for four requests (a review of what one-model users can make a server do)."""
    from tether._metadata import repository

    registry = _registry(tmp_path)
    app = TestClient(create_app(registry, open_access=True))
    decoded: list[str] = []
    real = repository.manifest_files
    monkeypatch.setattr(repository, "manifest_files",
                        lambda text, what, *a, **k: decoded.append(what) or real(text, what,
                                                                                  *a, **k))
    for path, body in (("registered-models/get", {"name": "fraud"}),
                       ("registered-models/get-latest-versions", {"name": "fraud"}),
                       ("model-versions/search", {"filter": "name='fraud'",
                                                  "max_results": 1})):
        answer = app.get(f"/api/2.0/mlflow/{path}", params=body)
        assert answer.status_code == 200, answer.text
    assert decoded == []
    registry.close()
