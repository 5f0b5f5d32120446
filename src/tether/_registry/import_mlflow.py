"""Bring registered models from an MLflow registry into Tether.

For each registered model: its versions in MLflow's order, each version's
description (the Tether version's notes), tags, source run's params and
metrics, and its artifacts, downloaded through the MLflow client; then the
model's aliases, and (embedded registries) its description and tags.

Every version goes through the registry's public ``log_model``, so digests,
environment capture, audit events and policies apply exactly as for a version
logged by hand; aliases move with ``promote(..., create=True)``, so a policy
may refuse one (reported, and the import goes on).

Where a version came from is recorded in its tags (``mlflow.registered_model``,
``mlflow.version``, ``mlflow.source``, ``mlflow.run_id``,
``mlflow.tracking_uri``): a second run skips every MLflow version a Tether
version already records, matched by model, version number and source, so it
imports only what is new.

Trust: an MLflow ``sklearn`` model saved with skops whose types are all among
those skops trusts by default is loaded (nothing is unpickled) and re-logged as
a native scikit-learn version. Anything else (pickle, cloudpickle, skops naming
other types, other flavors) is imported as files: the MLflow registry vouches
for nothing Tether can check, so loading it as code is for the user to decide
after review (``tether.load(..., trusted=True)`` on the files, or re-log).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from .._contract import RegistryAPI
from .._errors import IntegrityError, InvalidInput, InvalidReference, NotFound, TetherError
from .._humanize import short_repr
from .._plain_yaml import plain_yaml
from .._reference import refuse_a_version_name, validate_alias_name, validate_model_name
from .._store.blobs import owner_scratch, require_room

if TYPE_CHECKING:
    from .._records import ModelVersion

#: Tags recording where a version came from; the first three identify it.
TAG_MODEL = "mlflow.registered_model"
TAG_VERSION = "mlflow.version"
TAG_SOURCE = "mlflow.source"
TAG_RUN = "mlflow.run_id"
TAG_URI = "mlflow.tracking_uri"
TAG_CREATED = "mlflow.created_ms"
TAG_USER = "mlflow.user"
_OURS = (TAG_MODEL, TAG_VERSION, TAG_SOURCE, TAG_RUN, TAG_URI, TAG_CREATED, TAG_USER)

#: The reason recorded on alias moves made by an import.
ALIAS_REASON = "imported from MLflow"

_PAGE = 1000


#: What an import writes to: any registry, embedded or remote.
ImportTarget = RegistryAPI


class SourceUnavailable(TetherError):
    """The MLflow registry could not be reached or answered with an error."""

    code = "source_unavailable"
    http_status = 502


class Progress(Protocol):
    """What the import tells a progress display (the CLI's bar; nothing by default)."""

    def planned(self, total: int) -> None: ...

    def working(self, label: str) -> None: ...

    def finished_one(self) -> None: ...


@dataclass
class VersionReport:
    mlflow_version: str
    source: str
    run_id: str | None
    ref: str | None = None
    digest: str | None = None
    flavor: str | None = None
    status: str = "imported"  # imported | present | planned | skipped | failed
    note: str = ""


@dataclass
class AliasReport:
    alias: str
    mlflow_version: str
    ref: str | None = None
    status: str = "moved"  # moved | unchanged | refused | kept | skipped | planned
    note: str = ""


@dataclass
class ModelReport:
    name: str
    description_updated: bool = False
    tags_updated: list[str] = field(default_factory=list)
    versions: list[VersionReport] = field(default_factory=list)
    aliases: list[AliasReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for v in self.versions if v.status == status)


@dataclass
class ImportReport:
    source: str
    dry_run: bool
    models: list[ModelReport] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return sum(m.count("imported") for m in self.models)

    @property
    def problems(self) -> int:
        """Failed versions, refused aliases and models that could not be read."""
        return sum(
            m.count("failed")
            + sum(1 for a in m.aliases if a.status == "refused")
            + (1 if m.error else 0)
            for m in self.models
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "imported": self.imported,
            "problems": self.problems,
            "models": [asdict(m) for m in self.models],
        }


class _Silent:
    def planned(self, total: int) -> None:
        pass

    def working(self, label: str) -> None:
        pass

    def finished_one(self) -> None:
        pass


def open_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` (tracking and registry), after checking it answers."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise TetherError(
            "importing from MLflow needs the MLflow client, which is not installed",
            hint="pip install mlflow-skinny",
        ) from error
    if uri.startswith(("http://", "https://")):
        _check_reachable(uri)
    else:
        _check_local_store(uri)
    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as error:  # MLflow's own refusal (a file store in maintenance mode)
        raise InvalidInput(f"MLflow cannot open {uri}: {str(error).splitlines()[0][:300]}",
                           hint="a file store (mlruns) may need MLFLOW_ALLOW_FILE_STORE=true "
                           "or migrating to a database store") from None


def _check_local_store(uri: str) -> None:
    """A local store must be there: MLflow creates what it is pointed at, so a mistyped
    `sqlite:///mlfow.db` made a new database and "0 version(s) imported" (a review)."""
    from urllib.parse import unquote, urlparse

    if uri.startswith("sqlite:///"):
        where = Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))
    elif uri.startswith("file:"):
        where = Path(unquote(urlparse(uri).path))
    elif "://" not in uri and ("/" in uri or uri.startswith(".")):
        where = Path(uri)  # a folder (mlruns); a bare word is MLflow's ("databricks")
    else:
        return  # another database or a name MLflow resolves: it says whether it is there
    if not where.exists():
        raise InvalidInput(f"{where} does not exist: no MLflow store to import from",
                           hint="check the path (MLflow would create an empty store there)")


def _check_reachable(uri: str) -> None:
    """Fail fast and clearly: the MLflow client retries a dead server for minutes."""
    import httpx

    url = uri.rstrip("/") + "/api/2.0/mlflow/registered-models/search"
    try:
        httpx.get(url, params={"max_results": 1}, timeout=10.0)
    except httpx.HTTPError as error:
        raise SourceUnavailable(
            f"the MLflow server at {uri} is unreachable: {type(error).__name__}: {error}",
            hint="check the URI and that `mlflow server` runs there "
            "(tokens: MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME/PASSWORD)",
        ) from error
    # Any HTTP answer (even 401/403) means the server is up: the client reports the rest.


def _mlflow_call(uri: str, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return call(*args, **kwargs)
    except MlflowException as error:
        if getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise NotFound(f"{what}: not found in the MLflow registry at {uri}") from error
        raise SourceUnavailable(
            f"{what} failed at {uri}: {error.message}",
            hint="check the URI and your MLflow credentials",
        ) from error
    except TetherError:
        raise
    except Exception as error:
        # A mlruns folder's damaged meta.yaml (bad YAML, a list, a key missing, a number
        # of 5,000 digits) ended the import in MLflow's own traceback (a review).
        raise SourceUnavailable(
            f"{what} failed at {uri}: MLflow could not read it ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else 'no detail'})",
            hint="the MLflow store is damaged there: repair that model's files, or import "
            "the others by name (--model NAME)",
        ) from error


def import_mlflow(
    registry: ImportTarget,
    uri: str,
    *,
    models: Sequence[str] = (),
    dry_run: bool = False,
    progress: Progress | None = None,
    client: Any = None,
    artifacts_from: Sequence[str | Path] = (),
) -> ImportReport:
    """Import the registered models ``models`` (default: all) from the MLflow registry at ``uri``.

    Where the source keeps artifacts is its word, so only ``ArtifactSources`` are read:
    the tracking server's own ``mlflow-artifacts:``, a local store's folder, and the
    folders and URI prefixes in ``artifacts_from``.

    Returns what was imported, what was there already, and every refusal; a
    failure of one version or alias is reported and the import goes on.
    """
    with _global_tracking_uri(uri):
        return _import(registry, uri, models=models, dry_run=dry_run, progress=progress,
                       client=client, artifacts_from=artifacts_from)


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's file store reads each model version through a client of MLflow's
    *global* tracking URI (its own TODO says so): unset, that is sqlite:///mlflow.db in
    the working folder, which it created there (a review). Set to the source while a
    local store is imported, then put back as it was."""
    if uri.startswith(("http://", "https://")):
        yield
        return
    try:
        import mlflow
        from mlflow.tracking._tracking_service import utils as tracking_utils
    except ImportError:
        yield
        return
    before = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri = before


def _import(
    registry: ImportTarget,
    uri: str,
    *,
    models: Sequence[str],
    dry_run: bool,
    progress: Progress | None,
    client: Any,
    artifacts_from: Sequence[str | Path],
) -> ImportReport:
    progress = progress or _Silent()
    sources = ArtifactSources.of(uri, artifacts_from)
    client = client if client is not None else open_client(uri)
    report = ImportReport(source=uri, dry_run=dry_run)

    names = list(dict.fromkeys(models)) or _all_model_names(client, uri)
    plans: list[tuple[ModelReport, Any, list[Any]]] = []
    for name in names:
        model_report = ModelReport(name=name)
        report.models.append(model_report)
        try:
            validate_model_name(name)
        except InvalidReference:
            model_report.error = (
                f"{name!r} is not a valid Tether model name "
                "(letters, digits, '.', '_' and '-', up to 128); skipped"
            )
            continue
        try:
            source_model = _mlflow_call(uri, f"model {name!r}", client.get_registered_model, name)
            source_versions = _model_versions(client, uri, name)
        except (NotFound, SourceUnavailable) as error:  # this model; the others go on
            model_report.error = error.message
            continue
        present = _present(registry, name)
        todo = []
        # A version whose number or source is not short text is no MLflow version: a
        # source of YAML aliases expanded to gigabytes as it was made text (a review).
        odd = [mv for mv in source_versions if not _plain(mv)]
        source_versions = [mv for mv in source_versions if _plain(mv)]
        model_report.versions += [VersionReport(
            "?", "?", None, status="failed",
            note="its version or source is not plain text (not read)") for _ in odd]
        for mv in source_versions:
            entry = VersionReport(
                mlflow_version=str(mv.version), source=str(mv.source), run_id=mv.run_id or None
            )
            model_report.versions.append(entry)
            existing = present.get(_key(name, mv))
            if existing is not None:
                entry.status, entry.ref, entry.digest = "present", existing.ref, existing.digest
                entry.flavor = str(existing.flavor.get("name"))
            elif str(getattr(mv, "status", "READY")) != "READY":
                entry.status, entry.note = "skipped", f"MLflow status {mv.status}"
            else:
                entry.status = "planned"
                todo.append(mv)
        plans.append((model_report, source_model, todo))

    progress.planned(sum(len(todo) for _, _, todo in plans))
    for model_report, source_model, todo in plans:
        name = model_report.name
        by_number = {v.mlflow_version: v for v in model_report.versions}
        for mv in todo:
            entry = by_number[str(mv.version)]
            progress.working(f"{name} v{mv.version}")
            if not dry_run:
                _import_version(registry, client, uri, name, mv, entry, sources)
            progress.finished_one()
        for sync in (_sync_model, _sync_aliases):
            try:
                sync(registry, source_model, model_report, dry_run)
            except (TetherError, TypeError, ValueError, AttributeError) as error:
                # After its versions were logged: a description or tags or aliases of
                # the wrong shape had escaped, the rest of the import undone (a review).
                what = "description and tags" if sync is _sync_model else "aliases"
                if sync is _sync_model:
                    model_report.description_updated, model_report.tags_updated = False, []
                model_report.notes.append(
                    f"its {what} were not imported: "
                    f"{getattr(error, 'message', None) or f'{type(error).__name__}: {error}'}")
    return report


#: Most pages of one listing, and most names or versions in it: a hostile server
#: answering a next page forever kept the import paging (a review).
_MAX_PAGES = 10_000


def _next_token(token: Any, seen: set[str], pages: int, what: str) -> str | None:
    """The next page's token, or None at the end; IntegrityError for a token given again
    (the listing would loop) or past _MAX_PAGES pages."""
    if not token:
        return None
    if str(token) in seen or pages >= _MAX_PAGES:
        raise IntegrityError(f"the MLflow source's listing of {what} does not end (a page "
                             "token given twice, or over 10,000 pages)",
                             hint="is the source an MLflow server?")
    seen.add(str(token))
    return str(token)


def _all_model_names(client: Any, uri: str) -> list[str]:
    names: list[str] = []
    token: str | None = None
    seen: set[str] = set()
    pages = 0
    while True:
        pages += 1
        page = _mlflow_call(
            uri,
            "listing registered models",
            client.search_registered_models,
            max_results=_PAGE,
            page_token=token,
        )
        names.extend(m.name for m in page)
        token = _next_token(page.token, seen, pages, "registered models")
        if not token:
            return names


def _model_versions(client: Any, uri: str, name: str) -> list[Any]:
    quoted = name.replace("\\", "\\\\").replace("'", "\\'")
    found: list[Any] = []
    token: str | None = None
    seen: set[str] = set()
    pages = 0
    while True:
        pages += 1
        page = _mlflow_call(
            uri,
            f"listing the versions of {name!r}",
            client.search_model_versions,
            f"name = '{quoted}'",
            max_results=_PAGE,
            page_token=token,
        )
        found.extend(v for v in page if v.name == name)
        token = _next_token(page.token, seen, pages, f"the versions of {name!r}")
        if not token:
            # A hostile source's "version" may be any text: such ones sort last (and fail
            # alone, when imported), instead of a ValueError ending the whole import.
            return sorted(found, key=lambda v: (0, int(v.version)) if str(v.version).isdigit()
                          and len(str(v.version)) <= 18 else (1, 0))


def _plain(mv: Any) -> bool:
    return all(isinstance(getattr(mv, field, None), str | int) and not isinstance(
        getattr(mv, field, None), bool) and len(str(getattr(mv, field))) <= 4096
        for field in ("version", "source"))


def _key(name: str, mv: Any) -> tuple[str, str, str]:
    return (name, str(mv.version), str(mv.source))


def _present(registry: ImportTarget, name: str) -> dict[tuple[str, str, str], ModelVersion]:
    """The Tether versions of ``name`` that record an MLflow origin, by that origin."""
    try:
        versions = registry.versions(name)
    except NotFound:
        return {}
    found: dict[tuple[str, str, str], ModelVersion] = {}
    for version in versions:
        tags = version.tags
        if TAG_MODEL in tags and TAG_VERSION in tags:
            key = (tags[TAG_MODEL], tags[TAG_VERSION], tags.get(TAG_SOURCE, ""))
            found.setdefault(key, version)
    return found


def _import_version(
    registry: ImportTarget, client: Any, uri: str, name: str, mv: Any, entry: VersionReport,
    sources: ArtifactSources,
) -> None:
    try:
        # In the store's scratch folder, named for this process (never /tmp): a killed
        # import's download is found and removed by the next ingest or `tether gc`.
        with tempfile.TemporaryDirectory(**owner_scratch(registry.cache_dir, "mlflow")) as tmp:
            local = _download(client, uri, name, mv, Path(tmp), sources)
            model, flavor, note = _choose_flavor(local)
            params, metrics, run_note = _run_facts(client, mv.run_id)
            tags = {str(k): str(v) for k, v in (mv.tags or {}).items() if k not in _OURS}
            tags.update(
                {
                    TAG_MODEL: name,
                    TAG_VERSION: str(mv.version),
                    TAG_SOURCE: str(mv.source),
                    TAG_URI: uri,
                }
            )
            if mv.run_id:
                tags[TAG_RUN] = str(mv.run_id)
            if getattr(mv, "creation_timestamp", None):
                tags[TAG_CREATED] = str(mv.creation_timestamp)
            if getattr(mv, "user_id", None):
                tags[TAG_USER] = str(mv.user_id)
            version = registry.log_model(
                model,
                name,
                flavor=flavor,
                params=params,
                metrics=metrics,
                notes=mv.description or "",
                tags=tags,
                progress=False,
            )
    except TetherError as error:
        entry.status, entry.note = "failed", error.message
        return
    except Exception as error:  # a foreign source's bytes: RecursionError, ValueError, ...
        # Whatever a hostile or broken source makes its libraries raise ends this version,
        # not the import (a traceback left the aliases of every model after it unsynced).
        entry.status, entry.note = "failed", f"{type(error).__name__}: {str(error)[:300]}"
        return
    entry.status, entry.ref, entry.digest, entry.flavor = (
        "imported",
        version.ref,
        f"sha:{version.digest}",
        flavor,
    )
    entry.note = "; ".join(n for n in (note, run_note) if n)


def _download(client: Any, uri: str, name: str, mv: Any, dest: Path,
              sources: ArtifactSources) -> Path:
    import mlflow.artifacts

    what = f"{name} version {mv.version}"
    location = _mlflow_call(
        uri,
        f"locating the artifacts of {what}",
        client.get_model_version_download_uri,
        name,
        str(mv.version),
    )
    location = _run_location(client, uri, str(location), what)
    local = sources.check(location, what)
    if local is not None:
        return copy_local(*local, dest, what)
    try:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=str(dest), tracking_uri=uri
        )
    except Exception as error:  # the artifact repositories raise many kinds
        raise SourceUnavailable(
            f"downloading the artifacts of {what} from {location} failed: {error}",
            hint="the registry must be able to serve its artifacts "
            "(`mlflow server` with --serve-artifacts, or credentials for the store)",
        ) from error
    return Path(path)


def _run_location(client: Any, uri: str, location: str, what: str) -> str:
    """A ``runs:/RUN_ID/PATH`` location as the run's own artifact location joined with
    PATH (then judged like any other): MLflow 3 names a local store's versions so, and
    every one was refused, nothing imported (a review). Other locations as they are."""
    if not location.startswith("runs:/"):
        return location
    run_id, _, path = location.removeprefix("runs:/").partition("/")
    if not run_id or not run_id.replace("-", "").isalnum():
        raise InvalidInput(f"{what}: artifact location {short_repr(location)} names no run")
    run = _mlflow_call(uri, f"the run of {what}", client.get_run, run_id)
    root = getattr(getattr(run, "info", None), "artifact_uri", None)
    if not isinstance(root, str) or not root:
        raise InvalidInput(f"{what}: run {run_id} has no artifact location")
    return root.rstrip("/") + ("/" + path.strip("/") if path.strip("/") else "")


@dataclass(frozen=True)
class ArtifactSources:
    """Where this import may read a version's artifacts from: the source names them, and
    a hostile one named the importer's own files (``file:///home/you/.ssh``), another
    bucket its credentials reach (``s3://private/...``), or a service only its network
    reaches (``http://169.254.169.254/...``), and got the bytes stored as a version every
    reader of the registry could load (a review). Only these are read:

    - ``mlflow-artifacts:`` locations served by the tracking server itself;
    - folders on this machine (by default, for a local store, the folder holding it),
      never through a symbolic link;
    - locations under a URI prefix the user named (``s3://bucket/mlflow/``)."""

    tracking_host: str | None
    folders: tuple[Path, ...]
    prefixes: tuple[tuple[str, str, str], ...]  # (scheme, host, path ending in /)

    @classmethod
    def of(cls, uri: str, allowed: Sequence[str | Path] = ()) -> ArtifactSources:
        tracking = urlsplit(uri)
        folders: list[Path] = []
        prefixes: list[tuple[str, str, str]] = []
        for item in allowed:
            text = str(item)
            parts = urlsplit(text)
            if len(parts.scheme) > 1 and parts.scheme != "file":
                if parts.scheme not in _NETWORK_SCHEMES or not parts.netloc:
                    raise InvalidInput(f"--artifacts-from {short_repr(text)} is neither a "
                                       "folder nor a URI with a host",
                                       hint="e.g. s3://bucket/mlflow/ or /srv/mlflow/artifacts")
                prefixes.append((parts.scheme, parts.netloc.lower(),
                                 parts.path.rstrip("/") + "/"))
            else:
                folders.append(Path(text.removeprefix("file://")))
        if not allowed:
            folders.extend(_local_store_folder(uri) or [])
        # Locations are compared by their text (see ``_local``): each folder as spelled,
        # absolute, and with its links resolved.
        spelled = [Path(os.path.normpath(os.path.abspath(os.path.expanduser(f))))
                   for f in folders]
        folders = list(dict.fromkeys([*spelled, *(f.resolve() for f in spelled)]))
        host = tracking.netloc.lower() if tracking.scheme in ("http", "https") else None
        return cls(host, tuple(folders), tuple(prefixes))

    def check(self, location: str, what: str) -> tuple[Path, tuple[str, ...]] | None:
        """Refuse ``location`` unless it is one of these sources: for a folder on this
        machine, (the allowed folder, the parts below it) to ``copy_local``."""
        parts = urlsplit(location)
        scheme = parts.scheme.lower() if len(parts.scheme) > 1 else ""
        if scheme == "mlflow-artifacts" and (not parts.netloc
                                             or parts.netloc.lower() == self.tracking_host):
            return None  # through the tracking server itself
        if scheme in _NETWORK_SCHEMES:
            path = parts.path if parts.path.endswith("/") else parts.path + "/"
            if any(segment in (".", "..") for segment in unquote(path).split("/")):
                raise InvalidInput(f"{what}: artifact location {short_repr(location)} climbs "
                                   "out of its folder (.. in its path)")
            if any(scheme == s and parts.netloc.lower() == h and path.startswith(p)
                   for s, h, p in self.prefixes):
                return None
            raise InvalidInput(
                f"{what}: the source says its artifacts are at {short_repr(location)}, which "
                "is not a place this import reads from",
                hint="if that is the MLflow store's artifact location, name it: "
                "--artifacts-from SCHEME://HOST/PREFIX/ (artifacts served through the "
                "tracking server, mlflow-artifacts:, need nothing)")
        if scheme not in ("", "file"):
            raise InvalidInput(
                f"{what}: the source says its artifacts are at {short_repr(location)}, a kind "
                "of location Tether does not download from")
        return self._local(location, parts.path if scheme else location,
                           parts.netloc if scheme else "", what)

    def _local(self, location: str, text: str, host: str,
               what: str) -> tuple[Path, tuple[str, ...]]:
        """(allowed folder, the parts below it) a local location names, judged by its
        text alone: Tether reads it itself (``copy_local``), never following a link, so
        what is checked is what is read (MLflow decoded %2e%2e after the check, and
        followed a link swapped in after it: a review)."""
        if "%" in text or host not in ("", "localhost"):
            raise InvalidInput(f"{what}: the artifact location {short_repr(location)} is not a "
                               "plain path on this machine (% escapes or another host)")
        lexical = Path(os.path.normpath(os.path.abspath(os.path.expanduser(text))))
        for folder in self.folders:
            if lexical.is_relative_to(folder):
                return folder, lexical.relative_to(folder).parts
        raise InvalidInput(
            f"{what}: the source says its artifacts are in {short_repr(location)} on "
            f"this machine, outside the folders this import reads"
            + (f" ({', '.join(map(str, self.folders))})" if self.folders else ""),
            hint="a server's artifacts come through it (mlflow server --serve-artifacts); "
            "if that folder is the MLflow store's artifact folder, name it: "
            "--artifacts-from FOLDER")


def copy_local(folder: Path, parts: tuple[str, ...], dest: Path, what: str) -> Path:
    """Copy what ``parts`` name below ``folder`` into ``dest`` (keeping its last name),
    opening every step with O_NOFOLLOW relative to the one before: a link anywhere below
    ``folder``, there before the import or swapped in during it, is refused, never
    followed; a FIFO or device likewise."""
    def refuse(name: str) -> InvalidInput:
        return InvalidInput(f"{what}: {short_repr(name)} in its artifacts is a symbolic link "
                            "or not a regular file; links are not followed out of an MLflow "
                            "store", hint="replace the link with the file it names")

    opened = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                step = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                               dir_fd=opened)
            except OSError as error:
                raise refuse(part) from error
            os.close(opened)
            opened = step
        name = parts[-1] if parts else folder.name
        target = dest / name
        if parts:
            _copy_entry(opened, name, target, refuse)
        else:
            target.mkdir(parents=True)
            _copy_folder(opened, target, refuse)
        return target
    finally:
        os.close(opened)


def _copy_entry(parent: int, name: str, target: Path,
                refuse: Callable[[str], InvalidInput]) -> None:
    try:
        handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
    except OSError as error:  # ELOOP: a link
        raise refuse(name) from error
    try:
        mode = os.fstat(handle).st_mode
        if stat.S_ISDIR(mode):
            target.mkdir(parents=True)
            _copy_folder(handle, target, refuse)
        elif stat.S_ISREG(mode):
            target.parent.mkdir(parents=True, exist_ok=True)
            require_room(os.fstat(handle).st_size, target.parent,
                         f"{short_repr(name)} in the artifacts")
            with open(handle, "rb", closefd=False) as reader, target.open("xb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
        else:
            raise refuse(name)
    finally:
        os.close(handle)


def _copy_folder(handle: int, target: Path, refuse: Callable[[str], InvalidInput]) -> None:
    for entry in sorted(os.listdir(handle)):
        _copy_entry(handle, entry, target / entry, refuse)


#: Schemes whose bytes come over the network (read only under a prefix the user named).
_NETWORK_SCHEMES = ("http", "https", "s3", "gs", "wasbs", "abfss", "dbfs", "hdfs",
                    "mlflow-artifacts")


def _local_store_folder(uri: str) -> list[Path] | None:
    """Where a local MLflow store keeps artifacts by default, or None (a server).

    Beside a database, only MLflow's own artifact folders (``mlruns``, ``mlartifacts``):
    the database's folder itself was the user's home for ``sqlite:///mlflow.db`` run
    there, and a hostile database named ``~/.ssh`` in it (a review)."""
    scheme, _, rest = uri.partition(":")
    if scheme == "sqlite":  # sqlite:///mlflow.db (relative), sqlite:////abs/mlflow.db
        database = rest.removeprefix("//")
        beside = Path(database[1:] if database.startswith("/") else database).parent
        return [beside / "mlruns", beside / "mlartifacts"]
    if scheme == "file":
        return [Path(rest.removeprefix("//"))]
    if "://" not in uri and ":" not in uri[2:]:  # a bare path: a file store
        return [Path(uri)]
    return None  # a server: its artifacts come through it


#: An MLmodel file is a few dozen lines.
_MAX_MLMODEL = 1024 * 1024


def _choose_flavor(local: Path) -> tuple[Any, str, str]:
    """(what to log, flavor, note): a native scikit-learn model only if loading ran no code."""
    mlmodel = local / "MLmodel" if local.is_dir() else None
    if mlmodel is None or not mlmodel.is_file():
        return str(local), "files", ""
    try:
        if mlmodel.stat().st_size > _MAX_MLMODEL:
            raise InvalidInput(f"MLmodel is larger than {_MAX_MLMODEL // 1024} KB")
        spec = plain_yaml(mlmodel.read_text(encoding="utf-8"), "MLmodel",
                          max_bytes=_MAX_MLMODEL, max_depth=32) or {}
    except (InvalidInput, UnicodeDecodeError) as error:
        why = error.message if isinstance(error, InvalidInput) else "not UTF-8"
        return str(local), "files", f"MLmodel is unreadable ({why}); imported as files"
    flavors = spec.get("flavors") if isinstance(spec, dict) else None
    sklearn = flavors.get("sklearn") if isinstance(flavors, dict) else None
    if not isinstance(sklearn, dict):
        kinds = (", ".join(sorted(short_repr(str(k)) for k in flavors))
                 if isinstance(flavors, dict) else "none")
        return str(local), "files", f"MLflow flavors {kinds}: imported as files"
    serialization = sklearn.get("serialization_format") or "cloudpickle"
    if not isinstance(serialization, str) or not isinstance(
            sklearn.get("pickled_model") or "", str):
        return str(local), "files", "MLmodel's sklearn entry is malformed; imported as files"
    if serialization != "skops":
        return (
            str(local),
            "files",
            f"MLflow sklearn model stored as {short_repr(serialization)}: imported as files, "
            "since loading it would unpickle data Tether cannot vouch for",
        )
    from .._errors import UnsafeArtifact
    from .._flavors import get_flavor

    entry = str(sklearn.get("pickled_model") or "model.skops")
    try:
        model = get_flavor("sklearn").load(
            local, {"serialization": "skops", "entry": entry}, trusted=False
        )
    except UnsafeArtifact:
        return (
            str(local),
            "files",
            "MLflow sklearn model (skops) names types skops does not trust by default: "
            "imported as files",
        )
    except Exception as error:  # a broken or foreign file: keep the bytes, say why
        note = f"MLflow sklearn model did not load ({error}): imported as files"
        return str(local), "files", note
    return model, "sklearn", "MLflow sklearn model (skops, default-trusted types): logged natively"


def _run_facts(client: Any, run_id: str | None) -> tuple[dict[str, Any], dict[str, float], str]:
    """The source run's params and metrics; a run that is gone is a note, not a failure."""
    if not run_id:
        return {}, {}, ""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return {}, {}, f"source run {run_id} is not readable: no params or metrics"
    return dict(run.data.params), dict(run.data.metrics), ""


def _sync_model(
    registry: ImportTarget, source_model: Any, report: ModelReport, dry_run: bool
) -> None:
    """The model's description and tags, set where they differ."""
    description = source_model.description or ""
    tags = {str(k): str(v) for k, v in (source_model.tags or {}).items()}
    if not description and not tags:
        return
    try:
        info = registry.model(report.name)
    except NotFound:
        if dry_run:
            report.description_updated = bool(description)
            report.tags_updated = sorted(tags)
            return
        info = registry.create_model(report.name)
    changed = {k: v for k, v in tags.items() if info.tags.get(k) != v}
    new_description = description if description and description != info.description else None
    report.description_updated = new_description is not None
    report.tags_updated = sorted(changed)
    if not dry_run and (changed or new_description is not None):
        registry.update_model(
            report.name, description=new_description, set_tags=changed or None
        )


def _sync_aliases(
    registry: ImportTarget, source_model: Any, report: ModelReport, dry_run: bool
) -> None:
    """MLflow aliases become Tether aliases, moved by promote so policies decide.

    An alias someone moved in Tether since (its last move was not an import)
    is kept and reported: the import does not undo a decision made here.
    """
    by_number = {v.mlflow_version: v for v in report.versions}
    aliases = dict(getattr(source_model, "aliases", None) or {})
    for alias, number in sorted(aliases.items()):
        entry = AliasReport(alias=alias, mlflow_version=str(number))
        report.aliases.append(entry)
        target = by_number.get(str(number))
        try:
            validate_alias_name(alias)
            refuse_a_version_name(alias)
        except InvalidReference:
            entry.status, entry.note = "skipped", "not a valid Tether alias name"
            continue
        if target is None or target.ref is None:
            entry.status = "planned" if target is not None and dry_run else "skipped"
            if entry.status == "skipped":
                entry.note = f"MLflow version {number} was not imported"
            continue
        entry.ref = target.ref
        current = _current_alias(registry, report.name, alias)
        if current is not None and current[0] == target.ref:
            entry.status = "unchanged"
            continue
        if current is not None and not current[1].startswith(ALIAS_REASON):
            entry.status = "kept"
            entry.note = f"moved in Tether since, now at {current[0]}; not changed"
            continue
        if dry_run:
            entry.status = "planned"
            continue
        try:
            registry.promote(
                target.ref,
                alias,
                reason=f"{ALIAS_REASON} ({report.name} version {number})",
                create=True,
            )
        except TetherError as error:
            entry.status, entry.note = "refused", error.message
        else:
            entry.status = "moved"


def _current_alias(registry: ImportTarget, name: str, alias: str) -> tuple[str, str] | None:
    """(ref the alias points at, reason of its last move), or None if it points nowhere."""
    try:
        state = registry.alias(name, alias)
        history = registry.alias_history(name, alias)  # newest first
    except NotFound:
        return None
    return f"{name}@{state['version']}", history[0].reason if history else ""
