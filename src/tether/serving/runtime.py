"""A serving process: its endpoints, the shadow mirror and the supervisor thread.

The supervisor ticks every ``poll_interval`` seconds: each endpoint polls its
targets (cheap alias reads with ETags) and judges its rollback rules, and a
changed deployment file is re-read so weights and targets change without a
restart.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._envflags import env_on
from .._errors import InvalidInput, NotFound, TetherError
from .auth import ServingAuth
from .config import Deployment, load_deployment
from .endpoint import Endpoint
from .follower import DeploymentFollower
from .instruments import Instruments
from .pool import LoadedModel
from .route_slots import RouteSlot
from .shadow import ShadowMirror
from .targets import poll_target

if TYPE_CHECKING:
    from .._contract import RegistryAPI

log = logging.getLogger("tether.serving")


class ServingRuntime:
    def __init__(self, registry: RegistryAPI, deployment: Deployment, *,
                 follow: tuple[str, int] | None = None, replica_url: str = "") -> None:
        """``follow``: (name, revision) of the stored deployment this replica follows."""
        self.registry = registry
        self.deployment = deployment
        self.follower: DeploymentFollower | None = None
        self.auth = ServingAuth(registry, deployment.auth)  # refuses a missing serving token
        self.instruments = Instruments()
        # TETHER_SHADOW_IN_PROCESS=1: shadows in a thread of this process (for comparison).
        self.mirror = ShadowMirror(self.instruments, self._shadows_of,
                                   in_process=env_on("TETHER_SHADOW_IN_PROCESS"))
        self.endpoints = {
            e.name: Endpoint(e, registry, self.instruments, self.mirror.submit,
                             deployment=follow[0] if follow else None)
            for e in deployment.endpoints
        }
        self.instruments.drift_psi.set_function(lambda: self._drift_samples("psi"))
        self.instruments.drift_ks.set_function(lambda: self._drift_samples("ks"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source_mtime = self._mtime()
        if follow is not None:
            self.follower = DeploymentFollower(self, follow[0], follow[1], url=replica_url)
            for endpoint in self.endpoints.values():
                endpoint.judge_locally = False

    def start(self) -> None:
        """Load every version (raising the registry's refusal), then start the threads."""
        for endpoint in self.endpoints.values():
            endpoint.start()
        self.mirror.start()
        self._thread = threading.Thread(target=self._supervise, name="tether-supervisor",
                                        daemon=True)
        self._thread.start()
        if self.follower is not None:
            try:
                self.follower.beat()  # seen (and maybe leading) at once, not a tick later
            except TetherError as error:
                log.error("first heartbeat failed: %s", error.message,
                          extra={"hint": error.hint})
            except Exception:
                log.exception("first heartbeat failed")
        log.info("serving %d endpoint(s)", len(self.endpoints),
                 extra={"endpoints": sorted(self.endpoints)})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.follower is not None:
            self.follower.leave()
        self.mirror.stop()
        for endpoint in self.endpoints.values():
            endpoint.stop()

    def endpoint(self, name: str) -> Endpoint:
        found = self.endpoints.get(name)
        if found is None:
            raise NotFound(f"no endpoint {name!r}",
                           hint=f"endpoints: {', '.join(sorted(self.endpoints))}")
        return found

    @property
    def ready(self) -> bool:
        return all(e.ready for e in self.endpoints.values())

    def status(self) -> dict[str, Any]:
        follower = self.follower
        following = None if follower is None else {
            "deployment": follower.name, "revision": follower.revision,
            "replica": follower.replica, "leader": follower.leader}
        return {"ready": self.ready, "source": self.deployment.source, "following": following,
                "endpoints": [e.status() for e in self.endpoints.values()],
                "shadow_pairs": [
                    {"endpoint": k[0], "primary": k[1], "shadow": k[2], "compared": v[0],
                     "disagreed": v[1], "rate": v[1] / v[0] if v[0] else 0.0}
                    for k, v in self.mirror.comparisons().items()]}

    def _shadows_of(self, name: str) -> list[LoadedModel]:
        endpoint = self.endpoints.get(name)
        return endpoint.shadow_models() if endpoint else []

    def _drift_samples(self, key: str) -> list[tuple[tuple[str, ...], float]]:
        out: list[tuple[tuple[str, ...], float]] = []
        for endpoint in self.endpoints.values():
            for slot in endpoint.slots.values():
                loaded = slot.current
                if loaded is None or not loaded.drift.enabled:
                    continue
                for feature, entry in loaded.drift.report().items():
                    if entry.get(key) is not None:
                        out.append(((endpoint.name, *loaded.labels, feature), entry[key]))
        return list(dict(out).items())  # one sample per label set

    # -- the supervisor -------------------------------------------------------------------

    def _supervise(self) -> None:
        interval = self.deployment.server.poll_interval
        while not self._stop.wait(interval):
            # Each step on its own: a failing heartbeat skipped every endpoint's checks
            # (alias polling, rules) for as long as it failed (a review).
            steps = [self._reload_if_changed]
            if self.follower is not None:
                steps.append(self.follower.tick)
            steps += [endpoint.check for endpoint in self.endpoints.values()]
            steps.append(self.instruments.publish)
            for step in steps:
                try:
                    step()
                except TetherError as error:  # said without a traceback
                    log.error("supervisor step failed: %s", error.message,
                              extra={"hint": error.hint})
                except Exception:  # the supervisor must keep ticking
                    log.exception("supervisor step failed")

    def _mtime(self) -> float | None:
        source = self.deployment.source
        try:
            return Path(source).stat().st_mtime if source else None
        except OSError:
            return None

    def _reload_if_changed(self) -> None:
        mtime = self._mtime()
        if mtime is None or mtime == self._source_mtime:
            return
        self._source_mtime = mtime
        assert self.deployment.source is not None
        try:
            new = load_deployment(self.deployment.source)
            self.apply(new)
        except TetherError as error:
            log.error("deployment file not applied: %s", error.message,
                      extra={"source": self.deployment.source, "hint": error.hint})

    def reload(self) -> dict[str, Any]:
        """Re-read the deployment file now and poll every target (``POST /v1/reload``)."""
        if self.follower is not None:
            self.follower.poll()
            for endpoint in self.endpoints.values():
                endpoint.poll_now()
            return self.status()
        if self.deployment.source is None:
            raise InvalidInput("this deployment was not read from a file; there is nothing "
                               "to re-read", hint="serve a deployment file to reload it")
        self._source_mtime = self._mtime()
        self.apply(load_deployment(self.deployment.source))
        for endpoint in self.endpoints.values():
            for slot in [*endpoint.slots.values(), *endpoint.shadows]:
                endpoint.submit(slot, functools.partial(poll_target, endpoint, slot))
        return self.status()

    def apply(self, new: Deployment) -> None:
        """Take new weights and targets for existing routes from a changed deployment.

        Its trust is taken first, for every endpoint, whatever else of it is refused: a
        revision that dropped ``trusted`` but was refused for a new endpoint, or that
        removed the endpoint, left the pool trusting, and the next version its alias
        named (any contributor's, once the alias was no longer protected) loaded
        trusted (a review). The rest is checked whole before anything changes."""
        configs = {c.name: c for c in new.endpoints}
        for name, endpoint in self.endpoints.items():
            config = configs.get(name)
            if config is None:  # gone from the deployment: nothing more loads trusted
                endpoint.pool.set_trust(False, {})
            else:
                # Only less for now: more trust comes with the targets it was given for
                # (a second review: a refused revision that made an endpoint trusted left
                # its old, unprotected alias loading trusted).
                endpoint.pool.set_trust(*_less_trust(endpoint.pool.trust,
                                                     (config.trusted, config.trusted_until)))
        if new.auth != self.deployment.auth:
            raise InvalidInput("the auth section of the deployment file changed; restart to "
                               "change who may call this server")
        for config in new.endpoints:
            if config.name not in self.endpoints:
                raise InvalidInput(f"endpoint {config.name!r} is new; restart to add endpoints")
            if {r.name for r in config.routes} != set(self.endpoints[config.name].slots):
                raise InvalidInput(f"the routes of {config.name!r} changed; restart to add or "
                                   "remove routes (weights and targets change live)")
        for config in new.endpoints:
            endpoint = self.endpoints[config.name]
            endpoint.pool.set_trust(config.trusted, config.trusted_until)  # before its loads
            for route in config.routes:
                slot = endpoint.slots[route.name]
                if slot.target != route.target:
                    slot.target, slot.generation = route.target, None
                    if slot.follows is None:  # a new pinned version: load it like a move
                        endpoint.submit(slot, functools.partial(_repin, endpoint, slot))
            endpoint.set_weights({r.name: r.weight for r in config.routes}, merge=False)
            endpoint.config = config
        self.deployment = new
        log.info("deployment re-read", extra={"source": new.source})


Trust = tuple[bool, Mapping[str, float] | None]


def _less_trust(old: Trust, new: Trust) -> Trust:
    """What both ``old`` and ``new`` allow: trusted only if both are, each digest until
    the earlier of its two times (a map of None allows every digest)."""
    trusted = old[0] and new[0]
    if old[1] is None or new[1] is None:
        return trusted, new[1] if old[1] is None else old[1]
    return trusted, {d: min(t, new[1][d]) for d, t in old[1].items() if d in new[1]}


def _repin(endpoint: Endpoint, slot: RouteSlot) -> None:
    """Load what the slot's pinned target names now and switch to it. If the target moved
    again while a version loaded, that version is not switched to: what the target names
    now is loaded instead (a revision that moved a route and moved it back within a load
    left it serving a version no revision routed to, for good: a review)."""
    from .targets import load_or_report, switch

    while True:
        target = slot.target
        loaded = load_or_report(endpoint, slot, endpoint.registry.get(target))
        if slot.target != target:
            continue
        if loaded is not None:
            switch(endpoint, slot, loaded)
        return
