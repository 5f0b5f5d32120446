"""Deployment specs: endpoints, their routes, shadows and rollback rules.

Pure logic (no I/O beyond reading a file): the registry validates and stores
deployments with it, serving runs them (``tether.serving.config`` re-exports it).

A deployment is YAML (see docs/serving.md). Parsing refuses unknown keys,
naming the place and the keys that are allowed, so a typo never turns into a
silently ignored setting::

    endpoints:
      iris:
        routes:
          - {name: stable, target: iris@production, weight: 90}
          - {name: canary, target: iris@1.3.0, weight: 10}
        shadow: [{target: iris@staging}]
        rollback:
          window: 60
          rules: ["error_rate > 0.05", "p99_latency_ms > 250"]
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._errors import InvalidInput, InvalidReference
from ._reference import parse_reference

#: Metrics a rollback rule may name; ``feedback.NAME`` names a feedback metric.
RULE_METRICS = ("error_rate", "p50_latency_ms", "p99_latency_ms", "shadow_disagreement")
_RULE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|>|<)\s*(-?[0-9.]+(?:e-?\d+)?)\s*\Z")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


@dataclass(frozen=True)
class Rule:
    """``metric op threshold``: the route rolls back when this holds over the window."""

    metric: str
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        return {
            ">": value > self.threshold, ">=": value >= self.threshold,
            "<": value < self.threshold, "<=": value <= self.threshold,
        }[self.op]

    def describe(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class RouteConfig:
    name: str
    target: str
    weight: float = 100.0


@dataclass(frozen=True)
class ShadowConfig:
    target: str
    sample: float = 1.0


@dataclass(frozen=True)
class RollbackConfig:
    window: float = 60.0
    min_requests: int = 20
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class BatchingConfig:
    """Concurrent requests to one version predicted together (off unless configured).

    A batch is predicted once ``max_batch`` records are waiting, ``max_wait_ms``
    after its first request, or (``eager``, the default) as soon as no other
    request to the endpoint is on its way in, so a lone request never waits
    for company. ``eager: false`` always waits ``max_wait_ms`` for more.
    """

    max_batch: int = 64
    max_wait_ms: float = 5.0
    eager: bool = True


@dataclass(frozen=True)
class EndpointConfig:
    name: str
    routes: tuple[RouteConfig, ...]
    shadows: tuple[ShadowConfig, ...] = ()
    rollback: RollbackConfig = field(default_factory=RollbackConfig)
    sticky_field: str | None = None
    trusted: bool = False
    env_policy: str | None = None
    max_records: int = 10_000
    #: Fields that may carry NaN or +-infinity: True (every field), or their names.
    #: By default a non-finite number is refused with 422 before the model sees it.
    allow_non_finite: bool | frozenset[str] = False
    #: Server-side batching; None (the default) predicts every request on its own.
    batching: BatchingConfig | None = None
    #: With ``trusted``: the content digests that may load as trusted and until when
    #: (seconds since the epoch), when a replica checked a deployment signature for them
    #: (None: every target; never read from a file or a record, see
    #: ``_registry/deployment_signing.py``).
    trusted_until: Mapping[str, float] | None = None


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    poll_interval: float = 1.0
    access_log: bool = False


@dataclass(frozen=True)
class AuthConfig:
    """Who may call what: ``auth: {token_env: TETHER_SERVING_TOKEN, protect_reads: true}``.

    Changing routes (weights, feedback, reload) always needs a bearer token: a
    registry token with the right role, or the serving token, read at start-up
    from the environment variable ``token_env`` (the secret never goes in the
    file). ``protect_reads`` puts predictions, status, drift and metrics behind
    a token too (reader role); /healthz and /readyz stay open.
    """

    token_env: str | None = None
    protect_reads: bool = False


@dataclass(frozen=True)
class Deployment:
    endpoints: tuple[EndpointConfig, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    source: str | None = None
    auth: AuthConfig = field(default_factory=AuthConfig)

    def endpoint(self, name: str) -> EndpointConfig:
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        raise KeyError(name)


def load_deployment(path: str | Path) -> Deployment:
    """Read and check a deployment file."""
    where = Path(path)
    try:
        text = where.read_text()
    except OSError as error:
        raise InvalidInput(f"cannot read deployment file {where}: {error.strerror}") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidInput(f"{where} is not valid YAML: {error}") from error
    return parse_deployment(data, source=str(where))


def single_version(ref: str, *, trusted: bool = False, env_policy: str | None = None,
                   server: ServerConfig | None = None) -> Deployment:
    """The deployment ``tether serve REF`` makes: one endpoint named after the model."""
    name = parse_reference(ref).name
    endpoint = EndpointConfig(name, (RouteConfig("main", ref, 100.0),), trusted=trusted,
                              env_policy=env_policy)
    return Deployment((endpoint,), server or ServerConfig())


#: Most endpoints one deployment declares, and routes plus shadows one endpoint has.
MAX_ENDPOINTS = 64
MAX_ROUTES = 64


def parse_deployment(data: Any, *, source: str | None = None) -> Deployment:
    where = source or "deployment"
    top = _mapping(data, where, {"endpoints", "server", "auth"}, required={"endpoints"})
    endpoints_data = _mapping(top["endpoints"], f"{where}: endpoints", None)
    if not endpoints_data:
        raise InvalidInput(f"{where}: endpoints is empty", hint="declare at least one endpoint")
    if len(endpoints_data) > MAX_ENDPOINTS:
        raise InvalidInput(f"{where}: {len(endpoints_data)} endpoints, more than the "
                           f"{MAX_ENDPOINTS} a deployment may declare",
                           hint="split it into several deployments")
    endpoints = tuple(
        _endpoint(str(name), value, f"{where}: endpoints.{name}")
        for name, value in endpoints_data.items()
    )
    server = _server(top.get("server") or {}, f"{where}: server")
    auth = _auth(top.get("auth") or {}, f"{where}: auth")
    return Deployment(endpoints, server, source, auth)


def parse_rule(text: Any, where: str = "rule") -> Rule:
    match = _RULE.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(f"{where}: {text!r} is not a rule",
                           hint='write "METRIC > NUMBER", e.g. "error_rate > 0.05"')
    metric, op, number = match.groups()
    if metric not in RULE_METRICS and not (metric.startswith("feedback.") and len(metric) > 9):
        raise InvalidInput(f"{where}: unknown metric {metric!r}",
                           hint="metrics: " + ", ".join(RULE_METRICS) + ", feedback.NAME")
    return Rule(metric, op, float(number))


def _endpoint(name: str, data: Any, where: str) -> EndpointConfig:
    if not _NAME.match(name):
        raise InvalidInput(f"{where}: endpoint name {name!r} is not allowed",
                           hint="use letters, digits, '.', '_' and '-'")
    known = {"routes", "shadow", "rollback", "sticky_field", "trusted", "env_policy",
             "max_records", "allow_non_finite", "batching"}
    body = _mapping(data, where, known, required={"routes"})
    routes_data = body["routes"]
    if isinstance(routes_data, str):
        routes_data = [{"target": routes_data}]
    if not isinstance(routes_data, list) or not routes_data:
        raise InvalidInput(f"{where}.routes must be a non-empty list of routes")
    shadows = body.get("shadow") or []
    shadow_count = len(shadows) if isinstance(shadows, list) else 1  # one, as a name
    if len(routes_data) + shadow_count > MAX_ROUTES:
        # Each change stores the whole spec again, and pauses looked routes up one by
        # one: a contributor's 20,000 routes held the write lock for seconds a request
        # and grew the database 20,000 bytes for each byte sent (a review).
        raise InvalidInput(f"{where}: more than {MAX_ROUTES} routes and shadows",
                           hint="an endpoint splits traffic between a few versions")
    routes = tuple(_route(r, f"{where}.routes[{i}]") for i, r in enumerate(routes_data))
    names = [r.name for r in routes]
    if len(set(names)) != len(names):
        raise InvalidInput(f"{where}.routes: two routes are named the same",
                           hint="give each route a distinct name:")
    if sum(r.weight for r in routes) <= 0:
        raise InvalidInput(f"{where}.routes: the weights add up to 0")
    shadows_data = body.get("shadow") or []
    if isinstance(shadows_data, str | Mapping):
        shadows_data = [shadows_data]
    shadows = tuple(_shadow(s, f"{where}.shadow[{i}]") for i, s in enumerate(shadows_data))
    return EndpointConfig(
        name=name,
        routes=routes,
        shadows=shadows,
        rollback=_rollback(body.get("rollback") or {}, f"{where}.rollback"),
        sticky_field=_optional_str(body.get("sticky_field"), f"{where}.sticky_field"),
        trusted=_bool(body.get("trusted", False), f"{where}.trusted"),
        env_policy=_optional_str(body.get("env_policy"), f"{where}.env_policy"),
        max_records=int(_number(body.get("max_records", 10_000), f"{where}.max_records", 1)),
        allow_non_finite=_allow_non_finite(body.get("allow_non_finite", False),
                                           f"{where}.allow_non_finite"),
        batching=_batching(body.get("batching"), f"{where}.batching"),
    )


def _batching(data: Any, where: str) -> BatchingConfig | None:
    if data is None or data is False:
        return None
    if data is True:
        return BatchingConfig()
    body = _mapping(data, where, {"max_batch", "max_wait_ms", "eager"})
    defaults = BatchingConfig()
    max_wait = _number(body.get("max_wait_ms", defaults.max_wait_ms), f"{where}.max_wait_ms", 0)
    if max_wait > 1000:
        raise InvalidInput(f"{where}.max_wait_ms is {max_wait:g}",
                           hint="batches gather for a few milliseconds: at most 1000")
    return BatchingConfig(
        max_batch=int(_number(body.get("max_batch", defaults.max_batch),
                              f"{where}.max_batch", 1)),
        max_wait_ms=max_wait,
        eager=_bool(body.get("eager", defaults.eager), f"{where}.eager"),
    )


def _allow_non_finite(value: Any, where: str) -> bool | frozenset[str]:
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return frozenset(value)
    raise InvalidInput(f"{where} must be true, false or a list of field names, not {value!r}")


def _route(data: Any, where: str) -> RouteConfig:
    if isinstance(data, str):
        data = {"target": data}
    body = _mapping(data, where, {"name", "target", "weight"}, required={"target"})
    target = _reference(body["target"], f"{where}.target")
    name = body.get("name") or _default_route_name(target)
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(f"{where}.name {name!r} is not allowed")
    weight = _number(body.get("weight", 100), f"{where}.weight", 0)
    return RouteConfig(name, target, weight)


def _default_route_name(target: str) -> str:
    selector = parse_reference(target).selector
    return selector if _NAME.match(selector) else "route"


def _shadow(data: Any, where: str) -> ShadowConfig:
    if isinstance(data, str):
        data = {"target": data}
    body = _mapping(data, where, {"target", "sample"}, required={"target"})
    sample = _number(body.get("sample", 1.0), f"{where}.sample", 0)
    if sample > 1:
        raise InvalidInput(f"{where}.sample is {sample:g}", hint="a fraction from 0 to 1")
    return ShadowConfig(_reference(body["target"], f"{where}.target"), sample)


def _rollback(data: Any, where: str) -> RollbackConfig:
    body = _mapping(data, where, {"window", "min_requests", "rules"})
    rules_data = body.get("rules") or []
    if not isinstance(rules_data, list):
        raise InvalidInput(f"{where}.rules must be a list of rules such as \"error_rate > 0.05\"")
    return RollbackConfig(
        window=_number(body.get("window", 60), f"{where}.window", 0.1),
        min_requests=int(_number(body.get("min_requests", 20), f"{where}.min_requests", 1)),
        rules=tuple(parse_rule(r, f"{where}.rules[{i}]") for i, r in enumerate(rules_data)),
    )


def _server(data: Any, where: str) -> ServerConfig:
    body = _mapping(data, where, {"host", "port", "poll_interval", "access_log"})
    defaults = ServerConfig()
    return ServerConfig(
        host=str(body.get("host", defaults.host)),
        port=int(_number(body.get("port", defaults.port), f"{where}.port", 0)),
        poll_interval=_number(body.get("poll_interval", defaults.poll_interval),
                              f"{where}.poll_interval", 0.05),
        access_log=_bool(body.get("access_log", defaults.access_log), f"{where}.access_log"),
    )


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def _auth(data: Any, where: str) -> AuthConfig:
    if isinstance(data, Mapping) and ("token" in data or "secret" in data):
        raise InvalidInput(f"{where}: the serving token does not go in the deployment file",
                           hint="name an environment variable that holds it: "
                                "auth: {token_env: TETHER_SERVING_TOKEN}")
    body = _mapping(data, where, {"token_env", "protect_reads"})
    token_env = _optional_str(body.get("token_env"), f"{where}.token_env")
    if token_env is not None and not _ENV_NAME.match(token_env):
        raise InvalidInput(f"{where}.token_env {token_env!r} is not an environment variable name",
                           hint="e.g. token_env: TETHER_SERVING_TOKEN")
    if token_env is not None and token_env.startswith("TETHER_") and not token_env.startswith(
            "TETHER_SERVING"):
        # TETHER_TOKEN named the registry's own token: a replica asked its clients for it,
        # and a rendered pod got two TETHER_TOKEN entries, one secret overwriting the other.
        raise InvalidInput(f"{where}.token_env {token_env} is one of Tether's own settings",
                           hint="name the serving token's variable TETHER_SERVING_TOKEN (or "
                           "TETHER_SERVING_<anything>, or a name outside TETHER_)")
    return AuthConfig(token_env=token_env,
                      protect_reads=_bool(body.get("protect_reads", False),
                                          f"{where}.protect_reads"))


# -- checked values -------------------------------------------------------------------


def _mapping(data: Any, where: str, known: set[str] | None,
             required: Collection[str] = ()) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{where} must be a mapping, not {type(data).__name__}")
    if known is not None:
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                guess = f"did you mean {close[0]!r}? " if close else ""
                raise InvalidInput(f"{where}: unknown key {key!r}",
                                   hint=f"{guess}allowed: {', '.join(sorted(known))}")
    missing = sorted(set(required) - set(data))
    if missing:
        raise InvalidInput(f"{where}: missing key {missing[0]!r}")
    return dict(data)


def _reference(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a reference such as iris@production")
    try:
        parse_reference(value)
    except InvalidReference as error:
        raise InvalidInput(f"{where}: {error.message}", hint=error.hint) from error
    return value


def _number(value: Any, where: str, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where} must be a number, not {value!r}")
    if not _finite(value):
        raise InvalidInput(f"{where} must be a finite number, not {value!r}")
    if value < minimum:
        raise InvalidInput(f"{where} is {value:g}; it must be at least {minimum:g}")
    return float(value)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{where} must be true or false, not {value!r}")
    return value


def _optional_str(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput(f"{where} must be text, not {value!r}")


def deployment_to_dict(deployment: Deployment) -> dict[str, Any]:
    """The canonical mapping of a deployment (without its ``server`` section, which
    belongs to each replica): ``parse_deployment`` reads it back to the same value."""
    endpoints: dict[str, Any] = {}
    for e in deployment.endpoints:
        body: dict[str, Any] = {
            "routes": [{"name": r.name, "target": r.target, "weight": r.weight}
                       for r in e.routes],
            "rollback": {"window": e.rollback.window, "min_requests": e.rollback.min_requests,
                         "rules": [r.describe() for r in e.rollback.rules]},
        }
        if e.shadows:
            body["shadow"] = [{"target": s.target, "sample": s.sample} for s in e.shadows]
        if e.sticky_field is not None:
            body["sticky_field"] = e.sticky_field
        if e.trusted:
            body["trusted"] = True
        if e.env_policy is not None:
            body["env_policy"] = e.env_policy
        if e.max_records != 10_000:
            body["max_records"] = e.max_records
        if e.allow_non_finite:
            body["allow_non_finite"] = (True if e.allow_non_finite is True
                                        else sorted(e.allow_non_finite))
        if e.batching is not None:
            b = e.batching
            body["batching"] = {"max_batch": b.max_batch, "max_wait_ms": b.max_wait_ms,
                                "eager": b.eager}
        endpoints[e.name] = body
    out: dict[str, Any] = {"endpoints": endpoints}
    if deployment.auth != AuthConfig():
        out["auth"] = {"token_env": deployment.auth.token_env,
                       "protect_reads": deployment.auth.protect_reads}
    return out
