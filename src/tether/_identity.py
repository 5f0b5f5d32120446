"""A version's identity: the content digest and the checks that bind it to bytes.

A version's digest is BLAKE3 over its canonical manifest (every file's path,
size, digest and chunk list) plus the flavor record, the input/output schema,
the params and the data digests. Everything about to be loaded, verified,
pinned, signed or served is re-hashed to that digest first: the database is
not trusted to keep the two consistent, so a manifest swapped in from another
version, a chunk list pointing at other bytes or a flavor entry pointing
outside the version is a refusal that names the version, never a load.

Pure logic, no I/O: the embedded registry, the server and the remote client
all call the same functions on what they are about to use.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import blake3

from ._digest import canonical_json, digest_of
from ._errors import IntegrityError, InvalidInput
from ._store.base import FileEntry
from ._store.chunklist import RECORD, ChunkList

if TYPE_CHECKING:
    from ._records import ModelVersion

#: Flavor-record keys that name a file or folder inside the version.
PATH_KEYS = ("entry", "weights", "config", "model_file", "folder")

#: Flavor-record keys that describe tools, not what is loaded (left out of the digest).
TOOL_KEYS = ("framework_versions",)


def flavor_identity(record: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a flavor record that change what is loaded."""
    return {k: v for k, v in record.items() if k not in TOOL_KEYS}


def manifest_entries(manifest: Iterable[Mapping[str, Any] | FileEntry]) -> list[FileEntry]:
    """The file entries of ``manifest`` (entries, or their dicts: KeyError, TypeError or
    ValueError for one that is not an entry)."""
    return [f if isinstance(f, FileEntry) else FileEntry.from_dict(dict(f)) for f in manifest]


def manifest_digest(manifest: Iterable[Mapping[str, Any] | FileEntry]) -> str:
    """BLAKE3 over every file's path, size, digest and chunk list, in path order.

    The hashed text is the canonical JSON of ``[[path, size, digest, [[chunk, size],
    ...]], ...]``; it is written into the hash piece by piece, so a file of a
    million chunks never exists as a million lists or one 90 MB string.
    """
    hasher = blake3.blake3()
    hasher.update(b"[")
    for n, entry in enumerate(sorted(manifest_entries(manifest), key=lambda f: f.path)):
        head = canonical_json([entry.path, int(entry.size), entry.digest])[:-1]
        hasher.update(((',' if n else '') + head + ',[').encode("utf-8"))
        for piece in _chunk_texts(entry.chunks):
            hasher.update(piece)
        hasher.update(b"]]")
    hasher.update(b"]")
    return hasher.hexdigest()


def _chunk_texts(chunks: ChunkList, piece: int = 65536) -> Iterator[bytes]:
    """``["digest",size],...`` of ``chunks``, as canonical JSON writes them, in pieces."""
    for n, records in enumerate(chunks.pieces(piece)):
        text = ",".join(f'["{digest.hex()}",{size}]'
                        for digest, size in RECORD.iter_unpack(records))
        yield ((',' if n else '') + text).encode("ascii")


def version_digest(
    *,
    files_digest: str,
    flavor: Mapping[str, Any],
    schema: Any,
    params: Mapping[str, Any],
    data: Mapping[str, Mapping[str, Any]],
) -> str:
    """The content digest of a version from its manifest digest and loading facts."""
    return digest_of(
        {
            "files": files_digest,
            "flavor": flavor_identity(flavor),
            "signature": schema,
            "params": dict(params),
            "data": {k: v.get("digest") for k, v in data.items()},
        }
    )


def path_escapes(path: str) -> bool:
    """Whether ``path`` could name something outside a version's folder.

    The one rule for every path that comes from metadata: relative, POSIX,
    no ``..``, ``.`` or empty parts, no backslash, drive letter or NUL.
    """
    return (
        "\x00" in path
        or _windows_folder_or_drive(path)
        or PurePosixPath(path).is_absolute()
        or any(part in ("..", ".", "") for part in path.split("/"))
    )


def _windows_folder_or_drive(path: str) -> bool:
    """Whether ``path`` holds a backslash or starts with a drive letter: a folder or a
    drive to Windows, however legal in a name elsewhere."""
    return "\\" in path or (len(path) > 1 and path[1] == ":")


#: Folders no version may hold, in any case: written where a version is downloaded or
#: pulled (a repository's work tree), a ``.git`` folder is a repository whose config runs
#: commands on the next git command there, and a ``.tether`` one a registry to be taken
#: for the user's.
RESERVED_PARTS = frozenset({".git", ".tether"})


#: Code points HFS+ leaves out of names (git's own list, CVE-2014-9390): on a Mac
#: ".g\u200cit" is the folder ".git".
_HFS_IGNORED = dict.fromkeys([0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F),
                              *range(0x206A, 0x2070), 0xFEFF])
#: The NTFS short (8.3) names of the reserved folders.
_SHORT_NAMES = frozenset({"git~1", "tether~1"})


def _folded(text: str) -> str:
    """``text`` as macOS and Windows compare names: without the code points HFS+ leaves
    out, in NFC, case folded."""
    return unicodedata.normalize("NFC", text.translate(_HFS_IGNORED)).casefold()


def part_reserved(part: str) -> bool:
    """Whether one path part is ``.git`` or ``.tether`` on some file system: in any
    case or Unicode form, with code points HFS+ ignores, with the trailing dots and
    spaces or the stream suffix NTFS drops (".git.", ".git::$INDEX_ALLOCATION"), or as
    NTFS's short name ("GIT~1")."""
    name = _folded(part).split(":", 1)[0].rstrip(". ")
    return name in RESERVED_PARTS or name in _SHORT_NAMES


def names_reserved(path: str) -> bool:
    """Whether ``path`` has a part that is ``.git`` or ``.tether`` (``part_reserved``)."""
    return any(part_reserved(part) for part in path.split("/"))


def check_relative_path(path: Any, *, what: str) -> str:
    """``path`` if it is a safe relative POSIX path inside a version, else InvalidInput."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidInput(f"{what} {path!r} is not a file path")
    if _windows_folder_or_drive(path):
        # Legal in a name here, but a folder separator or a drive on Windows, where the
        # version may be loaded: said as such ("leaves the folder" puzzled: a review).
        raise InvalidInput(
            f"{what} {path!r} has a backslash or a drive letter, which Windows reads as "
            "a folder or a drive",
            hint="rename it: a version's files load on every system")
    if path_escapes(path):
        raise InvalidInput(
            f"{what} {path!r} leaves the version's folder",
            hint="paths in a version are relative, use '/', and never contain '..'",
        )
    return path


def check_not_reserved(path: str, *, what: str) -> None:
    """Refuse (InvalidInput) a path inside a ``.git`` or ``.tether`` folder."""
    if names_reserved(path):
        raise InvalidInput(
            f"{what} {path!r} is inside a .git or .tether folder, which no version may hold",
            hint="leave version-control and registry folders out of what you log",
        )


def check_one_file_each(paths: Iterable[str]) -> None:
    """Refuse a path listed twice, or paths that are one file where case is ignored:
    "MODEL.pkl" and "model.pkl", a name's NFC and NFD forms, or one with a code point
    HFS+ leaves out ("mo\u200cdel.pkl"), on macOS and Windows. The
    second written replaced the first after its digest was checked, so the bytes loaded
    were not the ones verified (a review). Checked for new versions; one logged before
    still loads where it can."""
    folded: dict[str, str] = {}
    for path in sorted(paths):
        key = _folded(path)  # "mo\u200cdel.pkl" is model.pkl on HFS+
        if folded.get(key) == path:
            raise InvalidInput("the manifest lists a path twice")
        if key in folded:
            raise InvalidInput(
                f"manifest paths {folded[key]!r} and {path!r} differ only in case, Unicode "
                "form or code points macOS ignores: one file where case is ignored (macOS, "
                "Windows)",
                hint="rename one of them")
        folded[key] = path


def check_manifest(manifest: Sequence[Mapping[str, Any] | FileEntry], *,
                   reserved: bool = False) -> None:
    """Refuse a manifest with unsafe or duplicate paths or inconsistent chunk sizes.

    ``reserved``: also refuse paths in a ``.git`` or ``.tether`` folder. Every new
    version and every dataset version is checked so; a model version logged before
    the rule (a folder cloned with git) still loads, its bytes as they were logged.
    """
    seen: set[str] = set()
    for item in manifest:
        named: Any
        size: Any
        if isinstance(item, FileEntry):
            named, size = item.path, item.size
        else:
            named, size = item.get("path"), item.get("size")
        path = check_relative_path(named, what="manifest path")
        if reserved:
            check_not_reserved(path, what="manifest path")
        if path in seen:
            raise InvalidInput(f"manifest names {path!r} twice")
        seen.add(path)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"manifest size of {path!r} is {size!r}, not a byte count")
        try:
            chunks = (item if isinstance(item, FileEntry)
                      else FileEntry.from_dict(dict(item))).chunks
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise InvalidInput(f"the chunks of {path!r} are malformed: {error}") from None
        if chunks and chunks.total() != size:
            raise InvalidInput(f"the chunks of {path!r} do not add up to its size {size}")
    # A file cannot also be a folder: "x" and "x/y" could never both be written (a
    # download failed, and a pull stopped at every path, not only that one). In sorted
    # order, a path under "x/" comes at the place "x/" would take: one look per file.
    # (Rebuilding every parent of every path cost the square of the depth: 200 paths
    # 2,000 folders deep took 26 s at commit and 5 s at every read: a review.)
    ordered = sorted(seen)
    for path in ordered:
        at = bisect.bisect_left(ordered, path + "/")
        if at < len(ordered) and ordered[at].startswith(path + "/"):
            raise InvalidInput(f"manifest names {path!r} as a file and as the folder of "
                               f"{ordered[at]!r}")


def check_flavor_paths(flavor: Mapping[str, Any], paths: Iterable[str]) -> None:
    """Every file the flavor record names must be a file of the version (or a folder in it)."""
    present = set(paths)
    ordered = sorted(present)

    def is_folder(name: str) -> bool:  # one look, not every parent of every path
        at = bisect.bisect_left(ordered, name + "/")
        return at < len(ordered) and ordered[at].startswith(name + "/")

    for key in PATH_KEYS:
        if key not in flavor:
            continue
        value = flavor[key]
        if value == "." and key == "entry":
            continue
        check_relative_path(value, what=f"flavor {key}")
        if value not in present and not is_folder(value):
            raise InvalidInput(
                f"flavor {key} {value!r} is not a file of this version",
                hint=f"files: {', '.join(sorted(present)[:10]) or 'none'}",
            )


def seal(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with their manifest digest and version digest (re)computed."""
    manifest = values["manifest"]  # file entries, or their dicts
    check_manifest(manifest)
    entries = manifest_entries(manifest)
    check_flavor_paths(values["flavor"], (f.path for f in entries))
    files_digest = manifest_digest(entries)
    digest = version_digest(
        files_digest=files_digest,
        flavor=values["flavor"],
        schema=values["signature"],
        params=values["params"],
        data=values["data"],
    )
    return {**values, "files_digest": files_digest, "digest": digest}


def recompute(version: ModelVersion) -> tuple[str, str]:
    """(manifest digest, version digest) recomputed from what ``version`` holds."""
    files_digest = manifest_digest(version.files)
    digest = version_digest(
        files_digest=files_digest,
        flavor=version.flavor,
        schema=version.signature,
        params=version.params,
        data=version.data,
    )
    return files_digest, digest


def require_intact(version: ModelVersion) -> ModelVersion:
    """``version`` if its recorded digests are what its contents hash to; else refuse.

    Called on everything about to be loaded, verified, pinned, signed or
    served, in every process (the remote client checks what the server sent).
    """
    try:
        check_manifest(version.files)
        check_flavor_paths(version.flavor, (f.path for f in version.files))
        files_digest, digest = recompute(version)
    except (InvalidInput, KeyError, TypeError, ValueError, IndexError, OverflowError,
            AttributeError) as error:  # a flavor or data of the wrong shape (a review)
        detail = error.message if isinstance(error, InvalidInput) else repr(error)
        raise IntegrityError(
            f"{version.ref}'s recorded manifest is unusable: {detail}",
            hint="the registry's database was changed outside Tether; "
            "restore it from a backup and run `tether audit verify`",
        ) from error
    if digest != version.digest or files_digest != version.files_digest:
        raise IntegrityError(
            f"{version.ref} is recorded as sha:{version.digest[:12]} but what the registry "
            f"holds for it hashes to sha:{digest[:12]}",
            hint="its manifest, flavor, schema, params or data digests were changed outside "
            "Tether; nothing was loaded. Restore the database and run `tether audit verify`",
        )
    return version

