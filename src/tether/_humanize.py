"""How times, sizes and values read to a person: `3h ago`, `1.5 MiB`, a repr cut short.
Shared by the CLI, the UI and the messages of refusals."""

from __future__ import annotations

import re
from datetime import UTC, datetime


def ago(iso: str | None) -> str:
    """``2026-11-26T06:00:00Z`` as ``3h ago``; text that is not a time comes back as it is."""
    if not iso:
        return ""
    from ._metadata.clock import parse_iso  # lazily: the CLI's start-up stays light

    try:
        seconds = (datetime.now(UTC) - parse_iso(iso)).total_seconds()
    except (ValueError, TypeError):
        return iso
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(int(seconds), 0)}s ago"


def short_repr(value: object, limit: int = 80) -> str:
    """``value``'s repr for a message, cut short: it came from a caller or a file."""
    try:
        text = repr(value)
    except ValueError:  # an int of thousands of digits has no repr
        return f"a number of {value.bit_length()} bits" if isinstance(value, int) else "?"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def human_bytes(size: float | None) -> str:
    """A byte count in binary units: ``512 B``, ``1.5 MiB``."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """``value`` as text that shows as itself on a terminal: its control characters
    escaped (``\x1b`` for ESC). Names, authors and tags come from a registry, perhaps a
    hostile server: an escape sequence in one erased a row of `tether deploy sign`'s
    table and drew another in its place, just before it asked for a yes (a review)."""
    text = "" if value is None else str(value)
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
