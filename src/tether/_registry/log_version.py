"""Registering a version: save, store the bytes, capture lineage, number it.

The bytes go into the artifact store first and are durable before the version
row is written, in one transaction that also numbers the version and appends
the audit event. A crash in between leaves unreferenced chunks (which `gc`
collects), never a version that points at missing bytes.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._environment import capture_environment
from .._environment.record import environment_problem
from .._errors import Conflict, InvalidInput, MissingChunks
from .._identity import check_manifest, flavor_identity, seal
from .._lineage_record import lineage_problem, storable_git
from .._metadata import repository as repo
from .._metadata.audit_log import append_event
from .._metadata.clock import now_iso
from .._metadata.schema import versions
from .._records import ModelVersion, VersionValues
from .._reference import validate_model_name
from .._schema import Signature
from .._semver import SemVer, VersionFacts, required_bump, resolve_bump
from .._store import handoffs
from .._store.base import FileEntry
from . import datasets, drift_baseline
from .datasets import data_inputs, read_inputs
from .examples import example_to_json, feature_names, predictions_for
from .lineage import capture_git, current_author
from .manifest_limits import check_loadable, check_nesting, check_tags, check_text
from .previous import previous_chunks

if TYPE_CHECKING:
    from .registry import Registry

#: How many times a writer retries after losing a race to create the same model.
_RACE_RETRIES = 5


def _check_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidInput("params= must be a mapping of name to value", hint='params={"C": 1.0}')
    try:
        return dict(_json_roundtrip(params))
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"params are not JSON-serialisable: {error}") from error


def _json_roundtrip(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=_jsonable_scalar))


def _jsonable_scalar(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _check_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise InvalidInput("metrics= must be a mapping of name to number")
    checked: dict[str, float] = {}
    for key, value in metrics.items():
        if str(key) == "(unreadable)":  # what a tampered row reads as: never a real name
            raise InvalidInput("'(unreadable)' is not a metric name",
                               hint="it names a stored value Tether could not read")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError) as error:
            raise InvalidInput(
                f"metric {key!r} is {value!r}, not a number",
                hint="metrics are numbers; put text in notes= or tags=",
            ) from error
        if math.isnan(number) or math.isinf(number):
            raise InvalidInput(f"metric {key!r} is {value!r}", hint="metrics must be finite")
        checked[str(key)] = number
    return checked


def _facts(
    *, signature: Any, files_digest: str, params: Any, data: Any, flavor: Any, metadata: Any
) -> VersionFacts:
    return VersionFacts(
        signature=signature,
        files_digest=files_digest,
        params=params,
        data=data,
        flavor=flavor,
        metadata=metadata,
    )


def _row_facts(row: sa.Row[Any]) -> VersionFacts:
    version = repo.row_to_version(row, "", files=())  # the manifest's digest is files_digest
    return _facts(
        signature=version.signature,
        files_digest=version.files_digest,
        params=version.params,
        data={k: v.get("digest") for k, v in version.data.items()},
        flavor=flavor_identity(version.flavor),
        metadata={"metrics": version.metrics, "notes": version.notes, "tags": version.tags},
    )


@handoffs.during  # see tether/_store/handoffs.py
def log_model(
    registry: Registry,
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
    author: str | None = None,
    progress: bool = False,
    record_reads: bool = True,
) -> ModelVersion:
    validate_model_name(name)
    params_ = _check_params(params)
    metrics_ = _check_metrics(metrics)
    tags_ = {str(k): str(v) for k, v in (tags or {}).items()}
    data_ = data_inputs(registry, data)  # dataset references ("ds@2") become links
    # Datasets this process read: linked too (see reads.py).
    if record_reads:
        data_ = {**data_, **read_inputs(registry, data_)}
    from .. import _flavors as flavors  # the frameworks' modules: only to save or load

    chosen = flavors.get_flavor(flavor) if flavor else flavors.detect_flavor(model)
    # git runs (a few ms: a process or two) while the model is saved and stored, and so
    # does the first scan of the installed distributions in a process (25 ms here).
    git_state = _background(capture_git)
    environment = _background(capture_environment)

    with tempfile.TemporaryDirectory(**registry.store.scratch_args("log")) as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        save_options = {"serialization": serialization} if serialization else {}
        flavor_record = chosen.save(model, model_dir, **save_options)
        paths = sorted(
            p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()
        )
        report = registry.store.ingest(model_dir, paths, progress=progress,
                                       previous=previous_chunks(
                                           model_dir, paths, lambda: registry.get(name).files,
                                           renamed=True))

    if signature is None and input_example is not None:
        outputs = predictions_for(model, flavor_record, input_example)
        from .._schema.inference import infer_signature  # numpy: only with an example

        signature_ = infer_signature(
            input_example, outputs, feature_names=feature_names(model)
        ).to_dict()
    elif isinstance(signature, Signature):
        signature_ = signature.to_dict()
    elif signature is not None:
        signature_ = Signature.from_dict(dict(signature)).to_dict()
    else:
        signature_ = None

    values = VersionValues(
        manifest=tuple(sorted(report.files, key=lambda f: f.path)),
        flavor=flavor_record,
        signature=signature_,
        input_example=example_to_json(input_example),
        params=params_,
        metrics=metrics_,
        data=data_,
        lineage={"git": storable_git(git_state.result()),
                 **drift_baseline.lineage_entry(data, signature_)},
        environment=environment.result(),
        tags=tags_,
        notes=notes,
        author=author or registry.actor or current_author(),
    )
    if os.environ.get("TETHER_TEST_CRASH_BEFORE_COMMIT"):  # test hook: stored, pinned, not
        os._exit(97)                                         # registered
    try:
        return registry.commit(name, values.checked(), bump)
    finally:
        # Committed: the version keeps its chunks alive. Refused: nothing needs them.
        registry.store.release_pin(report.pin)


def _background(work: Callable[[], Any]) -> Future[Any]:
    """``work()`` on a thread of its own, its result (or error) in the future returned."""
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as error:  # handed to whoever waits for the result
            future.set_exception(error)

    threading.Thread(target=run, name="tether-background", daemon=True).start()
    return future


def facts_of(values: Mapping[str, Any]) -> VersionFacts:
    """What the semantic-version rules compare, from a version's values."""
    return _facts(
        signature=values["signature"],
        files_digest=values["files_digest"],
        params=values["params"],
        data={k: v["digest"] for k, v in values["data"].items()},
        flavor=flavor_identity(values["flavor"]),
        metadata={"metrics": values["metrics"], "notes": values["notes"], "tags": values["tags"]},
    )


def checked_values(values: Any) -> VersionValues:
    """``VersionValues.from_dict``, with a number past any float (a metric of 10**400,
    which raised OverflowError) refused as bad input."""
    try:
        return VersionValues.from_dict(values)
    except OverflowError:
        raise InvalidInput("values hold a number out of range (past 1.8e308)",
                           hint="metrics are finite numbers") from None


#: What must be recorded with a version or not at all (an Idempotency-Key): called in the
#: transaction that records it, with the version's row id; raising rolls the version back.
RecordWith = Callable[[sa.Connection, int], None]


def commit(registry: Registry, name: str, checked: VersionValues, bump: str | None, *,
           record_with: RecordWith | None = None) -> ModelVersion:
    """``commit_version``, then what follows a commit: the datasets it names linked to it,
    the index files its uploader added merged."""
    version = commit_version(registry, name, checked, bump, record_with=record_with)
    datasets.record_links(registry, version)  # datasets: index data= links both ways
    registry.store.tidy_index()  # the uploader could not merge the index files it added
    return version


def commit_version(
    registry: Registry, name: str, checked: VersionValues, bump: str | None, *,
    record_with: RecordWith | None = None,
) -> ModelVersion:
    """Number and record a version whose bytes are already in the store.

    Separate from saving and storing so a server can commit what a remote
    client prepared and uploaded. Without an author the registry's actor
    logged it (on a server: the authenticated caller). ``record_with`` runs in
    the transaction that records the version (see ``RecordWith``).
    """
    validate_model_name(name)
    check_loadable(checked.manifest)
    # Values given as an object skip from_dict's checks: a .git/config committed so was
    # written into downloads (a review). Every new version follows the rule.
    check_manifest(checked.manifest, reserved=True)
    check_nesting(checked.to_dict(manifest=False))
    problem = environment_problem(checked.environment)
    if problem is not None:  # pins and hints are written from it (see _environment.record)
        raise InvalidInput(f"values.environment: {problem}",
                           hint="record the environment Tether captures (capture_environment)")
    check_tags(checked.tags, what="values.tags")
    check_text(checked.notes, "values.notes")
    problem = lineage_problem(checked.lineage)
    if problem is not None:  # shown, and written into recipes (see _lineage_record)
        raise InvalidInput(f"values.lineage: {problem}",
                           hint="record the git state Tether captures")
    # Checked in pieces from the packed records (a set of a million digests was 150 MB).
    missing = registry.store.missing_of(f.chunks for f in checked.manifest)
    if missing:
        raise MissingChunks(
            f"{len(missing)} chunk(s) of this version are not in the store",
            hint="upload them first (the client does this); nothing was registered",
        )
    # Never trust a digest computed elsewhere. Sealed from the entries themselves (the
    # row stores them: repository.stored_parts).
    values = seal({**checked.to_dict(manifest=False), "manifest": checked.manifest})
    values["author"] = checked.author or registry.actor
    facts = facts_of(values)
    for attempt in range(_RACE_RETRIES):
        try:
            return _insert(registry, name, facts, bump, values, checked.manifest, record_with)
        except sa.exc.IntegrityError as error:
            # Two writers created the same model, or (PostgreSQL) numbered at once.
            if attempt == _RACE_RETRIES - 1:
                raise Conflict(
                    f"could not register {name}: other writers kept winning the race",
                    hint="retry; the bytes are stored, so a retry is cheap",
                ) from error
    raise AssertionError("unreachable")


def _insert(
    registry: Registry, name: str, facts: VersionFacts, bump: str | None, values: dict[str, Any],
    files: Sequence[FileEntry], record_with: RecordWith | None = None,
) -> ModelVersion:
    with registry.write() as conn:
        mid, _created = repo.ensure_model(conn, name)
        # Numbers are never reused: a deleted version keeps its seq and semver, as MLflow
        # keeps a deleted version's number, so the next ones count past it.
        # A few indexed queries, never every version: the cost of logging must not
        # grow with the number of versions a model has.
        for row in repo.live_versions_by_digest(
            conn, mid, versions.c.digest == values["digest"]
        ):
            if _row_facts(row).metadata == facts.metadata:
                if record_with is not None:
                    record_with(conn, row.id)
                return repo.row_to_version(
                    row, name, repo.aliases_by_version(conn, mid).get(row.id, [])
                )
        newest = repo.newest_live_version(conn, mid)
        previous = _row_facts(newest) if newest is not None else None
        level, reasons = required_bump(previous, facts)
        highest = repo.highest_semver(conn, mid)
        semver = resolve_bump(
            SemVer.parse(highest) if highest else None, level, bump, reasons
        )
        seq = repo.highest_seq(conn, mid) + 1
        row_values = dict(values)
        row_values.update(
            seq=seq,
            semver=str(semver),
            major=semver.major,
            minor=semver.minor,
            patch=semver.patch,
            created_at=now_iso(),
            status="ready",
        )
        vid = repo.insert_version(conn, mid, row_values)
        if record_with is not None:
            record_with(conn, vid)
        append_event(
            conn,
            actor=values["author"],
            action="version.logged",
            model=name,
            subject=f"{name}@{semver}",
            after={"seq": seq, "semver": str(semver), "digest": f"sha:{values['digest']}"},
            details={"bump_reasons": reasons, "files": len(values["manifest"])},
        )
        created = repo.version_by_id(conn, vid, files=False)
        assert created is not None
        return repo.row_to_version(created, name, files=files)
