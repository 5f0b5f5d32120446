"""The registry contract: one typed interface for every shell.

The embedded ``Registry`` (SQLite or PostgreSQL plus a store, in this process)
and ``RemoteRegistry`` (a client of ``tether server``) both satisfy
``RegistryAPI``. The library, the CLI, the UI and serving are written against
this Protocol, never against one implementation, so what works on a laptop
works against a team's server. mypy checks the conformance of both classes
(``_conformance`` below), so a method added to one and not the other fails
the lint, not a user.

Permission and policy decisions live behind this interface, in the use cases:
a shell authenticates and passes the actor along, nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._environment import Difference, Verdict
    from ._records import AliasMove, Event, ModelInfo, ModelVersion, VersionValues
    from ._registry.datasets import DatasetInfo, DatasetVersion
    from ._registry.datasets_io import DatasetFile
    from ._registry.model_files import ModelFile
    from ._registry.registry import Registry
    from ._schema import Signature
    from ._store.base import StoreStats
    from .remote import RemoteRegistry


@runtime_checkable
class RegistryAPI(Protocol):
    """What any registry offers, embedded or remote."""

    # -- identity and settings --------------------------------------------------

    @property
    def actor(self) -> str: ...

    @property
    def cache_dir(self) -> Path: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...

    def get_setting(self, key: str) -> str | None: ...

    def settings(self) -> dict[str, str]: ...

    def set_setting(self, key: str, value: str) -> None: ...

    # -- models and versions ------------------------------------------------------

    def models(self) -> list[ModelInfo]: ...

    def versions(self, name: str) -> list[ModelVersion]: ...

    def deleted_models(self) -> list[ModelInfo]: ...

    def versions_with_deleted(self, name: str) -> list[ModelVersion]: ...

    def get(self, ref: str) -> ModelVersion: ...

    def model(self, name: str) -> ModelInfo: ...

    def create_model(
        self, name: str, *, description: str = "", tags: dict[str, str] | None = None
    ) -> ModelInfo: ...

    def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        set_tags: dict[str, str] | None = None,
        delete_tags: list[str] | None = None,
    ) -> ModelInfo: ...

    def delete_model(self, name: str) -> None: ...

    def update_version(
        self,
        ref: str,
        *,
        notes: str | None = None,
        set_tags: dict[str, str] | None = None,
        delete_tags: list[str] | None = None,
    ) -> ModelVersion: ...

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
    ) -> ModelVersion: ...

    def commit(self, name: str, values: dict[str, Any] | VersionValues,
               bump: str | None) -> ModelVersion: ...

    def trust_facts(self, version: ModelVersion) -> dict[str, Any]: ...

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
    ) -> Any: ...

    def download(self, ref: str, dest: str | Path, *, progress: bool = True) -> Path: ...

    def verify(self, ref: str) -> list[str]: ...

    def open_file(self, ref: str, path: str) -> ModelFile: ...

    def deprecate(self, ref: str, *, reason: str = "", undo: bool = False) -> ModelVersion: ...

    def delete_version(self, ref: str) -> ModelVersion: ...

    # -- aliases ------------------------------------------------------------------

    def promote(
        self,
        ref: str,
        alias: str,
        *,
        reason: str = "",
        checks: Sequence[Any] = (),
        create: bool = False,
    ) -> AliasMove: ...

    def rollback(self, name: str, alias: str, *, reason: str = "",
                 from_digest: str | None = None,
                 from_generation: int | None = None) -> AliasMove: ...

    def delete_alias(self, name: str, alias: str) -> AliasMove: ...

    def alias_history(self, name: str, alias: str) -> list[AliasMove]: ...

    def alias(self, name: str, alias: str) -> dict[str, Any]: ...

    def record_route_rollback(
        self,
        model: str,
        *,
        endpoint: str,
        route: str,
        before: str,
        after: str | None,
        reason: str,
    ) -> None: ...

    # -- deployments --------------------------------------------------------------

    def apply_deployment(
        self, name: str, spec: dict[str, Any], *, reason: str = ""
    ) -> dict[str, Any]: ...

    def deployment(self, name: str, *, known_revision: int | None = None) -> dict[str, Any]: ...

    def deployments(self) -> list[dict[str, Any]]: ...

    def deployment_history(self, name: str) -> list[dict[str, Any]]: ...

    def set_deployment_weights(
        self, name: str, weights: dict[str, float], *, endpoint: str | None = None,
        reason: str = "",
    ) -> dict[str, Any]: ...

    def pause_routes(
        self, name: str, routes: list[str], *, endpoint: str | None = None,
        resume: bool = False, reason: str = "",
    ) -> dict[str, Any]: ...

    def rollback_deployment(
        self, name: str, *, to_revision: int | None = None, reason: str = ""
    ) -> dict[str, Any]: ...

    def rollback_route(
        self, name: str, *, endpoint: str | None, route: str, failing: str | None = None,
        reason: str = "", holder: str | None = None,
    ) -> dict[str, Any]: ...

    def replica_heartbeat(
        self, name: str, replica: str, *, host: str, pid: int, url: str = "",
        started_at: str = "", info: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None, lead: bool = True,
    ) -> dict[str, Any]: ...

    def leave_deployment(self, name: str, replica: str) -> None: ...

    def deployment_status(self, name: str) -> dict[str, Any]: ...

    def sign_deployment(
        self, name: str, key_path: str, *, versions: Sequence[str] = (),
        expires_in: str | None = None, confirm: Callable[[list[Any]], bool] | None = None,
    ) -> dict[str, Any]: ...

    def record_deployment_signature(
        self, name: str, payload: dict[str, Any], key_id: str, signature: str,
    ) -> dict[str, Any]: ...

    def vouched_deployment_digests(
        self, name: str, record: dict[str, Any],
    ) -> dict[str, dict[str, float]] | None:
        """Per trusted endpoint, the digests its replicas may load as trusted and until
        when; None when the registry's word is taken (an embedded registry reading its
        own database, with no keys pinned in TETHER_LOAD_KEYS)."""
        ...

    # -- governance ---------------------------------------------------------------

    def set_policy(self, name: str, text: str) -> dict[str, Any]: ...

    def get_policy(self, name: str, revision: int | None = None) -> dict[str, Any]: ...

    def approve(self, ref: str, alias: str, *, comment: str = "") -> list[str]: ...

    def grant(self, principal: str, role: str, *, model: str | None = None) -> None: ...

    def revoke(self, principal: str, role: str, *, model: str | None = None) -> None: ...

    def grants(self) -> list[dict[str, Any]]: ...

    def trust_key(self, name: str, public_pem: str) -> str: ...

    def keys(self) -> list[dict[str, Any]]: ...

    def remove_key(self, name: str) -> dict[str, Any]: ...

    def sign(self, ref: str, key_path: str) -> dict[str, Any]: ...

    def record_signature(self, ref: str, key_id: str, signature: str) -> dict[str, Any]: ...

    def signatures(self, ref: str) -> tuple[list[str], list[str]]: ...

    def tokens(self) -> list[dict[str, Any]]: ...

    def create_token(
        self,
        principal: str,
        *,
        role: str | None = None,
        model: str | None = None,
        expires_in: str | None = None,
        description: str = "",
    ) -> dict[str, Any]: ...

    def authenticate(self, token: str | None) -> str: ...

    def roles(self, principal: str, model: str | None = None) -> tuple[str, ...]: ...

    def revoke_token(self, prefix: str) -> None: ...

    # -- pinning, environments, reproducing -----------------------------------------

    def lock_add(self, ref: str, *, path: Path | None = None, sends: Any = None) -> Any: ...

    def lock_update(self, names: Sequence[str] = (), *, path: Path | None = None) -> Any: ...

    def reproduce(self, ref: str) -> dict[str, Any]: ...

    def diff(self, old_ref: str, new_ref: str) -> dict[str, Any]: ...

    def env_diff(
        self, ref: str, *, environment: dict[str, Any] | None = None
    ) -> list[Difference]: ...

    def env_verdict(
        self,
        ref: str,
        *,
        env_policy: str | None = None,
        environment: dict[str, Any] | None = None,
    ) -> Verdict: ...

    def env_export(
        self, ref: str, *, format: str = "requirements", full: bool = False
    ) -> str: ...

    # -- audit ------------------------------------------------------------------------

    def audit_log(
        self, *, model: str | None = None, action: str | None = None, limit: int | None = None,
        before: int | None = None,
    ) -> list[Event]: ...

    def verify_audit(self, *, checkpoint: str | None = None) -> tuple[int, list[str]]: ...

    def audit_head(self) -> dict[str, Any]: ...

    def audit_checkpoint(self) -> dict[str, Any]: ...

    # -- storage ------------------------------------------------------------------------

    def store_stats(self) -> StoreStats: ...

    # -- datasets -----------------------------------------------------------------------
    # Chunked where the files are (the client's store uploads through the server's
    # blob gateway), committed, re-sealed and numbered by the registry.

    def add_dataset(
        self,
        path: str | Path,
        name: str,
        *,
        notes: str = "",
        bump: str | None = None,
        tags: Mapping[str, str] | None = None,
        progress: bool = False,
    ) -> DatasetVersion: ...

    def list_datasets(self) -> list[DatasetInfo]: ...

    def dataset_versions(self, name: str) -> list[DatasetVersion]: ...

    def get_dataset(self, ref: str) -> DatasetVersion: ...

    def diff_datasets(self, old_ref: str, new_ref: str) -> dict[str, Any]: ...

    def promote_dataset(self, ref: str, alias: str, *, reason: str = "") -> AliasMove: ...

    def download_dataset(self, ref: str, dest: str | Path, *, progress: bool = True) -> Path: ...

    def open_dataset(self, ref: str, path: str) -> DatasetFile: ...


def _conformance(embedded: Registry, remote: RemoteRegistry) -> list[RegistryAPI]:
    """Never called: mypy checks here that both implementations satisfy the contract."""
    return [embedded, remote]
