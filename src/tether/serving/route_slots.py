"""A route (or a shadow) of an endpoint: the target it follows and the version it serves.

Which route a request goes to is :mod:`.router`'s job (the weighted traffic split).

``current`` is replaced by one assignment once the new version is loaded and
warmed, so a request that has read it finishes on that version while new
requests see the next one: the blue-green switch. ``previous`` keeps the
versions served before, newest last, for rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._reference import SelectorKind, parse_reference
from .pool import LoadedModel
from .window import Window

#: Versions a route keeps loaded behind the current one, for a quick rollback.
KEEP_PREVIOUS = 2


@dataclass
class RouteSlot:
    name: str
    target: str
    window_seconds: float
    current: LoadedModel | None = None
    previous: list[LoadedModel] = field(default_factory=list)
    #: Alias generation (alias targets) or digest (latest/range targets) last acted on.
    generation: Any = None
    status: str = "loading"
    problem: str | None = None
    busy: bool = False
    #: Jobs asked for while one ran, each once: they run next, in order (Endpoint.submit).
    pending: list[Any] = field(default_factory=list)
    window: Window = field(init=False)

    def __post_init__(self) -> None:
        self.window = Window(self.window_seconds)

    @property
    def reference(self) -> Any:
        return parse_reference(self.target)

    @property
    def follows(self) -> str | None:
        """``alias`` when the target is an alias, ``moving`` for latest/~range, else None."""
        kind = self.reference.kind
        if kind is SelectorKind.ALIAS:
            return "alias"
        if kind in (SelectorKind.LATEST, SelectorKind.SEMVER_RANGE):
            return "moving"
        return None

    def switch(self, loaded: LoadedModel) -> LoadedModel | None:
        """Serve ``loaded`` from now on; returns the version it replaces."""
        old = self.current
        if old is not None and old.version.digest != loaded.version.digest:
            self.previous = [m for m in self.previous if m.version.digest != loaded.version.digest]
            self.previous.append(old)
            del self.previous[:-KEEP_PREVIOUS]
        self.window = Window(self.window_seconds)  # judge the new version on its own requests
        self.current = loaded
        self.status, self.problem = "ready", None
        return old

    def take_previous(self, digest: str | None = None) -> LoadedModel | None:
        """The newest previous version (or the one with ``digest``), removed from the list."""
        for index in range(len(self.previous) - 1, -1, -1):
            if digest is None or self.previous[index].version.digest == digest:
                return self.previous.pop(index)
        return None

    def describe(self, weight: float | None) -> dict[str, Any]:
        current = self.current
        return {
            "name": self.name,
            "target": self.target,
            "weight": weight,
            "ref": current.ref if current else None,
            "version": current.version.semver if current else None,
            "digest": current.digest if current else None,
            "status": self.status,
            "problem": self.problem,
            "previous": [m.ref for m in self.previous],
            "window": self.window.snapshot(),
        }
