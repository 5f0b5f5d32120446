"""What of a version's recorded git lineage Tether shows and writes into recipes.

``lineage["git"]`` is the logger's word (any contributor, or a server): a remote
carrying escape sequences cleared the screen of `tether show`, one carrying markup made
a link, and ``{"git": "x"}`` crashed `show`, `reproduce` and `diff` (a review). A new
version's git record is refused at commit unless each field is of its kind
(``lineage_problem``); a stored one is read through ``readable_lineage``: a field not
of its kind reads as ``UNREADABLE``, and a git record that is not a mapping is dropped.
"""

from __future__ import annotations

import re
from typing import Any

from ._environment.record import UNREADABLE
from ._humanize import short_repr

#: A path or URL as recorded: no control characters, up to 4 KB.
_LOCATION = re.compile(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,4096}\Z")
#: A branch name as git allows one (no spaces, control characters, ~^:?*[\).
_BRANCH = re.compile(r"[^\x00-\x20\x7f~^:?*\[\\]{1,255}\Z")
#: A git commit id: SHA-1 or SHA-256, in full.
COMMIT_ID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?\Z")
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")
_FIELDS: dict[str, re.Pattern[str]] = {
    "repo": _LOCATION, "remote": _LOCATION, "branch": _BRANCH, "commit": COMMIT_ID,
    "diff_digest": _DIGEST}


def _fits(value: Any, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, str) and pattern.match(value) is not None


def readable_lineage(lineage: Any) -> dict[str, Any]:
    """``lineage`` with its git record as Tether may show it (see the docstring)."""
    if not isinstance(lineage, dict):
        return {}
    git = lineage.get("git")
    if "git" not in lineage or git is None:
        return lineage
    out = {k: v for k, v in lineage.items() if k != "git"}
    if isinstance(git, dict):
        clean: dict[str, Any] = {
            key: git[key] if git.get(key) is None or _fits(git[key], pattern) else UNREADABLE
            for key, pattern in _FIELDS.items() if key in git}
        if "dirty" in git:  # not a boolean: treated as dirty (the commit alone is not all)
            clean["dirty"] = git["dirty"] if isinstance(git["dirty"], bool) else True
        out["git"] = clean
    return out


def storable_git(git: dict[str, Any] | None) -> dict[str, Any] | None:
    """What capture records of this repository's state: a field a commit would refuse
    (a remote with a control character in it) is recorded as unknown, never fails a log."""
    if git is None:
        return None
    return {key: None if key in _FIELDS and value is not None and not _fits(
        value, _FIELDS[key]) else value for key, value in git.items()}


def lineage_problem(lineage: Any) -> str | None:
    """What a new version may not record in its git lineage, or None."""
    if not isinstance(lineage, dict):
        return "is not a mapping"
    git = lineage.get("git")
    if git is None:
        return None
    if not isinstance(git, dict):
        return "git is not a mapping"
    for key, pattern in _FIELDS.items():
        if git.get(key) is not None and not _fits(git[key], pattern):
            return f"git.{key} {short_repr(git[key], 60)} is not of its kind"
    if "dirty" in git and not isinstance(git["dirty"], bool):
        return "git.dirty is not true or false"
    return None
