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
            return cls(
                ref=str(data["ref"]),
                semver=str(data["semver"]),
                seq=int(data["seq"]),
                digest=str(data["digest"]),
                requires=dict(data.get("requires") or {}),
                sends=data.get("sends"),
                locked_at=str(data.get("locked_at", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInput(
                f"{LOCK_NAME}: entry {name!r} is malformed ({error})",
                hint="re-create it with `tether lock add`",
            ) from error


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


def read_lock(path: Path) -> LockFile:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise NotFound(
            f"no {LOCK_NAME} at {path}", hint="create it with `tether lock add REF`"
        ) from error
    except json.JSONDecodeError as error:
        raise InvalidInput(
            f"{path} is not valid JSON: {error}", hint="restore it from version control"
        ) from error
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
    """``TETHER_LOCK`` (``off`` or ``0`` disables), else the nearest tether.lock above the cwd."""
    configured = os.environ.get("TETHER_LOCK", "").strip()
    if configured:
        return None if env_off("TETHER_LOCK") else Path(configured)
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        candidate = folder / LOCK_NAME
        if candidate.is_file():
            return candidate
    return None


def open_or_create(path: Path | None) -> LockFile:
    target = path or find_lock() or Path.cwd() / LOCK_NAME
    return read_lock(target) if target.exists() else LockFile(target)
