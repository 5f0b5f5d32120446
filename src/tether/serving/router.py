"""The weighted traffic split: choosing a route for a request, sticky per request key.

What a route serves (its target, loaded versions, window) is a ``RouteSlot``
in :mod:`.route_slots`.

A request with a key (a user id, a session) always lands on the same route
while the weights stay the same: the key hashes to a point in [0, 1) and the
cumulative weights cut that interval into one slice per route. Moving a weight
moves only the keys in the slice that changed hands. Without a key the point
is random. Weights are replaced whole, atomically (one reference assignment).
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Mapping, Sequence

from .._errors import InvalidInput


class WeightedRouter:
    """Route names and weights; ``choose(key)`` picks one."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        self._table: tuple[tuple[float, ...], tuple[str, ...]] = ((), ())
        self._random = random.Random()
        self.set_weights(weights)

    @property
    def weights(self) -> dict[str, float]:
        bounds, names = self._table
        previous = 0.0
        out: dict[str, float] = {}
        for bound, name in zip(bounds, names, strict=True):
            out[name] = round((bound - previous) * self._total, 9)
            previous = bound
        return out

    def set_weights(self, weights: Mapping[str, float]) -> None:
        if not weights:
            raise InvalidInput("a router needs at least one route")
        for name, weight in weights.items():
            if weight < 0:
                raise InvalidInput(f"route {name!r} has a negative weight ({weight:g})")
        total = float(sum(weights.values()))
        if total <= 0:
            raise InvalidInput("the route weights add up to 0", hint="give some route a weight")
        bounds: list[float] = []
        names: list[str] = []
        running = 0.0
        for name, weight in weights.items():
            running += weight
            bounds.append(running / total)
            names.append(name)
        bounds[-1] = 1.0
        self._total = total
        self._table = (tuple(bounds), tuple(names))

    def choose(self, key: str | None = None) -> str:
        bounds, names = self._table  # one read: a concurrent set_weights is seen whole
        point = key_point(key) if key is not None else self._random.random()
        index = bisect.bisect_right(bounds, point)
        # Skip routes of weight 0 (equal bounds), landing on the next live one.
        return names[min(index, len(names) - 1)]

    def live_routes(self) -> Sequence[str]:
        return [name for name, weight in self.weights.items() if weight > 0]


def key_point(key: str) -> float:
    """A stable point in [0, 1) for a request key."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
