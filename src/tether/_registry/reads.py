"""The dataset versions this process read, for the lineage of its next ``log_model``.

Reading a file of a dataset version through Tether (``tether.open_dataset``, the
``tether://`` filesystem, ``Registry.open_dataset``) or naming it with
``tether.use_dataset`` notes the version here. The next ``log_model`` of the
process links each noted version that its registry holds (the same name and
content digest) beside what ``data=`` names, and clears the notes it recorded:
a read belongs to the model logged after it. A version the registry does not
hold (read from another registry) is not linked; the caller is warned.

Why per process and cleared on use: a training script reads its data and then
logs its model; a notebook that trains several models one after another gets
each read on the model that follows it. Read a dataset again, or call
``use_dataset``, to link it to a later model as well.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._envflags import env_off

if TYPE_CHECKING:
    from .datasets import DatasetVersion

_lock = threading.Lock()
_noted: dict[tuple[str, str], Read] = {}  # (name, digest) -> the read, in the order first read


class UnrecordedReadWarning(UserWarning):
    """A dataset version read in this process is not in the registry a model is logged to."""


@dataclass(frozen=True)
class Read:
    version: DatasetVersion
    via: str  # "read" (a file opened) or "use_dataset" (named by the program)


def enabled() -> bool:
    """Whether reads are noted: ``TETHER_RECORD_READS=0`` (or ``off``) turns it off."""
    return not env_off("TETHER_RECORD_READS")


def note(version: DatasetVersion, via: str = "read") -> None:
    """Remember that this process used ``version`` (once per name and digest)."""
    if not enabled():
        return
    with _lock:
        key = (version.name, version.digest)
        if key not in _noted or via == "use_dataset":
            _noted[key] = Read(version, via)


def noted() -> list[Read]:
    """What was used since the last ``log_model`` that recorded it, first read first."""
    with _lock:
        return list(_noted.values())


def recorded(reads: list[Read]) -> None:
    """Clear the notes of ``reads`` (a ``log_model`` committed them, or could not link them)."""
    with _lock:
        for read in reads:
            key = (read.version.name, read.version.digest)
            if _noted.get(key) is read:
                del _noted[key]


def forget() -> None:
    """Clear every note (``tether.forget_reads()``)."""
    with _lock:
        _noted.clear()
