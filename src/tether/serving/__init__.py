"""Serving registered versions over HTTP, and changing them safely.

    deployment = load_deployment("deploy.yaml")     # or single_version("iris@production")
    serve(registry, deployment)                     # what `tether serve` runs

Blue-green switches when a followed alias moves, weighted and sticky canary
routes, shadow mirroring with disagreement rates, automatic rollback on
window rules, Prometheus metrics, JSON logs and input drift (PSI, KS).
See docs/serving.md.
"""

from __future__ import annotations

from .app import create_app
from .config import (
    Deployment,
    EndpointConfig,
    RouteConfig,
    Rule,
    ServerConfig,
    ShadowConfig,
    load_deployment,
    parse_deployment,
    single_version,
)
from .runtime import ServingRuntime
from .server import BackgroundServer, serve, start_runtime

__all__ = [
    "BackgroundServer", "Deployment", "EndpointConfig", "RouteConfig", "Rule", "ServerConfig",
    "ServingRuntime", "ShadowConfig", "create_app", "load_deployment", "parse_deployment",
    "serve", "single_version", "start_runtime",
]
