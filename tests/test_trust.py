"""Attacks on the registry's database and metadata, each shown doing harm the unsafe
way and refused by Tether: a swapped manifest, a chunk list pointing at other
bytes, a flavor entry or manifest path leaving the version, a garbage signature
replacing a valid one, and a rewritten audit history. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tether import Registry
from tether._errors import IntegrityError, InvalidInput, PermissionDenied, TetherError
from tether._identity import require_intact
from tether._metadata import repository as repo
from tether._records import ModelVersion
from tether._signing import generate_key

from .conftest import fit_logreg
from .servers import version_values

GOOD = b"the weights the release manager signed\n" * 1000
EVIL = b"the weights an attacker wants served!!\n" * 1000


def _log_two(registry: Registry, tmp_path: Path) -> tuple[Any, Any]:
    for label, data in (("good", GOOD), ("evil", EVIL)):
        folder = tmp_path / label
        folder.mkdir()
        (folder / "model.bin").write_bytes(data)
    v1 = registry.log_model(tmp_path / "good" / "model.bin", "fraud", progress=False)
    v2 = registry.log_model(tmp_path / "evil" / "model.bin", "fraud", progress=False)
    assert v1.digest != v2.digest
    return v1, v2


def _row(registry: Registry, version_id: int) -> Any:
    with registry.read() as conn:
        return repo.version_by_id(conn, version_id)


def _update(registry: Registry, version_id: int, **values: Any) -> None:
    # The attacker writes the database directly, as anyone with its credentials can.
    with registry.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE versions SET "
                + ", ".join(f"{k} = :{k}" for k in values)
                + " WHERE id = :id"
            ),
            {**values, "id": version_id},
        )


def _sign(registry: Registry, tmp_path: Path, ref: str) -> Path:
    key, public, _ = generate_key(tmp_path / "release.key")
    registry.trust_key("release", public.read_text())
    registry.sign(ref, str(key))
    return key


def test_a_swapped_manifest_is_refused_everywhere(
    any_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = any_registry
    v1, v2 = _log_two(registry, tmp_path)
    _sign(registry, tmp_path, v1.ref)
    monkeypatch.chdir(tmp_path)
    registry.lock_add(v1.ref, path=tmp_path / "tether.lock")
    evil = _row(registry, v2.id)

    # Swap only the manifest: the recorded digest no longer matches.
    _update(registry, v1.id, manifest=evil.manifest)
    with registry.read():
        tampered = repo.row_to_version(_row(registry, v1.id), "fraud")
    # The harm, the unsafe way: the store happily writes the other version's bytes,
    # every chunk and file digest verifying, because they are real stored bytes.
    registry.store.materialize(tampered.files, tmp_path / "unsafe", label="unsafe", progress=False)
    assert (tmp_path / "unsafe" / "model.bin").read_bytes() == EVIL

    for attempt in (
        lambda: registry.load(v1.ref, expect=f"sha:{v1.digest}"),
        lambda: registry.load("fraud", use_lock=True),  # the lock pins v1's digest
        lambda: registry.verify(v1.ref),
        lambda: registry.download(v1.ref, tmp_path / "dl"),
        lambda: registry.signatures(v1.ref),
    ):
        with pytest.raises(IntegrityError, match=r"fraud@1\.0\.0"):
            attempt()
    report = registry.check(lock_path=tmp_path / "tether.lock")
    assert not report.ok
    assert any(r.check == "intact" and not r.ok for r in report.results)
    assert not (tmp_path / "dl").exists()


def test_swapping_manifest_and_digests_together_breaks_pins_and_signatures(
    any_registry: Registry, tmp_path: Path
) -> None:
    registry = any_registry
    v1, v2 = _log_two(registry, tmp_path)
    _sign(registry, tmp_path, v1.ref)
    registry.set_policy("fraud", "require_signed_by: [release]\n")
    evil = _row(registry, v2.id)
    # A consistent forgery: manifest and both digests copied from the other version.
    _update(
        registry, v1.id, manifest=evil.manifest, digest=evil.digest, files_digest=evil.files_digest
    )
    with pytest.raises(IntegrityError, match="not the expected"):
        registry.load(v1.ref, expect=f"sha:{v1.digest}")
    # The signature was made over the real digest: it no longer matches.
    valid, problems = registry.signatures(v1.ref)
    assert valid == [] and "does not match" in problems[0]
    with pytest.raises(TetherError, match="requires a signature"):
        registry.load(v1.ref)


def test_a_chunk_list_pointing_at_other_bytes_is_refused(
    any_registry: Registry, tmp_path: Path
) -> None:
    registry = any_registry
    v1, v2 = _log_two(registry, tmp_path)
    manifest = json.loads(_row(registry, v1.id).manifest)
    manifest[0]["chunks"] = json.loads(_row(registry, v2.id).manifest)[0]["chunks"]
    _update(registry, v1.id, manifest=json.dumps(manifest))
    with pytest.raises(IntegrityError, match=r"fraud@1\.0\.0"):
        registry.get(v1.ref)


@pytest.mark.parametrize(
    "entry", ["../../outside.pkl", "/etc/passwd", "a/../../b", "C:\\model.pkl", ""]
)
def test_a_flavor_entry_outside_the_version_is_refused_at_commit(
    registry: Registry, tmp_path: Path, entry: str
) -> None:
    v1, _ = _log_two(registry, tmp_path)
    values = _values_of(registry, v1)
    values["flavor"] = {**values["flavor"], "entry": entry}
    with pytest.raises(InvalidInput, match=r"flavor entry|not a file"):
        registry.commit("other", values, None)


def test_a_flavor_entry_edited_in_the_database_is_refused_at_load(
    registry: Registry, tmp_path: Path
) -> None:
    v1, _ = _log_two(registry, tmp_path)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(EVIL)
    flavor = {**v1.flavor, "entry": str(outside)}
    # The harm, the unsafe way: joining the version's folder with the entry leaves it.
    assert (tmp_path / "version-folder" / flavor["entry"]) == outside
    _update(registry, v1.id, flavor=json.dumps(flavor))
    with pytest.raises(IntegrityError, match="leaves the version"):
        registry.load(v1.ref)


@pytest.mark.parametrize(
    "path", ["../escape.bin", "/abs.bin", "a//b", "a/./../../b", "a/./b", "C:evil.bin"]
)
def test_manifest_paths_that_leave_the_version_are_refused(
    registry: Registry, tmp_path: Path, path: str
) -> None:
    v1, _ = _log_two(registry, tmp_path)
    values = _values_of(registry, v1)
    values["manifest"] = [{**values["manifest"][0], "path": path}]
    values["flavor"] = {**values["flavor"], "entry": "."}
    with pytest.raises(InvalidInput, match="manifest path"):
        registry.commit("other", values, None)


def test_require_intact_is_what_the_remote_client_applies(
    registry: Registry, tmp_path: Path
) -> None:
    from dataclasses import replace

    v1, v2 = _log_two(registry, tmp_path)
    assert require_intact(v1) is v1
    with pytest.raises(IntegrityError):
        require_intact(replace(v1, files=v2.files))


def _values_of(registry: Registry, version: Any) -> dict[str, Any]:
    return version_values([f.to_dict() for f in version.files], flavor=dict(version.flavor),
                          signature=version.signature, author="attacker@example.com")


# -- signatures --------------------------------------------------------------------


def test_a_garbage_signature_never_replaces_a_valid_one(
    any_registry: Registry, tmp_path: Path
) -> None:
    registry = any_registry
    v1, _ = _log_two(registry, tmp_path)
    _sign(registry, tmp_path, v1.ref)
    key_id = registry.keys()[0]["key_id"]
    registry.grant("mallory@example.com", "contributor", model="fraud")
    mallory = registry.as_actor("mallory@example.com")
    with pytest.raises(PermissionDenied, match="not a valid signature by release"):
        mallory.record_signature(v1.ref, key_id, "00" * 64)
    assert registry.signatures(v1.ref) == (["release"], [])
    refused = registry.audit_log(action="version.signature_refused")
    assert refused and refused[0].actor == "mallory@example.com"
    with pytest.raises(PermissionDenied, match="not trusted"):
        mallory.record_signature(v1.ref, "f" * 16, "00" * 64)


def test_a_signature_by_a_key_trusted_for_loading_lets_pickle_load(
    registry: Registry, tmp_path: Path, iris: tuple[Any, Any]
) -> None:
    version = registry.log_model(
        fit_logreg(iris), "iris", serialization="pickle", progress=False
    )
    with pytest.raises(TetherError, match="trusted"):
        registry.load(version.ref)
    _sign(registry, tmp_path, version.ref)
    with pytest.raises(TetherError, match="trusted"):
        registry.load(version.ref)  # signed, but the key is not trusted for loading
    registry.set_policy("iris", "trusted_for_loading: [release]\n")
    model = registry.load(version.ref)
    assert model.predict(iris[0][:3]).shape == (3,)


# -- the audit chain -----------------------------------------------------------------


def _events_and_heads(registry: Registry) -> None:
    for i in range(3):
        registry.set_setting("gc.keep_last", str(i + 1))


def _recompute_chain_after_editing(registry: Registry, event_id: int) -> None:
    """What someone with database access and Tether's source can do: edit, recompute."""
    from tether._audit import GENESIS, event_hash
    from tether._metadata.audit_log import _row_content
    from tether._metadata.schema import audit_head, events

    with registry.engine.begin() as conn:
        conn.execute(
            events.update().where(events.c.id == event_id).values(actor='"nobody"')
        )
        prev = GENESIS
        last = (0, GENESIS)
        for row in conn.execute(sa.select(events).order_by(events.c.id)).all():
            digest = event_hash(prev, _row_content(row))
            conn.execute(
                events.update().where(events.c.id == row.id).values(prev_hash=prev, hash=digest)
            )
            prev = digest
            last = (row.id, digest)
        conn.execute(audit_head.update().values(last_id=last[0], last_hash=last[1]))


def test_a_recomputed_chain_is_caught_by_the_signed_heads(any_registry: Registry) -> None:
    registry = any_registry
    _events_and_heads(registry)
    count, problems = registry.verify_audit()
    assert problems == []
    _recompute_chain_after_editing(registry, 2)
    # The unsafe way: the bare hash chain says all is well.
    from tether._audit import verify_chain
    from tether._metadata.audit_log import _row_content
    from tether._metadata.schema import audit_head, events

    with registry.read() as conn:
        rows = conn.execute(sa.select(events).order_by(events.c.id)).all()
        head = tuple(conn.execute(sa.select(audit_head.c.last_id, audit_head.c.last_hash)).one())
    assert verify_chain([(_row_content(r), r.prev_hash, r.hash) for r in rows], head) == []
    assert registry.verify_audit()[0] == count
    assert any("rewritten" in p for p in registry.verify_audit()[1])


def test_a_write_after_a_rewritten_history_does_not_sign_over_it(any_registry: Registry) -> None:
    """Someone who could write only the database edited an event, recomputed the chain
    and deleted the signed heads from there on; the next honest write (or a checkpoint)
    signed the head over the forgery, and `tether audit verify` said OK for good (a
    review). Now writes go on unsigned, verify keeps naming the events, a checkpoint is
    refused, and only an admin's recorded `accept` signs them."""
    from tether._metadata.schema import audit_signatures
    from tether._warnings import UnsignedAuditEvents

    registry = any_registry
    _events_and_heads(registry)
    _recompute_chain_after_editing(registry, 2)
    with registry.engine.begin() as conn:
        conn.execute(audit_signatures.delete().where(audit_signatures.c.event_id >= 2))
    with pytest.warns(UnsignedAuditEvents, match="after event 1"):
        registry.set_setting("gc.keep_last", "7")  # the honest write still happens
    assert registry.get_setting("gc.keep_last") == "7"
    assert any("not covered by the registry key" in p for p in registry.verify_audit()[1])
    with pytest.raises(IntegrityError, match="no signature of this registry's audit key"):
        registry.audit_checkpoint()
    with pytest.raises(PermissionDenied):
        registry.as_actor("someone@example.com", enforce_roles=True).sign_audit_head(
            accept="looked fine")
    head = registry.sign_audit_head(accept="events 2-5 checked against the change log")
    assert head is not None and registry.verify_audit()[1] == []
    accepted = registry.audit_log(action="audit.accepted")[0]
    assert accepted.details["unsigned_after"] == 1 and accepted.actor == registry.actor


def test_verify_without_the_key_never_says_valid(registry: Registry, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An auditor without the key file (another machine, TETHER_AUDIT_KEY mis-set) got
    "signed heads valid" with no signature checked (a review)."""
    _events_and_heads(registry)
    checkpoint = json.dumps(registry.audit_checkpoint())
    monkeypatch.setattr(type(registry), "audit_key_path", property(
        lambda self: tmp_path / "elsewhere.pem"))
    _, problems = registry.verify_audit()
    assert any("signed heads were not checked" in p for p in problems)
    assert registry.verify_audit(checkpoint=checkpoint)[1] == []  # a checkpoint's key


def test_a_checkpoint_catches_a_deleted_tail_and_a_rewrite(
    any_registry: Registry, tmp_path: Path
) -> None:
    from tether._metadata.schema import audit_head, audit_signatures, events

    registry = any_registry
    _events_and_heads(registry)
    checkpoint = json.dumps(registry.audit_checkpoint())
    registry.set_setting("gc.keep_last", "9")
    _count, problems = registry.verify_audit(checkpoint=checkpoint)
    assert problems == []
    mark = json.loads(checkpoint)["event_id"]
    # Delete the newest two events and their signed heads, rewind the head: the chain
    # and the remaining signatures are consistent, only the checkpoint knows.
    with registry.engine.begin() as conn:
        conn.execute(events.delete().where(events.c.id >= mark - 1))
        conn.execute(audit_signatures.delete().where(audit_signatures.c.event_id >= mark - 1))
        row = conn.execute(
            sa.select(events.c.id, events.c.hash).where(events.c.id == mark - 2)
        ).one()
        conn.execute(audit_head.update().values(last_id=row.id, last_hash=row.hash))
    # Invisible from inside the database; the key's holder sees it by the mark it keeps
    # beside the key, anyone else by the checkpoint.
    assert any("is gone or rewritten" in p for p in registry.verify_audit()[1])
    registry.audit_mark_path.unlink()
    assert registry.verify_audit()[1] == []
    _, problems = registry.verify_audit(checkpoint=checkpoint)
    assert any("gone" in p for p in problems)


def test_an_edited_checkpoint_is_refused(registry: Registry) -> None:
    _events_and_heads(registry)
    data = registry.audit_checkpoint()
    data["event_id"] = 1
    with pytest.raises(InvalidInput, match="signature does not match"):
        registry.verify_audit(checkpoint=json.dumps(data))
    with pytest.raises(InvalidInput, match="not a Tether audit checkpoint"):
        registry.verify_audit(checkpoint="{}")


def test_events_appended_without_the_key_are_reported(registry: Registry) -> None:
    from tether._metadata.audit_log import append_event

    _events_and_heads(registry)
    with registry.engine.begin() as conn:  # not through Registry.write: no signature
        append_event(conn, actor="intruder", action="alias.moved")
    _, problems = registry.verify_audit()
    assert any("not covered by the registry key" in p for p in problems)


def test_the_migration_recomputes_old_digests_and_records_them(
    registry: Registry, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from tether._digest import digest_of
    from tether._errors import SchemaMismatch
    from tether.cli import cli

    v1, _ = _log_two(registry, tmp_path)
    # Make the database what a 0003 registry holds: digests without chunk lists.
    old_files = digest_of([[f.path, f.size, f.digest] for f in v1.files])
    from alembic import command

    from tether._metadata.engine import _alembic_config

    with registry.engine.begin() as conn:  # back to the schema before migration 0004
        command.downgrade(_alembic_config(conn), "0003")
    _update(registry, v1.id, digest="ab" * 32, files_digest=old_files)
    root = registry.location.root
    assert root is not None
    with pytest.raises(SchemaMismatch, match="older"):
        Registry.open(root)
    result = CliRunner().invoke(cli, ["--registry", str(root), "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "signed by key" in result.output
    with Registry.open(root) as upgraded:
        assert upgraded.get(v1.ref).digest == v1.digest
        event = upgraded.audit_log(action="registry.digests_recomputed")[0]
        assert event.details["versions"][v1.ref] == [f"sha:{'ab' * 32}", f"sha:{v1.digest}"]
        assert upgraded.verify_audit()[1] == []


def test_a_client_of_a_server_trusts_only_signatures_it_checks_itself(
    registry: Registry, tmp_path: Path, iris: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The harm (a review): the client took the server's word that a version was signed
    by a key trusted for loading and unpickled it, so a compromised server (or anyone
    between client and server over http) chose the code every client ran. Now only a
    signature the client checks, by a key it pins in TETHER_LOAD_KEYS, vouches."""
    import tether
    from tether._registry import trust
    from tether.server.app import create_app

    from .servers import app_in_thread

    unsigned = registry.log_model(fit_logreg(iris), "iris", serialization="pickle",
                                  progress=False)
    signed = registry.log_model(fit_logreg(iris, C=0.5), "iris", serialization="pickle",
                                progress=False)
    _sign(registry, tmp_path, signed.ref)
    registry.set_policy("iris", "trusted_for_loading: [release]\n")
    honest = trust.trust_facts

    def lying(conn: Any, version: Any) -> dict[str, Any]:  # what a compromised server says
        return {**honest(conn, version), "valid_signers": ["release"]}

    with app_in_thread(create_app(registry, open_access=True)) as url:
        client = tether.connect(url)
        try:
            with monkeypatch.context() as patch:
                patch.setattr(trust, "trust_facts", lying)
                with pytest.raises(TetherError, match="trusted"):
                    client.load(unsigned.ref, progress=False)
            with pytest.raises(TetherError, match="trusted"):
                client.load(signed.ref, progress=False)  # signed, but no key pinned here
            monkeypatch.setenv("TETHER_LOAD_KEYS", str(tmp_path / "release.key.pub"))
            assert client.load(signed.ref, progress=False).predict(iris[0][:3]).shape == (3,)
            with pytest.raises(TetherError, match="trusted"):  # its signature is not on this
                client.load(unsigned.ref, progress=False)
        finally:
            client.close()


def test_tether_check_through_a_server_gates_on_signatures_it_checks_itself(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The harm: `tether check` through a server passed a CI gate on the server's word
    that a version was signed, so a compromised server passed any version. With keys
    pinned in TETHER_LOAD_KEYS the client checks the signature itself; without, the
    result says it rests on the server's word."""
    import tether
    from tether._registry import trust
    from tether.server.app import create_app

    from .servers import app_in_thread

    unsigned, signed = _log_two(registry, tmp_path)
    _sign(registry, tmp_path, signed.ref)
    registry.set_policy("fraud", "require_signed_by: [release]\n")
    honest = trust.trust_facts

    def lying(conn: Any, version: Any) -> dict[str, Any]:  # what a compromised server says
        return {**honest(conn, version), "valid_signers": ["release"]}

    monkeypatch.setattr(trust, "trust_facts", lying)
    monkeypatch.chdir(tmp_path)

    def gate(client: Any, ref: str) -> Any:
        lock = tmp_path / f"{ref.replace('@', '-')}.lock"
        client.lock_add(ref, path=lock)
        return next(r for r in client.check(lock_path=lock).results if r.check == "signature")

    with app_in_thread(create_app(registry, open_access=True)) as url:
        client = tether.connect(url)
        try:
            result = gate(client, unsigned.ref)
            assert result.ok and "the server's word" in result.message  # said, not hidden
            monkeypatch.setenv("TETHER_LOAD_KEYS", str(tmp_path / "release.key.pub"))
            result = gate(client, unsigned.ref)
            assert not result.ok and "no signature on it by a key pinned" in result.message
            result = gate(client, signed.ref)
            assert result.ok and "checked here" in result.message
            assert "signed by release" not in result.message  # the server's name, unchecked

            # A lying server drops the requirement instead (a review): the gate passed.
            # --require-signature makes it the caller's, whatever the policy says.
            monkeypatch.setattr(trust, "trust_facts", lambda conn, version: {
                **honest(conn, version), "require_signed_by": [], "valid_signers": ["release"]})
            assert all(r.check != "signature" for r in client.check(
                lock_path=tmp_path / f"{unsigned.ref.replace('@', '-')}.lock").results)
            demanded = next(r for r in client.check(
                lock_path=tmp_path / f"{unsigned.ref.replace('@', '-')}.lock",
                require_signature=True).results if r.check == "signature")
            assert not demanded.ok and "no signature on it by a key pinned" in demanded.message
            assert next(r for r in client.check(
                lock_path=tmp_path / f"{signed.ref.replace('@', '-')}.lock",
                require_signature=True).results if r.check == "signature").ok

            # A malformed answer is refused, not a traceback.
            for junk in ({"signatures": 5}, {"require_signed_by": 5},
                         {"valid_signers": None}):
                monkeypatch.setattr(trust, "trust_facts",
                                    lambda conn, version, junk=junk: {
                                        **honest(conn, version), **junk})
                with pytest.raises(IntegrityError, match="malformed"):
                    client.check(lock_path=tmp_path / f"{signed.ref.replace('@', '-')}.lock")
        finally:
            client.close()
    monkeypatch.setattr(trust, "trust_facts", honest)
    monkeypatch.delenv("TETHER_LOAD_KEYS")  # an embedded registry, keys not pinned: its word
    lock = tmp_path / f"{signed.ref.replace('@', '-')}.lock"
    local = next(r for r in registry.check(lock_path=lock).results if r.check == "signature")
    assert local.ok and "checked here" not in local.message


def test_a_changed_cached_copy_of_a_files_version_is_made_again(
    registry: Registry, tmp_path: Path
) -> None:
    """The harm (a review): a `files` version's folder is cached and was given again as
    it was, so a file changed or added there after the first load (by its user, or
    anyone who can write the cache) came back from every later load, signed or not."""
    folder = tmp_path / "tool"
    folder.mkdir()
    (folder / "run.py").write_text("print('honest')\n")
    version = registry.log_model(folder, "tool", progress=False)
    first = Path(registry.load(version.ref))
    assert registry.load(version.ref) == first  # unchanged: the same folder, no warning
    (first / "run.py").write_text("print('PWNED')\n")
    (first / "extra.py").write_text("import os\n")
    with pytest.warns(UserWarning, match="was changed"):
        again = Path(registry.load(version.ref))
    assert (again / "run.py").read_text() == "print('honest')\n"
    assert sorted(p.name for p in again.iterdir()) == ["run.py"]


def test_a_sealed_cached_copy_is_not_hashed_again_but_a_change_is_still_caught(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each load hashed every byte of a `files` version's cached folder (seconds for a
    few GB); a stat seal spares the unchanged files. A change with the size and the
    modification time put back still changes the file's change time: caught."""
    import os

    from tether import _digest
    from tether._registry import cache_seal

    folder = tmp_path / "tool"
    folder.mkdir()
    (folder / "x.py").write_text("X = 1\n")
    (folder / "weights.bin").write_bytes(b"w" * 100_000)
    version = registry.log_model(folder, "tool", progress=False)
    first = Path(registry.load(version.ref))
    assert cache_seal.seal_path(first).exists()
    monkeypatch.setattr(cache_seal, "SETTLE_NS", 0)  # no coarse clocks here
    hashed: list[str] = []
    real = _digest.file_digest
    monkeypatch.setattr(_digest, "file_digest", lambda p: hashed.append(Path(p).name)
                        or real(p))
    assert Path(registry.load(version.ref)) == first and hashed == []
    before = (first / "x.py").stat()
    (first / "x.py").write_text("X = 2\n")  # same size
    os.utime(first / "x.py", ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.warns(UserWarning, match="x.py does not match its digest"):
        again = Path(registry.load(version.ref))
    assert (again / "x.py").read_text() == "X = 1\n"
    assert hashed == ["x.py"]  # weights.bin, checked first, was sealed
    cache_seal.seal_path(again).write_text("{not json")  # a broken seal: hash, reseal
    hashed.clear()
    assert Path(registry.load(version.ref)) == again
    assert sorted(hashed) == ["weights.bin", "x.py"]


def test_paths_one_file_apart_only_where_case_is_ignored_are_refused(
    registry: Registry, tmp_path: Path
) -> None:
    """On macOS and Windows "MODEL.pkl" and "model.pkl" (or a name's NFC and NFD forms)
    are one file: the second written replaced the first after its digest was checked,
    so the loaded bytes were not the verified ones (a review; Linux keeps both)."""
    import unicodedata

    for index, pair in enumerate((("MODEL.bin", "model.bin"),
                                  (unicodedata.normalize("NFC", "café.bin"),
                                   unicodedata.normalize("NFD", "café.bin")),
                                  ("model.bin", "mo\u200cdel.bin"))):  # HFS+ drops U+200C
        folder = tmp_path / f"m{index}"
        folder.mkdir()
        for name in pair:
            (folder / name).write_bytes(name.encode())
        with pytest.raises(InvalidInput, match="differ only in case, Unicode form"):
            registry.log_model(folder, "m", progress=False)


def test_a_load_never_writes_two_entries_into_one_file(
    registry: Registry, tmp_path: Path
) -> None:
    """Where case is ignored, an old version's ``MODEL.bin`` and ``model.bin`` are one
    file: the second entry overwrote the first after the first's digest was checked.
    Two entries of one path do the same on any file system; the load stops instead."""
    import dataclasses

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.bin").write_bytes(GOOD)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.bin").write_bytes(EVIL)
    good = registry.log_model(tmp_path / "a", "m", progress=False).files[0]
    evil = registry.log_model(tmp_path / "b", "m", progress=False).files[0]
    twice = [good, dataclasses.replace(evil, path=good.path)]
    with pytest.raises(IntegrityError, match="already written under that name"):
        registry.store.materialize(twice, tmp_path / "out", label="old", progress=False)
    assert (tmp_path / "out" / "model.bin").read_bytes() == GOOD  # the verified bytes


def test_a_dataset_logged_before_the_case_rule_still_reads(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule is for new versions: checked where a dataset is read too, one logged
    before it with README.md and readme.md became unreadable (an IntegrityError telling
    to restore the database), and a server's listing of its versions failed."""
    from tether._registry import datasets

    data = tmp_path / "data"
    data.mkdir()
    (data / "README.md").write_text("a")
    (data / "readme.md").write_text("b")
    with monkeypatch.context() as patch:
        patch.setattr(datasets, "check_one_file_each", lambda paths: None)
        old = registry.add_dataset(data, "docs")
    assert {f.path for f in registry.get_dataset(old.ref).files} == {"README.md", "readme.md"}
    with pytest.raises(InvalidInput, match="differ only in case"):
        registry.add_dataset(data, "docs2")


def test_the_cached_copy_check_leaves_bytecode_and_catches_special_files(
    registry: Registry, tmp_path: Path
) -> None:
    """Importing a `files` version's module writes __pycache__ there: that made every
    later load warn and delete the folder (under whoever was reading it). A FIFO or a
    link planted in it passed the check (not a regular file, not counted)."""
    import os
    import warnings

    folder = tmp_path / "tool"
    folder.mkdir()
    (folder / "run.py").write_text("X = 1\n")
    version = registry.log_model(folder, "tool", progress=False)
    first = Path(registry.load(version.ref))
    (first / "__pycache__").mkdir()
    (first / "__pycache__" / "run.cpython-311.pyc").write_bytes(b"bytecode")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Path(registry.load(version.ref)) == first
    os.mkfifo(first / "evil.py")
    with pytest.warns(UserWarning, match="evil.py is not one of its files"):
        again = Path(registry.load(version.ref))
    assert sorted(p.name for p in again.iterdir()) == ["run.py"]
    assert not list(again.parent.glob("*.stale-*"))  # the moved-aside copy is removed

    # A hard link from elsewhere: whoever holds the other name changes the loaded bytes
    # after the check, with nothing in the folder looking different at check time.
    outside = tmp_path / "outside.py"
    os.link(again / "run.py", outside)
    with pytest.warns(UserWarning, match="run.py is a hard link"):
        fresh = Path(registry.load(version.ref))
    outside.write_text("X = 'attacker'\n")
    assert (fresh / "run.py").read_text() == "X = 1\n"


def _files_version(registry: Registry, tmp_path: Path) -> ModelVersion:
    folder = tmp_path / "tool"
    folder.mkdir()
    (folder / "run.py").write_text("print('honest')\n")
    (folder / "weights.bin").write_bytes(b"w" * 100_000)
    return registry.log_model(folder, "tool", progress=False)


def test_a_folder_put_in_place_while_a_download_is_written_is_not_handed_out(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download is written beside its target and renamed into place; a failed rename
    was taken for "another process wrote it first" and the target handed out unchecked:
    anyone who could write the parent folder (/tmp, a shared folder, the cache) put
    their own files there while the copy was written (a review)."""
    version = _files_version(registry, tmp_path)
    dest = tmp_path / "shared" / "model"
    real = registry.store.materialize

    def materialize_while_someone_plants(*args: Any, **kwargs: Any) -> Any:
        done = real(*args, **kwargs)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "run.py").write_text("print('PWNED')\n")
        return done

    monkeypatch.setattr(registry.store, "materialize", materialize_while_someone_plants)
    with pytest.raises(IntegrityError, match=r"appeared .* while tool@1\.0\.0 was written"):
        registry.download(version.ref, dest, progress=False)
    monkeypatch.setattr(registry.store, "materialize", real)
    shutil.rmtree(dest)
    assert (registry.download(version.ref, dest, progress=False) / "run.py").read_text() \
        == "print('honest')\n"


def test_a_seal_in_a_cache_others_may_write_is_not_read(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a shared cache, another user swapped a cached file (same size) and wrote a seal
    vouching for it: the next load returned their file unhashed (a review). Seals are read
    only in a folder no one else may write."""
    import json
    import os

    from tether._registry import cache_seal

    version = _files_version(registry, tmp_path)
    first = Path(registry.load(version.ref))
    monkeypatch.setattr(cache_seal, "SETTLE_NS", 0)
    os.chmod(first.parent, 0o777)  # a cache shared with others
    evil = first.parent / ".evil"
    evil.write_text("print('PWNED')\n ")
    assert evil.stat().st_size == (first / "run.py").stat().st_size
    os.replace(evil, first / "run.py")
    facts = {rel: cache_seal._facts((first / rel).lstat()) for rel in ("run.py", "weights.bin")}
    cache_seal.seal_path(first).write_text(json.dumps(facts))
    with pytest.warns(UserWarning, match="run.py does not match its digest"):
        again = Path(registry.load(version.ref))
    assert (again / "run.py").read_text() == "print('honest')\n"


def test_a_file_changed_while_a_folder_is_hashed_is_not_sealed(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seal took each file's facts after the whole folder was hashed: a file changed
    after its own hash (while a large one was still hashing) was sealed as it had become,
    and every later load returned it unhashed (a review)."""
    import os

    from tether import _digest
    from tether._registry import cache_seal

    version = _files_version(registry, tmp_path)
    first = Path(registry.load(version.ref))
    os.chmod(first / "run.py", 0o644)  # its owner may still change it
    (first / "weights.bin").touch()  # changed: the next load hashes both
    monkeypatch.setattr(cache_seal, "SETTLE_NS", 0)
    real = _digest.file_digest

    def hash_then_change(path: Any) -> str:
        digest = real(path)
        if Path(path).name == "run.py":  # hashed first; changed while weights.bin hashes
            before = (first / "run.py").stat()
            (first / "run.py").write_text("print('PWNED')\n ")
            os.utime(first / "run.py", ns=(before.st_atime_ns, before.st_mtime_ns))
        return digest

    monkeypatch.setattr(_digest, "file_digest", hash_then_change)
    registry.load(version.ref)  # both hashed (their times moved), both as registered
    monkeypatch.setattr(_digest, "file_digest", real)
    with pytest.warns(UserWarning, match="run.py does not match its digest"):
        again = Path(registry.load(version.ref))
    assert (again / "run.py").read_text() == "print('honest')\n"


def test_cached_files_are_read_only(registry: Registry, tmp_path: Path) -> None:
    """A writable mapping of a cached file changes it without moving its change time
    after the first write (a review): the files cannot be opened for writing by mistake."""
    import stat

    version = _files_version(registry, tmp_path)
    first = Path(registry.load(version.ref))
    for name in ("run.py", "weights.bin"):
        assert not stat.S_IMODE((first / name).stat().st_mode) & 0o222


def test_a_seal_written_by_another_user_is_not_read(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from tether import _digest
    from tether._registry import cache_seal

    if os.geteuid() != 0:
        pytest.skip("giving a file to another user takes root")
    version = _files_version(registry, tmp_path)
    first = Path(registry.load(version.ref))
    monkeypatch.setattr(cache_seal, "SETTLE_NS", 0)
    os.chown(cache_seal.seal_path(first), 65534, 65534)
    hashed: list[str] = []
    real = _digest.file_digest
    monkeypatch.setattr(_digest, "file_digest", lambda p: hashed.append(Path(p).name)
                        or real(p))
    registry.load(version.ref)
    assert sorted(hashed) == ["run.py", "weights.bin"]


def test_a_cut_or_emptied_log_is_not_signed_over(any_registry: Registry) -> None:
    """Deleting the newest events with their signatures (or every event) went unseen, and
    the next honest write signed on from there; a faked state before `tether db upgrade`
    had the migration sign a rewritten history (a review). The key's holder keeps the
    newest head it signed beside the key, and signs only a chain through it."""
    from tether._audit import GENESIS
    from tether._metadata.schema import audit_head, audit_signatures, events
    from tether._warnings import UnsignedAuditEvents

    registry = any_registry
    _events_and_heads(registry)
    with registry.engine.begin() as conn:
        last = conn.execute(sa.select(sa.func.max(events.c.id))).scalar()
        conn.execute(events.delete().where(events.c.id >= last - 1))
        conn.execute(audit_signatures.delete().where(audit_signatures.c.event_id >= last - 1))
        row = conn.execute(sa.select(events.c.id, events.c.hash)
                           .where(events.c.id == last - 2)).one()
        conn.execute(audit_head.update().values(last_id=row.id, last_hash=row.hash))
    with pytest.warns(UnsignedAuditEvents):
        registry.set_setting("gc.keep_last", "8")
    assert any("is gone or rewritten" in p for p in registry.verify_audit()[1])
    _recompute_chain_after_editing(registry, 2)
    with pytest.raises(IntegrityError, match="no signature of this registry's audit key"):
        registry.sign_audit_head(since=(0, GENESIS))  # what a faked old schema reads as


def test_a_process_without_the_key_does_not_make_one_of_its_own(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TETHER_AUDIT_KEY pointing elsewhere made a second key, and every later write by the
    registry's own key went unsigned (a review)."""
    _events_and_heads(registry)
    monkeypatch.setenv("TETHER_AUDIT_KEY", str(tmp_path / "elsewhere.pem"))
    other = Registry.open(registry.location.root, actor=registry.actor)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match="no audit key is at"):
        other.set_setting("gc.keep_last", "4")
    assert not (tmp_path / "elsewhere.pem").exists()
    assert registry.get_setting("gc.keep_last") == "3"
    other.close()


def test_an_honest_copy_someone_else_may_write_is_not_handed_out(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check of a folder put in a download's place compared contents only: a planted
    honest copy, writable by its planter (0777), was handed out, then rewritten (a
    second review)."""
    import os

    version = _files_version(registry, tmp_path)
    dest = tmp_path / "shared" / "model"
    real = registry.store.materialize

    def plant_an_honest_copy(*args: Any, **kwargs: Any) -> Any:
        done = real(*args, **kwargs)
        shutil.copytree(tmp_path / "tool", dest)
        os.chmod(dest, 0o777)
        for item in dest.iterdir():
            os.chmod(item, 0o666)
        return done

    monkeypatch.setattr(registry.store, "materialize", plant_an_honest_copy)
    with pytest.raises(IntegrityError, match="not yours alone to write"):
        registry.download(version.ref, dest, progress=False)


def test_db_upgrade_signs_only_what_migrations_append(any_registry: Registry) -> None:
    """A trigger planted in the database appended a forged, well-chained event while
    `tether db upgrade` ran, and the upgrade signed it as the migration's (a review)."""
    from tether._metadata.audit_log import append_event

    registry = any_registry
    _events_and_heads(registry)
    head = registry.audit_checkpoint()
    since = (head["event_id"], head["hash"])
    with registry.engine.begin() as conn:  # the trigger's event
        append_event(conn, actor="root", action="alias.set", subject="fraud@production")
    with pytest.raises(IntegrityError, match="no signature of this registry's audit key"):
        registry.sign_audit_head(since=since)
    with registry.engine.begin() as conn:  # what migration 0004 appends: signed over
        append_event(conn, actor="tether db upgrade", action="registry.digests_recomputed")
    with pytest.raises(IntegrityError):
        registry.sign_audit_head(since=since)  # the forged one is still among them


def test_an_unwritable_mark_is_said_and_an_accept_elsewhere_counts(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key's folder mounted read-only (a Kubernetes secret) left no mark, silently;
    and after a restore accepted on one host, another host's older mark kept its writes
    unsigned for good (a review)."""
    import os

    from tether._warnings import UnsignedAuditEvents

    _events_and_heads(registry)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    os.chmod(readonly, 0o500)
    monkeypatch.setenv("TETHER_AUDIT_MARK_DIR", str(readonly / "marks"))
    other = Registry.open(registry.location.root, actor=registry.actor)  # type: ignore[arg-type]
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.warns(UnsignedAuditEvents, match="TETHER_AUDIT_MARK_DIR"):
            other.set_setting("gc.keep_last", "5")
    other.close()
    monkeypatch.delenv("TETHER_AUDIT_MARK_DIR")
    # Host B's mark says event 3; the database is restored to event 2, and host A (with
    # its own mark folder) accepts: B signs again.
    host_b_mark = registry.audit_mark_path
    assert host_b_mark.exists()
    from tether._metadata.schema import audit_head, audit_signatures, events

    with registry.engine.begin() as conn:
        conn.execute(events.delete().where(events.c.id >= 3))
        conn.execute(audit_signatures.delete().where(audit_signatures.c.event_id >= 3))
        row = conn.execute(sa.select(events.c.id, events.c.hash).where(events.c.id == 2)).one()
        conn.execute(audit_head.update().values(last_id=row.id, last_hash=row.hash))
    monkeypatch.setenv("TETHER_AUDIT_MARK_DIR", str(tmp_path / "host-a"))
    host_a = Registry.open(registry.location.root, actor=registry.actor)  # type: ignore[arg-type]
    host_a.sign_audit_head(accept="restored from the backup of 2026-11-27")
    host_a.close()
    monkeypatch.delenv("TETHER_AUDIT_MARK_DIR")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsignedAuditEvents)
        registry.set_setting("gc.keep_last", "6")  # host B: signed
    assert registry.verify_audit()[1] == []


def test_a_planted_signature_row_or_a_relabelled_accept_proves_nothing(
        any_registry: Registry) -> None:
    """A garbage signature row above the real ones stopped every later signature (and let
    a forged chain pass for a log never signed); an old signed row relabelled as an
    admin's accept dated 2099 stood in for the mark after a cut (a third review)."""
    from tether._metadata.schema import audit_head, audit_signatures, events
    from tether._warnings import UnsignedAuditEvents

    registry = any_registry
    _events_and_heads(registry)
    key = registry.audit_key.key_id
    with registry.engine.begin() as conn:  # more than any window of rows looked at
        conn.execute(audit_signatures.insert(), [
            {"event_id": 10**9 + i, "hash": "0" * 64, "key_id": key, "signature": "00" * 64}
            for i in range(1100)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsignedAuditEvents)
        registry.set_setting("gc.keep_last", "7")  # still signed
    with registry.engine.begin() as conn:
        conn.execute(audit_signatures.delete().where(audit_signatures.c.event_id >= 10**9))
        last = conn.execute(sa.select(sa.func.max(events.c.id))).scalar()
        conn.execute(events.delete().where(events.c.id >= last - 1))  # the cut
        conn.execute(audit_signatures.delete().where(audit_signatures.c.event_id >= last - 1))
        row = conn.execute(sa.select(events.c.id, events.c.hash)
                           .where(events.c.id == last - 2)).one()
        conn.execute(audit_head.update().values(last_id=row.id, last_hash=row.hash))
        conn.execute(events.update().where(events.c.id == 2).values(  # the relabelled row
            action="audit.accepted", ts="2099-01-01T00:00:00.000000Z"))
    with pytest.warns(UnsignedAuditEvents):
        registry.set_setting("gc.keep_last", "8")


def test_an_accept_made_on_another_registry_sharing_the_key_stands_for_nothing_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two registries may share an audit key (servers on one host do by default). An
    insider who copied one's whole log, accepted there by an admin, into the other's
    database had the other's cut history pass `tether audit verify` on its own host, and
    its next write signed on over it (a review). An accept names the registry it was
    made on, and counts only there."""
    import tether
    from tether._metadata.schema import audit_head, audit_signatures, events

    monkeypatch.setenv("TETHER_AUDIT_KEY", str(tmp_path / "keys" / "audit-key.pem"))
    staging = tether.init(tmp_path / "A" / ".tether", actor="admin@team")
    prod = tether.init(tmp_path / "B" / ".tether", actor="admin@team")
    _events_and_heads(prod)
    assert prod.verify_audit()[1] == []
    import time

    time.sleep(0.05)  # the accept comes after prod's mark was written
    staging.sign_audit_head(accept="routine")
    tables = (events, audit_signatures, audit_head)
    with staging.engine.connect() as source:
        rows = {t.name: [dict(r._mapping) for r in source.execute(sa.select(t))]
                for t in tables}
    with prod.engine.begin() as conn:  # the insider: prod's database, not the key
        for table in tables:
            conn.execute(table.delete())
            conn.execute(table.insert(), rows[table.name])
    problems = prod.verify_audit()[1]
    assert any("is gone or rewritten: history was cut or replaced" in p for p in problems)
    staging.close()
    prod.close()


def test_an_accept_counts_for_the_same_database_reached_by_another_url(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One database, two URLs (a link here; two hostnames for PostgreSQL): an accept made
    through one must stand for the other's mark too, as it did before accepts named
    their registry (a review of that fix). Marks record the chain's first event."""
    import os

    import tether

    monkeypatch.setenv("TETHER_AUDIT_KEY", str(tmp_path / "keys" / "audit-key.pem"))
    registry = tether.init(tmp_path / "reg", actor="admin@team")
    os.symlink(tmp_path / "reg", tmp_path / "alias")
    alias = tether.open(tmp_path / "alias", actor="admin@team")
    assert alias.location.db_url != registry.location.db_url
    registry.set_setting("gc.keep_last", "5")
    alias.set_setting("gc.keep_last", "6")
    import sqlite3

    def copy(source: Path, target: Path) -> None:  # as a backup tool does (WAL and all)
        with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
            src.backup(dst)

    copy(tmp_path / "reg" / "registry.db", tmp_path / "backup.db")
    registry.set_setting("gc.keep_last", "7")
    alias.set_setting("gc.keep_last", "8")
    registry.close()
    alias.close()
    copy(tmp_path / "backup.db", tmp_path / "reg" / "registry.db")  # restored
    registry = tether.open(tmp_path / "reg", actor="admin@team")
    registry.sign_audit_head(accept="restored from the backup")
    alias = tether.open(tmp_path / "alias", actor="admin@team")
    assert alias.verify_audit()[1] == []
    registry.close()
    alias.close()
