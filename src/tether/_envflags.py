"""On/off environment switches, read one way everywhere.

Each switch used to parse its own values (``TETHER_NATIVE`` knew only ``0``,
``TETHER_STAT_CACHE`` ``off`` or ``0``, ``TETHER_LOCK=0`` named a lock file
called ``0``), so a user who wrote ``off`` for one and ``0`` for another got
a switch silently left on.
"""

from __future__ import annotations

import os

OFF = frozenset({"0", "off", "no", "false"})
ON = frozenset({"1", "on", "yes", "true"})


def env_off(name: str) -> bool:
    """Whether switch ``name`` is turned off: ``0``, ``off``, ``no`` or ``false``, any case."""
    return os.environ.get(name, "").strip().lower() in OFF


def env_on(name: str) -> bool:
    """Whether switch ``name`` is turned on: ``1``, ``on``, ``yes`` or ``true``, any case."""
    return os.environ.get(name, "").strip().lower() in ON
