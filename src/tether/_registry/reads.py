"""The dataset versions this process read, for the lineage of the models it logs.

Reading a file of a dataset version through Tether (``tether.open_dataset``, the
``tether://`` filesystem, ``Registry.open_dataset``) or naming it with
``tether.use_dataset`` notes the version here. Every later ``log_model`` of the
process links each noted version that its registry holds (the same name and
content digest) beside what ``data=`` names. A version the registry does not
hold (read from another registry) is not linked; the caller is warned once.

Why every read so far, for every later log, rather than each read for the next
log only (as first built): lineage is what an auditor asks "which models could
a bad dataset version have touched?" with, so a read must never go missing. A
read cleared by one log went missing from the next model trained on the same
frame, from a log to another registry, and made re-running a notebook cell
(the same model, nothing read since) register a new version without lineage
instead of returning the existing one. The price is over-linking: a process
that trains several models on different data links each to all of it; name
the data with ``data=`` and pass ``record_reads=False``, or call
``forget_reads()`` between experiments. Reads in other processes (a data
loader's forked workers) are not seen: name such data with ``use_dataset``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._envflags import env_off

if TYPE_CHECKING:
    from .datasets import DatasetVersion


class UnrecordedReadWarning(UserWarning):
    """A dataset version read in this process is not in the registry a model is logged to."""


@dataclass(frozen=True)
class Read:
    """What is kept of a read: enough to find the version again, not its manifest."""

    name: str
    digest: str
    ref: str
    via: str  # "read" (a file opened) or "use_dataset" (named by the program)


_lock = threading.Lock()
_noted: dict[tuple[str, str], Read] = {}  # (name, digest) -> the read, in the order first read
_warned: set[tuple[str, str, str]] = set()  # (registry, name, digest) already warned about


def enabled() -> bool:
    """Whether reads are noted: ``TETHER_RECORD_READS=0`` (or ``off``) turns it off."""
    return not env_off("TETHER_RECORD_READS")


def note(version: DatasetVersion, via: str = "read") -> None:
    """Remember that this process used ``version`` (once per name and digest;
    a ``use_dataset`` of a version already read says so)."""
    if not enabled():
        return
    with _lock:
        key = (version.name, version.digest)
        if key not in _noted or via == "use_dataset":
            _noted[key] = Read(version.name, version.digest, version.ref, via)


def noted() -> list[Read]:
    """Every dataset version this process used so far, first read first."""
    with _lock:
        return list(_noted.values())


def first_warning(registry: str, read: Read) -> bool:
    """Whether ``read`` missing from ``registry`` has not been warned about yet (and now is)."""
    key = (registry, read.name, read.digest)
    with _lock:
        if key in _warned:
            return False
        _warned.add(key)
        return True


def forget() -> None:
    """Forget every read (``tether.forget_reads()``): later logs link none of them."""
    with _lock:
        _noted.clear()
        _warned.clear()
