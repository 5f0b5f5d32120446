"""Deployment files, as serving reads them: the parser lives in ``tether._deployment``
(pure logic the registry shares, to validate the deployments it stores)."""

from __future__ import annotations

from .._deployment import (
    RULE_METRICS,
    AuthConfig,
    BatchingConfig,
    Deployment,
    EndpointConfig,
    RollbackConfig,
    RouteConfig,
    Rule,
    ServerConfig,
    ShadowConfig,
    deployment_to_dict,
    load_deployment,
    parse_deployment,
    parse_rule,
    single_version,
)

__all__ = [
    "RULE_METRICS", "AuthConfig", "BatchingConfig", "Deployment", "EndpointConfig",
    "RollbackConfig", "RouteConfig", "Rule", "ServerConfig", "ShadowConfig",
    "deployment_to_dict", "load_deployment", "parse_deployment", "parse_rule", "single_version",
]
