"""One suite, three registries: the RegistryAPI contract on the embedded registry over
SQLite, over PostgreSQL, and through a real `tether server` process over HTTP.

Every behaviour here must be the same whichever implementation answers: that is
what lets an application move from a laptop to a team's server unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tether
from tether import Conflict, NotFound, PermissionDenied, PolicyViolation
from tether._contract import RegistryAPI
from tether._errors import IntegrityError
from tether._signing import generate_key

from .servers import start_server, stop

ADMIN = "root@team"


@dataclass
class Backend:
    api: RegistryAPI
    as_user: Callable[[str, str, str | None], RegistryAPI]
    kind: str


@pytest.fixture(params=["sqlite", "postgresql", "server"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "server":
        server = start_server(
            f"sqlite:///{tmp_path / 'meta.db'}", f"file://{tmp_path / 'objects'}", tmp_path
        )
        client = server.client()

        def remote_user(principal: str, role: str, model: str | None) -> RegistryAPI:
            token = client.create_token(principal, role=role, model=model)["token"]
            return server.client(token)  # type: ignore[no-any-return]

        try:
            yield Backend(client, remote_user, "server")
        finally:
            client.close()
            stop(server)
        return
    db_url = request.getfixturevalue("pg_database") if request.param == "postgresql" else None
    registry = tether.init(tmp_path / "reg" / ".tether", actor=ADMIN, db_url=db_url)

    def embedded_user(principal: str, role: str, model: str | None) -> RegistryAPI:
        registry.grant(principal, role, model=model)
        # Another user, as a shell that authenticated them hands them over (see
        # _registry/access.py): the same role checks as through the server.
        return registry.as_actor(principal, enforce_roles=True)

    try:
        yield Backend(registry, embedded_user, request.param)
    finally:
        registry.close()


def _log(api: RegistryAPI, tmp_path: Path, text: str, **options: Any) -> Any:
    folder = tmp_path / f"m-{abs(hash(text))}"
    folder.mkdir(exist_ok=True)
    (folder / "weights.bin").write_text(text * 200)
    return api.log_model(folder / "weights.bin", "fraud", progress=False, **options)


def test_both_implementations_satisfy_the_protocol(backend: Backend) -> None:
    assert isinstance(backend.api, RegistryAPI)


def test_log_resolve_by_every_reference_form(backend: Backend, tmp_path: Path) -> None:
    api = backend.api
    v1 = _log(api, tmp_path, "one", metrics={"auc": 0.9})
    v2 = _log(api, tmp_path, "two", metrics={"auc": 0.92})
    assert (v1.seq, v1.semver, v2.seq, v2.semver) == (1, "1.0.0", 2, "1.1.0")
    for ref in ("fraud@1.0.0", "fraud@1", f"fraud@sha:{v1.digest[:10]}", "fraud@~1.0"):
        assert api.get(ref).digest == v1.digest, ref
    assert api.get("fraud@latest").digest == v2.digest
    assert [v.semver for v in api.versions("fraud")] == ["1.0.0", "1.1.0"]
    again = _log(api, tmp_path, "one", metrics={"auc": 0.9})
    assert (again.seq, again.digest) == (1, v1.digest)
    with pytest.raises(NotFound, match=r"1\.0\.0"):
        api.get("fraud@3.0.0")
    assert api.verify("fraud@1.0.0") == []
    path = api.load("fraud@1.0.0", use_lock=False)
    assert Path(path).read_text() == "one" * 200


def test_aliases_move_roll_back_and_keep_history(backend: Backend, tmp_path: Path) -> None:
    api = backend.api
    _log(api, tmp_path, "one")
    _log(api, tmp_path, "two")
    api.promote("fraud@1.0.0", "production", reason="first", create=True)
    api.promote("fraud@1.1.0", "production", reason="better")
    assert api.get("fraud@production").semver == "1.1.0"
    state = api.alias("fraud", "production")
    stale = state["generation"] - 1  # what a replica that has not looked since holds
    with pytest.raises(Conflict, match="moved since generation"):
        api.rollback("fraud", "production", from_generation=stale)
    with pytest.raises(Conflict, match="no longer points at"):
        api.rollback("fraud", "production", from_digest=api.get("fraud@1.0.0").digest)
    api.rollback("fraud", "production", reason="regression", from_digest=state["digest"],
                 from_generation=state["generation"])
    assert api.get("fraud@production").semver == "1.0.0"
    history = api.alias_history("fraud", "production")
    assert [m.action for m in history][:1] == ["rollback"] or history[-1].action == "rollback"
    assert {m.reason for m in history} >= {"first", "better", "regression"}
    with pytest.raises(PolicyViolation, match="target of production"):
        api.delete_version("fraud@1.0.0")  # an alias points at it
    assert api.verify_audit()[1] == []


def test_policy_roles_and_approvals(backend: Backend, tmp_path: Path) -> None:
    api = backend.api
    _log(api, tmp_path, "one")
    api.set_policy("fraud", "aliases:\n  production:\n    roles: [approver]\n    approvals: 1\n")
    contributor = backend.as_user("carol@team", "contributor", "fraud")
    with pytest.raises(PermissionDenied, match="approver"):
        contributor.promote("fraud@1.0.0", "production", create=True)
    with pytest.raises(PolicyViolation, match="approval"):
        api.promote("fraud@1.0.0", "production", create=True)
    approver = backend.as_user("dave@team", "approver", "fraud")
    approver.approve("fraud@1.0.0", "production", comment="looks good")
    api.promote("fraud@1.0.0", "production", create=True)
    assert api.get("fraud@production").semver == "1.0.0"
    reader = backend.as_user("rita@team", "reader", None)
    assert reader.get("fraud@production").semver == "1.0.0"
    with pytest.raises(PermissionDenied):
        reader.set_setting("env_policy", "off")


def test_signatures_are_verified_before_they_are_stored(
    backend: Backend, tmp_path: Path
) -> None:
    api = backend.api
    version = _log(api, tmp_path, "one")
    private, public, kid = generate_key(tmp_path / "release.key")
    api.trust_key("release", public.read_text())
    assert api.sign(version.ref, str(private))["key_id"] == kid
    assert api.signatures(version.ref) == (["release"], [])
    with pytest.raises(PermissionDenied, match="not a valid signature"):
        api.record_signature(version.ref, kid, "00" * 64)
    assert api.signatures(version.ref) == (["release"], [])


def test_audit_checkpoint_verifies_on_every_backend(backend: Backend, tmp_path: Path) -> None:
    api = backend.api
    _log(api, tmp_path, "one")
    checkpoint = json.dumps(api.audit_checkpoint())
    _log(api, tmp_path, "two")
    count, problems = api.verify_audit(checkpoint=checkpoint)
    assert problems == [] and count >= 3
    forged = {**json.loads(checkpoint), "hash": "0" * 64}
    with pytest.raises(tether.InvalidInput):
        api.verify_audit(checkpoint=json.dumps(forged))


def test_a_tampered_version_is_refused_by_every_backend(backend: Backend, tmp_path: Path) -> None:
    """The server's answer is re-hashed by the client, as the embedded registry does."""
    import sqlalchemy as sa

    api = backend.api
    v1 = _log(api, tmp_path, "one")
    v2 = _log(api, tmp_path, "two")
    db_url = (
        api.location.db_url  # type: ignore[attr-defined]
        if backend.kind != "server"
        else f"sqlite:///{tmp_path / 'meta.db'}"
    )
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        evil = conn.execute(sa.text("SELECT manifest FROM versions WHERE seq = 2")).scalar()
        conn.execute(sa.text("UPDATE versions SET manifest = :m WHERE seq = 1"), {"m": evil})
    engine.dispose()
    with pytest.raises(IntegrityError):
        api.load(v1.ref, use_lock=False)
    assert api.get(v2.ref).digest == v2.digest


def test_roles_scope_reads_and_writes_alike_everywhere(backend: Backend, tmp_path: Path) -> None:
    api = backend.api
    _log(api, tmp_path, "one")
    churn = tmp_path / "churn.bin"
    churn.write_text("churn" * 100)
    api.log_model(churn, "churn", progress=False)
    reader = backend.as_user("ivy@team", "reader", "churn")
    assert [v.name for v in reader.versions("churn")] == ["churn"]
    with pytest.raises(PermissionDenied, match="reading versions needs role reader on model fraud"):
        reader.get("fraud@latest")
    # Embedded: refused as it logs; through a server: refused at the first upload
    # (the blob gateway is not scoped by model, so it asks for the role registry-wide).
    with pytest.raises(PermissionDenied, match="needs role contributor"):
        reader.log_model(churn, "churn", progress=False)
    with pytest.raises(PermissionDenied, match="listing models needs role reader"):
        reader.models()


def test_policy_hints_and_numbering_after_a_delete(backend: Backend, tmp_path: Path) -> None:
    api = backend.api
    _log(api, tmp_path, "one")
    second = _log(api, tmp_path, "two")
    api.set_policy("fraud", "aliases:\n  production: {approvals: 1}\n")
    with pytest.raises(PolicyViolation, match=r"tether approve fraud@1\.1\.0 production"):
        api.promote("fraud@1.1.0", "production", create=True)
    api.delete_version(second.ref)
    third = _log(api, tmp_path, "three")
    assert third.seq == 3  # a deleted number is never given again
    # `--all` listings, which were refused through a server ("needs an embedded registry").
    assert [v.seq for v in api.versions("fraud")] == [1, 3]
    listed = api.versions_with_deleted("fraud")
    assert [(v.seq, v.status) for v in listed] == [(1, "ready"), (2, "deleted"), (3, "ready")]
    (tmp_path / "scratch.bin").write_text("gone" * 100)
    api.log_model(tmp_path / "scratch.bin", "scratch", progress=False)
    api.delete_model("scratch")
    assert [m.name for m in api.deleted_models()] == ["scratch"]
    assert "scratch" not in [m.name for m in api.models()]
