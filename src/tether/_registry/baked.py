"""Versions baked into a container image, and proving them at start.

``tether build`` writes a version's verified files and its record into the
build context. At start, ``tether image serve`` re-hashes every baked file
against the record, re-hashes the record to its digest, compares that with the
digest the image was built for (``TETHER_BAKED_DIGEST``), and only then
registers the version in a private registry inside the container and serves
it. Anything else (a file changed in a layer, a record edited, an image built
for another version) is a refusal at start, naming what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._bounded_read import read_regular
from .._digest import file_digest
from .._errors import IntegrityError, InvalidInput
from .._identity import require_intact, seal
from .._metadata import repository as repo
from .._metadata.audit_log import append_event
from .._metadata.clock import now_iso
from .._records import ModelVersion
from .._semver import SemVer

if TYPE_CHECKING:
    from .registry import Registry

RECORD = "version.json"
FILES = "files"
#: The most of a baked record read (its manifest lists every chunk of every file).
MAX_RECORD = 1 << 30
#: The largest sequence number a registry stores (an INTEGER column).
_MAX_SEQ = 2**31 - 1

#: The record fields a baked version carries besides its files.
_VALUES = ("flavor", "signature", "input_example", "params", "metrics", "data", "lineage",
           "environment", "tags", "notes", "author")


def bake(registry: Registry, ref: str, folder: Path) -> ModelVersion:
    """Write ``ref``'s verified files and its record under ``folder``.

    Refused, as load and serve refuse it, when the model's policy requires a signature
    the version lacks: the image serves from a registry of its own, with no policy to
    ask, so this is the last place to ask (a review built and served an unsigned
    version under ``require_signed_by``)."""
    from .trust import enforce_signatures

    version = registry.get(ref)  # re-hashed to its digest on the way out
    enforce_signatures(version, registry.trust_facts(version))
    registry.download(version.ref, folder / FILES, progress=False)  # every byte verified
    (folder / RECORD).write_text(json.dumps(version.to_dict(), indent=2, sort_keys=True) + "\n")
    return version


def record_digest(folder: Path) -> str:
    """``sha:`` and the BLAKE3 of the baked record's bytes: what pins the fields the
    version's digest does not cover (name, semantic version, tags, environment...)."""
    return f"sha:{file_digest(folder / RECORD)}"


def _whole_digest(value: str, what: str, hint: str) -> str:
    want = value.strip().lower().removeprefix("sha:")
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        # A prefix would pin less than the digest does (and 'sha:42e6c3b2aee8' was
        # refused as "not the sha:42e6c3b2aee8 it was built for").
        raise InvalidInput(f"{what} must be whole: sha: and 64 hex digits, not {value!r}",
                           hint=hint)
    return want


def _record_bytes(folder: Path, expected_record: str | None) -> bytes:
    """The record's bytes: a regular file of at most MAX_RECORD bytes (a link to
    /dev/zero was read until memory ran out, a named pipe hung the start: a review),
    hashing to ``expected_record`` when given."""
    path = folder / RECORD
    if not path.exists():
        raise InvalidInput(
            f"{folder} holds no baked version ({RECORD} is missing)",
            hint="build the image with `tether build REF -t IMAGE`",
        )
    data = read_regular(path, MAX_RECORD, error=IntegrityError,
                        hint="rebuild the image with `tether build`")
    if expected_record is not None:
        want = _whole_digest(expected_record, "the record digest to expect",
                             "`tether build` sets TETHER_BAKED_RECORD to it")
        import blake3

        if blake3.blake3(data).hexdigest() != want:
            raise IntegrityError(
                f"the baked record {path} is not the one the image was built with: edited "
                "since (its name, version, tags or environment are not what was built)",
                hint="rebuild the image with `tether build`; never edit a baked version")
    return data


def read_baked(folder: Path, expected: str | None,
               expected_record: str | None = None) -> ModelVersion:
    """The baked version, once every file and the record hash to ``expected`` (the
    version's digest) and the record's bytes to ``expected_record`` (``record_digest``:
    the version's digest leaves out its name, semantic version, tags, environment and
    the rest, which an edited record changed at will while ``expected`` still held)."""
    data = _record_bytes(folder, expected_record)
    try:
        record = json.loads(data)
        version = ModelVersion.from_dict(record)
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise IntegrityError(f"the baked record in {folder} is unreadable: "
                             f"{str(error)[:200]}") from None
    if not 1 <= version.seq <= _MAX_SEQ:
        raise IntegrityError(f"the baked record in {folder} has sequence number "
                             f"{version.seq}, beyond any registry's")
    require_intact(version)  # the record's manifest hashes to its own digest
    want = None if expected is None else _whole_digest(
        expected, "the digest to expect", f"`tether show {version.ref} --json` gives it; "
        "`tether build` sets TETHER_BAKED_DIGEST to it")
    if want is not None and version.digest != want:
        raise IntegrityError(
            f"this image carries {version.ref} (sha:{version.digest[:12]}), not the "
            f"{str(expected)[:16]} it was built for",
            hint="rebuild the image with `tether build`; never edit a baked version",
        )
    for entry in version.files:
        path = folder / FILES / entry.path
        if not path.is_file() or path.stat().st_size != entry.size:
            raise IntegrityError(
                f"baked file {entry.path} of {version.ref} is missing or has the wrong size",
                hint="rebuild the image with `tether build`",
            )
        if file_digest(path) != entry.digest:
            raise IntegrityError(
                f"baked file {entry.path} of {version.ref} does not match its digest",
                hint="a layer changed it after the build; rebuild the image with `tether build`",
            )
    return version


def register_baked(registry: Registry, version: ModelVersion, folder: Path) -> ModelVersion:
    """Record a proven baked version in a (private) registry with its own identities.

    The files are stored again; the same bytes cut the same way give the same
    chunk lists, so the re-sealed digest must be the recorded one.
    """
    files_dir = folder / FILES
    report = registry.store.ingest(files_dir, [f.path for f in version.files])
    values: dict[str, Any] = {key: getattr(version, key) for key in _VALUES}
    values["manifest"] = [f.to_dict() for f in sorted(report.files, key=lambda f: f.path)]
    sealed = seal(values)
    if sealed["digest"] != version.digest:
        raise IntegrityError(
            f"the baked files of {version.ref} store as sha:{sealed['digest'][:12]}, "
            f"not sha:{version.digest[:12]}",
            hint="this Tether cuts chunks differently from the one that built the image: "
            "rebuild the image with this Tether",
        )
    semver = SemVer.parse(version.semver)
    with registry.write() as conn:
        mid, _ = repo.ensure_model(conn, version.name)
        row_values = dict(sealed)
        row_values.update(
            seq=version.seq, semver=version.semver, major=semver.major, minor=semver.minor,
            patch=semver.patch, created_at=now_iso(), status="ready",
        )
        repo.insert_version(conn, mid, row_values)
        append_event(
            conn, actor=registry.actor, action="version.baked", model=version.name,
            subject=version.ref, after={"digest": f"sha:{version.digest}"},
            details={"source": str(folder)},
        )
    registry.store.release_pin(report.pin)
    return registry.get(f"{version.name}@sha:{version.digest}")


#: In an ``image serve`` private registry: the file its server holds locked while it runs.
OWNER = ".owner"


def hold_baked(scratch: Path) -> Any:
    """Lock ``scratch`` as this server's for as long as the returned file stays open
    (``clear_dead_baked`` of another process, in this container or another sharing the
    volume, then leaves it alone: a PID says nothing across PID namespaces)."""
    import fcntl

    handle = (scratch / OWNER).open("wb")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    return handle


def clear_dead_baked(home: Path) -> None:
    """Remove the private registries of ``image serve`` processes that are gone
    (``baked-PID-*``: a process killed never removed its own). Called before this
    process makes its own, so one named with this process's id is a predecessor's: in a
    container every start is the same PID, on the same cache volume."""
    import fcntl
    import os
    import shutil

    from .._store.locking import pid_gone

    for leftover in home.glob("baked-*"):
        owner = leftover / OWNER
        if owner.exists():  # its server holds a lock on it while it runs, wherever it runs
            try:
                with owner.open("rb") as handle:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: alive (another container on the same volume, say)
            shutil.rmtree(leftover, ignore_errors=True)
            continue
        pid = leftover.name.split("-")[1] if leftover.name.count("-") >= 2 else ""
        if not pid.isdigit():
            continue
        if int(pid) == os.getpid() or pid_gone(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
