"""The registry: one object that every shell (library, CLI, server) calls.

It owns the database engine and the artifact store and offers the use cases as
methods; the use cases themselves live in the sibling modules, one job each.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._audit_mark import (
    chain_origin,
    mark_path,
    passes_through,
    read_mark,
    registry_tag,
    write_mark,
)
from .._environment import (
    Difference,
    EnvPolicy,
    Verdict,
    evaluate,
    export_dockerfile,
    export_requirements,
    roots_for_flavor,
)
from .._errors import IntegrityError, InvalidInput, NotFound, TetherError
from .._metadata import repository as repo
from .._metadata.audit_log import (
    BASE_HEAD,
    PENDING_HEAD,
    append_event,
    continues_signed_chain,
    event_concerns,
    events_about,
    list_events,
    newest_signed_head,
    newest_valid_head,
    record_signed_head,
    verify_events,
)
from .._metadata.clock import now_iso
from .._metadata.engine import READ_ONLY, check_schema, create_engine, is_database_url, upgrade
from .._metadata.schema import audit_head, versions
from .._records import AliasMove, Event, ModelInfo, ModelVersion, VersionValues
from .._reference import parse_reference
from .._schema import Signature
from .._warnings import UnsignedAuditEvents, warn_caller
from . import (
    access,
    catalog,
    ci_check,
    datasets,
    deployments,
    env_check,
    idempotent_commit,
    loading,
    log_version,
    model_search,
    pinning,
    policies,
    promotion_gate,
    reproduce,
    retention,
    roles,
    tokens,
    trust,
)
from . import aliases as alias_ops
from .compare import diff_versions
from .lineage import current_author
from .location import RegistryLocation, audit_key_path, create_location, find_location
from .resolve import require_model, resolve_version

if TYPE_CHECKING:  # imported where used: reading versions needs neither crypto nor codecs
    from .._audit_signing import AuditKey, SignedHead
    from .._store.base import ArtifactStore, StoreStats
    from . import datasets_io, model_files

#: Settings a user may change with `tether config set`, and how each is checked.
SETTINGS: dict[str, str] = {
    "env_policy": "environment policy for load/serve: strict, warn, off, with overrides",
    "gc.keep_last": "versions of each model that gc always keeps (empty: all)",
    "gc.grace_seconds": "gc never removes anything younger than this (default 3600)",
    "protected_aliases": "aliases only approvers may move (comma-separated, globs allowed; "
    "default: production)",
    "trust.load_signers": "trusted key names (comma-separated) whose signature lets "
    "code-executing formats (pickle) load without trusted=True",
    "access": "who may read and log without a server: open (the local user; default) "
    "or roles (every user needs a role)",
    "cache.max_bytes": "bound on each client's chunk cache (e.g. 20GiB; default 10GiB); "
    "TETHER_CACHE_MAX_BYTES wins where it is set",
}


#: The actions migrations append (0004 recomputes digests): all `db upgrade` may sign over.
_MIGRATION_ACTIONS = frozenset({"registry.digests_recomputed"})


def _only_migrations_after(conn: sa.Connection, since: tuple[int, str] | None) -> bool:
    """Whether the chain passes through ``since`` and every event after it is one a
    migration appends, each hashed again from its content and linked to the one before:
    a trigger planted in the database appended a forged event while `tether db upgrade`
    ran, and columns edited to look like a migration's passed too (reviews)."""
    from .._metadata.audit_log import authentic_events, chain_holds

    if since is None:
        return False
    if since[0] > 0 and not chain_holds(conn, *since):
        return False
    appended = authentic_events(conn, since[0])
    if appended is None or (appended and appended[0][1] != since[1] and since[0] > 0):
        return False
    return all(content["action"] in _MIGRATION_ACTIONS
               and content["actor"] == "tether db upgrade" for content, _, _ in appended)


#: What a write or a checkpoint says of events no signature of the audit key covers.
_UNSIGNED_EVENTS = (
    "the audit log holds events after event {since} that no signature of this registry's "
    "audit key covers (written by something without the key, or rewritten and "
    "recomputed; or the database was re-created or restored): the head is not signed over "
    "them. `tether audit verify` says which; an admin accepts a log restored or re-created on "
    "purpose with `tether audit accept --reason ...`")


class Registry:
    """An open registry: metadata database plus artifact store."""

    def __init__(self, location: RegistryLocation, *, actor: str | None = None) -> None:
        self.location = location
        self.engine = create_engine(location.db_url)
        self._store: ArtifactStore | None = None
        self._actor = actor
        self._audit_key: AuditKey | None = None
        self._mark_warned = False
        # None: as the registry's ``access`` setting says (see access.py).
        self._enforce_roles: bool | None = None

    # -- opening ----------------------------------------------------------------

    @classmethod
    def open(cls, uri: str | Path | None = None, *, actor: str | None = None) -> Registry:
        """Open the registry at ``uri``, ``TETHER_URI`` or the nearest ``.tether``.

        A database URL (``postgresql://...``, ``sqlite:///...``) opens the registry a
        server serves, on its host: what its operator runs there (`tether audit accept`,
        which needs the audit key beside the database, not a client)."""
        target = uri if uri is not None else os.environ.get("TETHER_URI")
        if target is not None and is_database_url(str(target)):
            served = cls.open_server(str(target))
            return served if actor is None else served.as_actor(actor)
        registry = cls(find_location(uri), actor=actor)
        check_schema(registry.engine, where=registry.describe())
        return registry

    @classmethod
    def init(
        cls,
        path: str | Path = ".tether",
        *,
        db_url: str | None = None,
        store_url: str | None = None,
        actor: str | None = None,
    ) -> Registry:
        """Create a registry folder with an empty database and store."""
        registry = cls(create_location(path, db_url=db_url, store_url=store_url), actor=actor)
        upgrade(registry.engine)
        _ = registry.audit_key  # made at init, beside the database, never inside it
        with registry.write() as conn:
            append_event(
                conn,
                actor=registry.actor,
                action="registry.created",
                details={
                    "db": _redact(registry.location.db_url),
                    "store": registry.location.store_url,
                },
            )
        # Whoever creates a registry administers it; they grant the other roles.
        roles.grant(registry, registry.actor, "admin", None, bootstrap=True)
        return registry

    @classmethod
    def init_server(
        cls, db_url: str, store_url: str, admin: str
    ) -> tuple[Registry, dict[str, str]]:
        """Create (or upgrade) a server's registry: schema, store, ``admin``, and a token
        for them (shown once)."""
        from .server_setup import init_server

        return init_server(db_url, store_url, admin)

    @classmethod
    def open_server(cls, db_url: str, store_url: str | None = None) -> Registry:
        """The registry a server serves (the store recorded at init unless given);
        refuses a schema older or newer than the code."""
        from .server_setup import open_server

        return open_server(db_url, store_url)

    def as_actor(self, actor: str, *, enforce_roles: bool | None = None) -> Registry:
        """The same registry (engine, store) acting for another user, e.g. per request.

        ``enforce_roles=True`` is for a caller a shell authenticated (server,
        UI): every read and write then needs a role; None keeps this registry's mode.
        """
        store = self.store  # share one store (and its chunk index) between clones
        clone = object.__new__(Registry)
        clone.__dict__.update(self.__dict__)
        clone._store = store
        clone._actor = actor
        if enforce_roles is not None:
            clone._enforce_roles = enforce_roles
        return clone

    def require(self, role: str, model: str | None = None, *, action: str,
                every_mode: bool = False) -> None:
        """Refuse ``action`` (PermissionDenied) unless the actor may do it (see access.py)."""
        access.require(self, role, model, action, every_mode=every_mode)

    def require_somewhere(self, role: str, *, action: str) -> None:
        """Refuse ``action`` unless the actor holds ``role`` registry-wide or on some model."""
        access.require_somewhere(self, role, action)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def describe(self) -> str:
        root = self.location.root
        return str(root) if root is not None else _redact(self.location.db_url)

    @property
    def actor(self) -> str:
        return self._actor or current_author()

    @property
    def cache_dir(self) -> Path:
        return self.location.cache_dir

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            from .. import _store

            bound = cache_bound(self)
            options = {"cache_max_bytes": bound} if bound is not None else {}
            self._store = _store.open_store(self.location.store_url, cache_dir=self.cache_dir,
                                            **options)
        return self._store

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A writing transaction; if it appended audit events, the new head is signed,
        where that vouches for nothing the key did not sign (``_may_sign_after``): after
        unsigned events, or a chain that no longer passes through the newest head this
        key signed (``_audit_mark``), the write goes on, unsigned, with a warning, and
        `tether audit verify` keeps naming the events until an admin accepts them."""
        signed, origin = None, None
        with self.engine.begin() as conn:
            conn.info.pop(PENDING_HEAD, None)
            conn.info.pop(BASE_HEAD, None)
            try:
                yield conn
                pending = conn.info.pop(PENDING_HEAD, None)
                base = conn.info.pop(BASE_HEAD, None)
                if pending is not None:
                    key = self._audit_key_for(conn)
                    if self._may_sign_after(conn, base):
                        signed = key.sign_head(*pending)
                        record_signed_head(conn, signed)
                        origin = chain_origin(conn)
                    else:
                        newest = newest_valid_head(conn, key.public)
                        warn_caller(_UNSIGNED_EVENTS.format(
                            since=newest.event_id if newest is not None else 0),
                            UnsignedAuditEvents)
            finally:
                conn.info.pop(PENDING_HEAD, None)
                conn.info.pop(BASE_HEAD, None)
        if signed is not None:  # committed: the mark moves on
            self._move_mark((signed.event_id, signed.hash), origin=origin)

    def _move_mark(self, head: tuple[int, str], *, force: bool = False,
                   origin: str | None = None) -> None:
        if not write_mark(self.audit_mark_path, head, force=force,
                          origin=origin) and not self._mark_warned:
            self._mark_warned = True
            warn_caller(f"cannot record the newest audit head this key signed at "
                        f"{self.audit_mark_path}: a cut of the audit log would not be "
                        "noticed here; set TETHER_AUDIT_MARK_DIR to a folder this process "
                        "may write", UnsignedAuditEvents)

    def _may_sign_after(self, conn: sa.Connection, base: tuple[int, str]) -> bool:
        public = self.audit_key.public
        return (passes_through(conn, read_mark(self.audit_mark_path), public,
                               self._registry_tag)
                and continues_signed_chain(conn, base, public))

    def _audit_key_for(self, conn: sa.Connection) -> AuditKey:
        """The audit key; a new one only for a log no key signed yet. A process whose key
        setting pointed elsewhere made a key of its own, and every later write by the
        registry's key went unsigned (a review): now it is told where the key should be."""
        if self._audit_key is None and not self.audit_key_path.exists():
            from .._metadata.schema import audit_signatures

            signer = conn.execute(sa.select(audit_signatures.c.key_id).limit(1)).scalar()
            if signer is not None:
                raise IntegrityError(
                    f"this registry's audit log is signed by key {signer}, and no audit "
                    f"key is at {self.audit_key_path}: nothing was written",
                    hint="point TETHER_AUDIT_KEY at the registry's audit key (a server's "
                    "default is ~/.config/tether/audit-key.pem)")
        return self.audit_key

    @property
    def _registry_tag(self) -> str:
        """This registry as its ``audit.accepted`` events name it (_audit_mark)."""
        return registry_tag(self.location.db_url)

    @property
    def audit_mark_path(self) -> Path:
        """Where the newest head this key signed for this registry is kept (_audit_mark)."""
        return mark_path(self.audit_key_path, self.location.db_url)

    @property
    def audit_key_path(self) -> Path:
        """Where the registry's audit key lives: never in the database it protects."""
        return audit_key_path(self.location)

    @property
    def audit_key(self) -> AuditKey:
        if self._audit_key is None:
            from .._audit_signing import AuditKey

            self._audit_key = AuditKey.load_or_create(self.audit_key_path)
        return self._audit_key

    def sign_audit_head(self, *, since: tuple[int, str] | None = None,
                        accept: str | None = None) -> SignedHead | None:
        """Sign the current head, where that vouches only for what this key signed: the
        chain passes through the newest head this key signed (``_audit_mark``), and the
        newest head it validly signed in the database is the head, or ``since`` (the head
        before a migration appended events), or the log was empty and never signed.
        Else ``IntegrityError``, unless ``accept`` gives an admin's reason to vouch for
        the events (recorded, with their range, as an ``audit.accepted`` event)."""
        from .._audit import GENESIS

        mark = read_mark(self.audit_mark_path)
        with self.write() as conn:
            row = conn.execute(sa.select(audit_head.c.last_id, audit_head.c.last_hash)).first()
            if row is None:
                return None
            head = (int(row[0]), str(row[1]))
            key = self._audit_key_for(conn)
            through = passes_through(conn, mark, key.public, self._registry_tag)
            origin = chain_origin(conn)
            newest = newest_valid_head(conn, key.public)
            if (accept is None and through and newest is not None
                    and (newest.event_id, newest.hash) == head):
                return newest  # an accept is recorded even so: other hosts' marks need it
            # After a migration: over what it appended to a head this key signed; or, a
            # schema from before signing, over the whole log (past this key's mark, if it
            # signed here before, only what migrations append).
            covered = through and (
                (newest is not None and (newest.event_id, newest.hash) == since
                 and _only_migrations_after(conn, since))
                or (since == (0, GENESIS) and newest is None and (
                    mark is None or _only_migrations_after(conn, (mark[0], mark[1])))))
            if not covered or accept is not None:
                if accept is None:
                    since_id = newest.event_id if newest is not None else 0
                    if not through and mark is not None:
                        since_id = min(since_id, mark[0])
                    raise IntegrityError(
                        _UNSIGNED_EVENTS.format(since=since_id),
                        hint="run `tether audit verify`; if those events are genuine (a "
                        "new audit key, events from before signing, a database restored "
                        "from a backup), `tether audit accept --reason TEXT` signs them, "
                        "recording that you did")
                from .manifest_limits import check_reason

                roles.require_role(conn, self.actor, "admin", None)
                check_reason(accept, "the reason")
                append_event(conn, actor=self.actor, action="audit.accepted", details={
                    "unsigned_after": newest.event_id if newest is not None else 0,
                    "through": head[0], "reason": accept, "registry": self._registry_tag,
                    "origin": origin})
                head = conn.info.pop(PENDING_HEAD)
                conn.info.pop(BASE_HEAD, None)
            signed = key.sign_head(*head)
            record_signed_head(conn, signed)
        self._move_mark((signed.event_id, signed.hash), force=bool(accept), origin=origin)
        return signed

    def audit_head(self) -> dict[str, Any]:
        """The newest signed head with the public key that checks it (served by the server)."""
        self.require("reader", action="reading the signed audit head")
        with self.read() as conn:
            head = newest_signed_head(conn)
        if head is None:
            raise NotFound("the audit log has no signed head yet", hint="make any change first")
        return {**head.to_dict(), "public_key": self.audit_key.public_pem}

    def audit_checkpoint(self) -> dict[str, Any]:
        """A signed head to keep outside the registry (``tether audit checkpoint``)."""
        head = self.sign_audit_head()
        if head is None:
            raise NotFound("the audit log is empty", hint="make any change first")
        from .._audit_signing import make_checkpoint

        return make_checkpoint(
            head, self.audit_key.public_pem, registry=self.describe(), taken_at=now_iso()
        )

    # -- settings ---------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        # Unchecked: single settings steer other use cases (the env policy of a
        # load, the protected aliases of a move) that a role on one model allows.
        with self.read() as conn:
            return repo.get_setting(conn, key)

    def settings(self) -> dict[str, str]:
        self.require("reader", action="reading settings")
        with self.read() as conn:
            return repo.all_settings(conn)

    def set_setting(self, key: str, value: str) -> None:
        if key not in SETTINGS:
            known = ", ".join(sorted(SETTINGS))
            raise InvalidInput(f"unknown setting {key!r}", hint=f"settings: {known}")
        _check_setting(key, value)
        if key == access.ACCESS_SETTING:
            access.check_mode(value)
        with self.write() as conn:
            roles.require_role(conn, self.actor, "admin", None)
            before = repo.get_setting(conn, key)
            repo.put_setting(conn, key, value)
            if key == alias_ops.PROTECTED_SETTING:
                deployments.check_trusted_still_fixed(conn)
            append_event(
                conn,
                actor=self.actor,
                action="setting.set",
                subject=key,
                before=before,
                after=value,
            )
        access.forget(self)  # other processes see the change within access.CACHE_SECONDS

    # -- models and versions ----------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Every model with its counts, latest version and aliases (three queries in all)."""
        self.require("reader", action="listing models")
        return model_search.all_models(self)

    def deleted_models(self) -> list[ModelInfo]:
        """Models deleted with ``delete_model``, under their original names."""
        self.require("reader", action="listing models")
        return catalog.deleted_models(self)

    def versions_with_deleted(self, name: str) -> list[ModelVersion]:
        """Every version of ``name`` by sequence number, deleted ones included."""
        self.require("reader", name, action="reading versions")
        return catalog.versions_with_deleted(self, name)

    def versions(self, name: str, *, files: bool = True) -> list[ModelVersion]:
        """A model's live versions; ``files=False``: without their file lists (a model of
        versions listing 100,000 files each had every small read, an MLflow search for
        one result, decode them all: 515 MB for four requests, a review)."""
        self.require("reader", name, action="reading versions")
        with self.read() as conn:
            mid = require_model(conn, name)
            if files:
                return repo.listed_versions(conn, name, mid, repo.version_rows(conn, mid))
            by_version = repo.aliases_by_version(conn, mid)
            return [repo.row_to_version(row, name, by_version.get(row.id, []), files=())
                    for row in repo.version_rows(conn, mid, files=False)]

    def versions_page(self, name: str, *, after: int = 0, deleted: bool = False,
                      ) -> tuple[list[ModelVersion], int | None]:
        """One page of ``versions`` (``deleted``: of ``versions_with_deleted``), for a
        listing over HTTP: the versions after sequence number ``after``, at most
        ``VERSION_PAGE`` of them and ``VERSION_PAGE_BYTES`` of manifests; and the next
        page's ``after`` (None: no page follows)."""
        self.require("reader", name, action="reading versions")
        with self.read() as conn:
            mid = require_model(conn, name)
            rows, next_after = repo.version_page(conn, versions, versions.c.model_id == mid,
                                                 after=after, include_deleted=deleted)
            return repo.listed_versions(conn, name, mid, rows), next_after

    def version_summaries(self, name: str, *, seqs: Collection[int] | None = None,
                          newest_first: bool = False, limit: int | None = None,
                          offset: int = 0) -> list[model_search.VersionSummary]:
        """A model's live versions, only the columns a table or a chart needs: every one,
        those numbered ``seqs``, or a page (``limit`` after ``offset``)."""
        self.require("reader", name, action="reading versions")
        return model_search.version_summaries(self, name, seqs=seqs, newest_first=newest_first,
                                              limit=limit, offset=offset)

    def count_versions(self, name: str) -> int:
        """How many live versions model ``name`` has."""
        self.require("reader", name, action="reading versions")
        return model_search.count_versions(self, name)

    def spread_seqs(self, name: str, most: int, *, metric: str | None = None) -> list[int]:
        """At most ``most`` live sequence numbers of ``name`` (``metric``: of those that
        recorded it), evenly spaced, the newest kept."""
        self.require("reader", name, action="reading versions")
        return model_search.spread_seqs(self, name, most, metric=metric)

    def neighbour_seqs(self, name: str, seq: int) -> tuple[int | None, int | None]:
        """The live versions of ``name`` numbered just before and just after ``seq``."""
        self.require("reader", name, action="reading versions")
        return model_search.neighbour_seqs(self, name, seq)

    def version_events(self, version: ModelVersion, *, limit: int | None = None
                       ) -> list[Event]:
        """The events about ``version``, newest first: those naming it (``NAME@SEMVER``,
        or an approval ``... for ALIAS``), moving an alias to or from it, or citing its
        digest. Picked out by the database among the model's events (a page about one
        version of a model of 50,000 read and decoded every one of them: a second)."""
        self.require("reader", version.name, action="reading the audit log")
        with self.read() as conn:
            found = events_about(conn, model=version.name, ref=version.ref,
                                 semver=version.semver, digest=version.digest, limit=limit)
        kept = [e for e in found if event_concerns(e, version.ref, version.semver,
                                                   version.digest)]
        return kept[:limit] if limit is not None else kept

    def get(self, ref: str) -> ModelVersion:
        """The version ``ref`` names (any reference form)."""
        self.require("reader", _model_of(ref), action="reading versions")
        with self.read() as conn:
            return resolve_version(conn, ref)

    def model(self, name: str) -> ModelInfo:
        """One model: description, tags, version count, latest version, aliases."""
        self.require("reader", name, action="reading models")
        return model_search.model_info(self, name)

    def create_model(
        self, name: str, *, description: str = "", tags: dict[str, str] | None = None
    ) -> ModelInfo:
        """An empty model (logging a version creates one too); Conflict if it exists."""
        self.require("contributor", name, action="creating a model")
        return catalog.create_model(self, name, description=description, tags=tags)

    def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        set_tags: dict[str, str] | None = None,
        delete_tags: list[str] | None = None,
    ) -> ModelInfo:
        self.require("contributor", name, action="updating a model")
        return catalog.update_model(
            self, name, description=description, set_tags=set_tags, delete_tags=delete_tags
        )

    def delete_model(self, name: str) -> None:
        """Mark ``name`` and its versions deleted (refused while it has aliases)."""
        self.require("admin", name, action="deleting a model", every_mode=True)
        catalog.delete_model(self, name)

    def update_version(
        self,
        ref: str,
        *,
        notes: str | None = None,
        set_tags: dict[str, str] | None = None,
        delete_tags: list[str] | None = None,
    ) -> ModelVersion:
        """A version's labels (notes, tags): not covered by its digest, so they may change."""
        self.require("contributor", _model_of(ref), action="updating a version")
        return catalog.update_version(
            self, ref, notes=notes, set_tags=set_tags, delete_tags=delete_tags
        )

    def search_models(
        self,
        *,
        query: str = "",
        tag: str = "",
        alias: str = "",
        sort: str = "name",
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[int, list[ModelInfo]]:
        """(number of matches, one page of them): by name/description, tag, alias; sorted.
        A caller who reads only some models finds only those."""
        only = access.readable(self, "reader", action="searching models")
        return model_search.search_models(
            self, query=query, tag=tag, alias=alias, sort=sort, offset=offset, limit=limit,
            only=only,
        )

    def log_model(
        self,
        model: Any,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        data: Any = None,
        signature: Signature | Mapping[str, Any] | None = None,
        input_example: Any = None,
        notes: str = "",
        bump: str | None = None,
        tags: Mapping[str, str] | None = None,
        flavor: str | None = None,
        serialization: str | None = None,
        progress: bool = True,
        record_reads: bool = True,
    ) -> ModelVersion:
        self.require("contributor", name, action="logging a version")
        return log_version.log_model(
            self,
            model,
            name,
            params=params,
            metrics=metrics,
            data=data,
            signature=signature,
            input_example=input_example,
            notes=notes,
            bump=bump,
            tags=tags,
            flavor=flavor,
            serialization=serialization,
            progress=progress,
            record_reads=record_reads,
        )

    def commit(
        self, name: str, values: dict[str, Any] | VersionValues, bump: str | None
    ) -> ModelVersion:
        """Number and record a version whose bytes are in the store.

        ``values`` as JSON (``VersionValues.to_dict``) are checked first: an
        ``InvalidInput`` names the field that is wrong.
        """
        self.require("contributor", name, action="logging a version")
        if not isinstance(values, VersionValues):
            values = log_version.checked_values(values)
        return log_version.commit(self, name, values, bump)

    def commit_once(
        self, name: str, values: Any, bump: str | None, *, key: str | None
    ) -> tuple[ModelVersion, bool]:
        """``commit`` as this registry's actor, at most once per ``key``: (version, replayed).

        What a server runs for a client's commit (the client's ``commit`` sends
        one key with every retry); the author is the actor, never the values'.
        """
        self.require("contributor", name, action="logging a version")
        return idempotent_commit.commit_once(self, name, values, bump, key)

    def trust_facts(self, version: ModelVersion) -> dict[str, Any]:
        self.require("reader", version.name, action="reading versions")
        with self.read() as conn:
            return trust.trust_facts(conn, version)

    def vouched_for_loading(self, version: ModelVersion, facts: dict[str, Any]) -> str | None:
        """The trusted key whose valid signature vouches for running ``version``'s code
        (checked here, against the keys this registry trusts), or None. With keys pinned
        in TETHER_LOAD_KEYS only those count, as for a client of a server: the database's
        own list of keys is what that setting does not take on trust (a review: whoever
        could write it trusted a key of their own and signed their pickle)."""
        if trust.pinned_load_keys():
            return trust.vouched_by_pinned_keys(version, facts)
        return trust.signed_for_loading(facts)

    def load(
        self,
        ref: str,
        *,
        expect: str | None = None,
        env_policy: str | None = None,
        trusted: bool = False,
        trusted_types: Sequence[str] = (),
        progress: bool = True,
        environment: dict[str, Any] | None = None,
        use_lock: bool = True,
    ) -> Any:
        """The model object, after checking its environment and every byte.

        ``environment`` judges another environment than this process's (as
        captured by ``capture_environment``), e.g. the one a deployment will use.
        Inside an application with a ``tether.lock``, a pinned reference loads
        exactly the pinned digest (``use_lock=False`` or ``TETHER_LOCK=off`` to
        ignore the lock).
        """
        if use_lock:
            ref = pinning.pinned_reference(self, ref)
        return loading.load_version(
            self,
            self.get(ref),
            expect=expect,
            env_policy=env_policy,
            trusted=trusted,
            trusted_types=trusted_types,
            progress=progress,
            environment=environment,
        )

    def download(self, ref: str, dest: str | Path, *, progress: bool = True) -> Path:
        """Write a version's files (verified) into ``dest``, which must not exist."""
        target = loading.new_destination(dest)
        version = self.get(ref)
        return loading.materialize(self, version, target, progress=progress)

    def verify(self, ref: str) -> list[str]:
        """Problems found re-reading every stored byte of a version (empty: all good)."""
        version = self.get(ref)
        return self.store.verify(version.files, label=version.ref)

    def deprecate(self, ref: str, *, reason: str = "", undo: bool = False) -> ModelVersion:
        from .manifest_limits import check_reason

        check_reason(reason, "the reason")
        parsed = parse_reference(ref)
        self.require("approver", parsed.name, action="deprecating a version", every_mode=True)
        with self.write() as conn:
            version = resolve_version(conn, parsed)
            status = "ready" if undo else "deprecated"
            repo.set_version_status(conn, version.id, status)
            append_event(
                conn,
                actor=self.actor,
                action="version.undeprecated" if undo else "version.deprecated",
                model=version.name,
                subject=version.ref,
                before=version.status,
                after=status,
                details={"reason": reason},
            )
            return resolve_version(conn, parsed)

    # -- aliases ----------------------------------------------------------------

    def promote(
        self,
        ref: str,
        alias: str,
        *,
        reason: str = "",
        checks: Sequence[alias_ops.PromoteCheck] = (),
        create: bool = False,
    ) -> AliasMove:
        """Point ``alias`` at version ``ref`` once the model's policy allows it.

        An alias that does not exist yet is refused (NotFound, listing the
        aliases and the closest name) unless ``create=True``.
        """
        policy_check = promotion_gate.promotion_gate(self)
        return alias_ops.promote(
            self,
            ref,
            alias,
            actor=self.actor,
            reason=reason,
            checks=[policy_check, *checks],
            create=create,
        )

    def rollback(self, name: str, alias: str, *, reason: str = "",
                 from_digest: str | None = None,
                 from_generation: int | None = None) -> AliasMove:
        """Move ``name@alias`` back to its previous target; with ``from_digest`` only if it
        points at that version now, with ``from_generation`` only if it has not moved
        since (Conflict otherwise: someone moved it first)."""
        return alias_ops.rollback(self, name, alias, actor=self.actor, reason=reason,
                                  from_digest=from_digest, from_generation=from_generation)

    def delete_alias(self, name: str, alias: str) -> AliasMove:
        return alias_ops.delete_alias(self, name, alias, actor=self.actor)

    def alias_history(self, name: str, alias: str, limit: int | None = None
                      ) -> list[AliasMove]:
        """The alias's moves, newest first (``limit``: only that many)."""
        self.require("reader", name, action="reading alias history")
        return alias_ops.history(self, name, alias, limit)

    def alias(self, name: str, alias: str) -> dict[str, Any]:
        self.require("reader", name, action="reading aliases")
        return alias_ops.alias_state(self, name, alias)

    def record_route_rollback(
        self,
        model: str,
        *,
        endpoint: str,
        route: str,
        before: str,
        after: str | None,
        reason: str,
    ) -> None:
        """Record that serving switched a pinned route back (``deployment.rollback``)."""
        self.require("contributor", model, action="recording a route rollback")
        deployments.record_route_rollback(
            self, model, endpoint=endpoint, route=route, before=before, after=after, reason=reason
        )

    # -- deployments ------------------------------------------------------------

    def apply_deployment(self, name: str, spec: dict[str, Any], *,
                         reason: str = "") -> dict[str, Any]:
        """Store a deployment (endpoints, routes, weights, shadows, rules) as its next revision."""
        return deployments.apply(self, name, spec, reason=reason)

    def deployment(self, name: str, *, known_revision: int | None = None) -> dict[str, Any]:
        """The record (reader registry-wide)."""
        return deployments.get(self, name, known_revision=known_revision)

    def deployments(self) -> list[dict[str, Any]]:
        return deployments.list_all(self)

    def deployment_history(self, name: str) -> list[dict[str, Any]]:
        return deployments.history(self, name)

    def set_deployment_weights(self, name: str, weights: dict[str, float], *,
                               endpoint: str | None = None, reason: str = "") -> dict[str, Any]:
        return deployments.set_weights(self, name, weights, endpoint=endpoint, reason=reason)

    def pause_routes(self, name: str, routes: list[str], *, endpoint: str | None = None,
                     resume: bool = False, reason: str = "") -> dict[str, Any]:
        return deployments.pause(self, name, routes, endpoint=endpoint, resume=resume,
                                 reason=reason)

    def rollback_deployment(self, name: str, *, to_revision: int | None = None,
                            reason: str = "") -> dict[str, Any]:
        return deployments.rollback(self, name, to_revision=to_revision, reason=reason)

    def rollback_route(self, name: str, *, endpoint: str | None, route: str,
                       failing: str | None = None, reason: str = "",
                       holder: str | None = None) -> dict[str, Any]:
        return deployments.rollback_route(self, name, endpoint=endpoint, route=route,
                                          failing=failing, reason=reason, holder=holder)

    def replica_heartbeat(self, name: str, replica: str, *, host: str, pid: int,
                          url: str = "", started_at: str = "",
                          info: dict[str, Any] | None = None,
                          stats: dict[str, Any] | None = None,
                          lead: bool = True) -> dict[str, Any]:
        return deployments.heartbeat(self, name, replica, host=host, pid=pid, url=url,
                                     started_at=started_at, info=info, stats=stats, lead=lead)

    def leave_deployment(self, name: str, replica: str) -> None:
        deployments.leave(self, name, replica)

    def deployment_status(self, name: str) -> dict[str, Any]:
        return deployments.status(self, name)

    def sign_deployment(self, name: str, key_path: str, *, versions: Sequence[str] = (),
                        expires_in: str | None = None,
                        confirm: Callable[[list[Any]], bool] | None = None) -> dict[str, Any]:
        """Sign which versions deployment ``name``'s trusted endpoints may load, with a
        local private key (``deployment_signing``)."""
        from .deployment_signing import sign_deployment

        return sign_deployment(self, name, key_path, versions=versions, expires_in=expires_in,
                               confirm=confirm)

    def record_deployment_signature(self, name: str, payload: dict[str, Any], key_id: str,
                                    signature: str) -> dict[str, Any]:
        from .deployment_signing import record_deployment_signature

        return record_deployment_signature(self, name, payload, key_id, signature)

    def vouched_deployment_digests(self, name: str,
                                   record: dict[str, Any]) -> dict[str, dict[str, float]] | None:
        """None (the database is the replica's own, keys included) unless keys are pinned
        in TETHER_LOAD_KEYS: then signatures are checked as a client of a server checks
        them (set it where the database is shared and not trusted)."""
        from .deployment_signing import vouched_digests
        from .trust import pinned_load_keys

        pinned = pinned_load_keys()
        return vouched_digests(name, record, pinned) if pinned else None

    # -- governance -------------------------------------------------------------

    def set_policy(self, name: str, text: str) -> dict[str, Any]:
        return policies.set_policy(self, name, text)

    def get_policy(self, name: str, revision: int | None = None) -> dict[str, Any]:
        self.require("reader", name, action="reading policies")
        return policies.get_policy(self, name, revision)

    def approve(self, ref: str, alias: str, *, comment: str = "") -> list[str]:
        return policies.approve(self, ref, alias, comment=comment)

    def grant(self, principal: str, role: str, *, model: str | None = None) -> None:
        roles.grant(self, principal, role, model)
        access.forget(self)

    def revoke(self, principal: str, role: str, *, model: str | None = None) -> None:
        roles.revoke(self, principal, role, model)
        access.forget(self)

    def grants(self) -> list[dict[str, Any]]:
        self.require("admin", action="listing grants")
        return roles.list_grants(self)

    def trust_key(self, name: str, public_pem: str) -> str:
        return trust.trust_key(self, name, public_pem)

    def keys(self) -> list[dict[str, Any]]:
        self.require("reader", action="listing keys")
        return trust.list_keys(self)

    def remove_key(self, name: str) -> dict[str, Any]:
        """Stop trusting a key: its signatures count for nothing from now on."""
        return trust.remove_key(self, name)

    def sign(self, ref: str, key_path: str) -> dict[str, Any]:
        return trust.sign_version(self, ref, key_path)

    def record_signature(self, ref: str, key_id: str, signature: str) -> dict[str, Any]:
        """Store a signature made elsewhere (e.g. by a remote client's key)."""
        return trust.record_signature(self, ref, key_id, signature)

    def create_token(
        self,
        principal: str,
        *,
        role: str | None = None,
        model: str | None = None,
        expires_in: str | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        return tokens.create_token(
            self, principal, role=role, model=model, expires_in=expires_in, description=description
        )

    def authenticate(self, token: str | None) -> str:
        """The principal an API token belongs to (Unauthenticated when not valid)."""
        return tokens.authenticate(self, token)

    def roles(self, principal: str, model: str | None = None) -> tuple[str, ...]:
        """The roles ``principal`` holds registry-wide, plus on ``model`` if given
        (anyone may ask about themselves, readers about anyone)."""
        if principal != self.actor:
            self.require("reader", model, action="reading another principal's roles")
        with self.read() as conn:
            return roles.roles_of(conn, principal, model)

    def revoke_token(self, prefix: str) -> None:
        tokens.revoke_token(self, prefix)

    def tokens(self) -> list[dict[str, Any]]:
        self.require("admin", action="listing tokens")
        return tokens.list_tokens(self)

    def delete_version(self, ref: str) -> ModelVersion:
        self.require("admin", _model_of(ref), action="deleting a version", every_mode=True)
        return catalog.delete_version(self, ref)

    def signatures(self, ref: str) -> tuple[list[str], list[str]]:
        """(trusted keys with a valid signature on ``ref``, problems found)."""
        self.require("reader", _model_of(ref), action="reading signatures")
        with self.read() as conn:
            return trust.signature_status(conn, resolve_version(conn, ref))

    # -- pinning, CI gate, reproducing ------------------------------------------

    def lock_add(self, ref: str, *, path: Path | None = None, sends: Any = None) -> Any:
        return pinning.lock_add(self, ref, path=path, sends=sends)

    def lock_update(self, names: Sequence[str] = (), *, path: Path | None = None) -> Any:
        return pinning.lock_update(self, list(names), path=path)

    def check(
        self,
        *,
        lock_path: Path,
        requirements_path: Path | None = None,
        python: str | None = None,
        env_policy: str | None = None,
        require_signature: bool = False,
        check_environment: bool = True,
    ) -> ci_check.CheckReport:
        return ci_check.run_check(
            self,
            lock_path=lock_path,
            requirements_path=requirements_path,
            python=python,
            env_policy=env_policy,
            require_signature=require_signature,
            check_environment=check_environment,
        )

    def reproduce(self, ref: str) -> dict[str, Any]:
        return reproduce.recipe(self.get(ref))

    # -- audit ------------------------------------------------------------------

    def audit_log(
        self, *, model: str | None = None, action: str | None = None, limit: int | None = None,
        before: int | None = None,
    ) -> list[Event]:
        """Events newest first (``before``: only those with a smaller id, to page)."""
        if model:
            self.require("reader", model, action="reading the audit log")
            only = None
        else:  # a caller who reads only some models sees their events
            only = access.readable(self, "reader", action="reading the audit log")
        with self.read() as conn:
            return list_events(conn, model=model, models=only, action=action, limit=limit,
                               before=before)

    def verify_audit(self, *, checkpoint: str | None = None) -> tuple[int, list[str]]:
        """(events checked, problems): the chain, its signed heads, and ``checkpoint``.

        ``checkpoint`` is the text of a file written by ``audit_checkpoint``.
        """
        self.require("reader", action="verifying the audit log")
        keys = [self.audit_key.public] if self.audit_key_path.exists() else []
        mark = None
        if checkpoint is not None:
            from .._audit_signing import read_checkpoint

            mark, public = read_checkpoint(checkpoint, source="the checkpoint")
            keys.append(public)
        signed_to = read_mark(self.audit_mark_path)
        with self.read() as conn:
            count, problems = verify_events(conn, keys=keys, checkpoint=mark)
            ours = self.audit_key.public if self.audit_key_path.exists() else None
            if not passes_through(conn, signed_to, ours, self._registry_tag):
                assert signed_to is not None
                problems.append(
                    f"event {signed_to[0]}, which this registry's audit key signed (as "
                    f"{self.audit_mark_path} records), is gone or rewritten: history was "
                    "cut or replaced")
        if not keys and count:
            # Without a key only the chain can be checked, and anyone who can write the
            # database can recompute that: never "valid" (a review).
            problems.append(
                f"no audit key at {self.audit_key_path} and no checkpoint: the signed heads "
                "were not checked (set TETHER_AUDIT_KEY to the registry's key, or give "
                "--checkpoint FILE)")
        return count, problems

    # -- comparing and environments ---------------------------------------------

    def diff(self, old_ref: str, new_ref: str) -> dict[str, Any]:
        return diff_versions(self.get(old_ref), self.get(new_ref))

    def env_diff(self, ref: str, *, environment: dict[str, Any] | None = None) -> list[Difference]:
        """How ``environment`` (default: this process's) differs from ``ref``'s recorded one."""
        return env_check.differences(self.get(ref), environment)

    def env_verdict(
        self,
        ref: str,
        *,
        env_policy: str | None = None,
        environment: dict[str, Any] | None = None,
    ) -> Verdict:
        policy = env_check.choose_policy(env_policy, self.get_setting("env_policy"))
        return evaluate(self.env_diff(ref, environment=environment), policy)

    def env_export(self, ref: str, *, format: str = "requirements", full: bool = False) -> str:
        """The recorded environment pinned: what the model needs, or everything (``full``)."""
        version = self.get(ref)
        if format == "requirements":
            roots = None if full else roots_for_flavor(version.flavor)
            return export_requirements(version.environment, roots=roots)
        if format == "dockerfile":
            return export_dockerfile(version.environment)
        raise InvalidInput(f"unknown format {format!r}", hint="use requirements or dockerfile")

    # -- storage ----------------------------------------------------------------

    def store_stats(self) -> StoreStats:
        self.require("reader", action="reading store statistics")
        return self.store.stats(retention.live_files(self))

    def gc(
        self,
        *,
        keep_last: int | None = None,
        grace_seconds: float | None = None,
        dry_run: bool = False,
        progress: bool = False,
    ) -> retention.GcResult:
        """Expire versions past retention, then remove and repack what none kept needs;
        ``progress``: a bar of the bytes repacked, on a terminal."""
        self.require("admin", action="collecting garbage")
        return retention.collect(
            self, keep_last=keep_last, grace_seconds=grace_seconds, dry_run=dry_run,
            progress=progress,
        )

    # -- datasets (issue 13) ----------------------------------------------------
    # Versioned datasets on the same chunk store: see _registry/datasets.py for
    # the identities and the semantic-version rule, datasets_io.py for reading.

    def add_dataset(
        self,
        path: str | Path,
        name: str,
        *,
        notes: str = "",
        bump: str | None = None,
        tags: Mapping[str, str] | None = None,
        progress: bool = False,
    ) -> datasets.DatasetVersion:
        """Store a file or folder as the next version of dataset ``name``."""
        self.require("contributor", name, action="adding a dataset version")
        return datasets.add_dataset(
            self, path, name, notes=notes, bump=bump, tags=tags, progress=progress
        )

    def commit_dataset(
        self, name: str, values: dict[str, Any], bump: str | None
    ) -> datasets.DatasetVersion:
        """Record a dataset version a client chunked and uploaded (validated, re-sealed)."""
        self.require("contributor", name, action="adding a dataset version")
        version = datasets.commit_remote_dataset(self, name, values, bump, self.actor)
        self.store.tidy_index()
        return self._users_shown(version)

    def list_datasets(self) -> list[datasets.DatasetInfo]:
        self.require("reader", action="listing datasets")
        return datasets.list_datasets(self)

    def dataset_versions(self, name: str) -> list[datasets.DatasetVersion]:
        self.require("reader", name, action="reading dataset versions")
        return datasets.dataset_versions_of(self, name)

    def dataset_versions_page(self, name: str, *, after: int = 0,
                              ) -> tuple[list[datasets.DatasetVersion], int | None]:
        """One page of ``dataset_versions``, as ``versions_page``."""
        self.require("reader", name, action="reading dataset versions")
        return datasets.dataset_versions_page(self, name, after=after)

    def get_dataset(self, ref: str) -> datasets.DatasetVersion:
        """The dataset version ``ref`` names, with the model versions trained on it."""
        self.require("reader", _model_of(ref), action="reading dataset versions")
        return self._users_shown(datasets.get_dataset(self, ref))

    def _users_shown(self, version: datasets.DatasetVersion) -> datasets.DatasetVersion:
        """``version`` with only the models trained on it that the caller may read: a
        reader of the dataset is not told which models it fed unless it may read them
        (sending a version's own fields back to commit it answered them all: a review)."""
        hidden = [u for u in version.used_by if not access.may(self, "reader", str(u["model"]))]
        if not hidden:
            return version
        return dataclasses.replace(
            version, used_by=tuple(u for u in version.used_by if u not in hidden))

    def diff_datasets(self, old_ref: str, new_ref: str) -> dict[str, Any]:
        from . import datasets_diff  # fsspec and the chunk store: only for a diff

        return datasets_diff.diff_datasets(self, self.get_dataset(old_ref),
                                           self.get_dataset(new_ref))

    def promote_dataset(self, ref: str, alias: str, *, reason: str = "") -> AliasMove:
        return datasets.promote_dataset(self, ref, alias, reason=reason)

    def open_file(self, ref: str, path: str) -> model_files.ModelFile:
        """A streaming, seekable, read-only binary file over ``path`` of model version ``ref``.

        Reads fetch (and verify) only the chunks they cover: one tensor of a
        large checkpoint, or a byte range of it, without the rest.
        """
        from . import model_files  # the chunk store's reader: only to read a file

        return model_files.open_file(self.store, self.get(ref), path)

    def download_dataset(self, ref: str, dest: str | Path, *, progress: bool = True) -> Path:
        """Write a dataset version's files (verified) into ``dest``, which must not exist."""
        target = loading.new_destination(dest)
        version = self.get_dataset(ref)
        return loading.materialize(self, version, target, progress=progress)

    def open_dataset(self, ref: str, path: str) -> datasets_io.DatasetFile:
        """A streaming, seekable, read-only binary file over ``path`` in dataset ``ref``."""
        from . import datasets_io  # fsspec and the chunk store: only to read a dataset

        return datasets_io.open_file(self, ref, path)

    # -- end of datasets ----------------------------------------------------------


def _model_of(ref: str) -> str | None:
    """The model (or dataset) a reference names, for scoping a role check (None for no
    reference: parsing it later says what is wrong, instead of an AttributeError here)."""
    return ref.partition("@")[0] or None if isinstance(ref, str) else None


def cache_bound(registry: Any) -> int | None:
    """The chunk cache's bound: ``TETHER_CACHE_MAX_BYTES``, else the registry's
    ``cache.max_bytes`` setting, else None (the cache's default, 10 GiB)."""
    from .._store.cache import configured_max_bytes, parse_size

    if os.environ.get("TETHER_CACHE_MAX_BYTES"):
        return configured_max_bytes()
    try:
        value = registry.get_setting("cache.max_bytes")
    except TetherError:
        return None  # unreadable settings must not keep a store from opening
    return parse_size(value) if value else None


def _check_setting(key: str, value: str) -> None:
    if key == "cache.max_bytes" and value != "":
        from .._store.cache import parse_size

        parse_size(value)  # InvalidInput names the accepted forms
    if key == "env_policy":
        EnvPolicy.parse(value)
    elif key in ("gc.keep_last", "gc.grace_seconds") and value != "":
        try:
            number = float(value)
        except ValueError as error:
            raise InvalidInput(f"{key} must be a number, not {value!r}") from error
        if math.isnan(number) or number < 0 or (  # nan passed: a review
                key == "gc.keep_last" and (math.isinf(number) or number != int(number))):
            raise InvalidInput(
                f"{key} must be a non-negative {'integer' if 'keep' in key else 'number'}"
            )


def _redact(url: str) -> str:
    """A database URL without its password, for messages and the audit log."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
