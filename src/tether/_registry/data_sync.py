"""`tether data push` / `pull`: every pointer of a git work tree against the registry.

A pointer (``PATH.tether``, written by ``tether data track``) names a dataset
version by digest. ``push`` looks at each tracked path in the work tree: when
its bytes are no longer the ones the pointer names, it adds them as the next
version of that dataset and rewrites the pointer (for git to commit). ``pull``
does the reverse: every tracked path that is missing or holds other bytes is
written from the version its pointer names, each byte verified; paths that
already hold those bytes are left alone (re-hashed, not trusted by date).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import InvalidInput, NotFound, TetherError
from .._identity import names_reserved
from .data_held import holding, holds_for, last_held
from .datasets_io import (
    POINTER_SUFFIX,
    _holds,
    checkout,
    hashing_once,
    pointed_version,
    pointer_text,
    read_pointer_file,
    tracked_items,
    write_pointer,
)

if TYPE_CHECKING:
    from .datasets import DatasetVersion
    from .datasets_io import AnyRegistry


@dataclass
class Synced:
    """What push or pull did with one pointer."""

    path: str  # the tracked path, relative to the work tree's top
    dataset: str
    version: str  # the semver the pointer names after the command
    digest: str
    #: pushed | pulled | up-to-date | missing (push: nothing in the tree) | failed
    status: str
    previous: str | None = None  # push: the version the pointer named before
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def work_tree(start: str | Path | None = None) -> Path:
    where = Path(start or Path.cwd()).absolute()
    result = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=where,
                            capture_output=True, check=False, timeout=60)
    if result.returncode != 0:
        raise InvalidInput(f"{where} is not inside a git work tree",
                           hint="run it inside the repository whose pointers to use")
    return Path(result.stdout.decode().strip())


def pointers(top: Path, only: list[Path] | None = None) -> list[Path]:
    """The ``*.tether`` pointers git knows at the current revision (plus new, unignored ones).

    ``only``: keep the pointers of these paths or of paths under them.
    """
    result = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
         f"*{POINTER_SUFFIX}"],
        cwd=top, capture_output=True, check=False, timeout=300,
    )
    if result.returncode != 0:
        raise InvalidInput(f"git ls-files failed in {top}: {result.stderr.decode().strip()}")
    found = sorted({top / name for name in result.stdout.decode().split("\0") if name})
    found = [p for p in found if p.is_file()]  # deleted in the tree, not yet committed
    if only:
        wanted = [p.absolute() for p in only]
        found = [
            p for p in found
            if any(_tracked(p) == w or w in _tracked(p).parents for w in wanted)
        ]
    return found


def _tracked(pointer: Path) -> Path:
    return pointer.with_name(pointer.name.removesuffix(POINTER_SUFFIX))


def holds(target: Path, version: DatasetVersion, kind: str) -> bool:
    """Whether ``target`` holds exactly ``version``'s bytes (every file re-hashed)."""
    if kind == "file":
        return len(version.files) == 1 and _holds(target, version.files[0])
    if not target.is_dir() or target.is_symlink():
        return False
    wanted = {entry.path for entry in version.files}
    for item, rel in tracked_items(target):
        if (item.is_file() or item.is_symlink()) and rel not in wanted:
            return False
    return all(_holds(target / entry.path, entry) for entry in version.files)


def _entry(top: Path, pointer_file: Path) -> tuple[Path, str, dict[str, Any]]:
    """(tracked path, its path from the top, the pointer) of one pointer file, refused
    (InvalidInput) unless the tracked path is a path of the work tree.

    A pointer is a file of the repository, so whoever committed it chose its name: a
    pointer ``...tether`` tracked ``..`` (pull replaced the folder above the clone with
    a dataset, push uploaded it, private keys and all), and ``.git.tether`` tracked the
    repository's own ``.git`` (a hook in it then ran on the next git command).
    """
    rel = _tracked(pointer_file).relative_to(top)
    name = pointer_file.name.removesuffix(POINTER_SUFFIX)
    problem = None
    if pointer_file.is_symlink():
        problem = "the pointer is a symbolic link"
    elif name in ("", ".", "..") or any(part in ("", ".", "..") for part in rel.parts):
        problem = f"it would track {name or '(nothing)'!r}, not a path in the work tree"
    elif names_reserved(rel.as_posix()):  # git's and Tether's own folders
        problem = "it would track a path inside .git or .tether"
    else:
        # A folder on the way that is a symbolic link could lead out of the work tree;
        # so could the tracked path itself (a review: a committed `key -> ~/.ssh/id_ed25519`
        # beside `key.tether`, and `tether data push` uploaded the private key).
        inside = (top / rel.parent).resolve()
        tracked = top / rel
        if inside != top.resolve() and top.resolve() not in inside.parents:
            problem = "a folder on its path leads out of the work tree"
        elif tracked.is_symlink() and top.resolve() not in tracked.resolve().parents:
            problem = ("the tracked path is a symbolic link out of the work tree (if you made "
                       "it, add the data from where it is: tether data add REAL_PATH)")
        elif tracked.is_symlink() and names_reserved(
                tracked.resolve().relative_to(top.resolve()).as_posix()):
            # `conf -> .git/config` pushed the remote's credentials (a review).
            problem = "the tracked path is a symbolic link into .git or .tether"
    if problem:
        raise InvalidInput(f"pointer {pointer_file.relative_to(top).as_posix()} refused: {problem}",
                           hint="a pointer names the file or folder beside it; remove this one")
    pointer = read_pointer_file(pointer_file)
    target = top / rel
    return target, rel.as_posix(), pointer


def _entries(top: Path, only: list[Path] | None, done: list[Synced],
             ) -> Iterator[tuple[Path, Path, str, dict[str, Any]]]:
    """(pointer file, tracked path, its path from the top, the pointer) of each pointer
    of the work tree (or of ``only``); one refused (``_entry``) is reported in ``done``."""
    for pointer_file in pointers(top, only):
        try:
            target, rel, pointer = _entry(top, pointer_file)
        except TetherError as error:
            done.append(_refused(pointer_file, top, error))
            continue
        yield pointer_file, target, rel, pointer


def _refused(pointer_file: Path, top: Path, error: TetherError) -> Synced:
    rel = pointer_file.relative_to(top).as_posix().removesuffix(POINTER_SUFFIX)
    return Synced(rel, "?", "?", "?", "failed", error=error.message)


def _known(registry: AnyRegistry, pointer: dict[str, Any]) -> DatasetVersion | None:
    try:
        return pointed_version(registry, pointer)
    except NotFound:
        return None


def push(
    registry: AnyRegistry, start: str | Path | None = None, *, only: list[Path] | None = None,
    notes: str = "", adopt: bool = False,
) -> list[Synced]:
    """Add the tracked paths whose bytes differ from their pointer; rewrite those pointers.

    Only paths this clone holds as its own (``data_held``: tracked, pulled, checked
    out or pushed here) are added; ``adopt`` adds the paths of ``only`` too, and holds
    them from then on."""
    if adopt and not only:
        raise InvalidInput("--adopt takes the paths to adopt",
                           hint="tether data push --adopt PATH [PATH...]: each one's bytes are "
                           "yours to add to the dataset its pointer names")
    top = work_tree(start)
    done: list[Synced] = []
    with holding(top) as (own, kept):
        for pointer_file, target, rel, pointer in _entries(top, only, done):
            kind = str(pointer.get("kind") or ("folder" if target.is_dir() else "file"))
            named = str(pointer.get("version") or "?")
            if not target.exists():
                done.append(Synced(rel, pointer["dataset"], named, str(pointer["digest"]),
                                   "missing"))
                continue
            current = _known(registry, pointer)
            if current is not None and holds(target, current, kind):
                kept.append((rel, current.name, f"sha:{current.digest}"))  # nothing of yours
                done.append(Synced(rel, current.name, current.semver, f"sha:{current.digest}",
                                   "up-to-date"))
                continue
            dataset = str(pointer["dataset"])
            if target.is_symlink():
                # A held path git replaced with a committed link to .env pushed the .env.
                done.append(Synced(
                    rel, dataset, named, str(pointer["digest"]), "failed",
                    error=f"{rel} is a symbolic link: push adds a path's own bytes, never a "
                    "link's (a commit can point a link at any file of yours). Track the "
                    "data where it is, or replace the link with the file"))
                continue
            if not holds_for(own, rel, dataset) and not adopt:
                why = (f"{rel} is this clone's for dataset {own[rel]}, and its pointer now names "
                       f"{dataset}" if rel in own else
                       f"{rel} was never tracked, pulled or checked out in this clone: its "
                       "pointer came with the repository, and the bytes beside it are not the "
                       "version it names (a committed .env.tether would have your .env pushed)")
                done.append(Synced(
                    rel, dataset, named, str(pointer["digest"]), "failed",
                    error=f"{why}. Run `tether data checkout {rel}` to replace them with that "
                    f"version, or `tether data push --adopt {rel}` to add your bytes"))
                continue
            try:
                added = registry.add_dataset(target, str(pointer["dataset"]), notes=notes)
            except TetherError as error:
                done.append(Synced(rel, pointer["dataset"], named, str(pointer["digest"]),
                                   "failed", error=error.message))
                continue
            write_pointer(pointer_file, pointer_text(added, kind))
            kept.append((rel, added.name, f"sha:{added.digest}"))
            done.append(Synced(rel, added.name, added.semver, f"sha:{added.digest}", "pushed",
                               previous=named))
    return done


def pull(
    registry: AnyRegistry, start: str | Path | None = None, *, only: list[Path] | None = None,
    force: bool = False,
) -> list[Synced]:
    """Write every missing or stale tracked path from the version its pointer names.

    A path that is there and not this clone's own (``data_held``) is left alone: a
    commit adding ``.venv.tether`` had pull replace a git-ignored ``.venv`` nobody
    tracked (a review). ``tether data checkout PATH`` replaces it on purpose.

    Nor is one of this clone's own that holds work no version has: changed since it was
    last tracked, pulled, checked out or pushed here. Pull had reverted such edits and
    deleted new files without a word (a review); ``force`` replaces them."""
    top = work_tree(start)
    done: list[Synced] = []
    last = last_held(top)
    with holding(top) as (own, kept), hashing_once():
        for _pointer_file, target, rel, pointer in _entries(top, only, done):
            kind = str(pointer.get("kind") or "file")
            try:
                version = pointed_version(registry, pointer)
                if holds(target, version, kind):
                    kept.append((rel, version.name, f"sha:{version.digest}"))
                    done.append(Synced(rel, version.name, version.semver,
                                       f"sha:{version.digest}", "up-to-date"))
                    continue
                if ((target.exists() or target.is_symlink())
                        and not holds_for(own, rel, version.name)):
                    raise InvalidInput(
                        f"{rel} is there and is not this clone's: never tracked, pulled or "
                        "checked out here" + (f" for dataset {version.name}" if rel in own
                                              else "") + "; pull leaves it alone (move it "
                        f"away and pull again, or replace it: tether data checkout {rel})")
                if not force and (target.exists() or target.is_symlink()):
                    _refuse_unpushed(registry, target, rel, version.name, kind, last.get(rel))
                checkout(registry, target, hold=False)
                kept.append((rel, version.name, f"sha:{version.digest}"))
            except TetherError as error:
                done.append(Synced(rel, str(pointer["dataset"]),
                                   str(pointer.get("version") or "?"), str(pointer["digest"]),
                                   "failed", error=error.message))
                continue
            done.append(Synced(rel, version.name, version.semver, f"sha:{version.digest}",
                               "pulled"))
    return done


def _refuse_unpushed(registry: AnyRegistry, target: Path, rel: str, dataset: str, kind: str,
                     digest: str | None) -> None:
    """InvalidInput when ``target`` no longer holds the version it last held here
    (``digest``): its changes are in no version, and pulling would lose them. A path
    whose record predates digests is not judged (nothing to judge it by)."""
    if digest is None:
        return
    try:
        before = pointed_version(registry, {"dataset": dataset, "digest": digest})
    except TetherError:
        # Gone from this registry (or never in it): nothing to tell changes by, and
        # saying "edited" would be a guess. Left alone all the same.
        raise InvalidInput(
            f"{rel} last held {dataset} {digest[:16]}, which this registry does not have, "
            "so whether it holds changes of yours cannot be told; pull leaves it alone",
            hint=f"push it first (tether data push {rel}), or replace it: "
            f"tether data pull --force {rel}") from None
    if not _would_lose(target, before, kind):
        return
    raise InvalidInput(
        f"{rel} has changes no version holds: edited since it was last tracked, pulled "
        "or pushed here; pull would lose them",
        hint=f"push them first (tether data push {rel}), or replace them: "
        f"tether data pull --force {rel}")


def _would_lose(target: Path, before: DatasetVersion, kind: str) -> bool:
    """Whether replacing ``target`` loses bytes of a file that ``before`` lacks: a file
    edited or added since. Links are not the path's own bytes (replacing one removes
    the link, never what it points at), nor are pointers and .gitignore files (kept)."""
    if target.is_symlink():
        return False
    if kind == "file":
        return target.exists() and not (len(before.files) == 1
                                        and _holds(target, before.files[0]))
    entries = {entry.path: entry for entry in before.files}
    for item, rel in tracked_items(target):
        if item.is_symlink() or not item.is_file() or item.name.endswith(POINTER_SUFFIX) \
                or item.name == ".gitignore":
            continue
        entry = entries.get(rel)
        if entry is None or not _holds(item, entry):
            return True
    return False
