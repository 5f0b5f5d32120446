"""``tether.lock``: the models an application pins, and what they require.

A JSON file in the application's repository. Each entry records the reference
the application asked for (``fraud@production``), what it resolved to (semantic
version and digest) and the environment the model needs (Python and the
flavor's framework packages). An ``integrity`` digest over the entries makes a
hand edit visible: pins move only through ``tether lock add/update``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._digest import digest_of
from ._envflags import env_off
from ._errors import IntegrityError, InvalidInput, NotFound, TetherError

LOCK_NAME = "tether.lock"
FORMAT = 1
#: A lock is a few pins: past this it is no lock (and is not read whole).
MAX_LOCK = 16 * 1024 * 1024
_HEX = frozenset("0123456789abcdef")


@dataclass
class LockEntry:
    ref: str
    semver: str
    seq: int
    digest: str
    requires: dict[str, Any]
    sends: dict[str, Any] | None = None
    locked_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = {
            "ref": self.ref,
            "semver": self.semver,
            "seq": self.seq,
            "digest": self.digest,
            "requires": self.requires,
            "locked_at": self.locked_at,
        }
        if self.sends is not None:
            data["sends"] = self.sends
        return data

    @classmethod
    def from_dict(cls, name: str, data: Any) -> LockEntry:
        try:
            seq, digest = data["seq"], str(data["digest"])
            if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**31:
                raise ValueError(f"seq {str(seq)[:20]} is not a sequence number")
            # Whole and lowercase: `tether lock add` writes it so, and four hex digits
            # resolved by prefix to whatever shared them (a review).
            if len(digest) != 64 or not set(digest) <= _HEX:
                raise ValueError("its digest is not 64 lowercase hex digits")
            requires = dict(data.get("requires") or {})
            packages = requires.get("packages", {})
            if not isinstance(packages, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in packages.items()):
                raise ValueError("requires.packages is not a table of package versions")
            return cls(
                ref=str(data["ref"]),
                semver=str(data["semver"]),
                seq=seq,
                digest=digest,
                requires=requires,
                sends=data.get("sends"),
                locked_at=str(data.get("locked_at", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InvalidInput(
                f"{LOCK_NAME}: entry {name!r} is malformed ({str(error)[:200]})",
                hint="re-create it with `tether lock add`",
            ) from None


@dataclass
class LockFile:
    path: Path
    models: dict[str, LockEntry] = field(default_factory=dict)

    def integrity(self) -> str:
        return digest_of({name: e.to_dict() for name, e in sorted(self.models.items())})

    def save(self) -> None:
        document = {
            "format": FORMAT,
            "comment": "Written by `tether lock`; edit with `tether lock add/update/remove`.",
            "models": {name: e.to_dict() for name, e in sorted(self.models.items())},
            "integrity": self.integrity(),
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(tmp, self.path)


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it names a key twice: a lock listing a model at 1.0.0
    (what a reviewer reads) and again at 1.1.0 (what ``json.loads`` kept) passed its
    integrity check, computed over what was parsed (a review)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key[:80]!r} is given twice")
        found[key] = value
    return found


def read_lock(path: Path) -> LockFile:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_LOCK + 1)
    except FileNotFoundError as error:
        raise NotFound(
            f"no {LOCK_NAME} at {path}", hint="create it with `tether lock add REF`"
        ) from error
    except OSError as error:
        raise InvalidInput(f"cannot read {path}: {error.strerror or error}") from None
    if len(raw) > MAX_LOCK:
        raise InvalidInput(f"{path} is over {MAX_LOCK >> 20} MB: not a tether.lock")
    try:
        document = json.loads(raw.decode(), object_pairs_hook=_no_repeats)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        # Not JSON, not UTF-8, nested 100,000 deep or a number of 5,000 digits: each was
        # a traceback out of `tether check`, `lock list` and `tether.load` (a review).
        raise InvalidInput(
            f"{path} is not a tether.lock: {str(error)[:200]}",
            hint="restore it from version control") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InvalidInput(f"{path} is not a format-{FORMAT} tether.lock")
    models = document.get("models")
    if not isinstance(models, dict):
        raise InvalidInput(f"{path} has no models table")
    from ._reference import validate_model_name

    for name in models:  # printed by `tether check` and `lock list`: a name, nothing else
        try:
            validate_model_name(name)
        except TetherError:
            raise InvalidInput(f"{path} pins {name[:80]!r}, which is not a model name",
                               hint="restore it from version control") from None
    lock = LockFile(path, {name: LockEntry.from_dict(name, e) for name, e in models.items()})
    if document.get("integrity") != lock.integrity():
        raise IntegrityError(
            f"{path} was edited by hand: its integrity digest does not match its pins",
            hint="restore it from version control, then move pins with `tether lock update`",
        )
    return lock


def find_lock(start: Path | None = None) -> Path | None:
    """``TETHER_LOCK`` (``off`` or ``0`` disables), else the nearest tether.lock above the
    cwd that this user (or root) owns: one another user put in a folder above, say
    /tmp, redirected ``tether.load("wine")`` to the version it named (a review); such
    a lock is passed over with a warning, as git passes over a repository it does not
    own."""
    configured = os.environ.get("TETHER_LOCK", "").strip()
    if configured:
        return None if env_off("TETHER_LOCK") else Path(configured)
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        candidate = folder / LOCK_NAME
        if candidate.is_file():
            owner = candidate.stat().st_uid
            if hasattr(os, "getuid") and owner not in (os.getuid(), 0):
                from ._warnings import warn_caller

                warn_caller(f"{candidate} belongs to another user (uid {owner}): not used; "
                            "set TETHER_LOCK to it to use it anyway", UserWarning)
                continue
            return candidate
    return None


def open_or_create(path: Path | None) -> LockFile:
    target = path or find_lock() or Path.cwd() / LOCK_NAME
    return read_lock(target) if target.exists() else LockFile(target)
