"""`tether import dvc`: register what a DVC repository's pointers name as dataset versions.

Reads every ``*.dvc`` file and every ``dvc.lock`` (the outputs of its stages)
of a repository, and for each output finds the bytes by MD5 in the cache the
repository configures (``.dvc/config`` ``[cache] dir``, default ``.dvc/cache``;
DVC 3's ``files/md5/ab/cdef…`` layout, and DVC 2's ``ab/cdef…``), then in its
default remote when that is a local folder. A folder output (``….dir``) is
the JSON listing DVC keeps in the cache, each file found the same way. Every
file's MD5 is checked before it is added. Outputs kept in git
(``cache: false``) are skipped; running it again adds nothing new (the same
bytes are the same version). With ``write_pointers`` each output also gets a
``PATH.tether`` pointer beside it, so ``tether data pull`` replaces ``dvc pull``.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .._bounded_read import read_regular
from .._errors import InvalidInput, TetherError
from .._humanize import short_repr
from .._plain_yaml import plain_yaml
from .._store.blobs import owner_scratch, require_room
from .datasets_io import pointer_path, pointer_text, write_pointer

if TYPE_CHECKING:
    from .datasets_io import AnyRegistry


@dataclass
class DvcOut:
    """One output a ``.dvc`` file or a ``dvc.lock`` stage names."""

    source: str  # the .dvc file, or dvc.lock:STAGE, relative to the repository
    path: str  # the output's path, relative to the repository
    md5: str
    size: int | None
    cached: bool = True


@dataclass
class Imported:
    source: str
    path: str
    md5: str
    #: imported | unchanged | planned | skipped | missing | failed
    status: str
    dataset: str | None = None
    version: str | None = None
    digest: str | None = None
    files: int | None = None
    pointer: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: A ``.dvc`` file is a few lines; a ``dvc.lock`` a line or two per output of each stage.
_MAX_DVC_FILE = 16 * 1024 * 1024
#: The largest folder listing read (DVC writes one JSON line per file).
_MAX_LISTING = 1 << 30
#: What DVC writes as an object's name: an MD5, ``.dir`` for a folder's listing. Anything
#: else was used as a path into the cache (``../../home/you/.ssh/id_ed25519``: a review).
_MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")


def _small_file(path: Path, limit: int = _MAX_DVC_FILE) -> bytes:
    """A repository's own small file: a regular file, not a link, read no further than
    ``limit`` (``zero.dvc -> /dev/zero`` reported a size of 0 and was read until memory
    ran out; a link to ``~/.ssh/config`` was parsed and quoted: a review)."""
    return read_regular(path, limit, links=False, hint="DVC writes its files as plain files")


def _load_yaml(path: Path) -> Any:
    """A DVC file as plain data (no aliases: a hostile one expanded to gigabytes)."""
    try:
        return plain_yaml(_small_file(path).decode("utf-8"), str(path),
                          max_bytes=_MAX_DVC_FILE, max_depth=32)
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInput(f"cannot read {path}: {error}") from error


def _outs(items: Any, base: Path, repo: Path, source: str) -> list[DvcOut]:
    found = []
    for out in items if isinstance(items, list) else []:
        if not isinstance(out, dict) or "path" not in out:
            continue
        md5 = out.get("md5") or (out.get("hash") if out.get("hash") != "md5" else None)
        size = out.get("size")
        if not isinstance(out["path"], str) or not out["path"] or "\0" in out["path"]:
            raise InvalidInput(f"{source}: an output's path is not a file name: "
                               f"{short_repr(out['path'])}")
        if md5 is not None and not (isinstance(md5, str) and _MD5.fullmatch(md5)):
            raise InvalidInput(f"{source}: output {short_repr(out['path'])} has md5 "
                               f"{short_repr(md5)}, not an MD5 digest",
                               hint="DVC writes 32 hex digits (and .dir for a folder)")
        if size is not None and (type(size) is not int or size < 0):
            raise InvalidInput(f"{source}: output {short_repr(out['path'])} has size "
                               f"{short_repr(size)}, not a count of bytes")
        where = (base / out["path"]).resolve()
        if not where.is_relative_to(repo.resolve()) or where == repo.resolve():
            raise InvalidInput(f"{source} names an output outside the repository: "
                               f"{out['path']}", hint="DVC outputs are paths inside the repo")
        rel = where.relative_to(repo.resolve()).as_posix()
        found.append(DvcOut(source, rel, md5 or "", size,
                            cached=out.get("cache", True) is not False))
    return found


def find_outputs(repo: Path) -> list[DvcOut]:
    """Every output of the repository's ``.dvc`` files and ``dvc.lock`` stages."""
    found: list[DvcOut] = []
    for path in sorted(_walk(repo)):
        rel = path.relative_to(repo).as_posix()
        body = _load_yaml(path)
        if not isinstance(body, dict):
            continue
        if path.name == "dvc.lock":
            stages = body.get("stages")
            for stage, record in sorted((stages if isinstance(stages, dict) else {}).items(),
                                        key=lambda item: str(item[0])):
                if isinstance(record, dict):
                    found += _outs(record.get("outs"), path.parent, repo, f"{rel}:{stage}")
        else:
            wdir = body.get("wdir") or "."
            if not isinstance(wdir, str) or "\0" in wdir:
                raise InvalidInput(f"{rel}: wdir {short_repr(wdir)} is not a folder name")
            base = path.parent / wdir
            found += _outs(body.get("outs"), base, repo, rel)
    return found


def _walk(repo: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in (".git", ".dvc", ".tether")]
        found += [Path(folder) / f for f in files if f.endswith(".dvc") or f == "dvc.lock"]
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
    return found


def _config(repo: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    for name in ("config", "config.local"):
        path = repo / ".dvc" / name
        if not path.exists() and not path.is_symlink():
            continue
        try:
            parser.read_string(_small_file(path).decode("utf-8"), source=str(path))
        except (configparser.Error, UnicodeDecodeError, OSError) as error:
            raise InvalidInput(f"cannot read .dvc/{name}: {error}") from error
    return parser


def object_roots(repo: Path) -> list[Path]:
    """Where objects may be, in order: the cache, then a local default remote."""
    parser = _config(repo)
    dvc = repo / ".dvc"
    cache = parser.get("cache", "dir", fallback=None)
    roots = [(dvc / cache).resolve() if cache else dvc / "cache"]
    remote = parser.get("core", "remote", fallback=None)
    if remote:
        url = parser.get(f"'remote \"{remote}\"'", "url", fallback=None) or parser.get(
            f'remote "{remote}"', "url", fallback=None
        )
        if url and ("://" not in url or url.startswith("file://")):
            local = Path(url.removeprefix("file://")).expanduser()
            roots.append(local if local.is_absolute() else (dvc / local).resolve())
    return roots


def _object(roots: list[Path], md5: str) -> Path | None:
    for root in roots:
        for candidate in (root / "files" / "md5" / md5[:2] / md5[2:], root / md5[:2] / md5[2:]):
            if candidate.is_file():
                return candidate
    return None


def _copy_checked(source: Path, destination: Path, md5: str, size: int | None = None) -> None:
    """Copy ``source``, an object of the cache, to the new file ``destination``, refusing
    bytes whose MD5 is not ``md5`` or whose size is not the ``size`` the pointer claims.

    The object must be a regular file, not a link: a cache object linked to a file
    outside the repository was imported as a dataset, and a wrong md5's message quoted
    that file's MD5, so any readable file could be hashed (a review). Its size is
    checked before anything is copied: a 256 MB sparse object claimed as 3 bytes took
    256 MB of the disk (a review), and there must be room for it."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(source, flags)
    except OSError as error:
        raise InvalidInput(f"the cache object {source} cannot be read as a plain file: "
                           f"{error.strerror or error}",
                           hint="DVC keeps its cache objects as plain files") from None
    with os.fdopen(fd, "rb") as reader:
        info = os.fstat(reader.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"the cache object {source} is not a plain file",
                               hint="DVC keeps its cache objects as plain files")
        if size is not None and info.st_size != size:
            raise InvalidInput(f"the cache object {source} is {info.st_size} bytes; the "
                               f"pointer says {size}",
                               hint="the DVC cache is damaged: `dvc fetch` it again")
        destination.parent.mkdir(parents=True, exist_ok=True)
        require_room(info.st_size, destination.parent, str(source))
        digest = hashlib.md5(usedforsecurity=False)
        with destination.open("xb") as writer:  # never over a file written before
            while block := reader.read(1 << 20):
                digest.update(block)
                writer.write(block)
    if digest.hexdigest() != md5:
        raise InvalidInput(f"{source} does not hold the bytes of md5 {md5}",
                           hint="the DVC cache is corrupt: `dvc fetch` it again")


def _materialize(out: DvcOut, roots: list[Path], into: Path) -> tuple[Path, int]:
    """Write ``out``'s bytes under ``into``: (the file or folder to add, file count)."""
    name = PurePosixPath(out.path).name
    if not out.md5.endswith(".dir"):
        found = _object(roots, out.md5)
        if found is None:
            raise FileNotFoundError(f"md5 {out.md5} is in no cache ({_where(roots)})")
        _copy_checked(found, into / name, out.md5, out.size)
        return into / name, 1
    listing_file = _object(roots, out.md5)
    if listing_file is None:
        raise FileNotFoundError(f"the listing {out.md5} is in no cache ({_where(roots)})")
    try:
        raw = _small_file(listing_file, _MAX_LISTING)
        listing = json.loads(raw)
    except (OSError, ValueError, RecursionError) as error:
        raise InvalidInput(f"{listing_file} is not a DVC folder listing: "
                           f"{str(error)[:200]}") from None
    # The listing is an object of the cache like any other: its bytes hash to the md5 the
    # .dvc file names (one naming other files was imported under the folder's md5).
    if hashlib.md5(raw, usedforsecurity=False).hexdigest() != out.md5.removesuffix(".dir"):
        raise InvalidInput(f"the listing {listing_file} does not match its md5 {out.md5}",
                           hint="the DVC cache is damaged: `dvc fetch` it again")
    folder = into / name
    folder.mkdir(parents=True)
    if not isinstance(listing, list):
        raise InvalidInput(f"{listing_file} is not a DVC folder listing (not a list)")
    seen: set[PurePosixPath] = set()
    for item in listing:
        if not (isinstance(item, dict) and isinstance(item.get("relpath"), str)
                and isinstance(item.get("md5"), str) and _MD5.fullmatch(item["md5"])
                and not item["md5"].endswith(".dir")):
            raise InvalidInput(f"{listing_file} lists {short_repr(item)}, not a relpath "
                               "and the MD5 of a file")
        if "\0" in item["relpath"]:
            raise InvalidInput(f"{listing_file} lists {short_repr(item['relpath'])}, "
                               "not a file name")
        rel = PurePosixPath(item["relpath"])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel == PurePosixPath("."):
            raise InvalidInput(f"{listing_file} names a path outside the folder: {rel}")
        if rel in seen:
            raise InvalidInput(f"{listing_file} names {rel} twice",
                               hint="the DVC cache is damaged: `dvc fetch` it again")
        seen.add(rel)
        found = _object(roots, str(item["md5"]))
        if found is None:
            raise FileNotFoundError(
                f"{out.path}/{rel} (md5 {item['md5']}) is in no cache ({_where(roots)})"
            )
        size = item.get("size")
        _copy_checked(found, folder / rel, str(item["md5"]),
                      size if type(size) is int and size >= 0 else None)
    return folder, len(listing)


def _where(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def _dataset_names(outs: list[DvcOut]) -> dict[str, str]:
    """The output's file name, or its whole path where two outputs share a file name."""
    def slug(text: str) -> str:
        cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "data"
        return (cleaned if cleaned[0].isalnum() else f"d{cleaned}")[:128]

    # Counted after slugging: 'a b.csv' and 'a-b.csv' both became dataset a-b.csv, one
    # output's bytes a later version of the other's (a review).
    by_name = {o.path: slug(PurePosixPath(o.path).name) for o in outs}
    counts = Counter(by_name.values())
    names = {path: name if counts[name] == 1 else slug(path) for path, name in by_name.items()}
    counts = Counter(names.values())
    taken: Counter[str] = Counter()
    for path in sorted(names):  # whole paths that still meet: numbered, in path order
        if counts[names[path]] > 1:
            taken[names[path]] += 1
            suffix = f"-{taken[names[path]]}"
            names[path] = names[path][:128 - len(suffix)] + suffix
    return names


def import_dvc(
    registry: AnyRegistry, repo: str | Path = ".", *, dry_run: bool = False,
    write_pointers: bool = False,
) -> list[Imported]:
    root = Path(repo).expanduser().absolute()
    if not (root / ".dvc").is_dir():
        raise InvalidInput(f"{root} is not a DVC repository (no .dvc folder)",
                           hint="give the folder that holds .dvc/")
    if (root / ".dvc").is_symlink():
        # Its config was read through the link and quoted in an error: a .dvc linked to
        # ~/.ssh showed its config (a review). DVC makes .dvc a folder of the repository.
        raise InvalidInput(f"{root / '.dvc'} is a link, not the repository's own folder",
                           hint="give a repository whose .dvc is a plain folder")
    outs = find_outputs(root)
    roots = object_roots(root)
    names = _dataset_names([o for o in outs if o.cached])
    done = []
    for out in outs:
        report = Imported(out.source, out.path, out.md5, "planned", dataset=names.get(out.path))
        done.append(report)
        if not out.cached:
            report.status, report.error = "skipped", "cache: false (kept in git)"
            continue
        if not out.md5:
            report.status, report.error = "failed", "no md5 recorded (run `dvc commit`)"
            continue
        if dry_run:
            if _object(roots, out.md5) is None:
                report.status = "missing"
            continue
        # The store's scratch folder, named for this process (never /tmp; see import_mlflow).
        scratch = Path(tempfile.mkdtemp(**owner_scratch(registry.cache_dir, "dvc")))
        try:
            target, count = _materialize(out, roots, scratch)
            version = registry.add_dataset(
                target, names[out.path],
                notes=f"imported from DVC: {out.path} ({out.source}, md5 {out.md5})",
                tags={"dvc.path": out.path, "dvc.md5": out.md5},
            )
        except FileNotFoundError as error:
            report.status, report.error = "missing", str(error)
            continue
        except TetherError as error:
            report.status, report.error = "failed", error.message
            continue
        except (OSError, ValueError) as error:  # a listing naming a and a/b: this output
            report.status, report.error = "failed", f"{type(error).__name__}: {error}"
            continue
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        report.status = "imported" if version.bump_reasons else "unchanged"
        report.version, report.digest = version.semver, f"sha:{version.digest}"
        report.files = count
        if write_pointers:
            pointer = pointer_path(root / out.path)
            pointer.parent.mkdir(parents=True, exist_ok=True)
            kind = "folder" if out.md5.endswith(".dir") else "file"
            try:
                write_pointer(pointer, pointer_text(version, kind))
            except (TetherError, OSError) as error:  # the version stays; later outputs go on
                report.error = f"pointer not written: {getattr(error, 'message', error)}"
                continue
            report.pointer = pointer.relative_to(root).as_posix()
    return done
