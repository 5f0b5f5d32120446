"""Following targets and rolling back: the loader-thread side of an endpoint.

`poll_target` notices a moved alias (its generation is the ETag) or a new
newest version, loads and warms it, then switches the route. `rollback_slot`
acts on a broken rule. Both run on the endpoint's loader thread, one at a time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._errors import Conflict, TetherError
from .logs import version_fields
from .pool import LoadedModel
from .rollback import Breach
from .route_slots import RouteSlot

if TYPE_CHECKING:
    from .._records import ModelVersion
    from .endpoint import Endpoint

log = logging.getLogger("tether.serving")


def poll_target(endpoint: Endpoint, slot: RouteSlot, *, now: bool = False) -> None:
    """Serve what the slot's target names now; ``now`` (start-up) raises on refusal."""
    if slot.current is not None and slot.follows is None:
        return  # pinned: nothing moves
    registry, ref = endpoint.registry, slot.reference
    if slot.follows == "alias":
        state = registry.alias(ref.name, ref.value)
        marker: Any = state["generation"]
        digest = str(state["digest"])
    else:
        found = registry.get(slot.target)
        marker = digest = f"sha:{found.digest}"
    if marker == slot.generation:
        return
    version = registry.get(f"{ref.name}@{digest}")
    if slot.current is not None and slot.current.version.digest == version.digest:
        slot.generation = marker
        return
    if now:  # start-up: the refusal is raised
        loaded: LoadedModel | None = (endpoint.pool.reuse(slot.take_previous(version.digest))
                                      or endpoint.pool.load(version))
    else:
        loaded = load_or_report(endpoint, slot, version)
    if loaded is not None:
        switch(endpoint, slot, loaded)
    slot.generation = marker  # a refused one is tried again when the target moves again


def keep_earlier_loaded(endpoint: Endpoint, slot: RouteSlot) -> None:
    """At start-up, load the version the slot's alias pointed at before its current one,
    as if the route had served it: rolling back to it is then a switch, not a load, and
    a refusal by it of records the current version refuses too tells the records'
    fault from the version's (``Endpoint._failed``). Best effort: a version that is
    gone or refused is left out, and logged."""
    current = slot.current
    if current is None or slot.follows != "alias" or slot.previous:
        return
    ref = slot.reference
    try:
        moves = endpoint.registry.alias_history(ref.name, ref.value)  # newest first
        earlier = next((m.version for m in moves if m.version and not m.undone
                        and m.version != current.version.semver), None)
        if earlier is None:
            return
        version = endpoint.registry.get(f"{ref.name}@{earlier}")
        if version.digest != current.version.digest:
            slot.previous = [endpoint.pool.load(version)]
    except TetherError as error:
        log.info("not keeping %s's earlier version loaded for %s/%s: %s", slot.target,
                 endpoint.name, slot.name, error.message,
                 extra={"endpoint": endpoint.name, "route": slot.name})


def load_or_report(endpoint: Endpoint, slot: RouteSlot, version: ModelVersion
                   ) -> LoadedModel | None:
    """``version`` loaded for ``slot``; None when the registry refuses it, which is then
    the slot's problem (shown in status) and logged, and the slot keeps serving."""
    try:
        return (endpoint.pool.reuse(slot.take_previous(version.digest))
                or endpoint.pool.load(version))
    except TetherError as error:
        slot.problem = f"refused {version.ref}: {error.message}"
        log.error("refused to load %s for %s/%s: %s", version.ref, endpoint.name, slot.name,
                  error.message, extra={"endpoint": endpoint.name, "route": slot.name,
                                        "hint": error.hint, **version_fields(version)})
        return None


def switch(endpoint: Endpoint, slot: RouteSlot, loaded: LoadedModel, *,
           keep_old: bool = True) -> None:
    """Point ``slot`` at ``loaded`` (already warm) and record it."""
    old = slot.switch(loaded)
    if old is not None and not keep_old:
        slot.previous = [m for m in slot.previous if m is not old]
    gauge = endpoint.instruments.route_version
    if old is not None:
        gauge.remove(endpoint.name, slot.name, *old.labels)
        endpoint.instruments.swaps.inc(endpoint.name, slot.name)
    gauge.set(1, endpoint.name, slot.name, *loaded.labels)
    endpoint.pool.forget([m for s in [*endpoint.slots.values(), *endpoint.shadows]
                          for m in ([s.current] if s.current else []) + s.previous])
    log.info("%s/%s now serves %s", endpoint.name, slot.name, loaded.ref,
             extra={"endpoint": endpoint.name, "route": slot.name,
                    "replaced": old.ref if old else None, **version_fields(loaded.version)})


def rollback_slot(endpoint: Endpoint, slot: RouteSlot, breach: Breach) -> None:
    """Move the route (or its alias) back to the last good version."""
    failing = slot.current
    if failing is None:
        return
    reason = breach.reason(failing.ref)
    fields = {"endpoint": endpoint.name, "route": slot.name, "rule": breach.rule.describe(),
              "value": breach.value, **version_fields(failing.version)}
    log.warning("%s", reason, extra=fields)
    entry: dict[str, Any] = {"at": datetime.now(UTC).isoformat(timespec="seconds"),
                             "route": slot.name, "from": failing.ref, "reason": reason}
    if slot.follows == "alias" and _rollback_alias(endpoint, slot, reason, entry):
        pass
    elif (previous := endpoint.pool.reuse(slot.take_previous())) is not None:
        switch(endpoint, slot, previous, keep_old=False)
        entry.update(to=previous.ref, via="route")
        _audit(endpoint, slot, failing, previous.ref, reason)
    elif any(w > 0 for n, w in endpoint.router.weights.items() if n != slot.name):
        endpoint.set_weights({slot.name: 0.0})
        slot.status = "drained"
        slot.window.reset()
        entry.update(to=None, via="weights")
        _audit(endpoint, slot, failing, None, reason)
    else:
        slot.problem = f"rule broken but nothing to roll back to: {reason}"
        slot.window.reset()
        log.error("cannot roll back %s/%s: no earlier version and no other route",
                  endpoint.name, slot.name, extra=fields)
        return
    slot.problem = f"rolled back from {failing.ref}: {breach.rule.describe()}"
    endpoint.note_rollback(entry)
    log.warning("rolled back %s/%s from %s to %s", endpoint.name, slot.name, failing.ref,
                entry.get("to") or "the other routes", extra={**fields, "to": entry.get("to")})


def _rollback_alias(endpoint: Endpoint, slot: RouteSlot, reason: str,
                    entry: dict[str, Any]) -> bool:
    registry, ref = endpoint.registry, slot.reference
    failing = slot.current
    try:
        # Only from the version this process saw fail: another replica (or worker) that
        # saw it too may have rolled back first, and a second rollback would go one
        # version further back than the last good one.
        # And only if the alias has not moved since this process last looked: a late
        # rollback would otherwise undo someone promoting that version again.
        generation = slot.generation if isinstance(slot.generation, int) else None
        registry.rollback(ref.name, ref.value, reason=reason,
                          from_digest=failing.digest if failing is not None else None,
                          from_generation=generation)
    except Conflict:
        entry.update(note="the alias had already been moved; following it")
    except TetherError as error:
        log.error("cannot roll back alias %s: %s", slot.target, error.message,
                  extra={"endpoint": endpoint.name, "route": slot.name,
                         **(version_fields(failing.version) if failing is not None else {})})
        return False
    state = registry.alias(ref.name, ref.value)
    version = registry.get(f"{ref.name}@{state['digest']}")
    loaded = (endpoint.pool.reuse(slot.take_previous(version.digest))
              or endpoint.pool.load(version))
    switch(endpoint, slot, loaded, keep_old=False)
    slot.generation = state["generation"]
    entry.update(to=loaded.ref, via="alias")
    return True


def _audit(endpoint: Endpoint, slot: RouteSlot, failing: LoadedModel, after: str | None,
           reason: str) -> None:
    try:
        endpoint.registry.record_route_rollback(
            failing.version.name, endpoint=endpoint.name, route=slot.name,
            before=failing.ref, after=after, reason=reason)
    except Exception:  # the rollback stands even if the audit write fails
        log.exception("could not record the rollback in the audit log",
                      extra={"endpoint": endpoint.name, "route": slot.name})
