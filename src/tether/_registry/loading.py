"""Loading a version: resolve, check the environment, verify every byte, deserialise."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._environment import Difference
from .._environment.policy import fix_command
from .._errors import (
    EnvironmentMismatch,
    IntegrityError,
    InvalidInput,
    LoadFailed,
    TetherError,
    UnsafeArtifact,
)
from .._identity import names_reserved
from .._records import ModelVersion
from .._store import handoffs
from .._warnings import warn_caller
from .env_check import choose_policy, enforce
from .trust import enforce_signatures

if TYPE_CHECKING:
    from .datasets import DatasetVersion
    from .registry import Registry


class DeprecatedVersionWarning(UserWarning):
    """A deprecated version was loaded."""


class CachedCopyChangedWarning(UserWarning):
    """A version's cached folder no longer matched its manifest: it was made again."""


def _yours(facts: os.stat_result) -> bool:
    """Owned by this user and not writable by everyone (group-writable is allowed: many
    systems give each user a group of their own)."""
    return facts.st_uid == os.geteuid() and not facts.st_mode & 0o002


def _differs(version: ModelVersion | DatasetVersion, folder: Path) -> str | None:
    """What in ``folder`` does not match ``version``'s files (None: every file is there,
    with its size and digest, and nothing else is). A file its seal vouches for is not
    hashed again (``cache_seal``); after a check that hashed any, the seal is renewed."""
    import stat

    from .._digest import file_digest
    from .cache_seal import Seal, write_seal

    if folder.is_symlink():
        return "the folder is a link"
    expected = {entry.path: entry for entry in version.files}
    found: dict[str, os.stat_result] = {}  # a regular file's facts, read once
    if not _yours(folder.lstat()):
        return "the folder is not yours alone to write"
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if "__pycache__" in rel.split("/")[:-1] and path.suffix == ".pyc":
            continue  # Python's own bytecode of the files: written by importing them
        facts = path.lstat()
        if not _yours(facts):
            # Someone else's folder or file, or one anyone may write: it matched when
            # checked and was changed after it was handed out (a review planted an honest
            # copy in a shared folder, then rewrote it).
            return f"{rel} is not yours alone to write"
        if stat.S_ISDIR(facts.st_mode):
            continue
        if not stat.S_ISREG(facts.st_mode) or rel not in expected:
            return f"{rel} is not one of its files"
        if facts.st_nlink > 1:
            # Tether writes each file once, unlinked: another name for it elsewhere lets
            # whoever holds that name change the bytes after this check.
            return f"{rel} is a hard link to a file elsewhere"
        found[rel] = facts
    seal = Seal(folder)
    hashed = False
    for rel, entry in expected.items():
        path = folder / rel
        held = found.get(rel)
        if held is None or held.st_size != entry.size:
            return f"{rel} is missing or has another size"
        if seal.vouches(rel, held):
            continue
        hashed = True
        if file_digest(path) != entry.digest:
            return f"{rel} does not match its digest"
    if hashed:
        write_seal(folder, {rel: found[rel] for rel in expected})
    return None


#: The shortest digest prefix ``expect`` takes: the 12 hex digits Tether shows. Four were
#: taken, and a version whose digest starts with any 4 given is 65,536 tries away (a
#: review made one in 2 s by varying its params, then promoted it).
MIN_EXPECTED_HEX = 12


def check_expected_digest(version: ModelVersion, expect: str) -> None:
    wanted = expect.lower().removeprefix("sha:")
    hint = (f"give at least {MIN_EXPECTED_HEX} hex digits of the digest (`tether show REF` "
            f"prints {version.short_digest}); the whole digest is safest")
    if any(c not in "0123456789abcdef" for c in wanted):
        raise InvalidInput(f"expect={expect[:80]!r} is not a digest (hex digits, after an "
                           "optional sha:)", hint=hint)
    if len(wanted) < MIN_EXPECTED_HEX:
        raise InvalidInput(f"expect={expect!r} is too short a pin to mean anything", hint=hint)
    if not version.digest.startswith(wanted):
        raise IntegrityError(
            f"{version.ref} has digest {version.short_digest}, not the expected {expect}",
            hint="the reference now points at other bytes; update the pin deliberately "
            "(e.g. `tether lock update`) if this change is wanted",
        )


def new_destination(dest: str | Path) -> Path:
    """``dest`` as an absolute path, refused (InvalidInput) when anything is there: a
    download writes a new folder, never into or over one (a dangling link too: it was
    replaced, a review)."""
    target = Path(dest)
    if os.path.lexists(target):
        raise InvalidInput(f"{target} already exists", hint="choose a new folder")
    return target.absolute()


@handoffs.during  # see tether/_store/handoffs.py
def materialize(
    registry: Registry, version: ModelVersion | DatasetVersion, dest: Path, *, progress: bool,
    keep_seal: bool = False,
) -> Path:
    """Write a model's or a dataset's version's files under ``dest`` (verified), atomically.

    A ``dest`` already there (the cached copy of a ``files`` version) is given again only
    once its files are checked against the manifest: it was given as it was, so a file
    its user (or anyone who can write the cache) changed or added after the first load
    came back from every later one, signed or not (a review). A copy that differs is
    made again, with a warning. ``keep_seal``: ``dest`` is a cached copy, checked at
    later loads; seal it (``cache_seal``) so they need not hash every byte again."""
    from .cache_seal import make_read_only, write_seal

    # Never into a folder a person or a tool then works in: a server made up a version
    # holding .git/config (core.fsmonitor) beside the honest files, and the next
    # `git status` in the download ran its command (a review). New versions cannot hold
    # such paths; one logged before the rule (or a server's word) is refused here.
    reserved = next((f.path for f in version.files if names_reserved(f.path)), None)
    if reserved is not None:
        raise UnsafeArtifact(
            f"{version.ref} holds {reserved!r}: Tether never writes a .git or .tether "
            "folder where files are handed out (git runs what such a config names)",
            hint="tether.load still loads a model of it (in a temporary folder); to hand "
            "out its files, log it again without that folder")
    stale: Path | None = None
    if dest.exists() or dest.is_symlink():
        problem = _differs(version, dest)
        if problem is None:
            return dest
        warn_caller(f"the cached copy of {version.ref} at {dest} was changed ({problem}); "
                    "it is made again from the store", CachedCopyChangedWarning)
        # Moved aside, not deleted under a process that may be reading it; removed once the
        # new copy is in its place.
        stale = dest.with_name(f"{dest.name}.stale-{os.getpid()}-{time.time_ns()}")
        try:
            dest.rename(stale)
        except FileNotFoundError:
            stale = None  # another process moved it aside first
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=dest.parent))
    try:
        # The folder is the copy kept: no second one in the chunk cache.
        registry.store.materialize(
            version.files, staging, label=version.ref, progress=progress, cache_chunks=False
        )
        if keep_seal:
            paths = [entry.path for entry in version.files]
            make_read_only(staging, paths)
            written = {rel: (staging / rel).lstat() for rel in paths}
        staging.rename(dest)
        if keep_seal:
            write_seal(dest, written)
    except OSError:
        # Another process materialised it first: theirs is as good as ours once it is
        # checked (anyone who can write dest's parent could have put a folder there while
        # this copy was written: it was handed out unchecked, a review).
        if not (dest.exists() or dest.is_symlink()):
            raise
        problem = _differs(version, dest)
        if problem is not None:
            raise IntegrityError(
                f"a folder appeared at {dest} while {version.ref} was written there, and "
                f"it is not that version ({problem}); not handed out",
                hint="someone else can write that folder: download somewhere only you "
                "can write, or remove it and try again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if stale is not None:
            if stale.is_symlink():
                stale.unlink()
            else:
                shutil.rmtree(stale, ignore_errors=True)
    return dest


@handoffs.during  # see tether/_store/handoffs.py
def load_version(
    registry: Registry,
    version: ModelVersion,
    *,
    expect: str | None = None,
    env_policy: str | None = None,
    trusted: bool = False,
    trusted_types: Sequence[str] = (),
    progress: bool = False,
    environment: dict[str, Any] | None = None,
) -> Any:
    if expect:
        check_expected_digest(version, expect)
    found = enforce(
        version, choose_policy(env_policy, registry.get_setting("env_policy")), environment
    )
    trust = registry.trust_facts(version)
    enforce_signatures(version, trust)
    # Trust comes from the caller or from a signature by a key trusted for loading;
    # never from scanning the artifact, and never from what its metadata says.
    trusted = trusted or registry.vouched_for_loading(version, trust) is not None
    if version.status == "deprecated" or trust["deprecated_by_policy"]:
        warn_caller(
            f"{version.ref} is deprecated; promote a newer version",
            DeprecatedVersionWarning,
        )
    from .. import _flavors as flavors  # the frameworks' modules: only to save or load

    flavor = flavors.get_flavor(version.flavor["name"])
    if version.flavor["name"] == "files":
        # The caller gets a path, so the files must outlive this call.
        target = registry.cache_dir / "versions" / version.digest
        return flavor.load(
            materialize(registry, version, target, progress=progress, keep_seal=True),
            version.flavor,
        )
    with tempfile.TemporaryDirectory(**registry.store.scratch_args("load")) as tmp:
        where = Path(tmp) / "model"
        registry.store.materialize(version.files, where, label=version.ref, progress=progress)
        try:
            return flavor.load(
                where, version.flavor, trusted=trusted, trusted_types=trusted_types
            )
        except TetherError:
            raise
        except Exception as error:
            if not found:
                # Whatever the framework raised at bytes it cannot read (a pickle stored
                # as model.json made xgboost raise UnicodeDecodeError, and serving printed
                # a traceback: a review) is said as what failed, and where.
                raise LoadFailed(
                    f"{version.ref} did not load with the {version.flavor['name']} flavor: "
                    f"{type(error).__name__}: {str(error)[:300]!r}",
                    hint="its bytes are the ones logged (their digests were checked): "
                    "look at them with `tether download REF FOLDER`, or log a version that "
                    "loads",
                ) from error
            # The policy let a difference through and the framework then failed: say which
            # differences most likely caused it, as the strict refusal would have.
            raise explain_failed_load(version, found, error) from error


def explain_failed_load(
    version: ModelVersion, found: list[Difference], error: Exception
) -> EnvironmentMismatch:
    likely = sorted(found, key=lambda d: (d.kind not in ("framework", "numpy", "python"), d.name))
    listing = "\n".join(f"  - {d}" for d in likely[:8])
    more = f"\n  - ... and {len(likely) - 8} more" if len(likely) > 8 else ""
    command = fix_command(found)
    return EnvironmentMismatch(
        f"loading {version.ref} failed inside its framework ({type(error).__name__}: "
        f"{str(error)[:300]}) after the environment check let these differences through:\n"
        f"{listing}{more}",
        hint=(f"most likely fix: {command}" if command else "match the recorded environment")
        + f"; see `tether env diff {version.ref}`",
    )
