"""Warnings that point at the caller's line, not at Tether's.

``stacklevel`` counted by hand breaks as soon as a call goes through one more
layer (the facade, the remote client, the CLI); instead the warning is
attributed to the first frame outside the ``tether`` package.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)


def warn_caller(message: str, category: type[Warning]) -> None:
    level = 2  # 1 is this function; 2 is whoever called it
    frame = sys._getframe(1)
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)


class UnsignedAuditEvents(UserWarning):
    """The audit log holds events the registry's key never signed; new ones are not signed
    over them (see ``Registry.write``)."""


class LeftOut(UserWarning):
    """What adding a dataset left out of a folder (links, pipes, devices): a dataset holds
    regular files only."""
