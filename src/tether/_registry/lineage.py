"""Where a version came from: the git state of the code and the data digests."""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._digest import blake3_hex, digest_of, file_digest
from .._errors import InvalidInput

#: Seconds any git call made while logging may take.
_GIT_TIMEOUT = 10


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, timeout=_GIT_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.decode("utf-8", "replace").strip()


#: Facts about a work tree that do not change while a process logs versions in it
#: (its top folder and origin), by folder: asked once, not for every version.
_stable: dict[Path, tuple[str, str | None]] = {}


def capture_git(cwd: str | Path | None = None) -> dict[str, Any] | None:
    """Repository, commit, dirty flag and a digest of the uncommitted diff.

    ``None`` outside a git work tree. The diff digest lets a reviewer tell two
    dirty trees apart without the registry storing anyone's source. The commit,
    branch and dirty state come from one ``git status`` per version (the diff
    only when dirty): logging a small model took six git processes before.
    """
    where = Path(cwd or os.getcwd())
    status = _git(["status", "--porcelain=v2", "--branch", "--untracked-files=no"], where)
    if status is None:
        return None
    commit, head, changed = None, None, False
    for line in status.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.removeprefix("# branch.oid ").strip()
            commit = None if oid == "(initial)" else oid
        elif line.startswith("# branch.head "):
            name = line.removeprefix("# branch.head ").strip()
            head = None if name == "(detached)" else name
        elif line and not line.startswith("#"):
            changed = True
    if where not in _stable:
        top = _git(["rev-parse", "--show-toplevel"], where)
        if top is None:
            return None
        _stable[where] = (top, _git(["config", "--get", "remote.origin.url"], where))
    top, remote = _stable[where]
    diff: bytes | None = b""
    if changed and commit:
        try:  # bounded like every other git call here: a huge diff never stalls a log
            done = subprocess.run(["git", "diff", "HEAD"], cwd=where, capture_output=True,
                                  check=False, timeout=_GIT_TIMEOUT)
            diff = done.stdout if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            diff = None  # unknown: no digest, rather than the digest of nothing
    return {
        "repo": top,
        "remote": remote,
        "branch": head or _ci_branch(),
        "commit": commit,
        "dirty": changed,
        "diff_digest": blake3_hex(diff) if changed and diff is not None else None,
    }


def _ci_branch() -> str | None:
    """On a detached HEAD (CI), the branch CI says it builds."""
    for key in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME", "BRANCH_NAME"):
        if value := os.environ.get(key):
            return value
    return None


#: git's user.email by folder (asked once per process: every use case names its actor).
_emails: dict[Path, str | None] = {}


def current_author() -> str:
    """Who is acting: TETHER_USER, else git's user.email, else the OS user."""
    if user := os.environ.get("TETHER_USER"):
        return user
    where = Path.cwd()
    if where not in _emails:
        _emails[where] = _git(["config", "--get", "user.email"], where)
    email = _emails[where]
    if email:
        return email
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _path_digest(path: Path) -> dict[str, Any]:
    if path.is_file():
        return {"path": str(path), "digest": file_digest(path), "size": path.stat().st_size}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = [[p.relative_to(path).as_posix(), file_digest(p)] for p in files]
        size = sum(p.stat().st_size for p in files)
        return {"path": str(path), "digest": digest_of(listing), "size": size, "files": len(files)}
    raise InvalidInput(
        f"data path {path} does not exist",
        hint="pass files or folders that exist, or in-memory arrays",
    )


def _object_digest(value: Any) -> dict[str, Any]:
    """Digest of an in-memory dataset (numpy array, pandas frame, list)."""
    if hasattr(value, "to_numpy") and hasattr(value, "columns"):  # a DataFrame
        import pandas as pd

        hashed = pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes()
        columns = [str(c) for c in value.columns]
        return {
            "digest": blake3_hex(hashed + digest_of(columns).encode()),
            "rows": len(value),
            "columns": columns,
        }
    if hasattr(value, "tobytes") and hasattr(value, "shape"):  # a numpy array
        header = f"{value.dtype}:{value.shape}".encode()
        return {
            "digest": blake3_hex(header + value.tobytes()),
            "shape": list(value.shape),
            "dtype": str(value.dtype),
        }
    return {"digest": digest_of(value)}


def digest_data(data: Any) -> dict[str, dict[str, Any]]:
    """Named digests of the datasets passed as ``data=``.

    Accepts a mapping of name -> path/array/frame, a single path, or a list of
    paths (named by their file names).
    """
    if data is None:
        return {}
    if isinstance(data, (str, Path)):
        data = {Path(data).name: data}
    elif isinstance(data, Sequence) and all(isinstance(d, (str, Path)) for d in data):
        data = {Path(d).name: d for d in data}
    if not isinstance(data, Mapping):
        raise InvalidInput(
            "data= must be a path, a list of paths or a mapping of name to dataset",
            hint='for example data={"train": "data/train.csv"}',
        )
    result: dict[str, dict[str, Any]] = {}
    for name, value in data.items():
        if isinstance(value, (str, Path)):
            result[str(name)] = _path_digest(Path(value))
        else:
            result[str(name)] = _object_digest(value)
    return result
