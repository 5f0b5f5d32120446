"""`tether reproduce`: everything needed to rebuild a version, in one place."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._digest import blake3_hex
from .._environment import export_dockerfile, export_requirements, roots_for_flavor
from .._errors import Conflict, NotFound, TetherError
from .._lineage_record import COMMIT_ID
from .._records import ModelVersion

if TYPE_CHECKING:
    from .._contract import RegistryAPI




def _shown(value: Any) -> str:
    """A recorded value as text for a recipe line: control characters escaped, so a value
    (whoever logged the version chose it) cannot start a line of its own."""
    return re.sub(r"[\x00-\x1f\x7f\u2028\u2029]",
                  lambda m: f"\\x{ord(m.group()):02x}", str(value))


def recipe(version: ModelVersion) -> dict[str, Any]:
    git = version.lineage.get("git") or {}
    steps = []
    commit = git.get("commit")
    if commit and not (isinstance(commit, str) and COMMIT_ID.match(commit)):
        steps.append(f"WARNING: the recorded commit {_shown(commit)[:80]!r} is not a commit "
                     "id; code is unknown")
    elif commit:
        where = git.get("remote") or git.get("repo")
        # Quoted, every word: the remote and the commit are recorded values, and these
        # lines are made to be pasted (a remote ending '; touch x #' ran it). The commit
        # is a commit id (a recorded '.' checked out the reader's own repository over its
        # uncommitted work: the clone's folder was never entered, a review); the remote
        # comes after --, and the checkout runs inside the clone.
        checkout = shlex.join(["git", "checkout", "--detach", commit])
        if where and not str(where).startswith(("-", "ext::")):
            clone = shlex.join(["git", "clone", "--", _shown(where), "training-code"])
            steps.append(f"{clone} && cd training-code && {checkout}")
        else:
            steps.append(f"clone the training repository, enter it, then: {checkout}")
        if git.get("dirty"):
            steps.append(
                f"WARNING: the working tree was dirty (uncommitted diff "
                f"{_shown(git.get('diff_digest'))[:16]}); the commit alone is not enough"
            )
    else:
        steps.append("WARNING: the version was not logged from a git repository; code is unknown")
    steps.append("pip install -r requirements.txt   # every package pinned as recorded")
    for name, info in version.data.items():
        if info.get("dataset"):
            digest = _shown(info.get("digest"))
            # Quoted: the names come from the registry, and this line is made to be pasted.
            command = shlex.join(["tether", "data", "download",
                                  f"{_shown(info['dataset'])}@sha:{digest}", data_folder(name)])
            steps.append(f"fetch data {name!r}, dataset {_shown(info.get('ref'))} "
                         f"(sha:{digest[:12]}): {command}")
            continue
        steps.append(
            f"provide data {name!r} with digest {_shown(info.get('digest'))} "
            f"({_shown(info.get('path') or info.get('kind', 'in-memory object'))})"
        )
    steps.append(f"train with params {json.dumps(version.params, sort_keys=True)}")
    steps.append(
        f"compare: the original has digest {version.short_digest}, "
        f"metrics {json.dumps(version.metrics, sort_keys=True)}"
    )
    return {
        "ref": version.ref,
        "digest": f"sha:{version.digest}",
        "git": git,
        "python": version.environment.get("python"),
        "platform": f"{version.environment.get('platform')}/{version.environment.get('machine')}",
        "data": version.data,
        "params": version.params,
        "metrics": version.metrics,
        "steps": steps,
    }


def data_folder(role: str) -> str:
    """Where ``reproduce -o DIR`` writes the dataset a role names: ``data/<role>``.

    A role is whatever ``data=`` was keyed by, so it is made one safe path component
    of at most 80 characters; one that had to change gets a hash of itself appended,
    so that two roles never share a folder (``train/eu`` and ``train_eu``).
    """
    safe = re.sub(r"[^A-Za-z0-9._@+-]", "_", role).lstrip(".")[:64]
    if safe != role:
        safe = f"{safe}-{blake3_hex(role.encode())[:12]}"
    return f"data/{safe}"


def fetch_data(registry: RegistryAPI, version: ModelVersion, folder: Path) -> list[str]:
    """Download every dataset version ``version`` links into ``folder/data/<role>``.

    By digest, every byte verified. Returns the problems (a dataset version
    deleted since, a folder already there) rather than stopping at the first.
    """
    problems = []
    for role, info in sorted(version.data.items()):
        if not info.get("dataset"):
            continue
        target = folder / data_folder(role)
        try:
            registry.download_dataset(f"{info['dataset']}@sha:{info.get('digest')}", target,
                                      progress=False)  # looks the version up once
        except NotFound:
            problems.append(f"data {role!r} ({info.get('ref')}): the registry no longer holds "
                            f"it (sha:{str(info.get('digest'))[:12]})")
        except TetherError as error:
            problems.append(f"data {role!r} ({info.get('ref')}): {error.message}")
        except OSError as error:
            problems.append(f"data {role!r} ({info.get('ref')}): could not write {target}: "
                            f"{error.strerror or error}")
    return problems


def _fenced(text: str) -> str:
    """``text`` as a Markdown code block: params and data paths are anyone's words, and
    as Markdown they drew links, images and instructions of their own (a review)."""
    import re

    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"   {fence}\n   {text}\n   {fence}\n"


def write_recipe(version: ModelVersion, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    info = recipe(version)
    files = {
        "requirements.txt": export_requirements(
            version.environment, roots=roots_for_flavor(version.flavor)
        ),
        "Dockerfile": export_dockerfile(version.environment),
        "params.json": json.dumps(version.params, indent=2, sort_keys=True) + "\n",
        "reproduce.json": json.dumps(info, indent=2, default=str) + "\n",
        "REPRODUCE.md": f"# Reproducing {version.ref}\n\n"
        + "\n".join(f"{i}.\n{_fenced(s)}" for i, s in enumerate(info["steps"], 1)),
    }
    # Never over a file of the user's own (a hand-written Dockerfile was replaced without
    # a word: a review); one this command wrote before, unchanged, is written again.
    theirs = [name for name, text in files.items()
              if os.path.lexists(folder / name) and _text_of(folder / name) != text]
    if theirs:
        raise Conflict(f"{folder} already holds {', '.join(theirs)}, which reproducing "
                       f"{version.ref} would replace: nothing was written",
                       hint="choose another folder (-o), or move those files away")
    written = []
    for name, text in files.items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written


def _text_of(path: Path) -> str | None:
    try:
        return path.read_text() if path.is_file() and path.stat().st_size < 1 << 20 else None
    except (OSError, UnicodeDecodeError):
        return None
