"""A replica of a deployment stored in the registry: follow it, report, and maybe judge.

`tether serve --deployment NAME` keeps no state of its own. On every
supervisor tick it asks the registry for the deployment's revision (the
ETag: an unchanged record costs one small read) and takes new weights,
targets and pauses live. About once a second it sends a heartbeat with its
window statistics per route and version; the heartbeat also takes or renews
the deployment's lease. Only the replica holding the lease judges the
rollback rules, over the sum of every live replica's windows, and asks the
registry to roll the route back from the failing version: the registry
checks the lease and the version in the same transaction, so a breach is one
rollback and one audit event, and every replica switches by following.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._deployment import Deployment, ServerConfig, parse_deployment
from .._errors import InvalidInput, TetherError
from .rollback import first_breach
from .window import merge

if TYPE_CHECKING:
    from .._contract import RegistryAPI
    from .runtime import ServingRuntime

log = logging.getLogger("tether.serving")

#: Seconds between heartbeats (window statistics, lease).
BEAT = 1.0
#: A (route, version) the leader rolled back is not judged again for this long (seconds).
ACTED_FOR = 30.0


def deployment_from_record(record: Mapping[str, Any], server: ServerConfig, *,
                           vouched: Mapping[str, Mapping[str, float]] | None = None
                           ) -> Deployment:
    """The deployment a replica serves: the stored spec, paused routes at weight 0.

    ``vouched``: per trusted endpoint, the digests a deployment signature this process
    checked lets load as trusted (``RegistryAPI.vouched_deployment_digests``); None
    when the record is the replica's own."""
    try:
        paused = set(record.get("paused") or [])
        spec = {**record["spec"], "endpoints": {
            endpoint: {**body, "routes": [
                {**r, "weight": 0.0 if f"{endpoint}/{r['name']}" in paused else r["weight"]}
                for r in body["routes"]]}
            for endpoint, body in record["spec"]["endpoints"].items()}}
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise InvalidInput(f"the stored record of the deployment is unreadable: "
                           f"{type(error).__name__}: {str(error)[:200]}",
                           hint="it was changed outside Tether; `tether deploy rollback "
                           "NAME` makes a readable revision current") from None
    # Every route paused would be refused by the parser; the registry never stores that.
    deployment = parse_deployment(spec, source=None)
    endpoints = deployment.endpoints
    if vouched is not None:
        endpoints = tuple(replace(e, trusted_until=dict(vouched.get(e.name, {})))
                          if e.trusted else e for e in endpoints)
    return Deployment(endpoints, server, None, deployment.auth)


def followed(registry: RegistryAPI, name: str, record: dict[str, Any],
             server: ServerConfig) -> Deployment:
    """The deployment a replica of ``registry`` serves from ``record`` of deployment
    ``name``, with the trust it checked itself."""
    return deployment_from_record(
        record, server, vouched=registry.vouched_deployment_digests(name, record))


def load_from_registry(registry: RegistryAPI, name: str,
                       server: ServerConfig) -> tuple[Deployment, dict[str, Any]]:
    record = registry.deployment(name)
    return followed(registry, name, record, server), record


class DeploymentFollower:
    """The registry side of one replica (one serving process)."""

    def __init__(self, runtime: ServingRuntime, name: str, revision: int, *,
                 url: str = "") -> None:
        self.runtime = runtime
        self.registry = runtime.registry
        self.name = name
        self.revision = revision
        self.url = url
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.leader = False
        self._last_beat = 0.0
        self._acted: dict[tuple[str, str, str], float] = {}
        self._uncounted = False
        #: The newest revision refused as a whole, and why (reported with each beat).
        self.refused_revision: int | None = None
        self.refusal: str | None = None

    # -- following ---------------------------------------------------------------------

    def tick(self) -> None:
        """Called by the supervisor every ``poll_interval``. The heartbeat goes on whatever
        the poll met: a revision that could not be read stopped it, and the replica showed
        as gone, without the lease, its rollback rules unjudged (a review)."""
        try:
            self.poll()
        finally:
            if time.monotonic() - self._last_beat >= BEAT * 0.95:
                self.beat()

    def poll(self) -> bool:
        """Take a new revision of the record if there is one; True when one was taken.

        One that cannot be read or applied is refused as a whole: what is served stays,
        every endpoint loses its trust (the revision may have dropped it), the refusal is
        in the replica's report (``tether deploy status``), and it is not read again."""
        record = self.registry.deployment(self.name, known_revision=self.revision)
        if record.get("unchanged"):
            return False
        revision = record.get("revision")
        if not isinstance(revision, int) or revision == self.refused_revision:
            return False
        parsed = False
        try:
            new = followed(self.registry, self.name, record, self.runtime.deployment.server)
            parsed = True
            self.runtime.apply(new)  # refuses with no endpoint given more trust than it had
        except Exception as error:  # a record of the wrong shape too: refused, not a crash
            message = error.message if isinstance(error, TetherError) else (
                f"the record is unreadable: {type(error).__name__}: {str(error)[:200]}")
            log.error("revision %s of deployment %s not applied: %s", revision, self.name,
                      message, extra={"hint": getattr(error, "hint", None)})
            if not parsed:  # what it would trust cannot be known: nothing is (a review)
                for endpoint in self.runtime.endpoints.values():
                    endpoint.pool.set_trust(False, {})
            self.refused_revision, self.refusal = revision, message[:500]
            return False
        self.revision, self.refused_revision, self.refusal = revision, None, None
        log.info("following revision %d of deployment %s", self.revision, self.name,
                 extra={"deployment": self.name, "revision": self.revision})
        return True

    # -- reporting ---------------------------------------------------------------------

    def collect(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(statistics, info) of this replica: per ``endpoint/route``, the window of the
        version it serves now."""
        stats: dict[str, Any] = {}
        routes: dict[str, Any] = {}
        for endpoint in self.runtime.endpoints.values():
            weights = endpoint.router.weights
            for name, slot in endpoint.slots.items():
                key = f"{endpoint.name}/{name}"
                loaded = slot.current
                routes[key] = {"ref": loaded.ref if loaded else None, "status": slot.status,
                               "weight": weights.get(name),
                               # Cut short: the registry keeps at most 64 KB of a replica's
                               # state, and dropped it whole past that.
                               "problem": slot.problem[:500] if slot.problem else None}
                if loaded is not None:
                    stats[key] = {"digest": loaded.digest, "ref": loaded.ref,
                                  **slot.window.export()}
        info = {"ready": self.runtime.ready, "revision": self.revision, "routes": routes,
                "leader": self.leader}
        if self.refused_revision is not None:
            info["refused"] = {"revision": self.refused_revision, "why": self.refusal}
        return stats, info

    def beat(self) -> None:
        self._last_beat = time.monotonic()
        stats, info = self.collect()
        answer = self.registry.replica_heartbeat(
            self.name, self.replica, host=socket.gethostname(), pid=os.getpid(), url=self.url,
            started_at=self.started_at, info=info, stats=stats, lead=True)
        if bool(answer["leader"]) != self.leader:
            log.info("%s the lease of deployment %s", "took" if answer["leader"] else "lost",
                     self.name, extra={"deployment": self.name, "replica": self.replica})
        self.leader = bool(answer["leader"])
        if answer.get("stats_counted") is False and not self._uncounted:
            self._uncounted = True
            log.warning("this replica's windows are not counted for rollbacks of deployment "
                        "%s, and it never holds the lease: its token may not move the "
                        "deployment's traffic (unless a replica whose token may runs, no "
                        "rollback rule is judged)", self.name,
                        extra={"deployment": self.name})
        if answer.get("revision") not in (self.revision, self.refused_revision):
            self.poll()
        if self.leader:
            self.judge()

    def leave(self) -> None:
        try:
            self.registry.leave_deployment(self.name, self.replica)
        except Exception:  # stopping: the heartbeat's expiry marks it gone anyway
            log.warning("could not tell the registry this replica stops", exc_info=True)

    # -- judging (the lease holder only) -------------------------------------------------

    def judge(self) -> None:
        if not any(e.config.rollback.rules for e in self.runtime.endpoints.values()):
            return  # nothing to judge: spare the registry the read
        status = self.registry.deployment_status(self.name)
        record = status["deployment"]
        deployment = deployment_from_record(record, self.runtime.deployment.server)
        live = [r for r in status["replicas"] if r["live"]]
        now = time.monotonic()
        self._acted = {k: t for k, t in self._acted.items() if now - t < ACTED_FOR}
        for config in deployment.endpoints:
            rules = config.rollback
            if not rules.rules:
                continue
            for route in config.routes:
                if route.weight <= 0:
                    continue
                key = f"{config.name}/{route.name}"
                by_digest: dict[str, list[dict[str, Any]]] = {}
                refs: dict[str, str] = {}
                seen_by: dict[str, list[str]] = {}
                for replica in live:
                    entry = (replica.get("stats") or {}).get(key)
                    if entry:
                        by_digest.setdefault(entry["digest"], []).append(entry)
                        refs[entry["digest"]] = entry["ref"]
                        seen_by.setdefault(entry["digest"], []).append(str(replica["replica"]))
                for digest, exports in by_digest.items():
                    if (config.name, route.name, digest) in self._acted:
                        continue
                    try:
                        snapshot = merge(exports)
                    except (TypeError, ValueError, KeyError):  # one route's, not all judging
                        log.warning("unreadable statistics for %s of %s", key, digest[:12])
                        continue
                    breach = first_breach(rules.rules, snapshot, rules.min_requests)
                    if breach is None:
                        continue
                    # Whose windows they were, in the reason kept with the rollback.
                    by = ", ".join(sorted(seen_by[digest])[:5])
                    self._act(config.name, route.name, digest, refs[digest],
                              breach.reason(refs[digest])
                              + f" (over {len(exports)} replicas: {by})",
                              breach.rule.describe(), breach.value)

    def _act(self, endpoint: str, route: str, digest: str, ref: str, reason: str,
             rule: str, value: float) -> None:
        self._acted[(endpoint, route, digest)] = time.monotonic()
        try:
            result = self.registry.rollback_route(self.name, endpoint=endpoint, route=route,
                                                  failing=digest, reason=reason,
                                                  holder=self.replica)
        except TetherError as error:
            log.error("cannot roll back %s/%s of deployment %s: %s", endpoint, route, self.name,
                      error.message, extra={"hint": error.hint, "deployment": self.name})
            return
        if not result.get("rolled_back"):
            log.info("no rollback of %s/%s: %s", endpoint, route, result.get("why"))
            return
        log.warning("rolled back %s/%s of deployment %s from %s to %s", endpoint, route,
                    self.name, result.get("from"), result.get("to") or "the other routes",
                    extra={"deployment": self.name, "rule": rule, "value": value,
                           "via": result.get("via")})
        served = self.runtime.endpoints.get(endpoint)
        if served is not None:
            served.note_rollback({
                "at": datetime.now(UTC).isoformat(timespec="seconds"), "route": route,
                "from": ref, "to": result.get("to"), "reason": reason,
                "via": result.get("via")})
        self.poll()  # a pinned route's rollback is a new revision: take it now
        if served is not None:
            served.poll_now()
