"""Reading datasets back: a streaming file, the ``tether://`` filesystem, git pointers.

``open_file`` returns a read-only, seekable binary file over one file of a
dataset version. It reads through the chunk index: a read fetches only the
chunks it covers (one ranged read per run of chunks stored back to back, a
ranged GET on S3), sequential reads fetch ahead, and every chunk is checked
against its BLAKE3 digest before a byte of it is returned. Nothing is
downloaded first, and memory stays bounded whatever the file's size.

Pointer files (``PATH.tether``, written by ``tether data track``) let git
carry a dataset reference while the bytes stay in the registry:
``open_tracked("data/train.csv", repo=..., rev="v2")`` reads the pointer as it
was at that revision, the way ``dvc.api.open`` does, and streams the bytes
it names.
"""

from __future__ import annotations

import array
import atexit
import bisect
import contextlib
import io
import itertools
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, TypeAlias

import yaml

from .._errors import InvalidInput, NotFound
from .._humanize import short_repr
from .._identity import names_reserved
from .._store.base import FileEntry
from .._store.blobs import owner_scratch, user_cache_dir
from .._store.chunkstore import ChunkStore
from .._store.handoffs import prompt_handoffs
from .._store.locking import pid_gone
from . import reads
from .data_held import hold_path
from .datasets import DatasetVersion

if TYPE_CHECKING:
    from ..remote import RemoteRegistry
    from .registry import Registry

    #: Embedded or a client of a server: both read datasets through their chunk store.
    AnyRegistry: TypeAlias = Registry | RemoteRegistry

#: Most bytes one sequential read-ahead fetches.
_READ_AHEAD = 8 * 1024 * 1024
#: Decoded chunks kept per open file.
_CACHE_BYTES = 32 * 1024 * 1024
POINTER_SUFFIX = ".tether"


class ChunkedReader(io.RawIOBase):
    """The bytes of one stored file, fetched chunk by chunk on demand."""

    def __init__(
        self,
        store: ChunkStore,
        entry: FileEntry,
        *,
        label: str,
        on_close: Callable[[], None] | None = None,
        read_ahead: int = _READ_AHEAD,
    ) -> None:
        super().__init__()
        self._read_ahead = read_ahead
        self._store = store
        self.entry = entry
        self.name = entry.path
        self._what = f"{entry.path} of {label}"
        # Where each chunk starts, 8 bytes a chunk (a list of ints was 40 MB for the
        # million chunks of a 70 GB file opened to read a few tensors).
        self._starts: array.array[int] = array.array(
            "q", itertools.accumulate(entry.chunks.sizes(), initial=0))
        position = self._starts.pop()
        if position != entry.size:
            raise InvalidInput(f"the chunks of {self._what} do not add up to its size")
        self._pos = 0
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._last = -2
        #: Where a ``read_range`` ends: read-ahead stops there (None: reading a stream).
        self._range_end: int | None = None
        self._on_close = on_close
        #: Bytes fetched from the store (including read-ahead), for tests and benches.
        self.fetched_bytes = 0

    @property
    def size(self) -> int:
        return self.entry.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self.entry.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise OSError(f"negative seek position {target}")
        self._pos = target
        return target

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("read of a closed file")
        view = memoryview(buffer).cast("B")
        if self._pos >= self.entry.size or not len(view):
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        data = self._chunk(index)
        start = self._pos - self._starts[index]
        count = min(len(view), len(data) - start)
        view[:count] = data[start : start + count]
        self._pos += count
        return count

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive), leaving the position alone; a range
        past the end is cut to the file. A negative, reversed or non-integer range is
        refused (``(-100, 10)`` quietly read from 0, ``(10, 5)`` read nothing: a review)."""
        if type(start) is not int or type(end) is not int or not 0 <= start <= end:
            raise InvalidInput(f"range {short_repr(start)}..{short_repr(end)} of {self._what} "
                               "is not two byte offsets with 0 <= start <= end")
        saved = self._pos
        # A range that crosses a chunk boundary reads its second chunk right after the
        # first: that looked sequential and fetched 8 MB ahead for a 4 KB range.
        self._range_end = end
        try:
            self._pos = max(start, 0)
            out = bytearray()
            while self._pos < min(end, self.entry.size):
                piece = self.read(min(end, self.entry.size) - self._pos)
                if not piece:
                    break
                out += piece
            return bytes(out)
        finally:
            self._pos, self._range_end = saved, None

    def _chunk(self, index: int) -> bytes:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            self._last = index
            return cached
        # Sequential reading fetches ahead; a jump fetches just what it needs.
        chunks = self.entry.chunks
        stop = index + 1
        if index == self._last + 1:
            budget = chunks[index].size
            while stop < len(chunks) and budget + chunks[stop].size <= self._read_ahead:
                if stop in self._cache or (self._range_end is not None
                                           and self._starts[stop] >= self._range_end):
                    break
                budget += chunks[stop].size
                stop += 1
        wanted = chunks[index:stop]
        with prompt_handoffs():  # beside a busy thread (see tether/_store/handoffs.py)
            for run in self._store._runs(wanted, what=self._what):
                pieces = self._store._read_run([wanted[i] for i in run], what=self._what)
                for i, data in zip(run, pieces, strict=True):
                    self._remember(index + i, data)
                    self.fetched_bytes += len(data)
        self._last = index
        return self._cache[index]

    def _remember(self, index: int, data: bytes) -> None:
        if index in self._cache:
            return
        self._cache[index] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > _CACHE_BYTES and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= len(dropped)

    def close(self) -> None:
        if not self.closed:
            self._cache.clear()
            callback, self._on_close = self._on_close, None
            super().close()
            if callback is not None:
                callback()


class StoredFile(io.BufferedReader):
    """A read-only, seekable binary file of one file of a stored version.

    Reads fetch only the chunks they cover and verify each; ``version`` is the
    dataset or model version the file belongs to.
    """

    raw: ChunkedReader

    def __init__(self, raw: ChunkedReader, version: Any) -> None:
        super().__init__(raw, buffer_size=256 * 1024)
        self.version = version

    @property
    def size(self) -> int:
        return self.raw.size

    @property
    def digest(self) -> str:
        """BLAKE3 of the file's bytes, as recorded in the version's manifest."""
        return self.raw.entry.digest

    @property
    def fetched_bytes(self) -> int:
        """Bytes fetched from the store so far (read-ahead included)."""
        return self.raw.fetched_bytes

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of the file; the position is unchanged."""
        return self.raw.read_range(start, end)


class DatasetFile(StoredFile):
    """A file of a dataset version (what ``open_file`` gives)."""

    version: DatasetVersion


def open_file(
    registry: AnyRegistry,
    ref: str | DatasetVersion,
    path: str,
    *,
    on_close: Callable[[], None] | None = None,
) -> DatasetFile:
    """A streaming file over ``path`` in the dataset version ``ref``."""
    version = ref if isinstance(ref, DatasetVersion) else registry.get_dataset(ref)
    entry = version.file(path)
    store = registry.store
    if not isinstance(store, ChunkStore):  # pragma: no cover - every store is a ChunkStore
        raise InvalidInput(f"the store {store.url} cannot stream files")
    raw = ChunkedReader(store, entry, label=f"dataset {version.ref}", on_close=on_close)
    reads.note(version)  # lineage: later log_model calls in this process link it
    return DatasetFile(raw, version)


def text_or_binary(handle: DatasetFile, mode: str, encoding: str | None) -> IO[Any]:
    if mode in ("rb", "br"):
        return handle
    if mode in ("r", "rt", "tr"):
        return io.TextIOWrapper(handle, encoding=encoding or "utf-8", newline=None)
    raise InvalidInput(f"mode {mode!r} is not a reading mode",
                       hint="datasets are read-only: use 'rb' or 'r'")


def open_registry(uri: str | Path | None, *, token: str | None = None) -> AnyRegistry:
    """The registry at ``uri`` (a folder, a database URL or a server's ``http(s)://`` URL;
    None: ``TETHER_URI``, else the nearest ``.tether``)."""
    target = uri if uri is not None else os.environ.get("TETHER_URI")
    if target is not None and str(target).startswith(("http://", "https://")):
        from ..remote import connect

        return connect(str(target), token=token)
    from .registry import Registry

    return Registry.open(uri)


# -- the tether:// filesystem ---------------------------------------------------------


def split_path(path: str) -> tuple[str, str]:
    """``"ds@production/train/a.csv"`` -> ``("ds@production", "train/a.csv")``."""
    text = path.removeprefix("tether://").strip("/")
    ref, _, inner = text.partition("/")
    if not ref:
        raise InvalidInput("a tether:// path starts with a dataset reference",
                           hint="tether://NAME@ALIAS/path/in/dataset.csv")
    return ref, inner.strip("/")


def _children(version: DatasetVersion, prefix: str) -> tuple[list[FileEntry], set[str]]:
    """Files directly in folder ``prefix`` of ``version`` and its sub-folder names."""
    files: list[FileEntry] = []
    folders: set[str] = set()
    lead = f"{prefix}/" if prefix else ""
    for entry in version.files:
        if not entry.path.startswith(lead):
            continue
        rest = entry.path[len(lead) :]
        head, sep, _ = rest.partition("/")
        if sep:
            folders.add(head)
        else:
            files.append(entry)
    return files, folders


try:  # fsspec is a dependency, but a missing one must not break `import tether`
    from fsspec import AbstractFileSystem as _FsBase
except ImportError:  # pragma: no cover
    _FsBase = object


class TetherFileSystem(_FsBase):  # type: ignore[misc,valid-type]
    """fsspec filesystem for ``tether://NAME@REF/path``: read-only, streaming.

    ``pandas.read_csv("tether://ds@production/train.csv")`` and
    ``pyarrow.dataset.dataset("ds@2/parts", filesystem=TetherFileSystem())``
    work through it. ``registry=`` (a storage option) names the registry, a
    folder or a server URL (``token=``, else ``TETHER_TOKEN``); default:
    ``TETHER_URI``, else the nearest ``.tether``. Against a server, chunks come
    by ranged reads through its blob gateway (presigned straight from S3). A
    reference is resolved again after ``cache_seconds``, so an alias move is seen.
    """

    protocol = "tether"
    root_marker = ""

    def __init__(
        self, registry: str | None = None, cache_seconds: float = 2.0,
        token: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._registry_uri = registry
        self._token = token
        self._registry: AnyRegistry | None = None
        self._cache_seconds = cache_seconds
        self._versions: dict[str, tuple[float, DatasetVersion]] = {}
        self._lock = threading.Lock()

    @property
    def registry(self) -> AnyRegistry:
        with self._lock:
            if self._registry is None:
                self._registry = open_registry(self._registry_uri, token=self._token)
            return self._registry

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return str(path).removeprefix("tether://").strip("/")

    def _version(self, ref: str) -> DatasetVersion:
        now = time.monotonic()
        hit = self._versions.get(ref)
        if hit is not None and now - hit[0] < self._cache_seconds:
            return hit[1]
        try:
            version = self.registry.get_dataset(ref)
        except NotFound as error:
            raise FileNotFoundError(f"tether://{ref}: {error.message}") from error
        self._versions[ref] = (now, version)
        return version

    def invalidate_cache(self, path: str | None = None) -> None:
        self._versions.clear()

    def _file_info(self, ref: str, entry: FileEntry) -> dict[str, Any]:
        return {"name": f"{ref}/{entry.path}", "size": entry.size, "type": "file",
                "digest": entry.digest}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        ref, inner = split_path(self._strip_protocol(path))
        version = self._version(ref)
        if not inner:
            return {"name": ref, "size": 0, "type": "directory"}
        for entry in version.files:
            if entry.path == inner:
                return self._file_info(ref, entry)
        if any(entry.path.startswith(inner + "/") for entry in version.files):
            return {"name": f"{ref}/{inner}", "size": 0, "type": "directory"}
        raise FileNotFoundError(f"tether://{ref}/{inner}: no such file in {version.ref}")

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        ref, inner = split_path(self._strip_protocol(path))
        version = self._version(ref)
        info = self.info(path)
        if info["type"] == "file":
            return [info] if detail else [info["name"]]
        files, folders = _children(version, inner)
        base = f"{ref}/{inner}" if inner else ref
        found = [self._file_info(ref, f) for f in files] + [
            {"name": f"{base}/{d}", "size": 0, "type": "directory"} for d in sorted(folders)
        ]
        found.sort(key=lambda item: item["name"])
        return found if detail else [item["name"] for item in found]

    def ukey(self, path: str) -> str:
        return str(self.info(path).get("digest") or self._strip_protocol(path))

    def _open(self, path: str, mode: str = "rb", block_size: Any = None,
              autocommit: bool = True, cache_options: Any = None, **kwargs: Any) -> Any:
        if mode != "rb":
            raise PermissionError("tether:// datasets are read-only; add a new version instead")
        ref, inner = split_path(self._strip_protocol(path))
        if not inner:
            raise IsADirectoryError(f"tether://{ref} is a dataset, not a file")
        return open_file(self.registry, self._version(ref), inner)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        with self._open(path) as handle:
            size = handle.size
            begin = 0 if start is None else (start if start >= 0 else size + start)
            stop = size if end is None else (end if end >= 0 else size + end)
            data: bytes = handle.raw.read_range(begin, stop)
            return data

    def _rm(self, path: str) -> None:
        raise PermissionError("tether:// datasets are read-only")


# -- git pointer files ------------------------------------------------------------------


def pointer_path(path: Path) -> Path:
    return path.with_name(path.name + POINTER_SUFFIX)


def pointer_text(version: DatasetVersion, kind: str) -> str:
    body = {
        "dataset": version.name,
        "version": version.semver,
        "seq": version.seq,
        "digest": f"sha:{version.digest}",
        "kind": kind,
        "size": version.size,
        "files": len(version.files),
    }
    return (
        "# Tether data pointer: commit this file to git; the bytes live in the registry.\n"
        "# `tether data checkout PATH` writes them back; tether.open_dataset(PATH) streams them.\n"
        + str(yaml.safe_dump(body, sort_keys=False))
    )


def write_pointer(pointer: Path, text: str, *, append: bool = False) -> None:
    """Write (or append to) a small file of the work tree, never through a symbolic link:
    a repository can commit ``data.csv.tether`` (or ``.gitignore``) as a link to any file
    of the user's, which writing the pointer then overwrote."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    flags |= os.O_APPEND if append else os.O_TRUNC
    try:
        fd = os.open(pointer, flags, 0o644)
    except OSError as error:
        if pointer.is_symlink():
            raise InvalidInput(f"{pointer} is a symbolic link; Tether does not write through one",
                               hint="remove the link and run the command again") from error
        raise
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


#: A pointer file is a few lines; anything larger is not one.
MAX_POINTER = 64 * 1024


def read_pointer(text: str | bytes, *, where: str) -> dict[str, Any]:
    """A pointer file's fields, or InvalidInput saying why it is not one.

    A pointer is a file of the repository, so whoever committed it chose its bytes:
    685 of them, YAML aliases nested nine deep, made a pull take 2.7 GB and die (a
    review); one not in UTF-8 ended pull, push and open_dataset in a traceback."""
    from .._plain_yaml import plain_yaml

    if len(text) > MAX_POINTER:
        raise InvalidInput(f"{where} is not a Tether pointer file: over {MAX_POINTER} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise InvalidInput(f"{where} is not a Tether pointer file: not UTF-8 text") from None
    body = plain_yaml(text, f"pointer {where}", max_bytes=MAX_POINTER, max_depth=2)
    if not isinstance(body, dict) or not {"dataset", "digest"} <= set(body):
        raise InvalidInput(f"{where} is not a Tether pointer file",
                           hint="it needs 'dataset' and 'digest'")
    for key in ("dataset", "digest", "version", "kind"):
        if key in body and not isinstance(body[key], str):
            raise InvalidInput(f"{where}: {key} is not text", hint="a pointer's dataset, "
                               "digest, version and kind are plain text")
    if body.get("kind", "file") not in ("file", "folder"):
        raise InvalidInput(f"{where}: kind {short_repr(body['kind'])} is neither file nor folder")
    return body


def read_pointer_file(pointer_file: Path) -> dict[str, Any]:
    """``read_pointer`` of a file, read no further than a pointer can be long."""
    try:
        with pointer_file.open("rb") as handle:
            data = handle.read(MAX_POINTER + 1)
    except OSError as error:
        raise InvalidInput(f"cannot read {pointer_file}: {error.strerror}") from None
    return read_pointer(data, where=str(pointer_file))


def track(
    registry: AnyRegistry, path: str | Path, *, name: str | None = None, notes: str = ""
) -> tuple[Path, DatasetVersion]:
    """Add ``path`` as a dataset version, write ``PATH.tether``, keep PATH out of git."""
    # ``..`` and ``.`` read as the folders they name: `track .` wrote ../repo.tether and
    # `track ..` a pointer ``...tether``, outside the repository or refused by pull.
    target = Path(os.path.normpath(Path(path).absolute()))
    if not target.exists():
        raise InvalidInput(f"{path} does not exist", hint="track a file or folder that exists")
    _refuse_to_track(target, path)
    if target.is_symlink() and names_reserved(target.resolve().as_posix()):
        # Push refuses such a pointer; track wrote it after uploading .git/config (a review).
        raise InvalidInput(f"{path} is a link into a .git or .tether folder",
                           hint="track the data itself, not a link to a repository's or "
                           "registry's own files")
    dataset = name or _default_name(target)
    version = registry.add_dataset(target, dataset, notes=notes)
    pointer = pointer_path(target)
    write_pointer(pointer, pointer_text(version, "folder" if target.is_dir() else "file"))
    _ignore(target)
    hold_path(target, version.name, f"sha:{version.digest}")  # this clone's own
    return pointer, version


def _refuse_to_track(target: Path, given: str | Path) -> None:
    """InvalidInput for a path ``track`` must not take: a repository's top (or the
    filesystem's root), a path inside a tracked folder, or a folder holding pointers.
    Tracked both ways, a pull of the folder deleted the inner path's pointer."""
    if target.parent == target or (target / ".git").exists():
        raise InvalidInput(f"{given} is a repository's top folder",
                           hint="track a file or folder inside it")
    for folder in target.parents:
        if folder.parent == folder:
            break
        if folder.with_name(folder.name + POINTER_SUFFIX).is_file():
            raise InvalidInput(f"{given} is inside {folder}, which is tracked as a whole",
                               hint=f"push {folder} instead (`tether data push`)")
        if (folder / ".git").exists():
            break
    if target.is_dir() and not target.is_symlink():
        inner = next((p for p in target.rglob(f"*{POINTER_SUFFIX}") if p.is_file()), None)
        if inner is not None:
            raise InvalidInput(f"{given} holds a tracked path ({inner.relative_to(target)})",
                               hint="track the folder's other files one by one, or stop "
                               "tracking the inner path first")


def _default_name(path: Path) -> str:
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.name).strip("-.") or "data"
    return stem[:128] if stem[0].isalnum() else f"d{stem}"[:128]


def _ignore(target: Path) -> None:
    """Add ``/NAME`` to the .gitignore beside ``target`` (once)."""
    ignore = target.parent / ".gitignore"
    line = "/" + _ignore_pattern(target.name)
    if ignore.is_symlink():
        raise InvalidInput(f"{ignore} is a symbolic link; Tether does not write through one",
                           hint="remove the link and run the command again")
    existing = ignore.read_text().splitlines() if ignore.exists() else []
    if line in existing:
        return
    prefix = "" if not existing or ignore.read_text().endswith("\n") else "\n"
    write_pointer(ignore, f"{prefix}{line}\n", append=True)


def _ignore_pattern(name: str) -> str:
    """``name`` as a .gitignore pattern matching itself only: ``events[2024].csv`` was
    written as is, a glob that did not match the file, so ``git add -A`` staged it."""
    escaped = "".join("\\" + c if c in "\\[]*?!#" else c for c in name)
    return escaped[:-1] + "\\ " if escaped.endswith(" ") else escaped


def _git(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False,
                          timeout=300)


_CLONES: dict[str, Path] = {}
_CLONES_LOCK = threading.Lock()


def _clone(url: str) -> Path:
    """A bare clone of a remote repository, made once per process."""
    with _CLONES_LOCK:
        if url in _CLONES:
            _git(["fetch", "--quiet", "origin", "+refs/heads/*:refs/heads/*",
                  "+refs/tags/*:refs/tags/*"], cwd=_CLONES[url])
            return _CLONES[url]
        # Under the user's cache (TETHER_CACHE_DIR), named for this process, not /tmp.
        where = Path(tempfile.mkdtemp(**owner_scratch(user_cache_dir(), "git")))
        atexit.register(shutil.rmtree, where, True)
        # "--": a URL starting with "-" (--upload-pack=...) is a URL, never an option.
        result = _git(["clone", "--bare", "--quiet", "--", url, str(where)])
        if result.returncode != 0:
            raise NotFound(f"cannot clone {url}: {result.stderr.decode(errors='replace').strip()}",
                           hint="check the repository URL and your access to it")
        _CLONES[url] = where
        return where


def _repo_root(repo: str | None) -> tuple[Path, bool]:
    """(where to run git, is it a bare clone) for ``repo`` (a path or URL; None: cwd)."""
    if repo is None:
        return Path.cwd(), False
    local = Path(repo).expanduser()
    if "://" not in repo and local.is_dir():
        return local.absolute(), False
    return _clone(repo), True


def find_pointer(
    path: str, *, repo: str | None = None, rev: str | None = None
) -> tuple[dict[str, Any], str]:
    """(pointer, path inside the dataset) for a tracked ``path`` at ``rev`` of ``repo``.

    ``path`` may name the tracked file or folder itself or a file inside a
    tracked folder; pointers are looked up from the path upwards.
    """
    root, bare = _repo_root(repo)
    wanted = PurePosixPath(Path(path).as_posix())
    if wanted.is_absolute():
        if bare:
            raise InvalidInput(f"{path} is absolute; give a path inside the repository")
        wanted = PurePosixPath(Path(path).resolve().relative_to(root.resolve()).as_posix())
    if rev is not None and (rev.startswith("-") or "\x00" in rev):
        # git would read it as an option (--output=FILE wrote a file).
        raise InvalidInput(f"{rev!r} is not a git revision", hint="a commit, branch or tag")
    if rev is not None or bare:
        top = "" if bare else _top(root)
        prefix = PurePosixPath(top) if top else PurePosixPath()
        revision = rev or "HEAD"
    for depth, candidate in enumerate([wanted, *wanted.parents]):
        if str(candidate) in ("", "."):
            break
        pointer_name = f"{candidate}{POINTER_SUFFIX}"
        if rev is None and not bare:
            file = root / pointer_name
            if not file.is_file():
                continue
            pointer = read_pointer_file(file)
        else:
            spec = (prefix / pointer_name).as_posix()
            # Its size first: `git show` of a committed pointer of gigabytes held them all.
            size = _git(["cat-file", "-s", f"{revision}:{spec}"], cwd=root)
            if size.returncode != 0:
                continue
            where = f"{pointer_name} at {revision}"
            if int(size.stdout.decode().strip() or 0) > MAX_POINTER:
                raise InvalidInput(f"{where} is not a Tether pointer file: over {MAX_POINTER} "
                                   "bytes")
            result = _git(["show", f"{revision}:{spec}"], cwd=root)
            if result.returncode != 0:
                continue
            pointer = read_pointer(result.stdout, where=where)
        inner = PurePosixPath(*wanted.parts[len(candidate.parts) :]).as_posix() if depth else ""
        return pointer, "" if inner == "." else inner
    at = f" at {rev}" if rev else ""
    raise NotFound(
        f"{path} is not tracked by Tether{at}: no {POINTER_SUFFIX} pointer for it or its folders",
        hint="track it with `tether data track PATH` and commit the pointer",
    )


def _top(root: Path) -> str:
    """``root`` relative to its work tree's top ('' at the top)."""
    result = _git(["rev-parse", "--show-prefix"], cwd=root)
    if result.returncode != 0:
        raise InvalidInput(f"{root} is not inside a git repository",
                           hint="give repo= a git repository, or leave rev= out")
    return result.stdout.decode().strip().rstrip("/")


def pointed_version(registry: AnyRegistry, pointer: dict[str, Any]) -> DatasetVersion:
    digest = str(pointer["digest"]).removeprefix("sha:")
    return registry.get_dataset(f"{pointer['dataset']}@sha:{digest}")


def file_in(version: DatasetVersion, pointer: dict[str, Any], inner: str) -> str:
    """The file of ``version`` a tracked path names (a tracked file is the one file)."""
    if pointer.get("kind") == "file" and not inner:
        if len(version.files) != 1:
            raise InvalidInput(f"{version.ref} is not a one-file dataset")
        return version.files[0].path
    if not inner:
        raise IsADirectoryError(f"{version.ref} is a folder; name a file inside it")
    return inner


def checkout(registry: AnyRegistry, path: str | Path, *, hold: bool = True) -> DatasetVersion:
    """Write the bytes the pointer ``PATH.tether`` names at ``PATH`` (every byte verified)
    and, unless ``hold`` is False (a pull records its paths at once), record it as this
    clone's own (data_held)."""
    target = Path(path).absolute()
    pointer_file = pointer_path(target)
    if not pointer_file.is_file():
        raise NotFound(f"{pointer_file} does not exist", hint="track PATH first")
    pointer = read_pointer_file(pointer_file)
    version = pointed_version(registry, pointer)
    if pointer.get("kind") != "file" and target.is_dir() and not target.is_symlink():
        _sync_folder(registry, version, target)
        if hold:
            hold_path(target, version.name, f"sha:{version.digest}")
        return version
    scratch = _checkout_scratch(target.parent)
    try:
        folder = scratch / "data"
        registry.store.materialize(
            version.files, folder, label=f"dataset {version.ref}", cache_chunks=False
        )  # the checkout is the copy kept
        produced = folder / version.files[0].path if pointer.get("kind") == "file" else folder
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(produced, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if hold:
        hold_path(target, version.name, f"sha:{version.digest}")
    return version


_SCRATCH_PREFIX = ".tether-checkout-"


def _checkout_scratch(folder: Path) -> Path:
    """A scratch folder in ``folder`` (where a checkout's files are then moved in place:
    the same file system), that git ignores, named for this process.

    A pull killed mid-file left ``.tether-checkout-*/data/big.bin`` (457 MB, half
    written) in the work tree, where ``git add -A`` staged it (a review). Its own
    ``.gitignore`` of ``*`` keeps git out of it; the leftovers of processes that are
    gone are removed here, at the next checkout into the same folder."""
    for leftover in folder.glob(f"{_SCRATCH_PREFIX}*"):
        pid = leftover.name[len(_SCRATCH_PREFIX):].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and pid_gone(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=folder))
    (scratch / ".gitignore").write_text("*\n")
    return scratch


def _holds(path: Path, entry: FileEntry) -> bool:
    """Whether ``path`` is a file holding exactly the bytes ``entry`` names (re-hashed)."""
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
            return False  # not a file, or a link
        known = _hashed.get()
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        digest = known.get(key) if known is not None else None
        if digest is None:
            digest = _file_digest(path)
            if known is not None:
                known[key] = digest
        return digest == entry.digest
    except OSError:
        return False


#: Files hashed while ``hashing_once`` holds, by what identifies their bytes (device,
#: inode, size, and the times of their last change; however the path is spelled): a pull
#: judges a file against the version its pointer names, then the version it last held,
#: then as it syncs the folder; each file is read once, not three times.
_hashed: ContextVar[dict[tuple[int, int, int, int, int], str] | None] = ContextVar(
    "tether_hashed_files", default=None)


@contextlib.contextmanager
def hashing_once() -> Iterator[None]:
    """Within: a file whose identity is unchanged is hashed once (see ``_hashed``)."""
    token = _hashed.set({})
    try:
        yield
    finally:
        _hashed.reset(token)


def _file_digest(path: Path) -> str:
    """The BLAKE3 of the file at ``path``, read whole."""
    import blake3

    hasher = blake3.blake3()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
    return str(hasher.hexdigest())


def tracked_items(target: Path) -> Iterator[tuple[Path, str]]:
    """Each file, link and folder under the tracked folder ``target``, with its path
    there, but nothing in a .git or .tether folder (never a dataset's): the walk that
    judging, pulling and pushing a folder all make. Linked folders are not entered."""
    for item in target.rglob("*"):
        rel = item.relative_to(target)
        if not any(part in (".git", ".tether") for part in rel.parts):
            yield item, rel.as_posix()


def _sync_folder(registry: AnyRegistry, version: DatasetVersion, target: Path) -> None:
    """Make folder ``target`` hold ``version``: write only the files that differ.

    A file already holding the version's bytes (same size, same BLAKE3, reached through
    no link) stays; the others are materialized (every byte verified) in a scratch
    folder first, and only then do files the version lacks go (folders a dataset never
    takes, like .git, stay) and the new ones move in: a pull whose fetch failed had
    already deleted files, leaving the folder neither the old state nor the new (a
    review).
    """
    wanted = {entry.path: entry for entry in version.files}
    stale = [entry for entry in version.files
             if _through_link(target, entry.path) or not _holds(target / entry.path, entry)]
    scratch = _checkout_scratch(target.parent) if stale else None
    try:
        if scratch is not None:
            registry.store.materialize(
                stale, scratch / "data", label=f"dataset {version.ref}", cache_chunks=False
            )
        for item, rel in sorted(tracked_items(target), reverse=True):
            if (item.is_file() or item.is_symlink()) and rel not in wanted:
                if item.name.endswith(POINTER_SUFFIX) or item.name == ".gitignore":
                    continue  # the repository's own files, never a dataset's to remove
                item.unlink()
            elif item.is_dir() and not item.is_symlink() and not any(item.iterdir()):
                item.rmdir()
        for entry in stale:
            assert scratch is not None
            destination = target / entry.path
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / "data" / entry.path, destination)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _through_link(top: Path, rel: str) -> bool:
    """Whether a folder on the way from ``top`` to ``rel`` is a link: a file reached
    through a linked folder looked held, then the clean-up took the link (it is no file
    of the version) and the file with it, "pulled"."""
    folder = top
    for part in PurePosixPath(rel).parts[:-1]:
        folder = folder / part
        if folder.is_symlink():
            return True
    return False


def open_dataset(
    target: str,
    path: str | None = None,
    *,
    repo: str | None = None,
    rev: str | None = None,
    mode: str = "rb",
    encoding: str | None = None,
    registry: str | Path | None = None,
) -> IO[Any]:
    """A streaming, read-only file: see ``tether.open_dataset``."""
    if mode not in ("rb", "br", "r", "rt", "tr"):
        raise InvalidInput(f"mode {mode!r} is not a reading mode",
                           hint="datasets are read-only: use 'rb' or 'r'")
    by_pointer = repo is not None or rev is not None or (
        path is None and "@" not in target.split("/")[0]
    )
    if by_pointer and path is not None:
        raise InvalidInput("give a tracked path, or a dataset reference and a path, not both",
                           hint='open_dataset("data/train.csv", rev="v2") or '
                           'open_dataset("ds@2", "train.csv")')
    reg = open_registry(registry)
    try:
        if by_pointer:
            pointer, inner = find_pointer(target, repo=repo, rev=rev)
            version = pointed_version(reg, pointer)
            handle = open_file(reg, version, file_in(version, pointer, inner), on_close=reg.close)
        else:
            ref, inner = (target, path or "") if path is not None else split_path(target)
            handle = open_file(reg, ref, inner, on_close=reg.close)
    except BaseException:
        reg.close()
        raise
    return text_or_binary(handle, mode, encoding)
