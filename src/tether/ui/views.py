"""What each page shows, as plain JSON-friendly dicts.

Every function here takes a registry already acting for the signed-in user
and calls only the registry's public methods (the same use cases as the CLI
and the REST API). The HTML page renders the dict; its JSON twin is the dict.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .._errors import IntegrityError, InvalidInput, NotFound, PermissionDenied, TetherError
from .._humanize import ago, human_bytes
from .._policy import Policy, protected_alias_patterns, role_rank, role_to_move
from .._records import AliasMove, Event, ModelVersion
from .._registry.compare import KnownChunks, diff_versions
from .._registry.registry import Registry
from .chart import line_chart

PAGE_SIZE = 50
#: Aliases whose moves need the approver role unless the registry says otherwise
#: (the setting the REST API reads, so both shells ask for the same role).


# -- who may do what ------------------------------------------------------------


class Permissions:
    """The signed-in user's roles, from the registry's grants (read once per request)."""

    def __init__(self, registry: Registry, principal: str) -> None:
        self.registry = registry
        self.principal = principal
        self._roles: dict[str | None, tuple[str, ...]] = {}
        self._protected: tuple[str, ...] | None = None

    def roles(self, model: str | None) -> tuple[str, ...]:
        if model not in self._roles:
            self._roles[model] = self.registry.roles(self.principal, model)
        return self._roles[model]

    def allows(self, role: str, model: str | None) -> bool:
        needed = role_rank(role)
        return any(role_rank(r) >= needed for r in self.roles(model))

    def protected(self) -> tuple[str, ...]:
        if self._protected is None:
            setting = self.registry.get_setting("protected_aliases")
            self._protected = protected_alias_patterns(setting)
        return self._protected

    def role_to_move(self, alias: str) -> str:
        # Only to decide which forms to show: the use case enforces the same rule.
        return role_to_move(alias, ",".join(self.protected()))

    def may_move(self, model: str, alias: str, policy: Policy | None) -> bool:
        """Whether the forms that move ``model@alias`` are shown: its protection and the
        roles its policy rule names (a review: a rollback button the policy refused)."""
        if not self.allows(self.role_to_move(alias), model):
            return False
        rule = policy.rule_for(alias) if policy is not None else None
        return rule is None or rule.lets_move(self.roles(model))

    def actions(self, model: str) -> dict[str, bool]:
        """Which action forms to show on a page about ``model``."""
        return {
            "promote": self.allows("contributor", model),
            "rollback": self.allows("contributor", model),
            "approve": self.allows("approver", model),
            "deprecate": self.allows("approver", model),
        }


# -- small helpers --------------------------------------------------------------


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, default=str)
        return text if len(text) <= 80 else text[:79] + "…"
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def move_row(move: AliasMove) -> dict[str, Any]:
    return {**move.to_dict(), "ago": ago(move.moved_at)}


def event_row(event: Event) -> dict[str, Any]:
    return {**event.to_dict(), "ago": ago(event.ts)}


# -- models ---------------------------------------------------------------------


def models_page(
    registry: Registry,
    *,
    q: str = "",
    tag: str = "",
    alias: str = "",
    sort: str = "name",
    page: int = 1,
) -> dict[str, Any]:
    page = min(max(page, 1), 10**9)  # an OFFSET past 64 bits was an OverflowError
    total, shown = registry.search_models(
        query=q, tag=tag, alias=alias, sort=sort, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE
    )
    pages = max(1, math.ceil(total / PAGE_SIZE))
    if page > pages:  # past the end: show the last page
        page = pages
        total, shown = registry.search_models(
            query=q, tag=tag, alias=alias, sort=sort, offset=(page - 1) * PAGE_SIZE,
            limit=PAGE_SIZE,
        )
    return {
        "query": {"q": q, "tag": tag, "alias": alias, "sort": sort, "page": page},
        "total": total,
        "page": page,
        "pages": pages,
        "page_size": PAGE_SIZE,
        "models": [
            {
                **m.to_dict(),
                "owner": ", ".join(m.owners),
                "updated_ago": ago(m.updated_at),
            }
            for m in shown
        ],
    }


# -- one model ------------------------------------------------------------------


#: Aliases a model's page shows (in name order), and moves of each (newest first); the
#: rest are a `tether alias history` away.
ALIASES_SHOWN = 50
HISTORY_SHOWN = 20
#: Events a version's page lists (newest first).
EVENTS_SHOWN = 200
#: Events a filtered audit page looks through (newest first) for its matches.
FILTER_WINDOW = 10_000
#: Versions in a page of a model's table (newest first) ...
VERSIONS_PAGE = 100
#: ... and most points its chart draws (evenly spaced over every version, the newest
#: always among them): a model of 100,000 versions drew a table of them all and a
#: chart of 100,000 points.
CHART_POINTS = 500


def model_page(
    registry: Registry,
    perms: Permissions,
    name: str,
    *,
    columns: Sequence[str] = (),
    chart_metric: str = "",
    page: int = 1,
) -> dict[str, Any]:
    info = registry.model(name)
    # The table and the chart need a few columns of a few versions: the page's, and
    # CHART_POINTS spread over all of them (a model of 50,000 versions took a second
    # a page, decoding every one). The metric names offered are those of the versions
    # read, in order of their first appearance.
    total = registry.count_versions(name)
    pages = max(1, math.ceil(total / VERSIONS_PAGE))
    page = min(max(page, 1), pages)  # past the end: the last page
    shown = registry.version_summaries(name, newest_first=True, limit=VERSIONS_PAGE,
                                       offset=(page - 1) * VERSIONS_PAGE)
    sampled = registry.version_summaries(name, seqs=registry.spread_seqs(name, CHART_POINTS))
    names: dict[str, None] = {}  # in order, each once (a list search was quadratic)
    for v in [*sampled, *reversed(shown)]:
        for key, value in v.metrics.items():
            if key not in names and _number(value) is not None:
                names[key] = None
    metric_names = list(names)
    chosen = [c for c in columns if c in metric_names] or metric_names[:3]
    chart_metric = chart_metric if chart_metric in metric_names else (
        metric_names[0] if metric_names else ""
    )
    if chart_metric and any(_number(v.metrics.get(chart_metric)) is None for v in sampled):
        # Not every version recorded it: spread over those that did (a metric on every
        # other version drew one point of 500).
        sampled = registry.version_summaries(
            name, seqs=registry.spread_seqs(name, CHART_POINTS, metric=chart_metric))
    points = [
        {"seq": v.seq, "semver": v.semver, "value": _number(v.metrics.get(chart_metric))}
        for v in sampled
        if chart_metric and _number(v.metrics.get(chart_metric)) is not None
    ]
    try:
        policy: dict[str, Any] | None = registry.get_policy(name)
    except NotFound:
        policy = None
    rules = _parsed(policy["text"]) if policy else None
    aliases = []
    # At most ALIASES_SHOWN aliases, each with its newest HISTORY_SHOWN moves: a model of
    # 1,000 aliases took 4.6 s a page, one alias moved 4,000 times 1 MB (a review).
    for alias_name, target in sorted(info.aliases.items())[:ALIASES_SHOWN]:
        try:
            history = [move_row(m) for m in registry.alias_history(name, alias_name,
                                                                   HISTORY_SHOWN)]
            # The rollback form sends it back: a form reloaded or sent twice rolled back
            # twice; now a move since the page was drawn refuses it (Conflict).
            generation = registry.alias(name, alias_name)["generation"]
        except NotFound:
            history, generation = [], None
        aliases.append(
            {
                "name": alias_name,
                "target": target,
                "generation": generation,
                "history": history,
                "can_move": perms.may_move(name, alias_name, rules),
                "can_rollback": perms.may_move(name, alias_name, rules)
                and sum(1 for m in history if m["action"] in ("set", "rollback")) > 1,
            }
        )
    return {
        "model": {**info.to_dict(), "updated_ago": ago(info.updated_at)},
        "metric_names": metric_names,
        "columns": chosen,
        "versions": [
            {
                "ref": v.ref,
                "seq": v.seq,
                "semver": v.semver,
                "digest": v.short_digest,
                "metrics": {c: v.metrics.get(c) for c in chosen},
                "metrics_text": {c: fmt(v.metrics.get(c)) for c in chosen},
                "aliases": list(v.aliases),
                "status": v.status,
                "author": v.author,
                "created_at": v.created_at,
                "age": ago(v.created_at),
            }
            for v in shown
        ],
        "version_total": total,
        "page": page,
        "pages": pages,
        "first_shown": (page - 1) * VERSIONS_PAGE + 1 if shown else 0,
        "last_shown": (page - 1) * VERSIONS_PAGE + len(shown),
        "chart": {
            "metric": chart_metric,
            "points": points,
            "svg": line_chart(
                [(f"#{p['seq']} {p['semver']}", float(p["value"] or 0.0)) for p in points]
            ),
        },
        "aliases": aliases,
        "aliases_total": len(info.aliases),
        "policy": policy,
        "roles": list(perms.roles(name)),
        "can": perms.actions(name),
        "protected_aliases": list(perms.protected()),
    }


# -- one version ----------------------------------------------------------------


def _parsed(text: str) -> Policy | None:
    """A stored policy, read once for a page (None if it no longer reads: the use cases
    decide then, and say why)."""
    from .._policy import parse_policy

    try:
        return parse_policy(text)
    except InvalidInput:
        return None


def _production_of(registry: Registry, name: str) -> Any:
    """The summary of the version ``production`` points at, if it does."""
    if "production" not in registry.model(name).aliases:
        return None
    try:
        seq = int(registry.alias(name, "production")["seq"])
    except NotFound:  # moved away meanwhile
        return None
    found = registry.version_summaries(name, seqs=[seq])
    return found[0] if found else None


def _files(version: ModelVersion, previous: ModelVersion | None) -> list[dict[str, Any]]:
    before = KnownChunks(f.chunks for f in previous.files) if previous else KnownChunks(())
    old_paths = {f.path: f.digest for f in previous.files} if previous else {}
    rows = []
    for f in version.files:
        shared = before.shared_bytes(f.chunks)
        if previous is not None and not f.chunks and old_paths.get(f.path) == f.digest:
            shared = f.size
        rows.append(
            {
                "path": f.path,
                "size": f.size,
                "size_text": human_bytes(f.size),
                "digest": f.digest,
                "chunks": len(f.chunks),
                "shared_bytes": shared,
                "shared_text": human_bytes(shared),
                "change": (
                    "new"
                    if previous is None or f.path not in old_paths
                    else ("same" if old_paths[f.path] == f.digest else "changed")
                ),
            }
        )
    return rows


def version_page(registry: Registry, perms: Permissions, ref: str) -> dict[str, Any]:
    version = registry.get(ref)
    name = version.name
    # The neighbours and the production target, looked up (every sibling was read).
    before_seq, after_seq = registry.neighbour_seqs(name, version.seq)
    near = {v.seq: v for v in registry.version_summaries(
        name, seqs=[s for s in (before_seq, after_seq) if s is not None])}
    before = near.get(before_seq) if before_seq is not None else None
    following = near.get(after_seq) if after_seq is not None else None
    production = _production_of(registry, name)
    # Only the previous version and the production target are read whole (each
    # through Registry.get, re-hashed): files to count shared bytes, an environment.
    previous = registry.get(before.ref) if before is not None else None
    env_vs_production = None
    if production is not None and production.id != version.id:
        target = previous if previous is not None and previous.id == production.id else (
            registry.get(production.ref)
        )
        env_vs_production = {
            "target": production.ref,
            "differences": diff_versions(target, version)["environment"],
        }
    trust = registry.trust_facts(version)  # checks the signatures of this resolved version
    valid, problems = list(trust["valid_signers"]), list(trust["signature_problems"])
    events = [event_row(e) for e in registry.version_events(version, limit=EVENTS_SHOWN)]
    approvals = [
        {
            "actor": e["actor"],
            "alias": str(e["subject"]).rpartition(" for ")[2],
            "comment": (e["details"] if isinstance(e["details"], dict) else {}).get(
                "comment", ""),
            "ts": e["ts"],
        }
        for e in events
        if e["action"] == "version.approved"
    ]
    files = _files(version, previous)
    env = version.environment
    git = version.lineage.get("git") or {}
    data = version.to_dict()
    digest = f"sha:{version.digest}"
    return {
        "version": data,
        "short_digest": version.short_digest,
        "age": ago(version.created_at),
        "previous": previous.ref if previous else None,
        "next": following.ref if following else None,
        "git": git,
        "environment_summary": {
            "python": env.get("python"),
            "platform": env.get("platform"),
            "machine": env.get("machine"),
            "accelerator": env.get("accelerator"),
            "packages": len(env.get("packages", {}) or {}),
        },
        "env_vs_production": env_vs_production,
        "files": files,
        "size_text": human_bytes(version.size),
        "shared_bytes": sum(f["shared_bytes"] for f in files),
        "shared_text": human_bytes(sum(f["shared_bytes"] for f in files)),
        "signatures": {"valid": valid, "problems": problems},
        "trust": trust,
        "approvals": approvals,
        "events": events,
        "snippets": {
            "load": f'import tether\nmodel = tether.load("{version.ref}", expect="{digest}")',
            "pin": f"tether lock add {version.ref}",
            "show": f"tether show {version.ref}",
        },
        "roles": list(perms.roles(name)),
        "can": perms.actions(name),
        "protected_aliases": list(perms.protected()),
    }


# -- comparing ------------------------------------------------------------------


def _fields(signature: dict[str, Any] | None, side: str) -> dict[str, str]:
    part = (signature or {}).get(side) or {}
    return {str(f.get("name")): str(f.get("type")) for f in part.get("fields", [])}


def _section(
    title: str, keys: list[str], columns: list[dict[str, Any]], only_diff: bool
) -> dict[str, Any]:
    rows = []
    for key in keys:
        values = [col.get(key) for col in columns]
        same = all(v == values[0] for v in values)
        if only_diff and same:
            continue
        rows.append({"key": key, "values": [fmt(v) for v in values], "same": same})
    return {"title": title, "rows": rows}


def _ordered_keys(columns: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}  # in order, each once (a list search was quadratic)
    for col in columns:
        for key in col if isinstance(col, dict) else ():
            keys.setdefault(key, None)
    return list(keys)


def compare_page(registry: Registry, refs: Sequence[str], *, only_diff: bool) -> dict[str, Any]:
    refs = [r.strip() for r in refs if r.strip()]
    if len(refs) < 2:
        raise InvalidInput(
            "compare needs two or more versions",
            hint="e.g. /compare?v=fraud@1.0.0&v=fraud@1.1.0",
        )
    if len(refs) > 8:
        raise InvalidInput("compare shows at most 8 versions at once")
    found = [registry.get(r) for r in refs]
    bases = [
        {
            "version": v.semver,
            "sequence": v.seq,
            "digest": v.short_digest,
            "status": v.status,
            "author": v.author,
            "created": v.created_at,
            "aliases": ", ".join(v.aliases),
            "flavor": v.flavor.get("name"),
            "size": human_bytes(v.size),
            "git commit": str((v.lineage.get("git") or {}).get("commit") or "")[:12],
            "git dirty": (v.lineage.get("git") or {}).get("dirty"),
            "notes": v.notes,
        }
        for v in found
    ]
    params = [{k: v.params[k] for k in v.params} for v in found]
    metrics = [dict(v.metrics) for v in found]
    schema = [
        {
            **{f"input {k}": t for k, t in _fields(v.signature, "inputs").items()},
            **{f"output {k}": t for k, t in _fields(v.signature, "outputs").items()},
        }
        for v in found
    ]
    data = [{k: str(d.get("digest", ""))[:16] for k, d in v.data.items()} for v in found]
    envs = []
    for v in found:
        env = v.environment
        row: dict[str, Any] = {
            "python": env.get("python"),
            "platform": env.get("platform"),
            "machine": env.get("machine"),
            "accelerator": env.get("accelerator"),
        }
        for pkg, ver in sorted((env.get("packages") or {}).items()):
            row[f"package {pkg}"] = ver
        envs.append(row)
    files = [{f.path: f"{human_bytes(f.size)} {f.digest[:12]}" for f in v.files} for v in found]
    sections = [
        _section("version", _ordered_keys(bases), bases, only_diff),
        _section("params", _ordered_keys(params), params, only_diff),
        _section("metrics", _ordered_keys(metrics), metrics, only_diff),
        _section("schema", _ordered_keys(schema), schema, only_diff),
        _section("data", _ordered_keys(data), data, only_diff),
        _section("environment", _ordered_keys(envs), envs, only_diff),
        _section("files", sorted(_ordered_keys(files)), files, only_diff),
    ]
    compatibility = []
    for old, new in itertools.pairwise(found):
        diff = diff_versions(old, new)  # both already resolved (and re-hashed) above
        compatibility.append(
            {
                "old": old.ref,
                "new": new.ref,
                "signature": diff["signature"],
                "shared_bytes": diff["files"]["shared_bytes"],
                "new_bytes": diff["files"]["new_bytes"],
                "shared_text": human_bytes(diff["files"]["shared_bytes"]),
                "new_text": human_bytes(diff["files"]["new_bytes"]),
            }
        )
    return {
        "refs": [v.ref for v in found],
        "only_differences": only_diff,
        "sections": sections,
        "pairs": compatibility,
    }


# -- audit ----------------------------------------------------------------------


class ChainVerifier:
    """Verifying the audit chain reads every event; do it when asked or when it is cheap.

    A result is kept with the newest event it covered. The audit page shows it
    when nothing was appended since; otherwise it verifies again by itself if
    the chain is short (``AUTO_EVENTS``), and offers a button if it is long.
    """

    AUTO_EVENTS = 500

    def __init__(self) -> None:
        self._cache: dict[str, dict[str, Any]] = {}

    def result(self, registry: Registry, *, force: bool) -> dict[str, Any]:
        try:  # the whole chain: a registry-wide reader's to verify, and to see verified
            registry.require("reader", None, action="verifying the audit log")
        except PermissionDenied:
            # Neither verified nor cached for such a caller: its refusal, cached under the
            # registry, showed every admin "Chain verification FAILED" (a review).
            return {"events": 0, "ok": None, "problems": [], "head": None, "fresh": False,
                    "newest": None, "needs_role": True}
        newest = registry.audit_log(limit=1)
        head = newest[0].id if newest else 0
        cached = self._cache.get(registry.describe())
        if cached is not None and cached["head"] == head and not force:
            return {**cached, "fresh": True}
        if force or head <= self.AUTO_EVENTS:
            try:
                count, problems = registry.verify_audit()
            except TetherError as error:
                count, problems = 0, [error.message]
            found = {
                "events": count,
                "ok": not problems,
                "problems": problems,
                "head": head,
                "verified_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            self._cache[registry.describe()] = found
            return {**found, "fresh": True}
        if cached is not None:
            return {**cached, "fresh": False, "newest": head}
        return {"events": 0, "ok": None, "problems": [], "head": None, "fresh": False,
                "newest": head}


def audit_page(
    registry: Registry,
    *,
    model: str = "",
    action: str = "",
    actor: str = "",
    q: str = "",
    limit: int = 100,
    verify: bool = False,
    verifier: ChainVerifier | None = None,
) -> dict[str, Any]:
    limit = min(max(limit, 1), 1000)
    filtered = bool(actor or q)
    # Filters the use case does not take are applied here, over the newest FILTER_WINDOW
    # events (the comment said so; the code read the whole log on every request).
    events = registry.audit_log(
        model=model or None, action=action or None, limit=FILTER_WINDOW if filtered else limit
    )
    if filtered:
        needle = q.lower()
        events = [
            e
            for e in events
            if (not actor or e.actor == actor)
            and (not needle or needle in (e.subject or "").lower() or needle in e.action)
        ][:limit]
    verification = verifier.result(registry, force=verify) if verifier else None
    return {
        "query": {"model": model, "action": action, "actor": actor, "q": q, "limit": limit},
        "events": [event_row(e) for e in events],
        "verification": verification,
    }


# -- deployments ------------------------------------------------------------------------


def deployments_page(registry: Registry) -> dict[str, Any]:
    """Deployments stored in the registry (read-only: they change through the CLI/API)."""
    return {"deployments": [
        {**d, "updated_ago": ago(d["updated_at"])} for d in registry.deployments()]}


def deployment_page(registry: Registry, name: str) -> dict[str, Any]:
    """One deployment: its routes and their traffic, the signatures replicas of a server
    check before loading trusted, its replicas now, and its last revisions."""
    from .._registry.deployments import effective_weights

    status = registry.deployment_status(name)
    record = status["deployment"]
    paused = set(record.get("paused") or [])
    now = time.time()
    endpoints = []
    spec = record.get("spec")
    if not (isinstance(spec, dict) and isinstance(spec.get("endpoints"), dict)):
        raise IntegrityError(
            f"deployment {name}'s stored record is unreadable (its spec has no endpoints)",
            hint="it was changed outside Tether: `tether deploy history NAME` lists its "
            "revisions; `tether deploy rollback NAME` makes a readable one current")
    for endpoint, body in spec["endpoints"].items():
        shares = effective_weights(record, endpoint)
        total = sum(shares.values()) or 1.0
        routes = [{"name": r["name"], "target": r["target"], "weight": r["weight"],
                   "paused": f"{endpoint}/{r['name']}" in paused,
                   "share": shares.get(r["name"], 0.0) / total} for r in body["routes"]]
        routes += [{"name": "shadow", "target": s["target"], "weight": None, "paused": False,
                    "share": None, "sample": s.get("sample", 1.0)}
                   for s in body.get("shadow", [])]
        endpoints.append({"name": endpoint, "trusted": bool(body.get("trusted")),
                          "rules": (body.get("rollback") or {}).get("rules", []),
                          "routes": routes})
    signatures = []
    for entry in record.get("signatures") or []:
        payload = entry.get("payload") or {}
        expires = payload.get("expires_at")
        signatures.append({
            "key_id": entry.get("key_id"), "key": entry.get("key"),
            "signer": entry.get("signer"),
            "created_at": entry.get("created_at"), "expires_at": expires,
            "expired": isinstance(expires, str) and _epoch(expires) < now,
            "endpoints": {e: len(d) for e, d in (payload.get("endpoints") or {}).items()}})
    replicas = []
    for replica in status["replicas"]:
        info = replica.get("info") or {}
        replicas.append({
            "replica": replica["replica"], "host": replica["host"], "live": replica["live"],
            "last_heartbeat_s": replica["last_heartbeat_s"], "revision": info.get("revision"),
            "ready": info.get("ready"), "leader": info.get("leader"),
            "routes": {key: {"ref": r.get("ref"), "status": r.get("status"),
                             "problem": r.get("problem")}
                       for key, r in (info.get("routes") or {}).items()}})
    history = registry.deployment_history(name)[:20]
    return {
        "name": name, "revision": record["revision"], "updated_at": record["updated_at"],
        "updated_by": record["updated_by"], "endpoints": endpoints, "signatures": signatures,
        "replicas": replicas, "lease": status["lease"],
        "history": [{k: h[k] for k in ("revision", "action", "actor", "reason", "at")}
                    for h in history],
    }


def _epoch(text: str) -> float:
    from .._metadata.clock import parse_iso

    try:
        return parse_iso(text).timestamp()
    except (TypeError, ValueError):
        return 0.0
